"""Time ranges from the command line: ``--start``/``--end``, or ``--last DURATION`` ending now.

A duration is one or more ``<number><unit>`` parts, units ``s``, ``m``, ``h``, ``d``, ``w``
(``90m``, ``24h``, ``1d12h``, ``2w``). ``--last`` and ``--start``/``--end`` exclude each other;
every mistake is a :class:`BadInputError` (exit 2) naming the option.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from reindex_common.errors import BadInputError
from reindex_common.messages import parse_time

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_PART = re.compile(r"(\d+)([smhdw])")
_WHOLE = re.compile(r"^(?:\d+[smhdw])+$")


def parse_duration(text: str) -> timedelta:
    """``24h`` -> 24 hours; :class:`BadInputError` unless positive and well-formed."""
    compact = text.strip().lower().replace(" ", "")
    if not _WHOLE.match(compact):
        raise BadInputError(
            f"not a duration: {text!r} (use a number and a unit s, m, h, d or w, e.g. 24h, 7d)"
        )
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(compact))
    if seconds <= 0:
        raise BadInputError(f"the duration must be positive (got {text!r})")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise BadInputError(f"the duration is too long: {text!r}") from None


def resolve_range(
    start: str | None,
    end: str | None,
    last: str | None,
    *,
    now: datetime | None = None,
) -> tuple[datetime, datetime]:
    """The ``[start, end)`` the options describe: ``--last`` ends at ``now`` (default: now, UTC)."""
    if last is not None:
        if start is not None or end is not None:
            raise BadInputError("give --last or --start/--end, not both")
        finish = (now or datetime.now(UTC)).astimezone(UTC)
        try:
            return finish - parse_duration(last), finish
        except OverflowError:
            raise BadInputError(f"--last {last} reaches before year 1") from None
    if start is None and end is None:
        raise BadInputError("give --start and --end, or --last (e.g. --last 24h)")
    if start is None:
        raise BadInputError("--end needs --start (or use --last)")
    if end is None:
        raise BadInputError("--start needs --end (or use --last)")
    return parse_time(start), parse_time(end)


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """A point in time given as ISO 8601, or as a duration ago (``--since 2h``)."""
    if _WHOLE.match(text.strip().lower().replace(" ", "")):
        try:
            return (now or datetime.now(UTC)).astimezone(UTC) - parse_duration(text)
        except OverflowError:
            raise BadInputError(f"--since {text} reaches before year 1") from None
    try:
        return parse_time(text)
    except BadInputError:
        raise BadInputError(
            f"not a time or duration: {text!r} (ISO 8601, or a duration such as 2h or 7d)"
        ) from None
