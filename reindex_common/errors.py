"""The one error root of the reindexer and its typed subclasses.

Driver errors (psycopg, confluent-kafka, clickhouse-connect) are wrapped where they enter our code,
with the driver's error as ``__cause__``; the CLI catches only :class:`ReindexError` and prints its
one-line message.

Exit codes (SPEC §7), the same for every command: 0 done and clean; 1 error (:class:`ReindexError`);
2 bad input (:class:`BadInputError`, :class:`ConfigError`); 3 done but not clean
(:class:`NotCleanError`); 4 gave up waiting (:class:`GaveUpWaitingError`).
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


class NotCleanError(ReindexError):
    """Done, but not clean (SPEC §7): differences left after ``verify``/``repair``, or a job
    complete with dead-lettered scorecards."""

    exit_code = 3


class GaveUpWaitingError(ReindexError):
    """``--wait`` reached its timeout before the job was complete."""

    exit_code = 4


class DevStackError(ReindexError):
    """The embedded dev stack could not be started, found or stopped."""
