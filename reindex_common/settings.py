"""Settings: one typed, frozen object read from ``REINDEX_*`` variables (and a ``.env`` file).

SPEC §6 names the public variables; the ones below them are ours and documented in the README.
Secrets (DSNs, shard URLs with credentials, SASL password) are ``SecretStr`` so that no repr, log
line or status output shows them; :meth:`Settings.describe` gives a masked view for logging.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from reindex_common.errors import ConfigError
from reindex_common.masking import (
    install_log_redaction,
    mask_dsn,
    register_dsn,
    register_secret,
)
from reindex_common.masking import (
    mask_url as mask_url,  # re-exported: its old home
)

Mode = Literal["process", "conversation", "all"]
ScorecardType = Literal["PROCESS", "CONVERSATION"]

MODE_TYPES: dict[str, tuple[ScorecardType, ...]] = {
    "process": ("PROCESS",),
    "conversation": ("CONVERSATION",),
    "all": ("PROCESS", "CONVERSATION"),
}

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOPIC_PREFIX = re.compile(r"^[A-Za-z0-9._-]*$")
_HOUR = 3600.0

# ``REINDEX_*`` variables the project reads that are not settings: the dev stack's directory,
# and the pause points of the rebalance tests (consumer/hooks.py).
NOT_SETTINGS = frozenset(
    {"REINDEX_DEVSTACK_DIR", "REINDEX_TEST_HOLD_DRAIN", "REINDEX_TEST_HOLD_WRITE"}
)


@dataclass(frozen=True)
class ShardEndpoint:
    """One ClickHouse shard's HTTP endpoint, parsed from its URL."""

    index: int
    scheme: str
    host: str
    port: int
    username: str
    password: SecretStr

    @property
    def url(self) -> str:
        """The URL without credentials (safe to print)."""
        return f"{self.scheme}://{self.host}:{self.port}"

    @classmethod
    def parse(cls, index: int, url: str) -> ShardEndpoint:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"shard {index}: expected http(s)://host[:port], got {mask_url(url)!r}"
            )
        try:
            port = parts.port or (8443 if parts.scheme == "https" else 8123)
        except ValueError as e:
            raise ValueError(f"shard {index}: bad port in {mask_url(url)!r}") from e
        return cls(
            index=index,
            scheme=parts.scheme,
            host=parts.hostname,
            port=port,
            username=unquote(parts.username or "default"),
            password=SecretStr(unquote(parts.password or "")),
        )


class _LibrdkafkaLog:
    """librdkafka's own log lines, at DEBUG: an unreachable broker otherwise prints one line per
    reconnect attempt on stderr. Failures reach the operator as our own one-line errors;
    ``--debug`` shows librdkafka's detail."""

    _log = logging.getLogger("reindex.librdkafka")

    def log(self, level: int, msg: str, *args: object) -> None:
        self._log.debug(msg, *args)


_LIBRDKAFKA_LOG = _LibrdkafkaLog()


