"""What the consumer workers wrote, per job, and the committed offsets: the input of ``status``.

After every shard write of a batch succeeded, and before its offsets may be committed, a worker
publishes one :class:`WrittenRecord` per job in the batch to the written topic (key: job id). A
record names the offsets of the job's messages it wrote as runs per partition, so that a message
written twice (redelivered after a crash) is counted once: the written count of a job is the size
of the union of its runs.

Completion does not depend on these counts: a job is fully written when the producer has finished
it and, on every partition it published to, the consumer group's committed offset has passed the
job's highest offset there — workers commit only after writing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal

from confluent_kafka import Consumer, KafkaException, TopicPartition
from pydantic import BaseModel, ConfigDict, Field

from reindex_common.errors import KafkaError
from reindex_common.kafka import read_topic
from reindex_common.messages import UtcDatetime
from reindex_common.settings import Settings


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
    written_at: UtcDatetime = Field(default_factory=lambda: datetime.now(UTC))


def to_runs(offsets: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, merged inclusive runs of ``offsets``: [3, 4, 5, 9] -> [(3, 5), (9, 9)]."""
    runs: list[tuple[int, int]] = []
    for offset in sorted(set(offsets)):
        if runs and offset == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], offset)
        else:
            runs.append((offset, offset))
    return runs


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


class WrittenSummary(BaseModel):
    scorecards: int  # distinct messages of the job written
    # The rest add up the records: a batch written twice (redelivered) counts twice.
    scores: int
    workers: dict[str, int]
    per_shard: dict[int, int]


def summarize_written(settings: Settings, job_id: str) -> WrittenSummary:
    runs: dict[int, list[tuple[int, int]]] = defaultdict(list)
    workers: dict[str, int] = defaultdict(int)
    per_shard: dict[int, int] = defaultdict(int)
    scores = 0
    for value in read_topic(settings, settings.written_topic):
        record = WrittenRecord.model_validate_json(value)
        if record.job_id != job_id:
            continue
        for partition, parts in record.runs.items():
            runs[partition].extend(parts)
        workers[record.worker] += record.scorecards
        for shard, count in record.per_shard.items():
            per_shard[shard] += count
        scores += record.scores
    total = sum(union_size(r) for r in runs.values())
    return WrittenSummary(
        scorecards=total, scores=scores, workers=dict(workers), per_shard=dict(per_shard)
    )


def committed_offsets(settings: Settings, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    """The consumer group's committed offset per partition (-1 where it has none)."""
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": settings.group_id,  # asks the group's offsets without joining it
            "enable.auto.commit": False,
        }
    )
    try:
        wanted = [TopicPartition(topic, p) for p in partitions]
        if not wanted:
            return {}
        found = consumer.committed(wanted, timeout=30)
    except KafkaException as e:
        raise KafkaError(f"cannot read committed offsets: {e.args[0].str()}") from e
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in found}
