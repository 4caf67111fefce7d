"""Reading the selection of SPEC §2 out of Postgres, one page at a time.

Keyset pagination on ``(created_at, scorecard_id, customer_id, profile_id)`` — the order of the
``scorecards_created_at_idx`` index, made unique by the rest of the primary key — so that no
scorecard is skipped or repeated when many share one ``created_at``, and no page costs more than
the one before it (no OFFSET). The scores of a page come from the historic database in one round
trip. Postgres writes each scorecard and each scorecard's scores as message-ready JSON.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

import psycopg

from reindex_common.errors import SourceUnavailableError
from reindex_common.jobs import PageCursor
from reindex_common.pg import connect, first_line
from reindex_common.selection import SELECTION

# Each scorecard and its scores leave Postgres as the JSON of the SPEC §4 message's "scorecard" and
# "scores": Postgres builds JSON in C, on its own core, and the producer only joins bytes. Built in
# Python from rows, the same JSON cost ~80 ms of interpreter time per page of 500 (profile in
# docs/BENCHMARKS.md), and the producer was bound by that interpreter. Names follow the message
# (tests check them against ScorecardRecord and ScoreRecord); times are ISO 8601 in UTC (the
# session's zone); floats are written shortest-exact (extra_float_digits), except NaN and
# ±Infinity, which Postgres writes as strings: those rows are flagged for the encoder to fix.
SCORECARD_JSON_FIELDS: tuple[tuple[str, str], ...] = (
    ("customer_id", "s.customer_id"),
    ("profile_id", "s.profile_id"),
    ("scorecard_id", "s.scorecard_id"),
    ("template_id", "s.template_id"),
    ("template_revision", "s.template_revision"),
    ("scorecard_type", "r.type"),
    ("template_title", "r.title"),
    ("conversation_id", "s.conversation_id"),
    ("agent_user_id", "s.agent_user_id"),
    ("creator_user_id", "s.creator_user_id"),
    ("score", "s.score"),
    ("submitted_at", "s.submitted_at"),
    ("created_at", "s.created_at"),
    ("updated_at", "s.updated_at"),
)
SCORE_JSON_FIELDS: tuple[tuple[str, str], ...] = (
    ("criterion_id", "h.criterion_id"),
    ("numeric_value", "h.numeric_value"),
    ("not_applicable", "h.not_applicable"),
    ("comment", "h.comment"),
    ("created_at", "h.created_at"),
    ("updated_at", "h.updated_at"),
)


def _json_row(fields: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{expr} AS {name}" for name, expr in fields)


_NON_FINITE = "IN ('NaN'::float8, 'Infinity'::float8, '-Infinity'::float8)"

_SELECT = f"""
SELECT s.customer_id, s.profile_id, s.scorecard_id, s.created_at,
       convert_to((SELECT row_to_json(c) FROM (SELECT {_json_row(SCORECARD_JSON_FIELDS)}) c)::text,
                  'UTF8'),
       coalesce(s.score {_NON_FINITE}, false)
{SELECTION}"""

_AFTER = """
  AND (s.created_at, s.scorecard_id, s.customer_id, s.profile_id)
      > (%(c_at)s, %(c_id)s, %(c_cust)s, %(c_prof)s)
"""

_ORDER = """
ORDER BY s.created_at, s.scorecard_id, s.customer_id, s.profile_id
LIMIT %(limit)s
"""

_COUNT = f"SELECT count(*) {SELECTION}"

# One row per scorecard of the page that has scores: its position in the page (1-based), how many,
# their JSON array (in criterion order, byte-wise), and whether one holds a non-finite value.
_SCORES = f"""
SELECT k.i, count(*),
       convert_to(json_agg(x ORDER BY x.criterion_id COLLATE "C")::text, 'UTF8'),
       coalesce(bool_or(x.numeric_value {_NON_FINITE}), false)
FROM unnest(%(cust)s::text[], %(prof)s::text[], %(card)s::text[])
     WITH ORDINALITY AS k(customer_id, profile_id, scorecard_id, i)
JOIN historic.scorecard_scores h
  ON h.customer_id = k.customer_id AND h.profile_id = k.profile_id
 AND h.scorecard_id = k.scorecard_id
