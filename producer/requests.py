"""Reindex request messages: publishing one (``reindex request``).

Before the request is published, the job is recorded as ``requested`` in the jobs topic (and the
broker has acknowledged that), so that ``reindex status JOB`` finds the job at once, before
``serve`` picks the request up. A job that already exists is left as it is (a finished one stays
finished: ``serve`` will find it done), except that a failed or cancelled one becomes
``requested`` again, keeping its cursor, since ``serve`` will resume it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from producer.job import _same_request
from reindex_common.errors import BadInputError
from reindex_common.jobs import read_checkpoint, requested_checkpoint, write_checkpoint
from reindex_common.kafka import ReliableProducer, ensure_topics, reindexer_topics
from reindex_common.messages import ReindexRequest, dump
from reindex_common.settings import Settings


def publish_request(settings: Settings, request: ReindexRequest) -> None:

    ensure_topics(settings, reindexer_topics(settings))
    previous = read_checkpoint(settings, request.job_id)
    if previous is not None and not _same_request(previous.request, request):
        raise BadInputError(
            f"job {request.job_id} already exists with another range or types; "
            "choose another --job-id"
        )
    producer = ReliableProducer(settings, client_id="reindex-request")
    if previous is None:
        write_checkpoint(producer, settings, requested_checkpoint(request))
    elif previous.state in ("failed", "cancelled"):
        again = previous.model_copy(
            update={"state": "requested", "error": None, "updated_at": datetime.now(UTC)}
        )
        write_checkpoint(producer, settings, again)
    producer.send(settings.requests_topic, dump(request), key=request.job_id.encode())
    producer.flush(30)
