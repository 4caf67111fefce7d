"""From Kafka to the batch loop: the scorecards topic's messages, without a task per message.

Faust hands each fetched message to its streams through ``Consumer._drain_messages``, which
awaits ``wait_first(deliver(message), suspend_flow.wait())`` per message: four futures and a
round through the event loop for every scorecard, then an ``Event`` and a stream step. Profiled
with ``py-spy --gil``, that machinery took about 60% of a worker's interpreter time, more than
validating and writing the messages. A worker only ever wants the messages in batches, so
:class:`IntakeConsumer` puts the messages of the scorecards topic straight into an
:class:`Intake`, a bounded buffer the batch loop takes whole batches from, and leaves every other
topic to Faust's own path.

Everything else stays Faust's: the group membership and rebalances, fetching (``getmany``, with
its flow control and generation checks), the read offsets and gaps, message tracking, and
committing acked offsets. The intake is managed by the app's flow control like Faust's own stream
buffers: on a rebalance (and on resume) it is cleared, so messages no batch took yet are fetched
again from the committed offsets by whoever owns their partition.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import faust
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import Message, TransportT


class Intake:
    """A bounded buffer of one topic's messages, taken a batch at a time (one event loop)."""

    def __init__(self, topic: str, capacity: int) -> None:
        self.topic = topic
        self.capacity = capacity
        self._messages: list[Message] = []
        self._want = capacity  # the size the current take() waits for
        self._nonempty = asyncio.Event()
        self._enough = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()

    def __len__(self) -> int:
        return len(self._messages)

    def full(self) -> bool:
        return len(self._messages) >= self.capacity

    async def wait_for_space(self) -> None:
        await self._space.wait()

    def put(self, message: Message) -> None:
        self._messages.append(message)
        count = len(self._messages)
        if count == 1:
            self._nonempty.set()
        if count >= self._want:
            self._enough.set()
        if count >= self.capacity:
            self._space.clear()

    async def take(self, max_: int, within: float) -> list[Message]:
        """Up to ``max_`` messages: once that many wait, or ``within`` seconds after the first.

        Never an empty batch, even when a rebalance cleared the intake during the wait.
        """
        while True:
            await self._nonempty.wait()
            if len(self._messages) < max_:
                self._want = max_
                self._enough.clear()
                try:
                    await asyncio.wait_for(self._enough.wait(), within)
                except TimeoutError:
                    pass
                finally:
                    self._want = self.capacity
            if self._messages:
                break
        batch = self._messages[:max_]
        del self._messages[:max_]
        self._after_removal()
        return batch

    def clear(self) -> None:
        """Drop what no batch took (called by Faust's flow control on rebalance and resume)."""
        self._messages.clear()
        self._after_removal()

    def _after_removal(self) -> None:
        if not self._messages:
            self._nonempty.clear()
        if len(self._messages) < self.capacity:
            self._space.set()


class IntakeConsumer(aiokafka_driver.Consumer):
    """Faust's aiokafka consumer, delivering the intake's topic to the intake directly."""

    async def _drain_messages(self, fetcher: Any) -> None:
        intake: Intake = self.app.intake  # type: ignore[attr-defined]
        deliver = self.callback  # Faust's conductor, for every other topic
        consumer_stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        # Tracked as Faust tracks them (a rebalance waits for tracked messages to be acked), but
        # without track_message's per-message sensor calls: this worker serves its own metrics.
        unacked = self._unacked_messages
        since_yield = 0
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                await self.sleep(0)  # getmany can return at once; let the loop run
                if self.should_stop:
                    break
                async for tp, message in self.getmany(timeout=1.0):
                    since_yield += 1
                    if since_yield >= 100:
                        await asyncio.sleep(0)
                        since_yield = 0
                    offset = message.offset
                    last = read_offset[tp]
                    if last is not None and offset < last:
                        continue  # read before a seek back; Faust drops these too
                    if last and offset - last > 1 and acks_enabled_for(message.topic):
                        await self._add_gap(tp, last + 1, offset)
                    if self._commit_every is not None and self._n_acked >= self._commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if message.topic == intake.topic:
                        if intake.full():
                            await self.wait_first(intake.wait_for_space(), self.suspend_flow.wait())
                            if self.suspend_flow.is_set() or self.should_stop:
                                continue  # a rebalance: fetched again from the committed offset
                        unacked.add(message)
                        intake.put(message)
                    else:
                        await self.wait_first(deliver(message), self.suspend_flow.wait())
                    read_offset[tp] = offset
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise


class IntakeTransport(aiokafka_driver.Transport):
    Consumer = IntakeConsumer


class IntakeApp(faust.App):
    """A Faust app whose consumer feeds ``intake`` with the messages of ``intake.topic``."""

    def __init__(self, *args: Any, intake: Intake, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.intake = intake

    async def take_batch(self, max_: int, within: float) -> list[Message]:
        """A batch from the intake (see :meth:`Intake.take`), as a stream would take it."""
        batch = await self.intake.take(max_, within)
        # Faust's livelock check reads when a stream last took an event from each partition;
        # without a stream it would report every partition with a backlog as stuck.
        inbound, now = self.monitor.stream_inbound_time, time.monotonic()
        for tp in {m.tp for m in batch}:
            inbound[tp] = now
        return batch

    async def on_first_start(self) -> None:
        # Cleared with Faust's stream buffers on every rebalance (duck-typed: clear()).
        self.flow_control.manage_queue(self.intake)  # type: ignore[arg-type]
        await super().on_first_start()

    def _new_transport(self) -> TransportT:
        return IntakeTransport(self.conf.broker_consumer, self)
