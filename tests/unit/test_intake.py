"""The intake between Faust's fetcher and the batch loop: batch sizes, waiting, bounds, clearing."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from consumer.intake import Intake


def _messages(count: int, start: int = 0) -> list[Any]:
    return [cast(Any, f"m{i}") for i in range(start, start + count)]


def test_take_returns_at_once_when_a_full_batch_waits() -> None:
    async def run() -> None:
        intake = Intake("t", capacity=10)
        for m in _messages(7):
            intake.put(m)
        loop = asyncio.get_running_loop()
        began = loop.time()
        batch = await intake.take(5, within=10)
        assert batch == _messages(5)
        assert loop.time() - began < 1
        assert await intake.take(5, within=0.05) == _messages(2, start=5)  # what is left

    asyncio.run(run())


def test_take_waits_within_for_more_then_returns_what_came() -> None:
    async def run() -> None:
        intake = Intake("t", capacity=10)

        async def trickle() -> None:
            for m in _messages(3):
                intake.put(m)
                await asyncio.sleep(0.01)

        feeder = asyncio.ensure_future(trickle())
        loop = asyncio.get_running_loop()
        began = loop.time()
        batch = await intake.take(5, within=0.3)
        await feeder
        assert batch == _messages(3)
        assert loop.time() - began >= 0.25  # it waited for the batch to fill

    asyncio.run(run())


def test_take_returns_as_soon_as_the_batch_fills_while_waiting() -> None:
    async def run() -> None:
        intake = Intake("t", capacity=10)
        intake.put(_messages(1)[0])

        async def fill() -> None:
            await asyncio.sleep(0.05)
            for m in _messages(4, start=1):
                intake.put(m)

        feeder = asyncio.ensure_future(fill())
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert await intake.take(5, within=10) == _messages(5)
        assert loop.time() - began < 5
        await feeder

    asyncio.run(run())


def test_capacity_and_clear() -> None:
    async def run() -> None:
        intake = Intake("t", capacity=3)
        for m in _messages(3):
            intake.put(m)
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
        intake.put(_messages(1)[0])

        async def rebalance_then_refill() -> None:
            await asyncio.sleep(0.02)
            intake.clear()  # the message taken-to-be is dropped: fetched again by its owner
            await asyncio.sleep(0.05)
            intake.put(_messages(1, start=7)[0])

        feeder = asyncio.ensure_future(rebalance_then_refill())
        assert await intake.take(5, within=0.1) == _messages(1, start=7)
        await feeder

    asyncio.run(run())
