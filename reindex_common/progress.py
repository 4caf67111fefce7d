"""Showing progress: a rich progress bar on a terminal, plain periodic log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress

log = logging.getLogger("reindex.progress")


class ProgressView:
    """Counts one quantity towards a known total, shown as a bar or as log lines."""

    def __init__(
        self,
        description: str,
        total: int | None,
        *,
        unit: str = "scorecards",
        every_s: float = 5,
        bar: bool = True,
    ) -> None:
        """``bar=False`` logs lines even on a terminal (a service's log stays line-based)."""
        self._description = description
        self._total = total
        self._unit = unit
        self._every_s = every_s
        self._done = 0
        self._resumed_at = 0  # done before this run (a resumed job): not part of this run's rate
        self._began = time.monotonic()
        self._last_log = self._began
        self._want_bar = bar
        self._bar: Progress | None = None
        self._task: object = None

    def __enter__(self) -> ProgressView:
        if self._want_bar and sys.stderr.isatty():
            # Imported here: rich takes ~25 ms to import, a job's start-up without a terminal
            # (a service, a scheduled job) has no use for it.
            from rich.console import Console  # noqa: PLC0415
            from rich.progress import (  # noqa: PLC0415
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(self._description, total=self._total, rate="")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def note(self, text: str | None) -> None:
        """Show ``text`` next to the description (e.g. why publishing pauses); None clears it.
        Without a bar nothing is shown: the caller logs such moments itself."""
        if self._bar is not None:
            description = self._description if text is None else f"{self._description} ({text})"
            self._bar.update(self._task, description=description)  # type: ignore[arg-type]

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self._began
        return (self._done - self._resumed_at) / elapsed if elapsed > 0 else 0.0

    def advance(self, count: int, start_at: int | None = None) -> None:
        if start_at is not None:
            self._done = self._resumed_at = start_at
        self._done += count
        if self._bar is not None:
            self._bar.update(
                self._task,  # type: ignore[arg-type]
                completed=self._done,
                rate=f"{self.rate:,.0f} {self._unit}/s",
            )
            return
        now = time.monotonic()
        if now - self._last_log >= self._every_s:
            self._last_log = now
            total = f" of {self._total:,}" if self._total is not None else ""
            log.info(
                "%s: %s%s %s (%.0f/s)",
                self._description,
                f"{self._done:,}",
                total,
                self._unit,
                self.rate,
            )