class Settings(BaseSettings):
    """Everything the reindexer reads from its environment. Frozen once loaded."""

    model_config = SettingsConfigDict(
        env_prefix="REINDEX_", env_file=".env", extra="ignore", frozen=True
    )

    # --- SPEC §6 -------------------------------------------------------------------------------
    pg_dsn: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/postgres")
    historic_pg_dsn: SecretStr | None = None
    kafka_bootstrap: str = "127.0.0.1:9092"
    clickhouse_shards: SecretStr = SecretStr("http://127.0.0.1:8123")
    clickhouse_database: str = "reindex"
    mode: Mode = "process"
    batch_size: int = Field(500, ge=1, le=100_000)
    topic_prefix: str = ""

    # --- Kafka security, passed through to every client ----------------------------------------
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_location: str | None = None

    # --- Size: one limit for the producer, the topics we create and the consumers' fetches ---
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=64 * 1024, le=1_000_000_000)

    # --- Producer back-pressure: pause while the consumer group is more than this many messages
    # behind on the scorecards topic; None or 0 turns it off (``--max-lag``).
    max_lag: int | None = Field(None, ge=0, le=10**12)

    # --- Topics --------------------------------------------------------------------------------
    topic_partitions: int = Field(12, ge=1, le=10_000)
    topic_replication: int = Field(1, ge=1, le=100)

    # --- Consumer workers ----------------------------------------------------------------------
    consumer_group: str | None = None  # default: "<topic_prefix>scorecard-reindexer"
    consumer_batch_size: int = Field(2000, ge=1, le=100_000)  # messages per batch at most
    # Seconds to wait for a batch to fill.
    consumer_batch_wait: float = Field(0.5, gt=0, le=_HOUR, allow_inf_nan=False)
    # ... but no longer than this without a new message: the topic holds no more for now.
    consumer_batch_idle: float = Field(0.1, gt=0, le=_HOUR, allow_inf_nan=False)
    # A dead worker's partitions move once its session expires: seconds, not the usual minute.
    consumer_session_timeout: float = Field(6.0, ge=1, le=_HOUR, allow_inf_nan=False)
    consumer_heartbeat_interval: float = Field(1.0, gt=0, le=_HOUR, allow_inf_nan=False)
    consumer_commit_interval: float = Field(1.0, gt=0, le=_HOUR, allow_inf_nan=False)
    # Let the shards parse the messages' JSON (consumer/json_insert.py) instead of the worker
    # validating every message and inserting columns (the Python path, always the fallback).
    # Off by default: it halves a worker's CPU per message but costs the shards more than that
    # (docs/BENCHMARKS.md); worth it where the shards have cores to spare and workers do not.
    consumer_shards_parse: bool = False
    # Give up on a failing shard after this many seconds.
    write_retry_deadline: float = Field(300.0, gt=0, le=7 * 24 * _HOUR, allow_inf_nan=False)
    metrics_port: int | None = Field(None, ge=1, le=65535)  # Prometheus /metrics when set
    metrics_bind: str = "127.0.0.1"

    @field_validator("clickhouse_database")
    @classmethod
    def _database_is_identifier(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError("must be a plain identifier (letters, digits, underscore)")
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_is_topic_safe(cls, value: str) -> str:
        if not _TOPIC_PREFIX.match(value):
            raise ValueError("may hold only letters, digits, '.', '_' and '-'")
        return value

    @field_validator("pg_dsn", "historic_pg_dsn")
    @classmethod
    def _dsn_parses(cls, value: SecretStr | None) -> SecretStr | None:
        from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415

        if value is not None:
            try:
                conninfo_to_dict(value.get_secret_value())
            except Exception:  # libpq's message may quote the secret
                raise ValueError(
                    "not a libpq connection string (key=value pairs or a postgresql:// URL)"
                ) from None
        return value

    @field_validator("clickhouse_shards")
    @classmethod
    def _shards_parse(cls, value: SecretStr) -> SecretStr:
        urls = [u for u in value.get_secret_value().split(",") if u.strip()]
        if not urls:
            raise ValueError("at least one shard URL is needed")
        for i, url in enumerate(urls):
            ShardEndpoint.parse(i, url)
        return value

    def model_post_init(self, context: Any, /) -> None:
        """Register every secret these settings hold, so that no log line or error shows it."""
        install_log_redaction()
        register_dsn(self.pg_dsn.get_secret_value())
        if self.historic_pg_dsn is not None:
            register_dsn(self.historic_pg_dsn.get_secret_value())
        for url in self.clickhouse_shards.get_secret_value().split(","):
            register_dsn(url.strip())
        if self.kafka_sasl_password is not None:
            register_secret(self.kafka_sasl_password.get_secret_value())

    def replace(self, **changes: Any) -> Settings:
        """A validated copy with ``changes`` applied (``model_copy`` would keep stale caches)."""
        values = {name: getattr(self, name) for name in type(self).model_fields}
        values.update(changes)
        try:
            return type(self)(**values)
        except ValidationError as e:
            raise ConfigError(f"invalid settings: {_describe(e)}") from None

    def child_env(self) -> dict[str, str]:
        """The environment for a child ``reindex`` process that must see exactly these settings:
        this process's environment without its ``REINDEX_*`` variables, plus :meth:`to_env`."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("REINDEX_")}
        return env | self.to_env()

    def to_env(self) -> dict[str, str]:
        """``REINDEX_*`` variables that reproduce these settings in a child process."""
        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"REINDEX_{name.upper()}"] = str(value)
        return env

    # --- Derived views -------------------------------------------------------------------------
    @cached_property
    def shards(self) -> tuple[ShardEndpoint, ...]:
        """The shards in shard order: shard ``i`` is ``shards[i]``."""
        urls = [u for u in self.clickhouse_shards.get_secret_value().split(",") if u.strip()]
        return tuple(ShardEndpoint.parse(i, url) for i, url in enumerate(urls))

    @property
    def historic_dsn(self) -> str:
        """DSN of the database holding ``historic.*`` (defaults to the director one)."""
        dsn = self.historic_pg_dsn or self.pg_dsn
        return dsn.get_secret_value()

    @property
    def director_dsn(self) -> str:
        return self.pg_dsn.get_secret_value()

    def topic(self, name: str) -> str:
        """The full name of one of our topics, with the configured prefix."""
        return f"{self.topic_prefix}{name}"

    @property
    def requests_topic(self) -> str:
        return self.topic("scorecard-reindex-requests")

    @property
    def scorecards_topic(self) -> str:
        return self.topic("scorecard-reindex")

    @property
    def dlq_topic(self) -> str:
        return self.topic("scorecard-reindex-dlq")

    @property
    def jobs_topic(self) -> str:
        """Compacted topic holding each job's checkpoint (producer side), keyed by job id."""
        return self.topic("scorecard-reindex-jobs")

    @property
    def group_id(self) -> str:
        """The consumer group of the workers (and the Faust app id)."""
        return self.consumer_group or self.topic("scorecard-reindexer")

    @property
    def written_topic(self) -> str:
        """Topic where workers record which offsets of each job they wrote."""
        return self.topic("scorecard-reindex-written")

    def kafka_client_config(self) -> dict[str, Any]:
        """The librdkafka settings every confluent-kafka client of ours starts from."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.kafka_bootstrap,
            "security.protocol": self.kafka_security_protocol,
            "log_level": 4,  # librdkafka: warnings and errors only
            "logger": _LIBRDKAFKA_LOG,
        }
        if self.kafka_sasl_mechanism:
            config["sasl.mechanism"] = self.kafka_sasl_mechanism
        if self.kafka_sasl_username is not None:
            config["sasl.username"] = self.kafka_sasl_username
        if self.kafka_sasl_password is not None:
            config["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        if self.kafka_ssl_ca_location:
            config["ssl.ca.location"] = self.kafka_ssl_ca_location
        return config

    def describe(self) -> dict[str, str]:
        """The effective settings with every secret masked, for one log line at start-up."""
        return {
            "pg_dsn": mask_dsn(self.director_dsn),
            "historic_pg_dsn": mask_dsn(self.historic_dsn),
            "kafka_bootstrap": self.kafka_bootstrap,
            "kafka_security_protocol": self.kafka_security_protocol,
            "clickhouse_shards": ",".join(s.url for s in self.shards),
            "clickhouse_database": self.clickhouse_database,
            "mode": self.mode,
            "batch_size": str(self.batch_size),
            "topic_prefix": self.topic_prefix,
        }


def _describe(error: ValidationError) -> str:
    """Each problem as ``REINDEX_NAME: what is wrong``: the variable, never the input (a secret)."""
    return "; ".join(
        f"REINDEX_{str(err['loc'][0]).upper() if err['loc'] else ''}: "
        f"{err['msg'].removeprefix('Value error, ')}"
        for err in error.errors()
    )


def check_unknown_variables(
    environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env"
) -> None:
    """Raise :class:`ConfigError` naming the first ``REINDEX_*`` variable (in the environment or
    the ``.env`` file) that is no setting, with the closest real name: a typo such as
    ``REINDEX_CLICKHOUSE_SHARD`` would otherwise be ignored and the default used."""
    known = {f"REINDEX_{name.upper()}" for name in Settings.model_fields} | NOT_SETTINGS
    sources: list[tuple[str, Iterable[str]]] = [("environment", (environ or os.environ).keys())]
    if env_file is not None and Path(env_file).is_file():
        sources.append((str(env_file), dotenv_values(env_file).keys()))
    for where, names in sources:
        for name in sorted(names):
            upper = name.upper()
            if upper.startswith("REINDEX_") and upper not in known:
                close = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise ConfigError(f"unknown setting {upper} in the {where}{hint}")


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning a validation failure into one readable :class:`ConfigError`.

    A ``REINDEX_*`` variable that is no setting is an error too (:func:`check_unknown_variables`).
    """
    check_unknown_variables()
    try:
        return Settings(**overrides)
    except ValidationError as e:
        raise ConfigError(f"invalid settings: {_describe(e)}") from None
