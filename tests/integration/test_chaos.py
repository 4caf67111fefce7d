"""A clean-up job while workers join, leave (SIGTERM) and die (SIGKILL): afterwards every row of
every shard, read with FINAL, is what Postgres says for the selection and what it was before
for everything outside it (issue 10). Prints its figures (run with ``-s`` to see them)."""

from __future__ import annotations

import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from fix_pipeline import (
    BOTH_TYPES,
    MONTH_END,
    MONTH_START,
    Worker,
    expected_rows,
    reindex,
    run_month_job,
    seed_month,
    shard_rows,
    start_worker,
    wait_committed,
    wait_written,
)

from reindex_common.routing import shard_for
from reindex_common.settings import Settings

START, END = MONTH_START, MONTH_END
SELECTED_START, SELECTED_END = START + timedelta(days=5), START + timedelta(days=25)
ALL = BOTH_TYPES
PARTITIONS = 4

# Twelve membership changes, one every few seconds: (action, worker).
CHANGES = [
    ("join", "w3"),
    ("kill", "w1"),
    ("join", "w4"),
    ("term", "w2"),
    ("join", "w5"),
    ("kill", "w3"),
    ("join", "w6"),
    ("term", "w4"),
    ("join", "w7"),
    ("kill", "w5"),
    ("join", "w8"),
    ("term", "w6"),
]
PAUSE_S = 5.0


def _key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return row[:3]


def test_a_clean_up_job_through_a_dozen_membership_changes_leaves_every_row_exact(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    began = time.monotonic()
    # The group's rebalance timeout is the retry deadline + 60 s: a short deadline bounds how long
    # a rebalance may wait for a member that does not rejoin.
    settings = pipeline_settings.replace(consumer_batch_size=25, write_retry_deadline=10.0)
    dsn = settings.director_dsn
    seed_month(settings, 2000, seed_value=13)
    started: dict[str, Worker] = {}

    def join(name: str) -> None:
        started[name] = start_worker(settings, name, tmp_path)

    try:
        join("w1")
        join("w2")
        # The baseline: everything written once, before any change.
        baseline_published = run_month_job(settings, "baseline", clean_up=True)
        wait_written(settings, "baseline")
        baseline_cards, baseline_scores = expected_rows(dsn, START, END, ALL)
        phases = {"baseline": time.monotonic() - began}

        # Postgres moves on, inside the selection and outside it.
        with psycopg.connect(dsn) as conn:
            conn.execute(
                "DELETE FROM historic.scorecard_scores "
                "WHERE abs(hashtext(scorecard_id || criterion_id)) % 7 = 0"
            )
            conn.execute(
                "UPDATE director.scorecards SET score = coalesce(score, 0) + 1, "
                "updated_at = updated_at + interval '1 day' "
                "WHERE abs(hashtext(scorecard_id)) % 3 = 0"
            )
        published = run_month_job(
            settings, "chaos", start=SELECTED_START, end=SELECTED_END, clean_up=True
        )

        changes = 0
        for action, name in CHANGES:
            time.sleep(PAUSE_S)
            if action == "join":
                join(name)
            else:
                started[name].process.send_signal(
                    signal.SIGKILL if action == "kill" else signal.SIGTERM
                )
            changes += 1
        phases["changes"] = time.monotonic() - began
        complete_during_chaos = (
            reindex(settings, "status", "chaos").stdout.splitlines()[0].find("complete") >= 0
        )
        wait_written(settings, "chaos", timeout_s=240)
        phases["written"] = time.monotonic() - began

        selected_cards, selected_scores = expected_rows(dsn, SELECTED_START, SELECTED_END, ALL)
        selected = {_key(c) for c in selected_cards}
        assert selected, "the selection is empty: the test proves nothing"
        want_cards = {c for c in baseline_cards if _key(c) not in selected} | selected_cards
        want_scores = {s for s in baseline_scores if _key(s) not in selected} | selected_scores

        count = len(settings.shards)
        compared = mismatches = 0
        problems: list[str] = []
        for index, (got_cards, got_scores) in enumerate(shard_rows(settings)):
            for kind, got, want in (
                ("scorecards", got_cards, want_cards),
                ("scores", got_scores, want_scores),
            ):
                mine = {r for r in want if shard_for(r[0], count) == index}
                compared += len(got)
                duplicates = len(got) - len(set(got))
                missing, extra = mine - set(got), set(got) - mine
                mismatches += duplicates + len(missing) + len(extra)
                if duplicates or missing or extra:
                    problems.append(
                        f"shard {index} {kind}: {len(missing)} missing, {len(extra)} extra, "
                        f"{duplicates} duplicated"
                    )
        exits = {n: w.process.wait(60) for n, w in started.items() if n != "w7" and n != "w8"}
        print(
            f"\nchaos: {changes} membership changes, {compared:,} rows compared "
            f"({len(want_cards):,} scorecards, {len(want_scores):,} scores expected), "
            f"{mismatches} mismatches; job of {published:,} scorecards complete before the "
            f"last change: {complete_during_chaos}; {time.monotonic() - began:.0f} s in all "
            f"({', '.join(f'{k} at {v:.0f} s' for k, v in phases.items())})"
        )
        assert not problems, problems
        wait_committed(settings, PARTITIONS, baseline_published + published)
        for name, code in exits.items():
            kills = {n for a, n in CHANGES if a == "kill"}
            assert code == (-signal.SIGKILL if name in kills else 0), (name, code)
    finally:
        for w in started.values():
            if w.process.poll() is None:
                w.stop(signal.SIGKILL)
