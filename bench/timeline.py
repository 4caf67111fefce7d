"""Where a job's seconds go: a time line read from the logs of one pipeline run.

The producer logs when its settings are loaded (imports and start-up done), when the selection is
counted, and when the job is done (last delivery); each worker logs its batches. With the moment
the benchmark started ``reindex produce`` and the moment ``status`` first saw the job complete,
they give the fixed costs of a job that issue 13 asks about (start-up, count, waiting for the
first batch, the tail between the last write and the completion seen).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

# logging's asctime ("2026-12-03 08:51:59,709") and Faust's ("[2026-12-03 08:52:01,117]"),
# both in local time.
_STAMP = re.compile(r"^\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]? ")
_BATCH = re.compile(r"\bbatch \d+: \d[\d,]* messages")


def _when(line: str) -> float | None:
    found = _STAMP.match(line)
    if found is None:
        return None
    return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _first(lines: Iterable[str], needle: str) -> float | None:
    for line in lines:
        if needle in line and (at := _when(line)) is not None:
            return at
    return None


def _last(lines: Iterable[str], needle: str) -> float | None:
    found = None
    for line in lines:
        if needle in line and (at := _when(line)) is not None:
            found = at
    return found


def job_timeline(
    started: float, complete: float, producer_log: Path, worker_logs: list[Path]
) -> list[tuple[str, float]]:
    """(event, seconds since ``reindex produce`` started), in order; events not found are left
    out. ``started`` and ``complete`` are wall-clock times (``time.time()``)."""
    producer = producer_log.read_text(errors="replace").splitlines()
    workers = [line for log in worker_logs for line in log.read_text(errors="replace").splitlines()]
    batches = [w for w in workers if "] batch " in w or (" batch " in w and "messages ->" in w)]
    events = [
        ("producer started up (imports, settings)", _first(producer, "settings:")),
        ("selection counted", _first(producer, "scorecards match")),
        ("first batch written", min(filter(None, (_when(b) for b in batches)), default=None)),
        ("producer done (last delivery)", _first(producer, " done: ")),
        ("last batch written", max(filter(None, (_when(b) for b in batches)), default=None)),
        ("status saw the job complete", complete),
    ]
    return sorted(
        ((name, at - started) for name, at in events if at is not None), key=lambda e: e[1]
    )


def describe(timeline: list[tuple[str, float]]) -> str:
    lines = []
    previous = 0.0
    for name, at in timeline:
        lines.append(f"  {at:7.2f} s  (+{at - previous:5.2f})  {name}")
        previous = at
    return "\n".join(lines)
