"""Rebalances against the real broker and shards: nothing skipped, nothing written by a worker
that lost its partitions (issue 10, items 1 and 2). Each test holds a worker at an exact step
with the pause points of ``consumer/hooks.py`` and asserts on ClickHouse rows and offsets."""

from __future__ import annotations

import re
import signal
from datetime import timedelta
from pathlib import Path

import psycopg
from fix_pipeline import (
    BOTH_TYPES,
    MONTH_END,
    MONTH_START,
    Worker,
    assert_correct_result,
    insert_rows,
    run_month_job,
    score,
    scorecard,
    start_worker,
    template,
    wait_committed,
    wait_until,
    wait_written,
    workers,
)

from reindex_common.seed import SeedPlan, seed
from reindex_common.settings import Settings
from reindex_common.written import committed_offsets

START, END, ALL = MONTH_START, MONTH_END, BOTH_TYPES
PARTITIONS = 4


def _assert_all_committed(settings: Settings, messages: int) -> None:
    """Every partition's committed offset reaches its end (partitions start at offset 0 and hold
    ``messages`` in all; Tansu's high watermark cannot be trusted, see reindex_common/kafka.py)."""
    wait_committed(settings, PARTITIONS, messages)


def _assignments(worker: Worker) -> list[str]:
    return re.findall(r"assigned partitions (\[[^\]]*\])", worker.output())


def test_a_message_held_across_a_revoke_is_dropped_and_nothing_is_skipped(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    # Worker a holds its 20th fetched message between getmany and the intake (the 19 before it
    # wait in the intake: a's batch loop is held too). Worker b joins (b holds its first message,
    # so it writes nothing) and leaves again: two rebalances, after which a owns every partition
    # again, with nothing committed. Released, the message fetched two assignments ago must not
    # enter the intake: before the fix it did, was written and acked, and the read offset it
    # left behind made the refetch drop the messages before it in its partition; the commit
    # moved past them and the job looked complete with them missing.
    settings = pipeline_settings.replace(consumer_batch_size=50)
    seed(settings.director_dsn, settings.director_dsn, SeedPlan(400, seed=7, start=START, days=30))
    run_month_job(settings, "held")
    hold_a, hold_b = tmp_path / "hold-a", tmp_path / "hold-b"
    hold_a.mkdir()
    hold_b.mkdir()
    a = start_worker(settings, "a", tmp_path, REINDEX_TEST_HOLD_DRAIN=f"20:{hold_a}")
    b: Worker | None = None
    try:
        wait_until(lambda: (hold_a / "held").exists(), 120, "a to hold a fetched message")
        assert _assignments(a) == ["[0, 1, 2, 3]"]
        b = start_worker(settings, "b", tmp_path, REINDEX_TEST_HOLD_DRAIN=f"1:{hold_b}")
        wait_until(lambda: _assignments(b) != [], 120, "b to join")  # type: ignore[union-attr]
        wait_until(lambda: len(_assignments(a)) >= 2, 120, "a's second assignment")
        assert b.stop(signal.SIGTERM) == 0, b.output()
        wait_until(
            lambda: len(_assignments(a)) >= 3 and _assignments(a)[-1] == "[0, 1, 2, 3]",
            120,
            "a to own every partition again",
        )
        committed = committed_offsets(settings, settings.scorecards_topic, range(PARTITIONS))
        assert all(o < 0 for o in committed.values()), (
            f"committed before the release, the test proves nothing: {committed}"
        )
        (hold_a / "release").touch()
        wait_written(settings, "held")
        assert_correct_result(settings, settings.director_dsn, START, END, ALL)
        _assert_all_committed(settings, 400)
        assert re.search(r"dropped \d+ messages fetched before a rebalance", a.output())
        assert a.stop(signal.SIGTERM) == 0, a.output()
    finally:
        for w in (a, b):
            if w is not None and w.process.poll() is None:
                w.stop(signal.SIGKILL)


def test_a_worker_paused_past_its_session_writes_nothing_after_losing_its_partitions(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    # Worker a is held just before the first statement of its first batch (a clean-up job),
    # then frozen (SIGSTOP) for longer than its session: the group drops it and b writes the
    # job; Postgres then moves on (a score row deleted, scorecards updated) and b writes a
    # second clean-up job. When a wakes up, its batch must be abandoned: before the fix its
    # threads went on, its late clean-up DELETE removed b's rows and its INSERTs put the old
    # rows back.
    settings = pipeline_settings.replace(consumer_batch_size=1000)
    dsn = settings.director_dsn
    created = START + timedelta(days=1)
    insert_rows(dsn, "director.scorecard_template_revisions", [template("c", "p", "t", "PROCESS")])
    insert_rows(
        dsn, "director.scorecards", [scorecard("c", "p", f"s{i}", "t", created) for i in range(30)]
    )
    insert_rows(
        dsn,
        "historic.scorecard_scores",
        [score("c", "p", f"s{i}", f"k{k}", created) for i in range(30) for k in range(3)],
    )
    run_month_job(settings, "old", clean_up=True)
    hold = tmp_path / "hold"
    hold.mkdir()
    a = start_worker(settings, "a", tmp_path, REINDEX_TEST_HOLD_WRITE=str(hold))
    try:
        wait_until(lambda: (hold / "held").exists(), 120, "a to hold its first statement")
        a.process.send_signal(signal.SIGSTOP)
        with workers(settings, tmp_path, "b"):
            wait_written(settings, "old")
            with psycopg.connect(dsn) as conn:
                conn.execute("DELETE FROM historic.scorecard_scores WHERE criterion_id = 'k2'")
                conn.execute(
                    "UPDATE director.scorecards SET score = 9, "
                    "updated_at = updated_at + interval '1 day'"
                )
            run_month_job(settings, "new", clean_up=True)
            wait_written(settings, "new")
            assert_correct_result(settings, dsn, START, END, ALL)  # b wrote the new state

            (hold / "release").touch()
            a.process.send_signal(signal.SIGCONT)
            wait_until(
                lambda: "abandoned a batch" in a.output() or "] batch 1:" in a.output(),
                120,
                "a to finish or abandon its batch",
            )
            assert_correct_result(settings, dsn, START, END, ALL)
            _assert_all_committed(settings, 60)
            assert "abandoned a batch of" in a.output(), a.output()
            assert "the group may have dropped this worker" in a.output()
    finally:
        if a.process.poll() is None:
            a.process.send_signal(signal.SIGCONT)
            a.stop(signal.SIGKILL)
