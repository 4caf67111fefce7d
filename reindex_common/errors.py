"""The one error root of the reindexer and its typed subclasses.

Driver errors (psycopg, confluent-kafka, clickhouse-connect) are wrapped where they enter our code,
with the driver's error as ``__cause__``; the CLI catches only :class:`ReindexError` and prints its
one-line message.
"""

from __future__ import annotations


class ReindexError(Exception):
    """Root of every error the reindexer raises on purpose.

    ``exit_code`` is what the CLI exits with when this error reaches it.
    """

    exit_code = 1


class BadInputError(ReindexError):
    """The operator's input (CLI options, a request message) is invalid; nothing was done."""

    exit_code = 2


class ConfigError(ReindexError):
    """The settings are invalid or incomplete."""

    exit_code = 2


class SourceUnavailableError(ReindexError):
    """Postgres could not be reached or a query on it failed."""


class KafkaError(ReindexError):
    """The broker could not be reached, or a message could not be delivered."""


class ShardWriteError(ReindexError):
    """A ClickHouse shard rejected a statement or could not be reached.

    ``retryable`` says whether the same statement may succeed later (shard down, timeout,
    too many parts) or never will (bad SQL, wrong schema). ``code`` is ClickHouse's error code
    when the server gave one.
    """

    def __init__(
        self, message: str, *, shard: int, retryable: bool, code: int | None = None
    ) -> None:
        super().__init__(message)
        self.shard = shard
        self.retryable = retryable
        self.code = code


class DevStackError(ReindexError):
    """The embedded dev stack could not be started, found or stopped."""
