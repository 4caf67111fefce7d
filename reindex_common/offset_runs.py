"""Sets of Kafka offsets as sorted inclusive runs ``(first, last)``, per partition.

A job's messages usually sit in one run per partition (its producer alone on the topic), so runs
keep the offsets a job published (its checkpoint) and the offsets the workers wrote (the written
topic) small enough to record and to compare.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable


def to_runs_merged(runs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or adjacent inclusive runs merged: [(0, 4), (3, 9), (10, 10)] -> [(0, 10)]."""
    merged: list[tuple[int, int]] = []
    for first, last in sorted(runs):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def to_runs(offsets: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, merged inclusive runs of ``offsets``: [3, 4, 5, 9] -> [(3, 5), (9, 9)]."""
    return to_runs_merged((offset, offset) for offset in offsets)


def union_size(runs: Iterable[tuple[int, int]]) -> int:
    """How many distinct offsets a set of possibly overlapping inclusive runs covers."""
    total = 0
    end = -1
    for first, last in sorted(runs):
        if last <= end:
            continue
        total += last - max(first, end + 1) + 1
        end = last
    return total


def covers(merged: list[tuple[int, int]], wanted: Iterable[tuple[int, int]]) -> bool:
    """Whether every offset of the runs ``wanted`` lies in ``merged`` (as from
    :func:`to_runs_merged`: sorted, merged, so a wanted run must fit inside one of them)."""
    starts = [first for first, _ in merged]
    for first, last in wanted:
        i = bisect_right(starts, first) - 1
        if i < 0 or merged[i][1] < last:
            return False
    return True
