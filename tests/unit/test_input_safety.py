"""Every mistake is caught with one line and exit 2 (issue 11): ranges, NaN, times, job ids,
unknown settings. In-process through ``reindex.cli.main``; no services needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from reindex.cli import main

RANGE = ["--start", "2026-01-01", "--end", "2026-02-01"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os  # noqa: PLC0415

    for name in list(os.environ):
        if name.upper().startswith("REINDEX_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env of the developer's


def one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("reindex: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["produce", *RANGE, "--max-rate", "nan"], "--max-rate must be a finite number (got nan)"),
        (["produce", *RANGE, "--max-rate", "inf"], "--max-rate must be a finite number (got inf)"),
        (["produce", *RANGE, "--max-rate", "0"], "--max-rate must be positive (got 0)"),
        (["serve", "--max-rate", "-inf"], "--max-rate must be a finite number (got -inf)"),
        (["serve", "--max-attempts", "0"], "--max-attempts must be at least 1 (got 0)"),
        (["repair", *RANGE, "--max-rounds", "0"], "--max-rounds must be at least 1 (got 0)"),
        (["repair", *RANGE, "--timeout", "nan"], "--timeout must be a finite number (got nan)"),
        (["status", "job-1", "--wait", "--timeout", "nan"], "--timeout must be a finite number"),
        (["produce", *RANGE, "--verify", "--timeout", "inf"], "--timeout must be a finite number"),
        (["consume", "--metrics-port", "70000"], "--metrics-port must be at most 65535"),
        (["consume", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["serve", "--max-lag", "-1"], "--max-lag must be at least 0"),
        (["dlq", "list", "--job", "a\nb"], "--job is not a job id"),
        (["produce", *RANGE, "--batch-size", "200000"], "--batch-size must be at most 100000"),
        (["devstack", "up", "--kafka-port", "0"], "--kafka-port must be at least 1"),
        (["demo", "--clickhouse-port", "65536"], "--clickhouse-port must be at most 65535"),
        (["seed", "--days", "1000000"], "--days must be at most 36500"),
        (
            ["produce", "--start", "0001-01-01T00:00:00+01:00", "--end", "2026-01-01"],
            "not an ISO 8601 time: '0001-01-01T00:00:00+01:00'",
        ),
        (
            ["produce", "--start", "2026-01-01", "--end", "10000-01-01T00:00:00"],
            "not an ISO 8601 time: '10000-01-01T00:00:00'",
        ),
        (
            ["verify", "--start", "2026-01-01", "--end", "9999-12-31T23:00:00-05:00"],
            "not an ISO 8601 time: '9999-12-31T23:00:00-05:00'",
        ),
        (
            ["seed", "--start", "0001-01-01T00:30:00+02:00"],
            "--start: not an ISO 8601 time between years 1 and 9999",
        ),
        (
            ["produce", *RANGE, "--job-id", "a/b"],
            "--job-id is not a job id",
        ),
        (["produce", *RANGE, "--job-id", ""], "--job-id is not a job id"),
        (["request", *RANGE, "--job-id", "x" * 201], "--job-id is not a job id"),
        (
            ["status", "job\n2026-01-01 INFO forged"],
            "JOB_ID is not a job id",
        ),
        (["status", "job\x1b[2Jx"], "JOB_ID is not a job id"),
        (["status", "job-1\n"], "JOB_ID is not a job id"),
    ],
)
def test_bad_flag_exits_2_with_one_line_naming_it(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    line = one_error_line(capsys, argv)
    assert says in line
    assert "\x1b" not in line


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("REINDEX_BATCH_SIZE", "200000", "REINDEX_BATCH_SIZE: Input should be less than"),
        ("REINDEX_CONSUMER_BATCH_WAIT", "nan", "REINDEX_CONSUMER_BATCH_WAIT: Input should be a"),
        ("REINDEX_CONSUMER_BATCH_IDLE", "0", "REINDEX_CONSUMER_BATCH_IDLE: Input should be"),
        ("REINDEX_WRITE_RETRY_DEADLINE", "inf", "REINDEX_WRITE_RETRY_DEADLINE: Input should be"),
        ("REINDEX_METRICS_PORT", "70000", "REINDEX_METRICS_PORT: Input should be less than"),
        ("REINDEX_TOPIC_PARTITIONS", "1000000", "REINDEX_TOPIC_PARTITIONS: Input should be less"),
        (
            "REINDEX_CLICKHOUSE_SHARD",
            "http://x:8123",
            "unknown setting REINDEX_CLICKHOUSE_SHARD in the environment; "
            "did you mean REINDEX_CLICKHOUSE_SHARDS?",
        ),
        ("reindex_bach_size", "10", "unknown setting REINDEX_BACH_SIZE in the environment; "),
        ("REINDEX_PG_DSN", "host=h password=sec ret", "REINDEX_PG_DSN: not a libpq connection"),
    ],
)
def test_bad_setting_exits_2_with_one_line_naming_the_variable(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    value: str,
    says: str,
) -> None:
    monkeypatch.setenv(name, value)
    line = one_error_line(capsys, ["verify", *RANGE])
    assert says in line
    assert "sec ret" not in line


def test_unknown_setting_in_dotenv_is_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("REINDEX_MODE=all\nREINDEX_TOPIC_PREFX=stage.\n")
    line = one_error_line(capsys, ["verify", *RANGE])
    assert "unknown setting REINDEX_TOPIC_PREFX in the .env" in line
    assert "did you mean REINDEX_TOPIC_PREFIX?" in line


def test_project_variables_that_are_not_settings_are_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from reindex_common.settings import check_unknown_variables  # noqa: PLC0415

    check_unknown_variables({"REINDEX_DEVSTACK_DIR": "stack", "REINDEX_MODE": "all"}, None)


@pytest.mark.parametrize(
    "start", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:00:00-05:00", "10000-01-01T00:00:00Z"]
)
def test_a_request_message_with_a_time_out_of_range_is_bad_input(start: str) -> None:
    import json  # noqa: PLC0415

    from reindex_common.errors import BadInputError  # noqa: PLC0415
    from reindex_common.messages import parse_request  # noqa: PLC0415

    raw = json.dumps({"start": start, "end": "2026-01-01T00:00:00Z"})
    with pytest.raises(BadInputError, match="invalid reindex request"):
        parse_request(raw)
