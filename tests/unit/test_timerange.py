"""``--last``, ``--since`` and ``-o json``: parsing without services."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from producer.cli_options import build_request
from reindex.output import to_jsonable
from reindex_common.errors import BadInputError
from reindex_common.settings import Settings
from reindex_common.timerange import parse_duration, parse_since, resolve_range

NOW = datetime(2026, 5, 10, 12, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("90m", timedelta(minutes=90)),
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("1d12h", timedelta(days=1, hours=12)),
        (" 24H ", timedelta(hours=24)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "24", "h", "2x", "-1h", "1.5h", "0h", "24h ago", "1y"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(BadInputError):
        parse_duration(text)


def test_last_ends_now() -> None:
    assert resolve_range(None, None, "24h", now=NOW) == (NOW - timedelta(hours=24), NOW)


def test_start_and_end_are_parsed() -> None:
    assert resolve_range("2026-01-01", "2026-01-02T00:00:00Z", None) == (
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 2, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    ("start", "end", "last", "says"),
    [
        ("2026-01-01", None, "24h", "not both"),
        (None, "2026-01-01", "24h", "not both"),
        (None, None, None, "give --start and --end, or --last"),
        ("2026-01-01", None, None, "--start needs --end"),
        (None, "2026-01-01", None, "--end needs --start"),
        (None, None, "999999999w", "too long"),
    ],
)
def test_range_mistakes(start: str | None, end: str | None, last: str | None, says: str) -> None:
    with pytest.raises(BadInputError, match=says):
        resolve_range(start, end, last, now=NOW)


def test_build_request_takes_last() -> None:
    request = build_request(
        Settings(),
        start=None,
        end=None,
        last="1h",
        types=None,
        mode="all",
        batch_size=None,
        clean_up=False,
        job_id="j",
    )
    assert request.end - request.start == timedelta(hours=1)
    assert abs((datetime.now(UTC) - request.end).total_seconds()) < 600


def test_since_is_a_time_or_a_duration_ago() -> None:
    assert parse_since("2h", now=NOW) == NOW - timedelta(hours=2)
    assert parse_since("2026-05-01T00:00:00Z") == datetime(2026, 5, 1, tzinfo=UTC)
    with pytest.raises(BadInputError, match="not a time or duration"):
        parse_since("yesterday")


@dataclass
class _Thing:
    when: datetime
    values: tuple[float, ...]


def test_json_conversion() -> None:
    document = to_jsonable({"a": _Thing(NOW, (1.0, math.nan)), 3: {1, 2}})
    assert json.loads(json.dumps(document, allow_nan=False)) == {
        "a": {"when": "2026-05-10T12:30:00+00:00", "values": [1.0, None]},
        "3": [1, 2],
    }


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["verify", "--last", "24h", "--start", "2026-01-01"], "not both"),
        (["produce", "--last", "24h", "--end", "2026-01-01"], "not both"),
        (["request", "--last", "1x"], "not a duration"),
        (["verify", "--start", "2026-01-01"], "--start needs --end"),
        (["produce", "--last", "24h", "--max-lag", "-1"], "--max-lag"),
        (["verify", "--last", "24h", "-o", "yaml"], "'yaml' is not one of 'text', 'json'"),
    ],
)
def test_cli_range_mistakes_exit_2_with_one_line(args: list[str], says: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "reindex", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("reindex: error: ")
    assert says in result.stderr
    assert result.stdout == ""


def test_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "reindex", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("reindex 0.")
