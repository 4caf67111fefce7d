"""What ClickHouse's ``DateTime64(6, 'UTC')`` holds exactly, and exact conversion to it.

Postgres ``timestamptz`` goes from 4713 BC to 294276 AD, with ``infinity`` and ``-infinity``. The
target columns are ``DateTime64(6, 'UTC')``: a count of microseconds since the Unix epoch. Measured
on chdb 26.9 (the embedded engine, through the consumer's own insert path: Native ticks sent by
clickhouse-connect, read back with ``toString`` and ``toUnixTimestamp64Micro``), every tick from
0001-01-01 00:00:00 to 9999-12-31 23:59:59.999999 is stored and shown exactly; the next tick after
that is shown as 9999-12-31 23:59:59 (clamped). Python's ``datetime`` holds the same range, so a
value inside it converts without loss and a value outside it is never written: the scorecard goes
to the DLQ with a reason naming the column and the value (SPEC §7).

A value inside the range is converted exactly, whatever its UTC offset (:func:`column_ticks`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from pydantic_core import TzInfo

TYPE = "DateTime64(6, 'UTC')"
MIN = datetime(1, 1, 1, tzinfo=UTC)
MAX = datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
MIN_TICKS = (MIN - EPOCH) // MICROSECOND  # -62135596800000000
MAX_TICKS = (MAX - EPOCH) // MICROSECOND  # 253402300799999999

OUTSIDE = f"outside what {TYPE} holds"
FINER = f"finer than the microseconds {TYPE} holds"

# Time fields of a scorecard message (SPEC §4), by the last element of their location.
TIME_FIELDS = frozenset({"reindexed_at", "submitted_at", "created_at", "updated_at"})

# Zones with one fixed offset: subtracting two times that share such a tzinfo object is exact.
_FIXED_OFFSET = (timezone, TzInfo)


def ticks(value: datetime) -> int:
    """Microseconds since the epoch of an aware ``value``; ``ValueError`` when not held exactly."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{value.isoformat()} has no zone")
    out = (value - EPOCH) // MICROSECOND
    if not MIN_TICKS <= out <= MAX_TICKS:
        raise ValueError(f"{value.isoformat()}: {OUTSIDE}")
    return out


def holds(value: datetime) -> bool:
    """Whether ``DateTime64(6, 'UTC')`` holds the aware ``value`` exactly."""
    try:
        ticks(value)
    except ValueError:
        return False
    return True


def column_ticks(times: Sequence[datetime]) -> list[int]:
    """Microseconds since the epoch of each aware time, exact for any offset, value by value.

    clickhouse-connect converts a datetime with ``timestamp()`` and ``floor`` per value, the largest
    part of an insert's serialization; subtracting an epoch is several times cheaper. The epoch is
    the Unix epoch shown in the first value's zone when that zone has one fixed offset: a value
    with that same ``tzinfo`` object (pydantic gives all ``Z`` / ``+00:00`` times one) is then
    subtracted wall clock from wall clock, fast and exact; a value with any other ``tzinfo`` is
    subtracted through both offsets, as Python does for aware times of different zones, also exact.
    (Taking the epoch *at 00:00 in* the first zone, as before, moved the column by its offset.)
    """
    if not times:
        return []
    zone = times[0].tzinfo
    epoch = EPOCH.astimezone(zone) if isinstance(zone, _FIXED_OFFSET) else EPOCH
    return [(t - epoch) // MICROSECOND for t in times]


# --- why a message's time was refused -----------------------------------------------------------

# Text that Postgres (or a hand-written message) uses for a time no DateTime64 holds: infinities,
# years of five or more digits or below zero, and BC dates ("0044-03-15T00:00:00+00:00 BC").
_BEYOND = re.compile(
    r"\s*(?:[+-]?infinity|[+-]?\d{5,}-.*|-\d{4}-.*|.*\sBC)\s*", re.IGNORECASE | re.DOTALL
)
_RANGE_ERRORS = frozenset({"less_than_equal", "greater_than_equal", "less_than", "greater_than"})
_PARSE_ERRORS = frozenset({"datetime_from_date_parsing", "datetime_parsing", "datetime_type"})
_SHOWN = 80  # characters of a value shown in a reason


def column_name(loc: Sequence[int | str]) -> str:
    """``("scores", 3, "updated_at")`` -> ``scores[3].updated_at``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def show(value: Any) -> str:
    """A value as a reason shows it: its text, printable, at most ``_SHOWN`` characters."""
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def refused(column: str, value: Any, why: str = OUTSIDE) -> str:
    """The DLQ reason for a time the target cannot hold: ``<column> = <value>: <why>``."""
    return f"{column} = {show(value)}: {why}"


def unholdable(error: dict[str, Any]) -> str | None:
    """The reason for one pydantic error when it is a time the target cannot hold, else None.

    A time inside Python's range but outside the target's (an offset that moves it past the
    range) fails the type's bounds; one beyond Python's range (``infinity``, year 12000, BC)
    fails to parse, and is told apart from text that is no time at all by its shape.
    """
    loc = tuple(error.get("loc", ()))
    if not loc or loc[-1] not in TIME_FIELDS:
        return None
    kind = error.get("type")
    value = error.get("input")
    if kind in _RANGE_ERRORS or (
        kind in _PARSE_ERRORS and isinstance(value, str) and _BEYOND.fullmatch(value)
    ):
        return refused(column_name(loc), value)
    return None


# A time with a non-zero digit past the sixth of its fraction: pydantic would drop those digits.
# Searched in two steps: a literal first character keeps the common case (no such digits) fast.
_SEVEN_DIGITS = re.compile(rb":\d\d[.,]\d{7}")
_SUB_MICROSECOND = re.compile(r"[Tt _]\d\d:\d\d:\d\d[.,]\d{6}\d*[1-9]")


def may_have_sub_microseconds(raw: bytes) -> bool:
    """A quick look at a message's bytes: might one of its times have more than microseconds?

    A batch holds tens of thousands of times, and none from Postgres has more than six fractional
    digits; only a message this says yes to is looked at with :func:`finer_than_microseconds`.
    """
    return _SEVEN_DIGITS.search(raw) is not None and (
        _SUB_MICROSECOND.search(raw.decode("utf-8", "replace")) is not None
    )


def finer_than_microseconds(message: Any) -> list[str]:
    """Reasons for the times of a parsed JSON ``message`` that carry a non-zero sub-microsecond."""
    out: list[str] = []

    def walk(node: Any, loc: tuple[int | str, ...]) -> None:
        if isinstance(node, dict):
            for key, item in node.items():
                if key in TIME_FIELDS and isinstance(item, str):
                    if _SUB_MICROSECOND.search(item):
                        out.append(refused(column_name((*loc, key)), item, FINER))
                elif isinstance(item, dict | list):
                    walk(item, (*loc, key))
        elif isinstance(node, list):
            for index, item in enumerate(node):
                walk(item, (*loc, index))

    walk(message, ())
    return out
