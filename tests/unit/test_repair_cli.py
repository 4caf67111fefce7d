"""``reindex repair``: bad input exits 2 with one line, before touching any service."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Nothing listens here: bad input must be rejected before any service is asked.
UNREACHABLE = {
    **{k: v for k, v in os.environ.items() if not k.startswith("REINDEX_")},
    "REINDEX_PG_DSN": "postgresql://nobody@127.0.0.1:1/none",
    "REINDEX_KAFKA_BOOTSTRAP": "127.0.0.1:1",
    "REINDEX_CLICKHOUSE_SHARDS": "http://127.0.0.1:1",
}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--start", "2026-01-02", "--end", "2026-01-01"], "start"),
        (["--start", "someday", "--end", "2026-01-01"], "not an ISO 8601 time"),
        (["--start", "2026-01-01", "--end", "2026-01-02", "--max-rounds", "0"], "at least 1"),
        (["--start", "2026-01-01", "--end", "2026-01-02", "--types", "NOPE"], "NOPE"),
        (["--start", "2026-01-01", "--end", "2026-01-02", "--bucket", "week"], "week"),
        (["--last", "24h", "--start", "2026-01-01"], "not both"),
        (["--last", "soon"], "not a duration"),
        ([], "give --start and --end, or --last"),
    ],
)
def test_repair_bad_input_exits_2_with_one_line(args: list[str], says: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "reindex", "repair", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=UNREACHABLE,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("reindex: error: ")
    assert says in lines[0]
