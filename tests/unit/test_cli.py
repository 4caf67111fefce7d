"""Bad input: exit 2 and one line on stderr, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reindex", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["seed", "--scorecards", "0"], "must be at least 1"),
        (["seed", "--start", "someday"], "not an ISO 8601 time"),
        (["seed", "--scorecards", "many"], "not a valid integer"),
        (["no-such-command"], "No such command"),
        (["devstack", "up", "--shards", "0"], "must be at least 1"),
        (["status", "a/b"], "not a job id"),
        (["jobs", "-o", "yaml"], "Invalid value for '-o'"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], says: str) -> None:
    result = run(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("reindex: error: ")
    assert says in lines[0]


def test_bad_settings_exit_2_with_one_line() -> None:
    import os  # noqa: PLC0415

    env = {**os.environ, "REINDEX_BATCH_SIZE": "-1"}
    result = run("schema", "init", env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "reindex: error: invalid settings: REINDEX_BATCH_SIZE: "
        "Input should be greater than or equal to 1"
    ]


def test_help_lists_the_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("schema", "seed", "devstack"):
        assert command in result.stdout
