"""From Kafka to the batch loop: the scorecards topic's messages, without a task per message.

Faust hands each fetched message to its streams through ``Consumer._drain_messages``, which
awaits ``wait_first(deliver(message), suspend_flow.wait())`` per message: four futures and a
round through the event loop for every scorecard, then an ``Event`` and a stream step. Profiled
with ``py-spy --gil``, that machinery took about 60% of a worker's interpreter time, more than
validating and writing the messages. A worker only ever wants the messages in batches, so
:class:`IntakeConsumer` puts the messages of the scorecards topic straight into an
:class:`Intake`, a bounded buffer the batch loop takes whole batches from, and leaves every other
topic to Faust's own path.

Faust keeps the group membership and rebalances, fetching (``getmany``) and committing. What
this module adds, so that no message is written or acked under an assignment other than the one
it was fetched under, and no offset is committed past a message that was not written:

1. **Epochs.** The intake's epoch changes whenever it is cleared: when Faust starts revoking
   partitions, and when it resumes after the new assignment (the app's flow control clears it
   like Faust's stream buffers). Every fetch is tagged with the epoch current when it began;
   a message of an older epoch is dropped before it reaches the intake — however long the fetch
   loop was suspended in between — and its partition is sought back, so nothing is skipped.
   Batches carry their epoch; :meth:`IntakeApp.owns` says whether it is still current.
2. **Contiguity.** Within an epoch, a partition's messages enter the intake in offset order
   from the committed position, one after the other: an offset already seen is dropped, and a
   gap makes the fetch loop seek back to the first missing offset (a gap the broker confirms by
   returning the same later offset straight after that seek is a hole in the log, and skipped).
3. **Strict commits.** A partition's commit offset moves only across offsets that were written
   and acked in one contiguous run from the committed position, and the position moves only
   once the broker took the commit (a failed commit is tried again; a seek never moves it back).
   Faust's own rule (acked offsets up to the first gap, ignoring a gap of one at the committed
   offset and any gap when the committed offset is 0, plus the "gaps" its fetch loop records) is
   not used for this topic.
4. **Tracking.** Messages in the intake are tracked as Faust tracks in-flight events (a revoke
   waits until every tracked message is acked); clearing the intake, and abandoning a batch,
   untrack them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, MutableSet
from dataclasses import dataclass
from typing import Any

import faust
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP, Message, TransportT

from consumer.hooks import hooks
from consumer.ownership import Fence, HeartbeatLease, NotOwnerError

log = logging.getLogger("reindex.consumer")


@dataclass(frozen=True)
class TakenBatch:
    """Messages taken from the intake together, all fetched under ``epoch``."""

    epoch: int
    messages: list[Message]


class Intake:
    """A bounded buffer of one topic's messages of one epoch, taken a batch at a time."""

    def __init__(self, topic: str, capacity: int) -> None:
        self.topic = topic
        self.capacity = capacity
        self.epoch = 0
        self.tracked: MutableSet[Message] = set()  # the consumer binds Faust's unacked set
        self._messages: list[Message] = []
        self._next: dict[TP, int] = {}  # per partition, the offset that may enter next
        self._want = capacity  # the size the current take() waits for
        self._arrived = 0  # messages put so far (tells take() whether any came while it waited)
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

    def next_offset(self, tp: TP) -> int | None:
        """The offset of ``tp`` that may enter next in this epoch (None: none entered yet)."""
        return self._next.get(tp)

    def put(self, message: Message, epoch: int) -> bool:
        """Add ``message``, fetched under ``epoch``; False (and dropped) if that epoch is over."""
        if epoch != self.epoch:
            return False
        self._messages.append(message)
        self._arrived += 1
        self.tracked.add(message)
        self._next[message.tp] = message.offset + 1
        count = len(self._messages)
        if count == 1:
            self._nonempty.set()
        if count >= self._want:
            self._enough.set()
        if count >= self.capacity:
            self._space.clear()
        return True

    async def take(self, max_: int, within: float, idle: float | None = None) -> TakenBatch:
        """Up to ``max_`` messages: once that many wait, or ``within`` seconds after the first,
        or, with ``idle``, once no message came for ``idle`` seconds (the fetcher has caught up
        with the topic: the last batch of a job need not wait out ``within``).

        Never an empty batch, even when a rebalance cleared the intake during the wait.
        """
        loop = asyncio.get_running_loop()
        while True:
            await self._nonempty.wait()
            if len(self._messages) < max_:
                self._want = max_
                self._enough.clear()
                deadline = loop.time() + within
                try:
                    while True:
                        left = deadline - loop.time()
                        if left <= 0:
                            break
                        arrived = self._arrived
                        try:
                            await asyncio.wait_for(
                                self._enough.wait(), left if idle is None else min(idle, left)
                            )
                            break
                        except TimeoutError:
                            if self._arrived == arrived:
                                break  # nothing came for ``idle`` seconds
                finally:
                    self._want = self.capacity
            if self._messages:
                break
        batch = self._messages[:max_]
        del self._messages[:max_]
        self._after_removal()
        return TakenBatch(self.epoch, batch)

    def clear(self) -> None:
        """End the epoch: drop and untrack what no batch took (Faust's flow control calls this
        on every revoke and resume); batches of the old epoch no longer own their partitions."""
        self.epoch += 1
        self.untrack(self._messages)
        self._messages.clear()
        self._next.clear()
        self._after_removal()

    def untrack(self, messages: Iterable[Message]) -> None:
        """Stop tracking messages that will never be acked (dropped or abandoned)."""
        discard = self.tracked.discard
        for message in messages:
            discard(message)

    def _after_removal(self) -> None:
        if not self._messages:
            self._nonempty.clear()
        if len(self._messages) < self.capacity:
            self._space.set()


