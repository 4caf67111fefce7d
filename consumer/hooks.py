"""Pause points for tests that must hold a worker at an exact step (inert unless set).

``REINDEX_TEST_HOLD_DRAIN=N:DIR`` holds the fetch loop at the N-th message of the scorecards
topic it receives, before that message reaches the intake, and the batch loop before its first
batch: ``DIR/held`` appears, and both go on once ``DIR/release`` exists and no rebalance is in
progress. ``REINDEX_TEST_HOLD_WRITE=DIR`` holds the first shard statement of the worker the
same way (in the writer's thread). Each point holds once per process.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

_POLL_S = 0.1


def _drain_spec() -> tuple[int, Path] | None:
    spec = os.environ.get("REINDEX_TEST_HOLD_DRAIN")
    if not spec:
        return None
    count, _, directory = spec.partition(":")
    return int(count), Path(directory)


class Hooks:
    def __init__(self) -> None:
        self._drain = _drain_spec()
        write = os.environ.get("REINDEX_TEST_HOLD_WRITE")
        self._write = Path(write) if write else None
        self._seen = 0
        self._drain_done = self._drain is None
        self.drain_active = self._drain is not None
        self._write_done = self._write is None

    async def in_drain(self, rebalancing: Callable[[], bool]) -> None:
        if self._drain_done or self._drain is None:
            return
        self._seen += 1
        count, directory = self._drain
        if self._seen < count:
            return
        self._drain_done = True
        self.drain_active = False
        (directory / "held").touch()
        while not (directory / "release").exists() or rebalancing():
            await asyncio.sleep(_POLL_S)

    async def before_take(self) -> None:
        if self._drain is None:
            return
        while not (self._drain[1] / "release").exists():
            await asyncio.sleep(_POLL_S)

    def before_statement(self) -> None:
        if self._write_done or self._write is None:
            return
        self._write_done = True
        (self._write / "held").touch()
        while not (self._write / "release").exists():
            time.sleep(_POLL_S)


hooks = Hooks()
