"""What the consumer workers wrote, per job, and the committed offsets: the input of ``status``.

After every shard write of a batch succeeded, and before its offsets may be committed, a worker
publishes one :class:`WrittenRecord` per job in the batch to the written topic (key: job id). A
record names the offsets of the job's messages it wrote as runs per partition, so that a message
written twice (redelivered after a crash) is counted once: the written count of a job is the size
of the union of its runs.

A record also lists the job's messages of the batch that went to the DLQ (:class:`DeadLetter`:
where, which scorecard, how many scores), so that ``status`` can tell a job written in full from one
complete with dead letters (SPEC §7); a dead letter seen twice (redelivered) counts once, by its
partition and offset.

A job is fully written when the producer has finished it and, on every partition it published
to, either the consumer group's committed offset has passed the job's highest offset there —
workers commit only after writing and dead-lettering, and only after the batch's records are
durable — or the records name every offset the job published there (its checkpoint's
``published_runs``) as written or dead-lettered: a record is published only once its batch's
shard writes succeeded and its DLQ envelopes are sent, so that is seen as soon as the last batch
is written, without waiting for the next commit. Either way the written and dead-lettered
scorecard counts are final then (they count distinct offsets); the score and per-worker sums
add up records, so a batch written again later (redelivered because its commit was lost) adds
to them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal

from confluent_kafka import Consumer, KafkaException, TopicPartition
from pydantic import BaseModel, ConfigDict, Field

from reindex_common.errors import KafkaError
from reindex_common.kafka import TopicTail
from reindex_common.messages import UtcDatetime
from reindex_common.offset_runs import covers
from reindex_common.offset_runs import to_runs as to_runs  # re-exported: the workers' records
from reindex_common.offset_runs import to_runs_merged as to_runs_merged
from reindex_common.offset_runs import union_size as union_size
from reindex_common.settings import Settings


class DeadLetter(BaseModel):
    """One message of a job that went to the DLQ instead of a shard."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    partition: int
    offset: int
    scorecard: str | None  # customer_id/profile_id/scorecard_id, when it could be read
    scores: int  # scores the message carried (0 when unreadable)
    reason: str
    # The run of the job the message came from (its ``reindexed_at``: the run's ``started_at``),
    # when it could be read: a job run again with ``--restart`` is not charged with the dead
    # letters of its earlier run.
    reindexed_at: UtcDatetime | None = None


class WrittenRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    job_id: str
    worker: str
    # partition -> [[first, last], ...] inclusive runs of offsets of this job's messages
    runs: dict[int, list[tuple[int, int]]]
    scorecards: int
    scores: int
    per_shard: dict[int, int] = Field(default_factory=dict)  # scorecards written per shard
    dead_letters: list[DeadLetter] = Field(default_factory=list)
    written_at: UtcDatetime = Field(default_factory=lambda: datetime.now(UTC))


class WrittenSummary(BaseModel):
    scorecards: int  # distinct messages of the job written
    # The rest add up the records: a batch written twice (redelivered) counts twice.
    scores: int
    workers: dict[str, int]
    per_shard: dict[int, int]
    # Distinct dead-lettered messages of the job (by partition and offset), their scores, and the
    # first few of them (in the order they were recorded).
    dead_lettered: int = 0
    dead_lettered_scores: int = 0
    first_dead_letters: list[DeadLetter] = Field(default_factory=list)


# How many dead letters a summary keeps by name (``status`` shows a few; ``dlq list`` has them all).
FIRST_DEAD_LETTERS = 10


