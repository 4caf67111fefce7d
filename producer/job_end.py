"""Recording how a job ended when its own run cannot: given up after retries, or cancelled.

The last checkpoint of the job (if any) is kept — cursor, counts, offsets — with the new state,
the reason and the time, so that ``status`` shows what was published and why it stopped.
"""

from __future__ import annotations

from datetime import UTC, datetime

from reindex_common.jobs import JobCheckpoint, JobState, read_checkpoint, write_checkpoint
from reindex_common.kafka import ReliableProducer
from reindex_common.messages import ReindexRequest
from reindex_common.settings import Settings


def record_job_end(
    settings: Settings, request: ReindexRequest, state: JobState, reason: str | None
) -> JobCheckpoint:
    """Write ``state`` (with ``reason``) as the job's checkpoint; returns once it is durable."""
    now = datetime.now(UTC)
    previous = read_checkpoint(settings, request.job_id)
    if previous is None:
        previous = JobCheckpoint(
            job_id=request.job_id, request=request, state=state, started_at=now
        )
    checkpoint = previous.model_copy(
        update={"state": state, "error": reason, "updated_at": now, "finished_at": now}
    )
    producer = ReliableProducer(settings, client_id=f"reindex-job-end-{request.job_id}")
    write_checkpoint(producer, settings, checkpoint, wait=True)
    return checkpoint
