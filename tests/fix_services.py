"""Where the tests find their real services, and throwaway state on them.

Endpoints come from (1) ``REINDEX_*`` variables when they name Kafka and ClickHouse, (2)
testcontainers when a Docker engine answers, (3) the embedded dev stack, started once per test
session in a temporary directory on free ports and stopped at the end. Postgres is the one
``REINDEX_PG_DSN`` (or the default DSN) names when it answers. Each test run gets its own
ClickHouse database and topic prefix; tests that need their own source data get their own
Postgres database.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import fix_containers
import psycopg
import pytest

from devstack import stack
from reindex_common.clickhouse import init_target_schema, shard_client
from reindex_common.pg import init_source_schema
from reindex_common.settings import Settings

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class Services:
    pg_dsn: str  # a database on which we may CREATE DATABASE
    kafka_bootstrap: str
    shard_urls: tuple[str, ...]
    origin: str  # "env", "testcontainers" or "embedded"
    stack_root: Path | None = None  # the embedded stack's directory, when it is that
    containers: fix_containers.Started | None = None  # when the services run in Docker

    def stop_shard(self, index: int) -> None:
        """Stop shard ``index`` so that its connections are refused, until ``start_shard``."""
        if self.containers is not None:
            self.containers.stop_shard(index)
            return
        state = stack.StackState.load(self._stack_root())
        assert state is not None
        stack._stop(state.shards[index])

    def start_shard(self, index: int) -> None:
        if self.containers is not None:
            self.containers.start_shard(index)
            return
        root = self._stack_root()
        state = stack.StackState.load(root)
        assert state is not None
        stack.up(stack.StackConfig(root=root, shards=len(state.shards)))

    def _stack_root(self) -> Path:
        if self.stack_root is None:
            pytest.fail(f"a shard of {self.origin} services cannot be stopped by the tests")
        return self.stack_root


def _docker_answers() -> bool:
    """True when a Docker engine answers its ping (its Unix socket, or DOCKER_HOST)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://"):
        path = host.removeprefix("unix://")
        if not Path(path).exists():
            return False
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(3)
            try:
                sock.connect(path)
                sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                reply = sock.recv(64)
            except OSError:
                return False
            return reply.startswith(b"HTTP/1.") and b" 200 " in reply
    import docker  # noqa: PLC0415 - a remote engine: let the client speak its protocol

    try:
        client = docker.from_env(timeout=3)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


@contextlib.contextmanager
def _testcontainers(pg_dsn: str | None) -> Iterator[Services]:
    """Kafka, two ClickHouse shards and (when none answers) Postgres, in Docker containers."""
    with fix_containers.started(pg_dsn) as started:
        yield Services(
            started.pg_dsn,
            started.kafka_bootstrap,
            started.shard_urls,
            "testcontainers",
            containers=started,
        )


@contextlib.contextmanager
def _embedded(root: Path, pg_dsn: str) -> Iterator[Services]:
    config = stack.StackConfig(
        root=root,
        shards=2,
        kafka_port=stack.free_port(),
        clickhouse_port=free_port_run(2),
        pg_dsn=pg_dsn,
    )
    state = stack.up(config)
    try:
        yield Services(
            state.pg_dsn, state.kafka_bootstrap, tuple(state.shard_urls), "embedded", root
        )
    finally:
        stack.down(root)


def free_port_run(count: int) -> int:
    return stack.free_port_run(count)


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    pg_dsn = os.environ.get("REINDEX_PG_DSN", DEFAULT_PG)
    pg_ok = stack.postgres_answers(pg_dsn)
    kafka = os.environ.get("REINDEX_KAFKA_BOOTSTRAP")
    shards = os.environ.get("REINDEX_CLICKHOUSE_SHARDS")
    if kafka and shards and pg_ok:
        yield Services(pg_dsn, kafka, tuple(s for s in shards.split(",") if s), "env")
    elif _docker_answers():
        with _testcontainers(pg_dsn if pg_ok else None) as found:
            yield found
    else:
        with _embedded(tmp_path_factory.mktemp("devstack"), pg_dsn) as found:
            yield found


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def clickhouse_database(services: Services, run_id: str) -> Iterator[str]:
    """This run's ClickHouse database, with the SPEC tables, dropped at the end."""
    database = f"reindex_test_{run_id}"
    settings = Settings(clickhouse_shards=",".join(services.shard_urls))
    init_target_schema(settings.shards, database)
    yield database
    for shard in settings.shards:
        with shard_client(shard) as client:
            client.command(f"DROP DATABASE IF EXISTS `{database}`")


@pytest.fixture
def make_source_db(services: Services) -> Iterator[Callable[[], str]]:
    """A factory of fresh Postgres databases holding the SPEC §2 tables; dropped afterwards."""
    created: list[str] = []

    def make() -> str:
        name = f"reindex_t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(services.pg_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        created.append(name)
        dsn = _with_database(services.pg_dsn, name)
        init_source_schema(dsn, dsn)
        return dsn

    yield make
    with psycopg.connect(services.pg_dsn, autocommit=True) as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


@pytest.fixture
def make_settings(services: Services, clickhouse_database: str) -> Callable[..., Settings]:
    """Settings pointing at the test services, with a topic prefix unique to each call."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "pg_dsn": services.pg_dsn,
            "historic_pg_dsn": None,
            "kafka_bootstrap": services.kafka_bootstrap,
            "clickhouse_shards": ",".join(services.shard_urls),
            "clickhouse_database": clickhouse_database,
            "topic_prefix": f"t{uuid.uuid4().hex[:10]}-",
            "mode": "process",
            "batch_size": 500,
        }
        values.update(overrides)
        return Settings(**values)

    return make


def run_reindex(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m reindex ARGS`` in a subprocess, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "reindex", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a subprocess (``reindex ...``) needs to see exactly ``settings``."""
    return settings.child_env()


@pytest.fixture
def pipeline_settings(
    make_settings: Callable[..., Settings], make_source_db: Callable[[], str]
) -> Iterator[Settings]:
    """Settings with their own source database, ClickHouse database and topics (one per test)."""
    database = f"reindex_p_{uuid.uuid4().hex[:10]}"
    settings = make_settings(
        pg_dsn=make_source_db(), clickhouse_database=database, topic_partitions=4
    )
    init_target_schema(settings.shards, database)
    yield settings
    for shard in settings.shards:
        with contextlib.suppress(Exception), shard_client(shard) as client:
            client.command(f"DROP DATABASE IF EXISTS `{database}`")
