"""Writing one batch to its ClickHouse shards, statement by statement, with retries.

For one shard the statements run in this order, each retried on its own until it succeeds:

1. with clean-up, one query for which of the batch's clean-up scorecards the shard holds any row
   of, then — only if it holds some — one lightweight ``DELETE`` per table for those scorecards
   (a DELETE is a mutation, costly on a busy table; a shard being rebuilt holds nothing);
2. one ``INSERT`` into ``scorecards``;
3. one ``INSERT`` into ``scorecard_scores``.

The inserts carry either columns (Native format) or, when the batch was built for the shards to
parse (``ShardBatch.json_rows``), the messages' own JSON under the statements of
``consumer/json_insert.py``. A shard that refuses such a batch (a non-retryable error of the
``scorecards`` statement, which checks every message and writes nothing when it refuses) raises
:class:`JsonRefused`; the caller then takes the Python path for that shard's messages.

A failed statement is retried, never the ones before it: re-running a DELETE after its INSERT
would delete what the INSERT wrote. Each INSERT carries an ``insert_deduplication_token`` that is
the same on every retry of that statement, so a retry of an insert that the shard did apply (a
timeout after the write) adds no duplicate part. The token is unique to this processing of the
batch (worker nonce + batch number): when a batch is delivered again after a crash, its DELETE
runs again and its INSERTs must not be dropped as duplicates of the first delivery's.

Transient errors (shard unreachable, timeouts, too many parts) are retried with exponential
backoff and jitter until ``deadline``; other errors, and the deadline, raise
:class:`ShardWriteError`. Nothing is ever skipped.

Before every attempt of every statement, and during the pauses between attempts, the batch's
``fence`` checks that this worker still owns the batch's partitions; once it does not, it raises
:class:`~consumer.ownership.NotOwnerError` and no further statement of the batch is sent: a
worker that left the group (or is leaving it) never deletes or inserts after the partition's
next owner may have begun.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import lz4.frame
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from consumer.batch import ShardBatch
from consumer.hooks import hooks
from consumer.json_insert import SCORECARDS_SQL, SCORES_SQL
from consumer.json_insert import SETTINGS as JSON_SETTINGS
from consumer.ownership import Fence, no_fence
from reindex_common.clickhouse import connect_shard, wrap_error
from reindex_common.errors import ShardWriteError
from reindex_common.schema import SCORE_COLUMNS, SCORE_TYPES, SCORECARD_COLUMNS, SCORECARD_TYPES
from reindex_common.settings import Settings, ShardEndpoint

log = logging.getLogger("reindex.consumer.writer")

T = TypeVar("T")

# Clean-up statements carry their keys as literals in the SQL text (the body, not the URL):
# chunk them, and allow the server to parse a query that large.
KEYS_PER_STATEMENT = 1000
BIG_QUERY = {"max_query_size": 4 * 1024 * 1024}


def _import_lazy_modules() -> None:
    """Import now what clickhouse-connect imports on the first insert, not during a batch.

    Its insert path looks for pandas (which the embedded extra installs, through chdb) with a
    lazy module attribute: about a second of imports under the GIL, in the first batch's write.
    """
    from clickhouse_connect.driver import options  # noqa: PLC0415

    _ = options.pd


class JsonRefused(Exception):
    """A shard refused a batch of messages' JSON; nothing of that statement was written."""


