"""Job checkpoints: what a producer job has durably published, kept in the compacted jobs topic.

The producer writes one :class:`JobCheckpoint` per job id after every page whose messages were
confirmed delivered; the last one for a job id is the job's state. A rerun of the job resumes after
``cursor``. ``max_offsets`` holds, per partition of the scorecards topic, the highest offset at
which the job published a message: the job is fully written once the consumer group's committed
offset on each of those partitions has passed it (the consumer commits only after writing).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from reindex_common.kafka import ReliableProducer, TopicTail
from reindex_common.masking import RedactedStr
from reindex_common.messages import ReindexRequest, UtcDatetime
from reindex_common.settings import Settings

# requested: a request exists, no producer started it; running; done: all published;
# failed (``error`` says why); cancelled (``reindex jobs cancel``). SPEC §7.
JobState = Literal["requested", "running", "done", "failed", "cancelled"]


class PageCursor(BaseModel):
    """The keyset position after the last published scorecard (SPEC §2 order)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    created_at: UtcDatetime
    scorecard_id: str
    customer_id: str
    profile_id: str


class JobCheckpoint(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    job_id: str
    request: ReindexRequest
    state: JobState
    selected: int | None = None  # scorecards matching the request when the job started
    published_scorecards: int = 0
    published_scores: int = 0
    pages: int = 0
    cursor: PageCursor | None = None
    max_offsets: dict[int, int] = Field(default_factory=dict)
    error: RedactedStr | None = None
    started_at: UtcDatetime
    updated_at: UtcDatetime = Field(default_factory=lambda: datetime.now(UTC))
    finished_at: UtcDatetime | None = None


def write_checkpoint(
    producer: ReliableProducer, settings: Settings, cp: JobCheckpoint, *, wait: bool = True
) -> None:
    """Record ``cp``; with ``wait``, return only once the broker has acknowledged it.

    Without ``wait`` the checkpoint follows the producer's other messages; the jobs topic has one
    partition and the producer is idempotent, so checkpoints land in the order they were sent.
    """
    producer.send(settings.jobs_topic, cp.model_dump_json().encode(), key=cp.job_id.encode())
    if wait:
        producer.flush()


def read_checkpoint(
    settings: Settings, job_id: str, timeout_s: float = 30.0
) -> JobCheckpoint | None:
    """The latest checkpoint of ``job_id`` (the jobs topic read to its end; other jobs skipped
    by key, unparsed)."""
    key = job_id.encode()
    latest: bytes | None = None
    with TopicTail(settings, settings.jobs_topic, timeout_s) as tail:
        for record_key, value in tail.read_new():
            if record_key == key:
                latest = value
    return None if latest is None else JobCheckpoint.model_validate_json(latest)
