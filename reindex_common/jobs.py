"""Job checkpoints: what a producer job has durably published, kept in the compacted jobs topic.

The producer writes one :class:`JobCheckpoint` per job id after every page whose messages were
confirmed delivered; the last one for a job id is the job's state. A rerun of the job resumes after
``cursor``. ``max_offsets`` holds, per partition of the scorecards topic, the highest offset at
which the job published a message: the job is fully written once the consumer group's committed
offset on each of those partitions has passed it (the consumer commits only after writing).
``published_runs`` holds every offset at which the job published, as runs: the job is also fully
written once the workers' written records name each of them as written or dead-lettered, which
``status`` sees as soon as the last batch is written, without waiting for the next commit.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reindex_common.kafka import ReliableProducer, TopicTail
from reindex_common.masking import RedactedStr
from reindex_common.messages import ReindexRequest, UtcDatetime
from reindex_common.settings import Settings

log = logging.getLogger(__name__)

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
    # partition -> inclusive [first, last] runs of every offset the job published at, all its
    # runs together; None when not known: a checkpoint from before this field, a job resumed from
    # one, or offsets too scattered among other producers' messages to keep (kafka.MAX_RUNS).
    published_runs: dict[int, list[tuple[int, int]]] | None = None
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


def is_job_key(key: bytes | None) -> bool:
    """Whether a jobs-topic key names a job: other records (``cancel/<job>``,
    ``dlq-replayed/<p>/<o>``) have a ``/`` in their key, which a job id never has."""
    return bool(key) and b"/" not in (key or b"")


def read_checkpoints(settings: Settings, timeout_s: float = 30.0) -> dict[str, JobCheckpoint]:
    """The latest checkpoint of every job in the jobs topic (records of other kinds skipped)."""
    latest: dict[bytes, bytes] = {}
    with TopicTail(settings, settings.jobs_topic, timeout_s) as tail:
        for key, value in tail.read_new():
            if key is not None and is_job_key(key):
                latest[key] = value
    found = {}
    for key, value in latest.items():
        try:
            checkpoint = JobCheckpoint.model_validate_json(value)
        except ValidationError:
            log.warning("jobs topic: record %r is not a job checkpoint; skipped", key[:200])
            continue
        found[checkpoint.job_id] = checkpoint
    return found


def requested_checkpoint(request: ReindexRequest) -> JobCheckpoint:
    """The state of a job that is requested and not started yet (``reindex request``)."""
    now = datetime.now(UTC)
    return JobCheckpoint(
        job_id=request.job_id, request=request, state="requested", started_at=now, updated_at=now
    )
