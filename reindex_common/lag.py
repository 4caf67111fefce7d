"""Consumer lag and the producer's back-pressure (``--max-lag N``, ``REINDEX_MAX_LAG``).

The lag of the consumer group on a topic is, summed over its partitions, the end of the partition
minus the group's committed offset there (the low watermark where the group has committed
nothing: the workers start from the earliest message). The end is the larger of the broker's high
watermark and what the producer itself saw delivered: some brokers (Tansu) report the base offset
of the last batch + 1 as the high watermark, short of the end.

:class:`LagGate` is what the producer asks after each page: while the lag exceeds ``max_lag`` it
waits, polling every ``poll_s``, and calls ``between`` at every poll (the request service keeps
its group membership alive and notices a stop there). With no consumer running the producer waits
until one drains the topic — on purpose: a long job then neither fills the broker's disks nor
drives the shards into "too many parts".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from types import TracebackType

from confluent_kafka import KafkaException, TopicPartition

from reindex_common.errors import KafkaError
from reindex_common.settings import Settings
from reindex_common.written import group_offsets_reader

log = logging.getLogger("reindex.lag")


class ConsumerLag:
    """Reads the consumer group's lag on one topic, without joining the group."""

    def __init__(self, settings: Settings, topic: str, timeout_s: float = 30.0) -> None:
        self.topic = topic
        self._timeout_s = timeout_s
        self._consumer = group_offsets_reader(settings)
        self._partitions: list[int] | None = None

    def close(self) -> None:
        self._consumer.close()

    def partitions(self) -> list[int]:
        if self._partitions is None:
            try:
                metadata = self._consumer.list_topics(self.topic, timeout=self._timeout_s)
            except KafkaException as e:
                raise KafkaError(f"cannot read the partitions of {self.topic}: {e}") from e
            found = metadata.topics.get(self.topic)
            if found is None or found.error is not None:
                raise KafkaError(f"topic {self.topic} does not exist")
            self._partitions = sorted(found.partitions)
        return self._partitions

    def per_partition(self, published: Mapping[int, int] | None = None) -> dict[int, int]:
        """Partition -> messages not yet committed by the group. ``published``: partition ->
        highest offset the caller saw delivered (raises the end where the broker reports less)."""
        published = published or {}
        wanted = [TopicPartition(self.topic, p) for p in self.partitions()]
        try:
            committed = {
                tp.partition: tp.offset
                for tp in self._consumer.committed(wanted, timeout=self._timeout_s)
            }
            lag: dict[int, int] = {}
            for tp in wanted:
                low, high = self._consumer.get_watermark_offsets(tp, timeout=self._timeout_s)
                end = max(high, published.get(tp.partition, -1) + 1)
                done = committed.get(tp.partition, -1)
                lag[tp.partition] = max(0, end - (done if done >= 0 else low))
        except KafkaException as e:
            raise KafkaError(f"cannot read the consumer lag on {self.topic}: {e}") from e
        return lag

    def total(self, published: Mapping[int, int] | None = None) -> int:
        return sum(self.per_partition(published).values())


class LagGate:
    """Back-pressure for a producer: :meth:`wait` returns once the lag is at most ``max_lag``.

    ``max_lag`` None or 0: off (no Kafka client is made, :meth:`wait` returns at once).
    """

    def __init__(
        self,
        settings: Settings,
        topic: str,
        max_lag: int | None = None,
        *,
        poll_s: float = 0.5,
        log_every_s: float = 30.0,
    ) -> None:
        self.max_lag = settings.max_lag if max_lag is None else max_lag
        self._poll_s = poll_s
        self._log_every_s = log_every_s
        self._lag = ConsumerLag(settings, topic) if self.max_lag else None
        self.waits = 0  # how many times the producer had to wait (for reports and tests)

    def __enter__(self) -> LagGate:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._lag is not None:
            self._lag.close()

    def wait(
        self,
        published: Callable[[], Mapping[int, int]],
        *,
        show: Callable[[str | None], None] = lambda _text: None,
        before: Callable[[], None] = lambda: None,
        between: Callable[[], None] = lambda: None,
    ) -> None:
        """Return when the group is at most ``max_lag`` messages behind.

        ``published()`` gives the producer's delivered offsets; ``before`` runs once when a wait
        starts, ``between`` at every poll while waiting (it may raise to stop the job);
        ``show`` gets a line describing the wait, then None when it ends.
        """
        if self._lag is None or not self.max_lag:
            return
        behind = self._lag.total(published())
        if behind <= self.max_lag:
            return
        self.waits += 1
        before()
        began = last_log = time.monotonic()
        log.info(
            "consumers are %s messages behind on %s (max %s): waiting",
            f"{behind:,}",
            self._lag.topic,
            f"{self.max_lag:,}",
        )
        while behind > self.max_lag:
            show(f"waiting for the consumers: {behind:,} behind, max {self.max_lag:,}")
            between()
            time.sleep(self._poll_s)
            behind = self._lag.total(published())
            now = time.monotonic()
            if now - last_log >= self._log_every_s:
                last_log = now
                log.info(
                    "still waiting for the consumers: %s messages behind (max %s), %.0f s",
                    f"{behind:,}",
                    f"{self.max_lag:,}",
                    now - began,
                )
        show(None)
        log.info(
            "consumers caught up (%s behind): publishing again after %.1f s",
            f"{behind:,}",
            time.monotonic() - began,
        )
