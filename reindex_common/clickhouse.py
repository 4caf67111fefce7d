"""ClickHouse access: one clickhouse-connect client per shard, errors wrapped with their codes."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError, OperationalError

from reindex_common.errors import ShardWriteError
from reindex_common.schema import statements, target_ddl
from reindex_common.settings import ShardEndpoint

# Server error codes after which the same statement may succeed later.
RETRYABLE_CODES = frozenset(
    {
        3,  # UNEXPECTED_END_OF_FILE
        32,  # ATTEMPT_TO_READ_AFTER_EOF
        159,  # TIMEOUT_EXCEEDED
        160,  # TOO_SLOW
        164,  # READONLY (replica lost its session)
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        203,  # NO_FREE_CONNECTION
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        236,  # ABORTED (the server is shutting down)
        241,  # MEMORY_LIMIT_EXCEEDED
        242,  # TABLE_IS_READ_ONLY
        252,  # TOO_MANY_PARTS
        285,  # TOO_FEW_LIVE_REPLICAS
        319,  # UNKNOWN_STATUS_OF_INSERT
        394,  # QUERY_WAS_CANCELLED
        425,  # SYSTEM_ERROR
        999,  # KEEPER_EXCEPTION
        1000,  # POCO_EXCEPTION (network)
    }
)

_CODE = re.compile(r"Code: (\d+)\.")


def time_param(moment: datetime) -> str:
    """A ``DateTime64(6, 'UTC')`` query parameter: UTC, the year always in four digits
    (``strftime('%Y')`` and clickhouse-connect write year 1 as ``1``, which the server refuses)."""
    utc = moment.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(sep=" ", timespec="microseconds")


def error_code(error: BaseException) -> int | None:
    """ClickHouse's error code from a clickhouse-connect error, when the server sent one."""
    code = getattr(error, "code", None)
    if isinstance(code, int):
        return code
    match = _CODE.search(str(error))
    return int(match.group(1)) if match else None


def _concise(error: ClickHouseError) -> str:
    """One short line for an error: the server's message, or what went wrong on the wire."""
    text = " ".join(str(error).split())
    for marker, short in (
        ("Connection refused", "connection refused"),
        ("timed out", "timed out"),
        ("Connection reset", "connection reset"),
        ("RemoteDisconnected", "connection closed by the server"),
    ):
        if marker in text and error_code(error) is None:  # no server code: the wire failed
            return short
    return text[:500] or type(error).__name__


def wrap_error(error: ClickHouseError, shard: ShardEndpoint, doing: str) -> ShardWriteError:
    """A :class:`ShardWriteError` for ``error``: retryable when the shard may recover."""
    code = error_code(error)
    if isinstance(error, OperationalError) or not isinstance(error, DatabaseError):
        retryable = True  # could not reach the shard, or the connection broke
    else:
        retryable = code in RETRYABLE_CODES
    first = _concise(error)
    return ShardWriteError(
        f"shard {shard.index} ({shard.url}) failed to {doing}: {first[:500]}",
        shard=shard.index,
        retryable=retryable,
        code=code,
    )


def connect_shard(
    shard: ShardEndpoint,
    *,
    database: str | None = None,
    timeout_s: float = 30.0,
    compress: bool | str = True,
    **settings: Any,
) -> Client:
    """A client for one shard; ``settings`` are ClickHouse settings sent with every query."""
    try:
        return clickhouse_connect.get_client(
            host=shard.host,
            port=shard.port,
            username=shard.username,
            password=shard.password.get_secret_value(),
            secure=shard.scheme == "https",
            database=database or "default",
            connect_timeout=min(timeout_s, 10.0),
            send_receive_timeout=timeout_s,
            autogenerate_session_id=False,
            compress=compress,
            settings=settings or None,
        )
    except ClickHouseError as e:
        raise wrap_error(e, shard, "connect") from e


@contextmanager
def shard_client(shard: ShardEndpoint, **kwargs: Any) -> Iterator[Client]:
    client = connect_shard(shard, **kwargs)
    try:
        yield client
    finally:
        client.close()


def init_target_schema(shards: Sequence[ShardEndpoint], database: str) -> None:
    """Create the database and both SPEC §3 tables on every shard (idempotent)."""
    for shard in shards:
        with shard_client(shard) as client:
            for stmt in statements(target_ddl(database)):
                try:
                    client.command(stmt)
                except ClickHouseError as e:
                    raise wrap_error(e, shard, "create the target schema") from e
