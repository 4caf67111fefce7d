"""The benchmark's engine baseline: chdb copies the selection from Postgres in its own processes.

The shards' HTTP front refuses ``postgresql()`` (it reaches another server), so the baseline
must not go through it; this checks that it still copies exactly the selection.
"""

from __future__ import annotations

from pathlib import Path

from test_producer import MakeDb, MakeSettings, seeded

from bench.__main__ import TYPES, Bench
from bench.engine import run_engine_copy


def test_the_engine_copies_exactly_the_selection(
    make_settings: MakeSettings, make_source_db: MakeDb, tmp_path: Path
) -> None:
    settings, plan = seeded(make_settings, make_source_db, 300)
    expected = Bench(settings, tmp_path, plan.start, plan.end)  # counts the selection in Postgres
    copy = run_engine_copy(settings, plan.start, plan.end, TYPES)
    assert (copy.scorecards, copy.scores) == (expected.cards, expected.scores)
    assert copy.scorecards > 0
    assert copy.seconds > 0
