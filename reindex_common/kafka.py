"""Kafka access: a thin, loud producer wrapper and topic creation.

The producer is idempotent with ``acks=all``; every message gets a delivery callback, failures are
recorded, and :meth:`ReliableProducer.flush` raises :class:`KafkaError` if anything stayed
undelivered — a message that cannot be delivered fails the job, never silently.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # NewTopic: not in its stubs
    AdminClient,
    NewTopic,
)

from reindex_common.errors import KafkaError
from reindex_common.offset_runs import to_runs_merged
from reindex_common.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def reindexer_topics(settings: Settings) -> list[TopicSpec]:
    """Every topic the reindexer uses; producer, service and workers create the missing ones.

    Each accepts messages up to ``REINDEX_MAX_MESSAGE_BYTES`` (a broker's default is about 1 MB).
    """
    size = {"max.message.bytes": str(settings.max_message_bytes)}
    return [
        TopicSpec(settings.scorecards_topic, settings.topic_partitions, size),
        TopicSpec(settings.requests_topic, 1, size),
        TopicSpec(settings.dlq_topic, 1, size),
        TopicSpec(settings.jobs_topic, 1, {"cleanup.policy": "compact", **size}),
        TopicSpec(settings.written_topic, 1, size),
    ]


def consumer_size_config(settings: Settings) -> dict[str, Any]:
    """librdkafka consumer settings that let every message under the limit be fetched."""
    fetch_max = max(settings.max_message_bytes, 52_428_800)  # librdkafka's default, at least
    return {
        "max.partition.fetch.bytes": settings.max_message_bytes,
        "fetch.max.bytes": fetch_max,
        "receive.message.max.bytes": max(fetch_max + 512, 100_000_000),
    }


def _admin(settings: Settings) -> AdminClient:
    return AdminClient(settings.kafka_client_config())


def existing_topics(
    settings: Settings, timeout_s: float = 15.0, grace_s: float = 2.0
) -> dict[str, int]:
    """Topic name → partition count, or :class:`KafkaError` when the broker does not answer.

    Gives up after ``grace_s`` once librdkafka reports every broker down (connection refused:
    nothing to wait for), after ``timeout_s`` otherwise.
    """
    errors: list[ConfluentKafkaError] = []
    config: dict[str, Any] = {**settings.kafka_client_config(), "error_cb": errors.append}
    admin = AdminClient(config)
    began = time.monotonic()
    while True:
        elapsed = time.monotonic() - began
        try:
            metadata = admin.list_topics(timeout=max(0.1, min(0.5, timeout_s - elapsed)))
            break
        except KafkaException as e:
            admin.poll(0)  # serves error_cb
            down = any(x.code() == ConfluentKafkaError._ALL_BROKERS_DOWN for x in errors)
            if elapsed + 0.5 < timeout_s and not (down and elapsed >= grace_s):
                continue
            causes = [x.str() for x in errors if x.code() != ConfluentKafkaError._ALL_BROKERS_DOWN]
            reason = causes[0] if causes else e.args[0].str()
            raise KafkaError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {reason}") from e
    return {name: len(t.partitions) for name, t in metadata.topics.items() if t.error is None}


def ensure_topics(settings: Settings, specs: Iterable[TopicSpec], timeout_s: float = 30.0) -> None:
    """Create the topics that are missing; existing ones are left as they are."""
    present = existing_topics(settings)
    missing = [s for s in specs if s.name not in present]
    if not missing:
        return
    new = [
        NewTopic(s.name, s.partitions, settings.topic_replication, config=s.config) for s in missing
    ]
    admin = _admin(settings)  # must outlive the futures it returns
    futures = admin.create_topics(new, operation_timeout=timeout_s)
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
            log.info("created topic %s", name)
        except KafkaException as e:
            if e.args[0].name() != "TOPIC_ALREADY_EXISTS":  # another process won the race
                raise KafkaError(f"cannot create topic {name}: {e.args[0].str()}") from e


# Delivered offsets a producer keeps as runs (``runs_of``), at most. A job alone on its partitions
# has one run per partition; only jobs interleaved with other producers' messages have more.
MAX_RUNS = 1_000


class ReliableProducer:
    """confluent-kafka ``Producer`` that counts deliveries and raises on any failure.

    A failure is raised once, by the first call that sees it, and then forgotten: the producer
    goes on with the messages sent after it (a caller that must not go on stops itself). When
    librdkafka reports a fatal error (the idempotent producer's state is lost), the client is
    replaced by a new one, so that later messages are not refused forever.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        client_id: str,
        runs_of: str | None = None,
        **overrides: Any,
    ) -> None:
        self._fatal: list[str] = []
        config: dict[str, Any] = {
            **settings.kafka_client_config(),
            "error_cb": self._on_error,
            "client.id": client_id,
            "message.max.bytes": settings.max_message_bytes,
            "enable.idempotence": True,
            # Connect to the brokers as soon as they are known. With sparse connections
            # librdkafka drops the bootstrap connection after the first metadata and connects to
            # the real broker only when its producer-id timer (500 ms) finds none up: the first
            # delivery came 0.5-1 s after start-up, 0.1 s with this.
            "enable.sparse.connections": False,
            "acks": "all",
            "compression.type": "lz4",
            "linger.ms": 10,
            "batch.num.messages": 10_000,
            "message.timeout.ms": 120_000,
            **overrides,
        }
        self._config = config
        self._producer = Producer(config)
        self._bootstrap = settings.kafka_bootstrap
        self.failures: list[str] = []
        # (topic, partition) -> highest offset delivered there, from the delivery reports
        self.max_offsets: dict[tuple[str, int], int] = {}
        # tag -> messages sent with that tag and not delivered yet (see ``send(tag=...)``)
        self._undelivered: dict[object, int] = {}
        # With ``runs_of``: every offset delivered to that topic, as [first, last] runs per
        # partition (see :meth:`delivered_runs`); None once they no longer fit MAX_RUNS.
        self._runs_topic = runs_of
        self._runs: dict[int, list[list[int]]] | None = {} if runs_of else None
        self._run_count = 0

    def _on_error(self, error: ConfluentKafkaError) -> None:
        if error.fatal():
            self._fatal.append(str(error.str()))

    def _on_delivery(self, error: Any, message: Message, tag: object = None) -> None:
        if error is not None:
            self.failures.append(str(error.str()))
            return
        if tag is not None:
            self._undelivered[tag] -= 1
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if topic is None or partition is None or offset is None:
            return
        if offset > self.max_offsets.get((topic, partition), -1):
            self.max_offsets[(topic, partition)] = offset
        if topic == self._runs_topic and self._runs is not None:
            runs = self._runs.setdefault(partition, [])
            if runs and runs[-1][1] + 1 == offset:
                runs[-1][1] = offset  # the usual case: reports come in order per partition
            else:
                runs.append([offset, offset])
                self._run_count += 1
                if self._run_count > MAX_RUNS:
                    self._runs = None  # too fragmented to be worth keeping (and recording)

    def delivered_runs(self) -> dict[int, list[tuple[int, int]]] | None:
        """Partition -> every offset delivered to the ``runs_of`` topic so far, as sorted,
        merged inclusive runs; None without ``runs_of`` or past ``MAX_RUNS`` runs."""
        if self._runs is None:
            return None
        return {p: to_runs_merged((a, b) for a, b in runs) for p, runs in self._runs.items()}

    def offsets_of(self, topic: str) -> dict[int, int]:
        """Partition -> highest offset delivered to ``topic`` so far."""
        return {p: o for (t, p), o in self.max_offsets.items() if t == topic}

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
        tag: object = None,
        partition: int | None = None,
    ) -> None:
        """Queue one message; when librdkafka's queue is full, serve callbacks and retry.

        ``partition`` None lets the key choose it (the usual case). A ``value`` of None is a
        tombstone (it deletes ``key`` from a compacted topic).

        Messages sent with a ``tag`` are counted until delivered: :meth:`undelivered` tells when
        all of a tag's messages (a page, say) have been acknowledged by the broker.
        """
        callback = self._on_delivery if tag is None else partial(self._on_delivery, tag=tag)
        if tag is not None:
            self._undelivered[tag] = self._undelivered.get(tag, 0) + 1
        while True:
            try:
                self._producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=headers,
                    on_delivery=callback,
                    partition=-1 if partition is None else partition,  # -1: the key chooses
                )
                break
            except BufferError:
                self._producer.poll(0.05)
            except KafkaException as e:
                if e.args[0].fatal() or e.args[0].code() == ConfluentKafkaError._FATAL:
                    self._fatal.append(str(e.args[0].str()))
                    self._renew()
                raise KafkaError(f"cannot produce to {topic}: {e.args[0].str()}") from e
        self._producer.poll(0)
        if self.failures:
            self._raise_failures()

    def undelivered(self, tag: object) -> int:
        """Messages sent with ``tag`` that the broker has not acknowledged yet."""
        return self._undelivered.get(tag, 0)

    def forget(self, tag: object) -> None:
        self._undelivered.pop(tag, None)

    def poll(self, timeout_s: float = 0.0) -> None:
        """Serve delivery callbacks; raise :class:`KafkaError` if any message failed."""
        self._producer.poll(timeout_s)
        if self.failures:
            self._raise_failures()

    def flush(self, timeout_s: float = 120.0) -> None:
        """Wait until every queued message is delivered; raise :class:`KafkaError` otherwise."""
        remaining = self._producer.flush(timeout_s)
        if self.failures:
            self._raise_failures()
        if remaining:
            raise KafkaError(
                f"{remaining} message(s) not delivered to Kafka at {self._bootstrap} "
                f"within {timeout_s:.0f} s"
            )

    def _raise_failures(self) -> None:
        if self._fatal:
            self._renew()  # its purged messages count among the failures reported now
        first = self.failures[0]
        count = len(self.failures)
        self.failures.clear()  # reported once: the messages sent after it may still get through
        raise KafkaError(f"{count} message(s) could not be delivered to Kafka: {first}")

    def _renew(self) -> None:
        """Replace a client that hit a fatal error; what it still held is reported as failed."""
        log.warning("Kafka producer hit a fatal error, starting a new one: %s", self._fatal[0])
        self._fatal.clear()
        self._producer.purge()
        self._producer.flush(0)
        self._producer = Producer(self._config)


