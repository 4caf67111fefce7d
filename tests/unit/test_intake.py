"""The intake between Faust's fetcher and the batch loop: batch sizes, waiting, bounds, clearing,
epochs, and the strict commit rule."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

import pytest
from faust.transport import consumer as faust_consumer
from faust.types import TP

from consumer.intake import Intake, IntakeConsumer, run_starts, written_up_to
from consumer.ownership import HeartbeatLease

TP0 = TP("t", 0)
TP1 = TP("t", 1)


@dataclass(frozen=True)
class _Message:
    tp: TP
    offset: int


def _messages(count: int, start: int = 0, tp: TP = TP0) -> list[Any]:
    return [cast(Any, _Message(tp, i)) for i in range(start, start + count)]


def test_take_returns_at_once_when_a_full_batch_waits() -> None:
    async def run() -> None:
        intake = Intake("t", capacity=10)
        for m in _messages(7):
            intake.put(m, intake.epoch)
        loop = asyncio.get_running_loop()
        began = loop.time()
        batch = await intake.take(5, within=10)
        assert batch.messages == _messages(5)
        assert loop.time() - began < 1
        assert (await intake.take(5, within=0.05)).messages == _messages(2, start=5)  # what is left

    asyncio.run(run())


def test_take_waits_within_for_more_then_returns_what_came() -> None:
    async def run() -> None:
        intake = Intake("t", capacity=10)

        async def trickle() -> None:
            for m in _messages(3):
                intake.put(m, intake.epoch)
                await asyncio.sleep(0.01)

        feeder = asyncio.ensure_future(trickle())
        loop = asyncio.get_running_loop()
        began = loop.time()
        batch = await intake.take(5, within=0.3)
        await feeder
        assert batch.messages == _messages(3)
        assert loop.time() - began >= 0.25  # it waited for the batch to fill

    asyncio.run(run())


def test_take_returns_as_soon_as_the_batch_fills_while_waiting() -> None:
    async def run() -> None:
        intake = Intake("t", capacity=10)
        intake.put(_messages(1)[0], intake.epoch)

        async def fill() -> None:
            await asyncio.sleep(0.05)
            for m in _messages(4, start=1):
                intake.put(m, intake.epoch)

        feeder = asyncio.ensure_future(fill())
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert (await intake.take(5, within=10)).messages == _messages(5)
        assert loop.time() - began < 5
        await feeder

    asyncio.run(run())


def test_take_stops_waiting_once_nothing_more_arrives() -> None:
    """The last batch of a job: what the topic held is taken without waiting out ``within``."""

    async def run() -> None:
        intake = Intake("t", capacity=10)
        for m in _messages(3):
            intake.put(m, intake.epoch)
        # An idle wait that did not end early would run into the outer bound (an hour apart).
        batch = await asyncio.wait_for(intake.take(5, within=3600, idle=0.05), 60)
        assert batch.messages == _messages(3)

    asyncio.run(run())


def test_messages_that_keep_coming_keep_the_batch_filling() -> None:
    async def run() -> None:
        intake = Intake("t", capacity=10)
        intake.put(_messages(1)[0], intake.epoch)

        async def trickle() -> None:
            for m in _messages(4, start=1):
                await asyncio.sleep(0.01)
                intake.put(m, intake.epoch)

        feeder = asyncio.ensure_future(trickle())
        # Gaps far below ``idle``: the batch fills before either bound.
        batch = await intake.take(5, within=3600, idle=30)
        await feeder
        assert batch.messages == _messages(5)

    asyncio.run(run())


def test_capacity_and_clear() -> None:
    async def run() -> None:
        intake = Intake("t", capacity=3)
        for m in _messages(3):
            intake.put(m, intake.epoch)
        assert intake.full()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(intake.wait_for_space(), 0.05)
        intake.clear()  # a rebalance: untaken messages are fetched again by their new owner
        assert len(intake) == 0
        assert not intake.full()
        await asyncio.wait_for(intake.wait_for_space(), 0.05)
        with pytest.raises(TimeoutError):  # nothing to take after a clear
            await asyncio.wait_for(intake.take(1, within=0.01), 0.1)

    asyncio.run(run())


def test_a_clear_during_the_wait_never_yields_an_empty_batch() -> None:
    async def run() -> None:
        intake = Intake("t", capacity=10)
        intake.put(_messages(1)[0], intake.epoch)

        async def rebalance_then_refill() -> None:
            await asyncio.sleep(0.02)
            intake.clear()  # the message taken-to-be is dropped: fetched again by its owner
            await asyncio.sleep(0.05)
            intake.put(_messages(1, start=7)[0], intake.epoch)

        feeder = asyncio.ensure_future(rebalance_then_refill())
        assert (await intake.take(5, within=0.1)).messages == _messages(1, start=7)
        await feeder

    asyncio.run(run())


def test_a_message_fetched_under_an_older_epoch_never_enters() -> None:
    intake = Intake("t", capacity=10)
    fetched_under = intake.epoch
    intake.put(_messages(1)[0], fetched_under)
    intake.clear()  # a revoke began while the next message was on its way
    assert intake.epoch == fetched_under + 1
    assert not intake.put(_messages(1, start=1)[0], fetched_under)
    assert len(intake) == 0
    assert intake.next_offset(TP0) is None  # the new epoch starts from the committed offset
    assert intake.put(_messages(1)[0], intake.epoch)
    assert intake.next_offset(TP0) == 1


def test_clearing_untracks_and_a_batch_carries_its_epoch() -> None:
    async def run() -> None:
        intake = Intake("t", capacity=10)
        tracked: set[Any] = set()
        intake.tracked = tracked
        first = _messages(3) + _messages(2, tp=TP1)
        for m in first:
            intake.put(m, intake.epoch)
        assert tracked == set(first)
        batch = await intake.take(2, within=1)
        assert batch.epoch == 0
        intake.clear()  # the three left in the intake are dropped: nothing waits for their ack
        assert tracked == set(batch.messages)
        intake.untrack(batch.messages)  # the batch is abandoned
        assert not tracked
        intake.put(_messages(1, start=5)[0], intake.epoch)
        assert (await intake.take(5, within=0.01)).epoch == 1

    asyncio.run(run())


def test_the_commit_never_passes_an_offset_that_was_not_written() -> None:
    # Faust's rule would commit 13 here (a gap of one at the committed offset is ignored) and,
    # with a committed offset of 0, anything acked: the strict rule stops at the first hole.
    assert written_up_to(10, {11, 12}, {}) == 10
    assert written_up_to(0, {3, 4, 5}, {}) == 0
    assert written_up_to(10, {10, 11, 13}, {}) == 12
    assert written_up_to(10, set(range(10, 20)), {}) == 20
    holes = {12: 40}  # the broker confirmed that offsets 12..39 are not in the log
    assert written_up_to(10, {10, 11, 40, 41}, holes) == 42
    assert holes == {12: 40}  # kept until the broker takes a commit past it


def _consumer(positions: dict[TP, int], acked: dict[TP, list[int]]) -> Any:
    """An IntakeConsumer with only the state its commit bookkeeping reads."""
    consumer = cast(Any, object.__new__(IntakeConsumer))
    consumer.app = SimpleNamespace(intake=Intake("t", capacity=10))
    consumer._positions = dict(positions)
    consumer._holes = {}
    consumer._stuck = {}
    consumer._acked = defaultdict(list, {tp: list(o) for tp, o in acked.items()})
    consumer._acked_index = defaultdict(set, {tp: set(o) for tp, o in acked.items()})
    return consumer


def test_a_commit_the_broker_did_not_take_is_tried_again() -> None:
    consumer = _consumer({TP0: 10}, {TP0: [10, 11, 12]})
    assert consumer._new_offset(TP0) == 13
    assert consumer._should_commit(TP0, 13)
    # The commit failed (a rebalance began, say): nothing moved, the same commit comes again.
    assert consumer._new_offset(TP0) == 13
    assert consumer._should_commit(TP0, 13)
    consumer._committed_to(TP0, 13)  # the broker took it
    assert consumer._positions[TP0] == 13
    assert consumer._new_offset(TP0) is None
    assert not consumer._should_commit(TP0, 13)
    assert consumer._acked[TP0] == []


def test_a_seek_never_moves_a_run_start_back_nor_forgets_it() -> None:
    # Seen in a chaos run: a second seek within one assignment, and the broker answering
    # "nothing committed" for a partition committed at 613. Starting its run at 0 again would
    # have made every later commit of that partition wait for offsets nobody reads again.
    known = {TP0: 613, TP1: 40}
    assert run_starts({TP0: None, TP1: 52}, known) == {TP0: 613, TP1: 52}
    assert run_starts({TP0: 500, TP1: None}, known) == {TP0: 613, TP1: 40}
    assert run_starts({TP0: 7}, {}) == {TP0: 7}
    assert run_starts({TP0: None}, {}) == {}  # unknown: the caller asks for the log's start


def test_the_lease_runs_out_a_heartbeat_before_the_session() -> None:
    lease = HeartbeatLease(session_timeout=6, heartbeat_interval=1)
    assert not lease.valid(now=0)  # never renewed: owns nothing
    lease.renew(at=100)
    assert lease.valid(now=104.9)
    assert not lease.valid(now=105)
    lease.renew(at=99)  # an older answer arriving late does not extend it
    assert not lease.valid(now=105)


def test_a_partition_revoked_during_a_commit_keeps_its_position(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Faust's _commit_offsets commits only the assigned partitions and reports success for
    # them: the position of one it discarded must not move as if the broker had taken it.
    consumer = _consumer({TP0: 10, TP1: 20}, {TP0: [10, 11], TP1: [20, 21]})
    consumer.assignment = lambda: {TP0}

    async def commit_assigned(self: Any, offsets: Any, start_new_transaction: bool = True) -> bool:
        return TP0 in offsets

    monkeypatch.setattr(faust_consumer.Consumer, "_commit_offsets", commit_assigned)
    assert asyncio.run(consumer._commit_offsets({TP0: 12, TP1: 22}))
    assert consumer._positions == {TP0: 12, TP1: 20}
    assert consumer._acked[TP1] == [20, 21]  # still to commit by whoever owns it next
