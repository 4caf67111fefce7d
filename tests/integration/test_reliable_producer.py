"""ReliableProducer against the real broker: a failed delivery is reported once, not forever."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from reindex_common.errors import KafkaError
from reindex_common.kafka import ReliableProducer, ensure_topics, read_topic, reindexer_topics
from reindex_common.settings import Settings


def test_after_a_failed_delivery_the_next_messages_get_through(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    ensure_topics(settings, reindexer_topics(settings))
    producer = ReliableProducer(settings, client_id="test-reliable")
    # The DLQ topic has one partition: the broker's metadata makes this message fail on delivery.
    producer.send(settings.dlq_topic, b"lost", partition=7)
    with pytest.raises(KafkaError, match="could not be delivered"):
        producer.flush(30)

    # The failure was reported; what follows is delivered and reported as such.
    for i in range(3):
        producer.send(settings.dlq_topic, f"after-{i}".encode(), tag="page")
        producer.flush(30)
    assert producer.undelivered("page") == 0
    assert read_topic(settings, settings.dlq_topic) == [b"after-0", b"after-1", b"after-2"]