def written_up_to(position: int, acked: set[int], holes: dict[int, int]) -> int:
    """The commit offset: ``position`` moved across acked offsets (and confirmed holes) while
    they follow each other; never past an offset that was not acked."""
    new = position
    while True:
        if new in acked:
            new += 1
        elif new in holes:
            new = holes[new]
        else:
            return new


def run_starts(found: Mapping[TP, int | None], known: Mapping[TP, int]) -> dict[TP, int]:
    """Where each partition's run of written offsets starts after a seek: the committed offset
    the broker gave (``found``), never below the position this worker already had (``known``),
    and the known one where the broker gave none."""
    starts = {}
    for tp, offset in found.items():
        if offset is not None:
            starts[tp] = max(int(offset), known.get(tp, 0))
        elif tp in known:
            starts[tp] = known[tp]
    return starts


class _LeasedConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """Faust's consumer thread, renewing the app's lease on every answered heartbeat."""

    async def on_start(self) -> None:
        await super().on_start()
        lease: HeartbeatLease = self.app.lease  # type: ignore[attr-defined]
        coordinator = getattr(self._consumer, "_coordinator", None)
        beat = getattr(coordinator, "_do_heartbeat", None)
        if coordinator is None or beat is None:
            log.warning("cannot watch heartbeats: fencing by heartbeat lease is off")
            lease.length = float("inf")
            lease.renew()
            return

        async def heartbeat() -> bool:
            sent = time.monotonic()
            ok = bool(await beat())
            if ok:
                lease.renew(sent)
            return ok

        coordinator._do_heartbeat = heartbeat


