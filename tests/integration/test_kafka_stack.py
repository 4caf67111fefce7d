"""The stack's broker carries messages between confluent-kafka and a faust-streaming worker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from fix_services import Services

from reindex_common.kafka import TopicTail, read_topic
from reindex_common.settings import Settings

APP = Path(__file__).with_name("faust_echo_app.py")


def test_confluent_producer_and_faust_agent_exchange_messages(
    services: Services, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    topic_in, topic_out = f"echo-in-{tag}", f"echo-out-{tag}"
    admin = AdminClient({"bootstrap.servers": services.kafka_bootstrap})
    futures = admin.create_topics([NewTopic(t, 1, 1) for t in (topic_in, topic_out)])
    for future in futures.values():
        future.result(timeout=30)

    producer = Producer({"bootstrap.servers": services.kafka_bootstrap, "enable.idempotence": True})
    sent = [f"message-{i}-ü".encode() for i in range(50)]
    for value in sent:
        producer.produce(topic_in, value=value)
    assert producer.flush(30) == 0

    env = {
        **os.environ,
        "ECHO_APP_ID": f"echo-{tag}",
        "ECHO_BOOTSTRAP": services.kafka_bootstrap,
        "ECHO_IN": topic_in,
        "ECHO_OUT": topic_out,
    }
    log = (tmp_path / "faust.log").open("w")
    worker = subprocess.Popen(
        [sys.executable, str(APP), "--datadir", str(tmp_path), "worker", "-l", "warn"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    consumer = Consumer(
        {
            "bootstrap.servers": services.kafka_bootstrap,
            "group.id": f"check-{tag}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    try:
        consumer.subscribe([topic_out])
        received: list[bytes] = []
        deadline = time.monotonic() + 90
        while len(received) < len(sent) and time.monotonic() < deadline:
            assert worker.poll() is None, (tmp_path / "faust.log").read_text()
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                received.append(msg.value())
        assert received == [b"echo:" + v for v in sent], (tmp_path / "faust.log").read_text()
    finally:
        consumer.close()
        worker.terminate()
        worker.wait(30)
        log.close()


def test_a_topic_tail_reads_each_record_once(services: Services) -> None:
    settings = Settings(kafka_bootstrap=services.kafka_bootstrap)
    topic = f"tail-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": services.kafka_bootstrap})

    def send(*values: bytes) -> None:
        for i, value in enumerate(values):
            producer.produce(topic, value=value, key=b"k", partition=i % 2)
        assert producer.flush(30) == 0

    with TopicTail(settings, topic) as tail:
        assert tail.read_new() == []  # the topic does not exist yet
        admin = AdminClient({"bootstrap.servers": services.kafka_bootstrap})
        admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(timeout=30)
        send(b"a", b"b", b"c")
        assert sorted(v for _, v in tail.read_new()) == [b"a", b"b", b"c"]
        assert tail.read_new() == []
        send(b"d", b"e")
        # A read returns what the broker handed over by then: a record on another partition may
        # come with the next read (as it would to a caller that polls), but never twice.
        later: list[tuple[bytes | None, bytes]] = []
        deadline = time.monotonic() + 10
        while len(later) < 2 and time.monotonic() < deadline:
            later += tail.read_new()
        assert sorted(later) == [(b"k", b"d"), (b"k", b"e")]
        assert tail.read_new() == []
    assert sorted(read_topic(settings, topic)) == [b"a", b"b", b"c", b"d", b"e"]


def test_a_topic_tail_reads_past_early_ends_of_partition(services: Services) -> None:
    # Tansu reports a partition's end at its last batch's base offset + 1: a reader that stops
    # at the first end-of-partition gets a few records per read while many are there.
    settings = Settings(kafka_bootstrap=services.kafka_bootstrap)
    topic = f"tail-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": services.kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=30)
    producer = Producer({"bootstrap.servers": services.kafka_bootstrap})

    def send(values: range) -> None:
        for i in values:  # one batch each
            producer.produce(topic, value=str(i).encode())
            assert producer.flush(30) == 0

    with TopicTail(settings, topic) as tail:
        send(range(40))
        assert [int(v) for _, v in tail.read_new()] == list(range(40))
        send(range(40, 80))
        assert [int(v) for _, v in tail.read_new()] == list(range(40, 80))