def _sleep_fenced(seconds: float, fence: Fence) -> None:
    """Sleep, giving up as soon as the fence fires (a revoke must not wait out a backoff)."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))
        fence()


def _chunks(items: list[T], size: int) -> list[list[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class ShardWriter:
    """One client per shard, used by one thread at a time (one batch is written at a time)."""

    def __init__(
        self,
        settings: Settings,
        *,
        nonce: str,
        on_retry: Callable[[ShardWriteError], None] = lambda _: None,
    ) -> None:
        self._settings = settings
        self._nonce = nonce
        self._on_retry = on_retry
        self._clients: dict[int, Client] = {}
        self._lock = threading.Lock()
        _import_lazy_modules()

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()

    def _client(self, shard: ShardEndpoint) -> Client:
        with self._lock:
            client = self._clients.get(shard.index)
        if client is None:
            client = connect_shard(shard, database=self._settings.clickhouse_database)
            with self._lock:
                self._clients[shard.index] = client
        return client

    def _drop_client(self, shard: ShardEndpoint) -> None:
        with self._lock:
            client = self._clients.pop(shard.index, None)
        if client is not None:
            client.close()

    def _retrying(
        self,
        shard: ShardEndpoint,
        doing: str,
        deadline: float,
        step: Callable[[Client], T],
        fence: Fence,
    ) -> T:
        delay = 0.2
        attempt = 0
        while True:
            attempt += 1
            hooks.before_statement()
            fence()
            try:
                return step(self._client(shard))
            except ClickHouseError as e:
                error = wrap_error(e, shard, doing)
            except ShardWriteError as e:  # raised by connect_shard
                error = e
            if not error.retryable:
                raise error
            pause = delay * random.uniform(0.5, 1.5)
            if time.monotonic() + pause > deadline:
                raise ShardWriteError(
                    f"{error}; gave up after {attempt} attempts "
                    f"(REINDEX_WRITE_RETRY_DEADLINE={self._settings.write_retry_deadline:g} s)",
                    shard=shard.index,
                    retryable=False,
                    code=error.code,
                ) from error
            self._on_retry(error)
            log.warning("%s; retry %d in %.1f s", error, attempt, pause)
            self._drop_client(shard)  # a fresh connection for the next attempt
            _sleep_fenced(pause, fence)
            delay = min(delay * 2, 10.0)

    def write(
        self, batch_number: int, batch: ShardBatch, deadline: float, fence: Fence = no_fence
    ) -> None:
        """Write ``batch`` to its shard (DELETE with clean-up, then both INSERTs); ``fence``
        runs before each statement (see the module's docstring)."""
        shard = self._settings.shards[batch.shard]
        existing: list[tuple[str, str, str]] = []
        for keys in _chunks(batch.clean_up_keys, KEYS_PER_STATEMENT):
            held = partial(self._held, keys=keys)
            existing += self._retrying(shard, "look up rows to clean up", deadline, held, fence)
        for keys in _chunks(existing, KEYS_PER_STATEMENT):
            for table in ("scorecard_scores", "scorecards"):
                delete = partial(self._delete, table=table, keys=keys)
                self._retrying(shard, f"delete from {table}", deadline, delete, fence)
        if batch.json_rows is not None:
            self._write_json(batch_number, batch, batch.json_rows, deadline, fence)
            return
        for table, columns, types, data in (
            ("scorecards", SCORECARD_COLUMNS, SCORECARD_TYPES, batch.scorecards),
            ("scorecard_scores", SCORE_COLUMNS, SCORE_TYPES, batch.scores),
        ):
            if not data[0]:
                continue
            token = f"{self._nonce}-{batch_number}-{batch.shard}-{table}"
            insert = partial(
                self._insert, table=table, columns=columns, types=types, data=data, token=token
            )
            self._retrying(shard, f"insert into {table}", deadline, insert, fence)

    def _write_json(
        self, batch_number: int, batch: ShardBatch, rows: bytes, deadline: float, fence: Fence
    ) -> None:
        shard = self._settings.shards[batch.shard]
        # One LZ4 frame of the rows for both statements; each body is its statement's own frame
        # followed by it (a server reads concatenated frames as one stream, as clickhouse-connect
        # sends them).
        packed_rows = lz4.frame.compress(rows)
        for table, sql, count in (
            ("scorecards", SCORECARDS_SQL, batch.scorecard_count),
            ("scorecard_scores", SCORES_SQL, batch.score_count),
        ):
            if not count:
                continue
            # Not the Native inserts' token: should the shard refuse, the Python path's inserts
            # of this batch must not be dropped as duplicates of a statement that wrote nothing.
            token = f"{self._nonce}-{batch_number}-{batch.shard}-{table}-json"
            body = lz4.frame.compress(sql.encode() + b"\n") + packed_rows
            insert = partial(self._insert_json, shard=shard, table=table, body=body, token=token)
            self._retrying(shard, f"insert into {table}", deadline, insert, fence)

    @staticmethod
    def _insert_json(
        client: Client, shard: ShardEndpoint, table: str, body: bytes, token: str
    ) -> None:
        try:
            client.raw_insert(
                "",  # no table: the statement leads the body (INSERT ... FROM input() FORMAT ...)
                insert_block=body,
                settings={**JSON_SETTINGS, "insert_deduplication_token": token},
                compression="lz4",
            )
        except ClickHouseError as e:
            error = wrap_error(e, shard, f"insert into {table}")
            if error.retryable:
                raise
            raise JsonRefused(str(error)) from e

    @staticmethod
    def _held(client: Client, keys: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        """Which of ``keys`` the shard holds a scorecard or score row of."""
        rows = client.query(
            "SELECT customer_id, profile_id, scorecard_id FROM scorecards "
            "WHERE (customer_id, profile_id, scorecard_id) IN (SELECT arrayJoin(%(keys)s)) "
            "UNION DISTINCT "
            "SELECT customer_id, profile_id, scorecard_id FROM scorecard_scores "
            "WHERE (customer_id, profile_id, scorecard_id) IN (SELECT arrayJoin(%(keys)s))",
            parameters={"keys": keys},
            settings=BIG_QUERY,
        ).result_rows
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]

    @staticmethod
    def _delete(client: Client, table: str, keys: list[tuple[str, str, str]]) -> None:
        # Client-side binding (%(keys)s): the key list travels escaped in the request body, not
        # in the URL, which servers cap (HTTP 414) well below a batch's worth of keys.
        client.command(
            f"DELETE FROM {table} WHERE (customer_id, profile_id, scorecard_id) "
            "IN (SELECT arrayJoin(%(keys)s))",
            parameters={"keys": keys},
            settings=BIG_QUERY,
        )

    @staticmethod
    def _insert(
        client: Client,
        table: str,
        columns: tuple[str, ...],
        types: tuple[str, ...],
        data: list[list[Any]],
        token: str,
    ) -> None:
        client.insert(
            table,
            data,
            column_names=list(columns),
            column_type_names=list(types),
            column_oriented=True,
            settings={"insert_deduplication_token": token},
        )