# How long one TopicTail.read_new may keep reading a topic that keeps growing.
READ_BUDGET_S = 2.0


class TopicTail:
    """Reads a topic from its beginning, then, at each :meth:`read_new`, what was added since.

    A caller that polls (``status --wait``, the demo's live view) reads each record once instead
    of the whole topic every time. The end of a partition is where librdkafka reports
    end-of-partition, not the high watermark: Tansu reports the last batch's base offset + 1.
    """

    def __init__(self, settings: Settings, topic: str, timeout_s: float = 30.0) -> None:
        self._topic = topic
        self._timeout_s = timeout_s
        self._consumer = Consumer(
            {
                **settings.kafka_client_config(),
                "group.id": f"reindex-reader-{uuid.uuid4().hex[:8]}",  # never joins: manual assign
                **consumer_size_config(settings),
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                # A short fetch wait makes an empty fetch (and so the end-of-partition event)
                # likely even while the topic is being written to.
                "fetch.wait.max.ms": 10,
            }
        )
        self._assigned: set[int] = set()
        self._pending: set[int] = set()  # partitions read since their last end-of-partition

    def __enter__(self) -> TopicTail:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._consumer.close()

    def _assign_new_partitions(self) -> None:
        if self._assigned:
            return  # a topic's partitions are set when it is created (ensure_topics): no new ones
        metadata = self._consumer.list_topics(self._topic, timeout=self._timeout_s)
        found = metadata.topics.get(self._topic)
        if found is None or found.error is not None:
            return  # not created yet: nothing to read
        new = []
        for p in found.partitions:
            if p in self._assigned:
                continue
            tp = TopicPartition(self._topic, p)
            low, high = self._consumer.get_watermark_offsets(tp, timeout=self._timeout_s)
            if high > low:
                self._pending.add(p)
            new.append(TopicPartition(self._topic, p, OFFSET_BEGINNING))
            self._assigned.add(p)
        if new:
            self._consumer.incremental_assign(new)

    def read_new(self) -> list[tuple[bytes | None, bytes]]:
        """(key, value) of every record added since the last call (all of them, the first time).

        Reads until a short look finds nothing more once every partition reported its end. An
        end-of-partition can come early (Tansu's high watermark is the last batch's base offset
        + 1), so one is not trusted alone: a watcher stopping at the first one read a few
        checkpoints per poll and fell ~30 s behind a fast producer. On a topic that keeps
        growing, the call still returns after ``READ_BUDGET_S``.
        """
        records: list[tuple[bytes | None, bytes]] = []
        stop_by = time.monotonic() + READ_BUDGET_S
        try:
            self._assign_new_partitions()
            while True:
                if self._pending:
                    msg = self._consumer.poll(self._timeout_s)
                    if msg is None:
                        raise KafkaError(f"timed out reading {self._topic}")
                elif time.monotonic() >= stop_by:
                    return records  # stop here even while the topic keeps growing
                else:
                    msg = self._consumer.poll(0.05)
                    if msg is None:
                        return records
                error = msg.error()
                if error is not None:
                    if error.code() == ConfluentKafkaError._PARTITION_EOF:
                        self._pending.discard(msg.partition() or 0)
                        continue
                    raise KafkaError(f"cannot read {self._topic}: {error.str()}")
                self._pending.add(msg.partition() or 0)  # its end-of-partition follows
                value = msg.value()
                if value:
                    records.append((msg.key(), value))
        except KafkaException as e:
            raise KafkaError(f"cannot read {self._topic}: {e.args[0].str()}") from e


def read_topic(settings: Settings, topic: str, timeout_s: float = 30.0) -> list[bytes]:
    """Every value in ``topic`` from the beginning to its end now."""
    with TopicTail(settings, topic, timeout_s) as tail:
        return [value for _, value in tail.read_new()]