CROSS JOIN LATERAL (SELECT {_json_row(SCORE_JSON_FIELDS)}) x
GROUP BY k.i
"""

NO_SCORES = b"[]"


@dataclass(frozen=True)
class Page:
    """One page, in keyset order: each scorecard's key, its JSON, and its scores' JSON array."""

    keys: list[tuple[str, str, str]]  # (customer_id, profile_id, scorecard_id)
    cards: list[bytes]
    scores: list[bytes]
    score_count: int
    cursor: PageCursor
    # Positions whose JSON holds NaN or ±Infinity as a string (Postgres's way); see encode.py.
    non_finite: frozenset[int] = frozenset()

    @property
    def size(self) -> int:
        return len(self.keys)


@dataclass(frozen=True)
class Selection:
    start: datetime
    end: datetime
    types: Sequence[str]


# Scores queries run this many at a time, each on its own connection, while the next page's
# scorecards are read: building a page's scores JSON is most of Postgres's work per page (~45 ms
# of ~55 ms here), and one query uses one core.
SCORE_READERS = 2


def _cursor_after(cards: list[tuple[Any, ...]]) -> PageCursor:
    """The keyset position after the last of ``cards`` (rows of ``_SELECT``)."""
    last = cards[-1]
    return PageCursor(
        created_at=last[3], scorecard_id=last[2], customer_id=last[0], profile_id=last[1]
    )


class ScorecardSource:
    """Pages of the selection from the director and historic databases (read-only)."""

    def __init__(self, director_dsn: str, historic_dsn: str) -> None:
        self._director_dsn = director_dsn
        self._historic_dsn = historic_dsn
        self._director: psycopg.Connection[Any] | None = None
        self._historic: list[psycopg.Connection[Any]] = []

    def __enter__(self) -> ScorecardSource:
        try:
            self._director = self._open(self._director_dsn, "the director Postgres")
            for _ in range(SCORE_READERS):
                self._historic.append(self._open(self._historic_dsn, "the historic Postgres"))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for conn in [self._director, *self._historic]:
            if conn is not None:
                conn.close()
        self._director = None
        self._historic = []

    @staticmethod
    def _open(dsn: str, what: str) -> psycopg.Connection[Any]:
        conn = connect(dsn, what=what, autocommit=True)
        conn.execute("SET TimeZone = 'UTC'")  # times leave as ISO 8601 with +00:00
        conn.execute("SET extra_float_digits = 3")  # floats leave shortest-exact
        conn.read_only = True
        return conn

    def count(self, selection: Selection) -> int:
        """How many scorecards the selection holds now."""
        assert self._director is not None
        try:
            row = self._director.execute(_COUNT, self._params(selection)).fetchone()
        except psycopg.Error as e:
            raise SourceUnavailableError(f"cannot count scorecards: {first_line(e)}") from e
        return int(row[0]) if row else 0

    @staticmethod
    def _params(selection: Selection) -> dict[str, Any]:
        return {"start": selection.start, "end": selection.end, "types": list(selection.types)}

    def _cards(
        self, selection: Selection, after: PageCursor | None, size: int
    ) -> list[tuple[Any, ...]]:
        """The next ``size`` scorecards after ``after``: key, created_at, JSON, non-finite flag."""
        assert self._director is not None
        params = self._params(selection) | {"limit": size}
        sql = _SELECT
        if after is not None:
            sql += _AFTER
            params |= {
                "c_at": after.created_at,
                "c_id": after.scorecard_id,
                "c_cust": after.customer_id,
                "c_prof": after.profile_id,
            }
        try:
            return self._director.cursor(binary=True).execute(sql + _ORDER, params).fetchall()
        except psycopg.Error as e:
            raise SourceUnavailableError(f"cannot read scorecards: {first_line(e)}") from e

    @staticmethod
    def _with_scores(
        cards: list[tuple[Any, ...]], cursor: PageCursor, historic: psycopg.Connection[Any]
    ) -> Page:
        """The page of ``cards`` (ending at ``cursor``), with their scores read on ``historic``."""
        keys = {"cust": [c[0] for c in cards], "prof": [c[1] for c in cards]}
        keys["card"] = [c[2] for c in cards]
        try:
            score_rows = historic.cursor(binary=True).execute(_SCORES, keys).fetchall()
        except psycopg.Error as e:
            raise SourceUnavailableError(f"cannot read scores: {first_line(e)}") from e
        scores = [NO_SCORES] * len(cards)
        non_finite = {i for i, c in enumerate(cards) if c[5]}
        score_count = 0
        for position, count, array, has_non_finite in score_rows:
            scores[position - 1] = array
            score_count += count
            if has_non_finite:
                non_finite.add(position - 1)
        return Page(
            keys=[(c[0], c[1], c[2]) for c in cards],
            cards=[c[4] for c in cards],
            scores=scores,
            score_count=score_count,
            cursor=cursor,
            non_finite=frozenset(non_finite),
        )

    def pages(self, selection: Selection, after: PageCursor | None, size: int) -> Iterator[Page]:
        """Every page after ``after``, in order; scores of several pages are read at once."""
        assert self._historic
        free: queue.Queue[psycopg.Connection[Any]] = queue.Queue()
        for conn in self._historic:
            free.put(conn)

        def with_scores(cards: list[tuple[Any, ...]], cursor: PageCursor) -> Page:
            conn = free.get()
            try:
                return self._with_scores(cards, cursor, conn)
            finally:
                free.put(conn)

        pending: deque[Future[Page]] = deque()
        with ThreadPoolExecutor(len(self._historic), thread_name_prefix="scores") as pool:
            try:
                while True:
                    cards = self._cards(selection, after, size)
                    if cards:
                        after = _cursor_after(cards)
                        pending.append(pool.submit(with_scores, cards, after))
                    # Yield in order; keep at most one query per connection waiting.
                    while pending and (not cards or len(pending) > len(self._historic)):
                        yield pending.popleft().result()
                    if not cards:
                        return
            finally:
                for future in pending:
                    future.cancel()


_END = object()


def prefetched(pages: Iterator[Page], depth: int = 2) -> Iterator[Page]:
    """``pages``, read ahead by a thread: Postgres works on the next page while this one is sent.

    The thread is the only user of the source's connections while it runs; an error it meets is
    raised here, in order; closing this generator stops it after its current query.
    """
    buffer: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for page in pages:
                if not put(page):
                    return
            put(_END)
        except BaseException as e:  # handed to the consumer of the generator
            put(e)

    reader = threading.Thread(target=read, name="page-reader", daemon=True)
    reader.start()
    try:
        while True:
            item = buffer.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, Page)
            yield item
    finally:
        stop.set()
        reader.join()