class IntakeConsumer(aiokafka_driver.Consumer):
    """Faust's aiokafka consumer, delivering the intake's topic to the intake directly."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fetch_epoch = -1  # the intake's epoch when the current fetch began
        self._fetch_seq = 0  # fetches so far, to tell results fetched after a seek
        self._positions: dict[TP, int] = {}  # committed position: all before it is written
        self._holes: dict[TP, dict[int, int]] = {}  # confirmed holes in the log: start -> end
        self._hole_seeks: dict[TP, tuple[int, int]] = {}  # tp -> (offset sought, fetch seq)
        self._stuck: dict[TP, int] = {}  # the position a stuck commit was reported at
        self._seek_lock = asyncio.Lock()

    def _new_consumer_thread(self) -> aiokafka_driver.AIOKafkaConsumerThread:
        return _LeasedConsumerThread(self, loop=self.loop, beacon=self.beacon)

    @property
    def _intake(self) -> Intake:
        return self.app.intake  # type: ignore[attr-defined, no-any-return]

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:
        self._fetch_epoch = self._intake.epoch
        self._fetch_seq += 1
        return await super()._getmany(active_partitions, timeout)

    async def perform_seek(self) -> None:
        """Seek to the committed offsets; remember them as where each partition's run starts.

        Faust also calls this between rebalances (a fetch while the flow is paused), and the
        broker may answer "nothing committed" for a partition that has a commit (seen in chaos
        runs, on Tansu, when two seeks overlapped): seeks run one at a time, a position never
        moves back, and an unknown commit keeps the one this worker knows. A position lowered
        below what the intake already read would make every later commit wait for offsets that
        are never read again.
        """
        async with self._seek_lock:  # two seeks at once would each clear what the other found
            await super().perform_seek()
            topic = self._intake.topic
            tps = [tp for tp in self.assignment() if tp.topic == topic]
            found = {tp: self._read_offset.get(tp) for tp in tps}
            unknown = [t for t, o in found.items() if o is None and t not in self._positions]
            if unknown:  # nothing committed yet: the fetch starts at the log's first offset
                found.update(await self.earliest_offsets(*unknown))
            self._start_runs(found)

    def _start_runs(self, found: Mapping[TP, int | None]) -> None:
        """Start each partition's run at ``found`` (see :func:`run_starts`); no await here."""
        positions, holes = self._positions, self._holes
        known = {tp: positions[tp] for tp in found if tp in positions}
        positions.clear()
        holes.clear()
        self._hole_seeks.clear()
        self._stuck.clear()
        positions.update(run_starts(found, known))
        log.info(
            "reading from the committed offsets %s",
            ", ".join(f"[{tp.partition}] {o}" for tp, o in sorted(positions.items())) or "(none)",
        )

    def _new_offset(self, tp: TP) -> int | None:
        """The offset to commit for ``tp``: the position moved across what was written.

        Nothing moves here: the position (and the acked offsets behind it) move only once the
        broker took the commit (:meth:`_commit_offsets`), so a commit that failed is tried again.
        """
        if tp.topic != self._intake.topic:
            return super()._new_offset(tp)
        acked = self._acked[tp]
        position = self._positions.get(tp)
        if position is None or not acked:
            return None
        new = written_up_to(position, self._acked_index[tp], self._holes.get(tp, {}))
        if new == position:
            self._report_stuck(tp, position, acked)
            return None
        return new

    def _should_commit(self, tp: TP, offset: int) -> bool:
        if tp.topic != self._intake.topic:
            return super()._should_commit(tp, offset)
        position = self._positions.get(tp)
        return position is not None and offset > position

    async def _commit_offsets(
        self, offsets: Mapping[TP, int], start_new_transaction: bool = True
    ) -> bool:
        # Faust commits only what is assigned when it starts (the rest is "discarded", and
        # did_commit may still be True): a partition revoked meanwhile keeps its position.
        assigned = self.assignment()
        did_commit = await super()._commit_offsets(offsets, start_new_transaction)
        if did_commit:
            for tp, offset in offsets.items():
                if tp.topic == self._intake.topic and tp in assigned:
                    self._committed_to(tp, offset)
        return did_commit

    def _committed_to(self, tp: TP, offset: int) -> None:
        """The broker took ``offset`` for ``tp``: move the position, forget what is behind it."""
        position = self._positions.get(tp)
        if position is None or offset <= position:
            return
        self._positions[tp] = offset
        acked, index = self._acked[tp], self._acked_index[tp]
        done = [o for o in acked if o < offset]
        if done:
            acked[:] = [o for o in acked if o >= offset]
            index.difference_update(done)
        holes = self._holes.get(tp)
        if holes:
            for start in [h for h in holes if h < offset]:
                del holes[start]

    def _report_stuck(self, tp: TP, position: int, acked: list[int]) -> None:
        """Say once why a partition's commit cannot move: written offsets after a missing one."""
        if not acked or self._stuck.get(tp) == position:
            return
        self._stuck[tp] = position
        log.warning(
            "%s[%d]: the commit waits at offset %d, not yet written; %d later offsets are "
            "(from %d); the intake's next offset is %s",
            tp.topic,
            tp.partition,
            position,
            len(acked),
            min(acked),
            self._intake.next_offset(tp),
        )

    def _admit(self, tp: TP, offset: int, seek_back: dict[TP, int]) -> bool:
        """Whether the message at ``offset`` is the next one of ``tp`` in this epoch."""
        positions, holes = self._positions, self._holes
        expected = self._intake.next_offset(tp)
        if expected is None:
            expected = positions.get(tp)
        if expected is None or offset == expected:
            return True
        if offset < expected:
            return False  # read again after a seek back
        confirmed = self._hole_seeks.get(tp)
        if confirmed is not None and confirmed[0] == expected and confirmed[1] < self._fetch_seq:
            log.warning(
                "%s[%d]: offsets %d to %d are not in the log (deleted by retention?): skipped",
                tp.topic,
                tp.partition,
                expected,
                offset - 1,
            )
            holes.setdefault(tp, {})[expected] = offset
            del self._hole_seeks[tp]
            return True
        seek_back.setdefault(tp, expected)
        return False

    async def _seek_back(self, seek_back: dict[TP, int], stale: set[TP]) -> None:
        """Fetch again from the first offset not in the intake: nothing fetched is skipped."""
        if not (seek_back or stale) or not self.flow_active or self.should_stop:
            return  # a rebalance in progress seeks every partition to its committed offset
        positions = self._positions
        assigned = self.assignment()
        for tp in stale - seek_back.keys():
            offset = self._intake.next_offset(tp)
            seek_back[tp] = positions.get(tp, 0) if offset is None else offset
        for tp, offset in seek_back.items():
            if tp in assigned:
                await self.seek(tp, offset)
                if tp not in stale:
                    self._hole_seeks[tp] = (offset, self._fetch_seq)

    async def reread(self) -> None:
        """Start a new epoch and fetch every partition again from its committed position (after
        a batch was abandoned while its epoch went on: the commit cannot pass it otherwise)."""
        self._intake.clear()
        if not self.flow_active or self.should_stop:
            return  # a rebalance in progress seeks every partition to its committed offset
        for tp in self.assignment():
            position = self._positions.get(tp)
            if tp.topic == self._intake.topic and position is not None:
                await self.seek(tp, position)

    async def _drain_messages(self, fetcher: Any) -> None:
        intake = self._intake
        intake.tracked = self._unacked_messages
        deliver = self.callback  # Faust's conductor, for every other topic
        consumer_stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        rebalancing = lambda: bool(self.app.rebalancing)  # noqa: E731
        since_yield = 0
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                await self.sleep(0)  # getmany can return at once; let the loop run
                if self.should_stop:
                    break
                stale: set[TP] = set()
                seek_back: dict[TP, int] = {}
                dropped = 0
                async for tp, message in self.getmany(timeout=1.0):
                    since_yield += 1
                    if since_yield >= 100:
                        await asyncio.sleep(0)
                        since_yield = 0
                    offset = message.offset
                    if message.topic != intake.topic:
                        last = read_offset[tp]
                        if last is not None and offset < last:
                            continue  # read before a seek back; Faust drops these too
                        if last and offset - last > 1 and acks_enabled_for(message.topic):
                            await self._add_gap(tp, last + 1, offset)
                        await self.wait_first(deliver(message), self.suspend_flow.wait())
                        read_offset[tp] = offset
                        continue
                    if hooks.drain_active:
                        await hooks.in_drain(rebalancing)
                    if self._commit_every is not None and self._n_acked >= self._commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if intake.full():
                        await self.wait_first(intake.wait_for_space(), self.suspend_flow.wait())
                    # From here to put(), nothing awaits: the epoch cannot change in between.
                    if self._fetch_epoch != intake.epoch:
                        stale.add(tp)
                        dropped += 1
                        continue
                    if tp in seek_back or not self._admit(tp, offset, seek_back):
                        continue
                    intake.put(message, self._fetch_epoch)
                    read_offset[tp] = offset
                if dropped:
                    log.info(
                        "dropped %d messages fetched before a rebalance; fetching them again",
                        dropped,
                    )
                await self._seek_back(seek_back, stale)
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

    def __init__(self, *args: Any, intake: Intake, lease: HeartbeatLease, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.intake = intake
        self.lease = lease

    async def take_batch(self, max_: int, within: float, idle: float | None = None) -> TakenBatch:
        """A batch from the intake (see :meth:`Intake.take`), as a stream would take it."""
        await hooks.before_take()
        batch = await self.intake.take(max_, within, idle)
        # Faust's livelock check reads when a stream last took an event from each partition;
        # without a stream it would report every partition with a backlog as stuck.
        inbound, now = self.monitor.stream_inbound_time, time.monotonic()
        for tp in {m.tp for m in batch.messages}:
            inbound[tp] = now
        return batch

    def owns(self, epoch: int) -> bool:
        """Whether a batch taken under ``epoch`` may still write, be acked and be committed
        (any thread): no rebalance began since, and the group heard from us within a session."""
        return epoch == self.intake.epoch and self.lease.valid()

    def fence(self, epoch: int) -> Fence:
        """A check to run before each statement of a batch taken under ``epoch``."""

        def check() -> None:
            if epoch != self.intake.epoch:
                raise NotOwnerError(f"a rebalance began (epoch {epoch} -> {self.intake.epoch})")
            if not self.lease.valid():
                raise NotOwnerError(
                    f"no heartbeat answered for {self.lease.length:.0f} s: "
                    "the group may have dropped this worker"
                )

        return check

    def abandon(self, batch: TakenBatch) -> None:
        """Never ack ``batch``: untrack it (the next owner reads it again)."""
        self.intake.untrack(batch.messages)

    async def give_up(self, batch: TakenBatch) -> None:
        """Abandon ``batch``, and if its epoch is still current (the lease ran out, no rebalance
        came yet), start a new one that reads its partitions again: nothing waits forever."""
        self.abandon(batch)
        if batch.epoch == self.intake.epoch:
            await self.consumer.reread()  # type: ignore[attr-defined]

    async def on_first_start(self) -> None:
        # Cleared with Faust's stream buffers on every rebalance (duck-typed: clear()).
        self.flow_control.manage_queue(self.intake)  # type: ignore[arg-type]
        await super().on_first_start()

    def _new_transport(self) -> TransportT:
        return IntakeTransport(self.conf.broker_consumer, self)
