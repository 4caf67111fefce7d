"""A job is complete once every offset it published is written or dead-lettered (SPEC §7).

``status`` learns it from the workers' written records as soon as the last batch is written,
without waiting for the group's next commit; these tests check that it never says so earlier,
against the offsets a real job published, and that a real pipeline whose offsets are never
committed still completes, with every row on its shard.
"""

from __future__ import annotations

from pathlib import Path

from confluent_kafka import Producer
from fix_pipeline import (
    BOTH_TYPES,
    MONTH_END,
    MONTH_START,
    assert_correct_result,
    run_month_job,
    seed_month,
    start_worker,
    wait_written,
)

from reindex.status import JobWatcher
from reindex_common.jobs import read_checkpoint
from reindex_common.settings import Settings
from reindex_common.written import DeadLetter, WrittenRecord, committed_offsets


def _record(
    settings: Settings,
    job_id: str,
    runs: dict[int, list[tuple[int, int]]],
    dead: tuple[tuple[int, int], ...] = (),
) -> None:
    letters = [
        DeadLetter(partition=p, offset=o, scorecard=None, scores=0, reason="test") for p, o in dead
    ]
    record = WrittenRecord(
        job_id=job_id, worker="test", runs=runs, scorecards=0, scores=0, dead_letters=letters
    )
    producer = Producer(settings.kafka_client_config())
    producer.produce(settings.written_topic, record.model_dump_json().encode(), key=job_id.encode())
    assert producer.flush(30) == 0


def test_not_complete_until_every_published_offset_is_written_or_dead_lettered(
    pipeline_settings: Settings,
) -> None:
    settings = pipeline_settings
    seed_month(settings, 300)
    assert run_month_job(settings, "exact", batch=50) == 300  # no worker: nothing written
    checkpoint = read_checkpoint(settings, "exact")
    assert checkpoint is not None
    assert checkpoint.state == "done"
    published = checkpoint.published_runs
    assert published is not None
    assert sum(last - first + 1 for runs in published.values() for first, last in runs) == 300
    assert {p: runs[-1][1] for p, runs in published.items()} == checkpoint.max_offsets

    # Records naming every published offset but one, on the last partition.
    partitions = sorted(published)
    *whole, last = partitions
    (first, end), *rest = published[last]
    assert not rest  # the job was alone on the topic: one run per partition
    with JobWatcher(settings, "exact") as watcher:
        _record(settings, "exact", {p: published[p] for p in whole})
        _record(settings, "exact", {last: [(first, end - 1)]})
        _record(settings, "other", {last: [(end, end)]})  # another job's record: not this one's
        status = watcher.status()
        assert status.checkpoint.state == "done"
        assert status.written.scorecards == 299
        assert not status.complete
        assert status.lagging_partitions == [last]

        _record(settings, "exact", {}, dead=((last, end),))  # the last one dead-lettered
        status = watcher.status()
        assert status.complete
        assert status.dead_lettered == 1
    # Nothing was committed: the records alone made the job complete.
    committed = committed_offsets(settings, settings.scorecards_topic, partitions)
    assert all(offset < 0 for offset in committed.values())


def test_a_job_completes_before_its_offsets_are_committed(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    settings = pipeline_settings
    seed_month(settings, 400)
    run_month_job(settings, "uncommitted")
    # A commit interval of an hour: the worker commits nothing while the test runs.
    worker = start_worker(settings, "w1", tmp_path, REINDEX_CONSUMER_COMMIT_INTERVAL="3600")
    try:
        wait_written(settings, "uncommitted")
        # status --wait returned complete: every row is on its shard already, ...
        assert_correct_result(settings, settings.director_dsn, MONTH_START, MONTH_END, BOTH_TYPES)
        # ... and the committed offsets had not moved: the written records told it.
        checkpoint = read_checkpoint(settings, "uncommitted")
        assert checkpoint is not None
        committed = committed_offsets(settings, settings.scorecards_topic, checkpoint.max_offsets)
        assert all(committed[p] <= last for p, last in checkpoint.max_offsets.items())
    finally:
        worker.stop()
