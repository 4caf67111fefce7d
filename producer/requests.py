"""Reindex request messages: publishing one (``reindex request``)."""

from __future__ import annotations

from reindex_common.kafka import ReliableProducer, ensure_topics, reindexer_topics
from reindex_common.messages import ReindexRequest, dump
from reindex_common.settings import Settings


def publish_request(settings: Settings, request: ReindexRequest) -> None:

    ensure_topics(settings, reindexer_topics(settings))
    producer = ReliableProducer(settings, client_id="reindex-request")
    producer.send(settings.requests_topic, dump(request), key=request.job_id.encode())
    producer.flush(30)
