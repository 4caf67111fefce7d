"""Option types of the ``reindex`` command: every number has a range, every id a pattern.

A rejected value is one usage line that starts with the option as the user wrote it
(``--max-rate must be a finite number (got nan)``); the CLI prints it and exits 2. Floats
reject NaN and infinity: ``--max-rate nan`` would otherwise disable the limit and
``--timeout nan`` would never expire. A rejected value is shown with :func:`ascii` so that a
newline or an escape sequence in it cannot forge a line of output.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any, NoReturn

import click

from reindex_common.errors import BadInputError
from reindex_common.messages import JOB_ID_PATTERN, parse_time

_JOB_ID = re.compile(JOB_ID_PATTERN.removeprefix("^").removesuffix("$"))

DAY = 24 * 3600.0


def _fail(param: click.Parameter | None, ctx: click.Context | None, text: str) -> NoReturn:
    """One usage line that starts with the option as the user wrote it: ``--max-rate must…``."""
    if param is None:
        name = "value"
    elif isinstance(param, click.Option):
        name = max(param.opts, key=len)
    else:
        name = (param.name or "value").upper()
    raise click.UsageError(f"{name} {text}", ctx)


class FiniteFloat(click.ParamType):
    """A finite float in ``(low, high]`` (``low`` excluded: rates and timeouts are positive)."""

    name = "float"

    def __init__(self, low: float = 0.0, high: float = math.inf) -> None:
        self.low, self.high = low, high

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            _fail(param, ctx, f"must be a number (got {str(value)!a})")
        if not math.isfinite(number):
            _fail(param, ctx, f"must be a finite number (got {number})")
        if number <= self.low:
            above = "positive" if self.low == 0 else f"above {self.low:g}"
            _fail(param, ctx, f"must be {above} (got {number:g})")
        if number > self.high:
            _fail(param, ctx, f"must be at most {self.high:g} (got {number:g})")
        return number


class SafeIntRange(click.ParamType):
    """An integer in ``[low, high]``."""

    name = "integer"

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            try:
                value = int(str(value).strip())
            except ValueError:
                _fail(param, ctx, f"is not a valid integer (got {str(value)!a})")
        if value < self.low:
            _fail(param, ctx, f"must be at least {self.low} (got {value})")
        if value > self.high:
            _fail(param, ctx, f"must be at most {self.high} (got {value})")
        return int(value)


class JobIdType(click.ParamType):
    """A job id: letters, digits and ``._:-``, 1 to 200 characters (SPEC §7)."""

    name = "job-id"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if _JOB_ID.fullmatch(text) is None:
            shown = ascii(text) if len(text) <= 60 else f"{text[:60]!a}…"
            _fail(param, ctx, f"is not a job id: {shown} (1 to 200 letters, digits and ._:-)")
        return text


PORT = SafeIntRange(1, 65535)
MAX_LAG = SafeIntRange(0, 10**12)
BATCH_SIZE = SafeIntRange(1, 100_000)
SCORECARDS = SafeIntRange(1, 100_000_000)
SHARDS = SafeIntRange(1, 1_000)
DAYS = SafeIntRange(1, 36_500)
MEAN_SCORES = SafeIntRange(1, 10_000)
MAX_ROUNDS = SafeIntRange(1, 100)
ATTEMPTS = SafeIntRange(1, 1_000)
RATE = FiniteFloat(0.0, 1e9)
TIMEOUT = FiniteFloat(0.0, 30 * DAY)
JOB_ID = JobIdType()


def parse_time_option(text: str, option: str) -> datetime:
    """An ISO 8601 time given to ``option``, or :class:`BadInputError` naming the option."""
    try:
        return parse_time(text)
    except (BadInputError, OverflowError, ValueError):
        raise BadInputError(
            f"{option}: not an ISO 8601 time between years 1 and 9999 (UTC): {text!a}"
        ) from None