class WrittenTally:
    """Folds one job's written records, as they are read, into a :class:`WrittenSummary`."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self._key = job_id.encode()
        self._runs: dict[int, list[tuple[int, int]]] = defaultdict(list)
        self._workers: dict[str, int] = defaultdict(int)
        self._per_shard: dict[int, int] = defaultdict(int)
        self._scores = 0
        # (partition, offset) -> (scores, run); the first few dead letters of each run
        self._dead: dict[tuple[int, int], tuple[int, datetime | None]] = {}
        self._first_dead: dict[datetime | None, list[DeadLetter]] = defaultdict(list)

    def add(self, records: Iterable[tuple[bytes | None, bytes]]) -> None:
        """Take (key, value) records of the written topic; other jobs' are skipped unparsed."""
        for key, value in records:
            if key is not None and key != self._key:
                continue
            record = WrittenRecord.model_validate_json(value)
            if record.job_id != self.job_id:
                continue
            for partition, parts in record.runs.items():
                self._runs[partition].extend(parts)
            self._workers[record.worker] += record.scorecards
            for shard, count in record.per_shard.items():
                self._per_shard[shard] += count
            self._scores += record.scores
            for dead in record.dead_letters:
                where = (dead.partition, dead.offset)
                if where in self._dead:
                    continue
                self._dead[where] = (dead.scores, dead.reindexed_at)
                first = self._first_dead[dead.reindexed_at]
                if len(first) < FIRST_DEAD_LETTERS:
                    first.append(dead)

    def unhandled(self, published: dict[int, list[tuple[int, int]]]) -> list[int]:
        """The partitions where some offset of ``published`` (a job's checkpoint
        ``published_runs``) is neither written nor dead-lettered in the records read so far."""
        dead: dict[int, list[int]] = defaultdict(list)
        for partition, offset in self._dead:
            dead[partition].append(offset)
        left = []
        for partition, wanted in published.items():
            handled = to_runs_merged(
                [*self._runs.get(partition, ()), *((o, o) for o in dead.get(partition, ()))]
            )
            if not covers(handled, wanted):
                left.append(partition)
        return sorted(left)

    def summary(self, run: datetime | None = None) -> WrittenSummary:
        """The job's counts; with ``run`` (the checkpoint's ``started_at``), dead letters of
        other runs are left out (those whose run is unknown count)."""

        def counts(dead_run: datetime | None) -> bool:
            return run is None or dead_run is None or dead_run == run

        dead = [scores for scores, dead_run in self._dead.values() if counts(dead_run)]
        first = sorted(
            (d for r, letters in self._first_dead.items() if counts(r) for d in letters),
            key=lambda d: (d.partition, d.offset),
        )
        for partition, runs in self._runs.items():
            self._runs[partition] = to_runs_merged(runs)  # keep the list short across polls
        return WrittenSummary(
            scorecards=sum(union_size(r) for r in self._runs.values()),
            scores=self._scores,
            workers=dict(self._workers),
            per_shard=dict(self._per_shard),
            dead_lettered=len(dead),
            dead_lettered_scores=sum(dead),
            first_dead_letters=first[:FIRST_DEAD_LETTERS],
        )


class JobTallies:
    """One :class:`WrittenTally` per job, fed from the whole written topic (``reindex jobs``)."""

    def __init__(self) -> None:
        self._tallies: dict[str, WrittenTally] = {}

    def add(self, records: Iterable[tuple[bytes | None, bytes]]) -> None:
        for key, value in records:
            if key is None:
                continue
            job_id = key.decode(errors="replace")
            tally = self._tallies.get(job_id)
            if tally is None:
                tally = self._tallies[job_id] = WrittenTally(job_id)
            tally.add([(key, value)])

    def tally(self, job_id: str) -> WrittenTally:
        """The job's tally (an empty one for a job with no records)."""
        return self._tallies.get(job_id) or WrittenTally(job_id)

    def summary(self, job_id: str, run: datetime | None = None) -> WrittenSummary:
        return self.tally(job_id).summary(run)


def summarize_written(settings: Settings, job_id: str) -> WrittenSummary:
    """What the workers recorded as written for ``job_id`` (reads the whole written topic)."""
    tally = WrittenTally(job_id)
    with TopicTail(settings, settings.written_topic) as tail:
        tally.add(tail.read_new())
    return tally.summary()


def group_offsets_reader(settings: Settings) -> Consumer:
    """A client that asks the workers' group for its committed offsets without joining it."""
    return Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": settings.group_id,
            "enable.auto.commit": False,
        }
    )


def read_committed(consumer: Consumer, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    """The committed offset per partition (-1 where there is none), via ``consumer``'s group."""
    wanted = [TopicPartition(topic, p) for p in partitions]
    if not wanted:
        return {}
    try:
        found = consumer.committed(wanted, timeout=30)
    except KafkaException as e:
        raise KafkaError(f"cannot read committed offsets: {e.args[0].str()}") from e
    return {tp.partition: tp.offset for tp in found}


def committed_offsets(settings: Settings, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    """The consumer group's committed offset per partition (-1 where it has none)."""
    consumer = group_offsets_reader(settings)
    try:
        return read_committed(consumer, topic, partitions)
    finally:
        consumer.close()
