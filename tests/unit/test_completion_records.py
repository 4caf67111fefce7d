"""When ``status`` may call a job complete (SPEC §7), from the written records alone.

A job is complete once every offset it published is written or dead-lettered: either the group's
committed offsets passed them, or the workers' written records name each of them. These tests
feed records and checkpoints to the real functions and check that no record set short of every
published offset makes a job complete.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Message

from producer.job import JobOptions, _JobRun
from reindex.status import JobStatus, lagging
from reindex_common.jobs import JobCheckpoint
from reindex_common.kafka import MAX_RUNS, ReliableProducer
from reindex_common.messages import ReindexRequest
from reindex_common.offset_runs import covers
from reindex_common.settings import Settings
from reindex_common.written import DeadLetter, WrittenRecord, WrittenTally

T0 = datetime(2026, 3, 1, tzinfo=UTC)
REQUEST = ReindexRequest(job_id="j", start=T0, end=datetime(2026, 4, 1, tzinfo=UTC))


def _checkpoint(**changes: Any) -> JobCheckpoint:
    values: dict[str, Any] = {
        "job_id": "j",
        "request": REQUEST,
        "state": "done",
        "started_at": T0,
        "max_offsets": {0: 9, 1: 14},
        "published_runs": {0: [(0, 9)], 1: [(10, 14)]},
    }
    return JobCheckpoint(**(values | changes))


def _record(runs: dict[int, list[tuple[int, int]]], *dead: tuple[int, int], job: str = "j") -> Any:
    letters = [
        DeadLetter(partition=p, offset=o, scorecard=f"c/p/s{o}", scores=1, reason="bad")
        for p, o in dead
    ]
    record = WrittenRecord(
        job_id=job, worker="w1", runs=runs, scorecards=0, scores=0, dead_letters=letters
    )
    return (job.encode(), record.model_dump_json().encode())


def _complete(checkpoint: JobCheckpoint, tally: WrittenTally, committed: dict[int, int]) -> bool:
    status = JobStatus(checkpoint, tally.summary(), lagging(checkpoint, committed, tally))
    return status.complete


def test_covers() -> None:
    merged = [(0, 4), (6, 9)]
    assert covers(merged, [(0, 4), (7, 9)])
    assert not covers(merged, [(3, 6)])  # 5 is missing
    assert not covers(merged, [(9, 10)])
    assert not covers([], [(0, 0)])
    assert covers([], [])


def test_complete_once_records_name_every_published_offset() -> None:
    checkpoint, tally = _checkpoint(), WrittenTally("j")
    assert not _complete(checkpoint, tally, {})
    tally.add([_record({0: [(0, 9)], 1: [(10, 12)]})])
    assert lagging(checkpoint, {}, tally) == [1]
    assert not _complete(checkpoint, tally, {})
    tally.add([_record({1: [(14, 14)]})])  # 13 still missing
    assert not _complete(checkpoint, tally, {})
    tally.add([_record({}, (1, 13))])  # dead-lettered counts as handled
    assert _complete(checkpoint, tally, {})
    assert tally.summary().dead_lettered == 1


def test_other_jobs_records_and_other_offsets_do_not_count() -> None:
    checkpoint, tally = _checkpoint(), WrittenTally("j")
    tally.add([_record({0: [(0, 9)], 1: [(10, 14)]}, job="other")])
    tally.add([_record({0: [(0, 9)], 1: [(15, 30)]})])  # offsets the job did not publish at
    assert lagging(checkpoint, {}, tally) == [1]


def test_not_complete_before_the_producer_is_done() -> None:
    tally = WrittenTally("j")
    tally.add([_record({0: [(0, 9)], 1: [(10, 14)]})])
    assert not _complete(_checkpoint(state="running"), tally, {})


def test_without_published_runs_only_the_committed_offsets_count() -> None:
    checkpoint, tally = _checkpoint(published_runs=None), WrittenTally("j")
    tally.add([_record({0: [(0, 9)], 1: [(10, 14)]})])
    assert not _complete(checkpoint, tally, {0: 10, 1: 14})  # 14 not committed past
    assert _complete(checkpoint, tally, {0: 10, 1: 15})


def test_committed_offsets_still_complete_a_job() -> None:
    assert _complete(_checkpoint(), WrittenTally("j"), {0: 10, 1: 15})
    assert lagging(_checkpoint(), {0: 10, 1: 3}) == [1]


def _delivered(producer: ReliableProducer, topic: str, partition: int, *offsets: int) -> None:
    for offset in offsets:
        producer._on_delivery(None, Message(topic=topic, partition=partition, offset=offset))


def test_the_producer_keeps_the_offsets_it_delivered_as_runs() -> None:
    producer = ReliableProducer(Settings(), client_id="test", runs_of="cards")
    _delivered(producer, "cards", 0, 0, 1, 2, 5, 3, 4)
    _delivered(producer, "cards", 1, 7)
    _delivered(producer, "jobs", 0, 100)  # another topic: not kept
    assert producer.delivered_runs() == {0: [(0, 5)], 1: [(7, 7)]}
    assert ReliableProducer(Settings(), client_id="test").delivered_runs() is None


def test_too_scattered_offsets_are_not_kept() -> None:
    producer = ReliableProducer(Settings(), client_id="test", runs_of="cards")
    _delivered(producer, "cards", 0, *range(0, 2 * (MAX_RUNS + 1), 2))
    assert producer.delivered_runs() is None


class _Delivered:
    def __init__(self, runs: dict[int, list[tuple[int, int]]] | None) -> None:
        self.runs = runs

    def delivered_runs(self) -> dict[int, list[tuple[int, int]]] | None:
        return self.runs


def _run_of(previous: JobCheckpoint | None, now: Any, restart: bool = False) -> _JobRun:
    return _JobRun(Settings(), REQUEST, JobOptions(restart=restart), now, previous)


def test_a_resumed_job_adds_its_offsets_to_the_earlier_runs() -> None:
    earlier = _checkpoint(state="failed")
    now = _Delivered({1: [(15, 20)], 2: [(0, 3)]})
    assert _run_of(earlier, now)._published_runs() == {0: [(0, 9)], 1: [(10, 20)], 2: [(0, 3)]}
    assert _run_of(earlier, now, restart=True)._published_runs() == {1: [(15, 20)], 2: [(0, 3)]}
    assert _run_of(None, now)._published_runs() == {1: [(15, 20)], 2: [(0, 3)]}
    # Unknown before (an older checkpoint) or now (too scattered): unknown.
    assert _run_of(_checkpoint(state="failed", published_runs=None), now)._published_runs() is None
    assert _run_of(earlier, _Delivered(None))._published_runs() is None
