"""Real services in Docker containers, for machines where a Docker engine answers.

One place builds every container the test fixture starts, so that ``docker-compose.yml``, the
README and ``tests/unit/test_testcontainers.py`` (which runs these steps against a stub Docker
client, since CI has no engine) check exactly what a user with Docker runs.

- Kafka: Apache Kafka's own image in KRaft mode. testcontainers' ``KafkaContainer`` drives only
  Confluent's images (its ``with_kraft`` refuses other tags, and its start script runs
  ``/etc/confluent/docker/configure``), so a plain ``DockerContainer`` does what its Java
  sibling does for ``apache/kafka``: the container waits for a start script, which is written
  once the host port is known and which advertises that port.
- ClickHouse: ``ClickHouseContainer`` with a user and a password. Images since 24.x refuse
  network access to a ``default`` user without a password, so the fixture never relies on it.
- Postgres: ``PostgresContainer``, only when no Postgres answers at ``REINDEX_PG_DSN``.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from testcontainers.community.clickhouse import ClickHouseContainer
    from testcontainers.core.container import DockerContainer

# One version of each image, the same in docker-compose.yml and the README (test_compose.py).
KAFKA_IMAGE = "apache/kafka:3.8.0"
CLICKHOUSE_IMAGE = "clickhouse/clickhouse-server:26.8"
POSTGRES_IMAGE = "postgres:16"

KAFKA_CLIENT_PORT = 9092  # advertised to the host as the mapped port
KAFKA_START_SCRIPT = "/tc-start.sh"
KAFKA_READY_LOG = r"Kafka Server started"
CLICKHOUSE_HTTP_PORT = 8123
CLICKHOUSE_USER = "reindex"
CLICKHOUSE_DATABASE = "reindex"
SHARDS = 2
START_TIMEOUT_S = 180  # the first run pulls the images

# KRaft, one node acting as broker and controller; BROKER is the inter-broker listener inside
# the container, PLAINTEXT the one the host reaches through the mapped port.
KAFKA_ENV = {
    "CLUSTER_ID": "4L6g3nShT-eMCtK--X86sw",
    "KAFKA_NODE_ID": "1",
    "KAFKA_PROCESS_ROLES": "broker,controller",
    "KAFKA_LISTENERS": "PLAINTEXT://0.0.0.0:9092,BROKER://0.0.0.0:9093,CONTROLLER://0.0.0.0:9094",
    "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": (
        "BROKER:PLAINTEXT,PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    ),
    "KAFKA_INTER_BROKER_LISTENER_NAME": "BROKER",
    "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
    "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9094",
    "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
    "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "1",
    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
    "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
    "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
}


def kafka_container() -> DockerContainer:
    """Apache Kafka in KRaft mode, waiting for its start script (see ``start_kafka``)."""
    from testcontainers.core.container import DockerContainer  # noqa: PLC0415

    container = DockerContainer(KAFKA_IMAGE).with_exposed_ports(KAFKA_CLIENT_PORT)
    for key, value in KAFKA_ENV.items():
        container.with_env(key, value)
    # The image's entrypoint execs its arguments; only the command is replaced.
    return container.with_command(
        [
            "sh",
            "-c",
            f"while [ ! -f {KAFKA_START_SCRIPT} ]; do sleep 0.1; done;"
            f" exec bash {KAFKA_START_SCRIPT}",
        ]
    )


def kafka_start_script(host: str, port: int) -> str:
    """The script that starts the broker, advertising the address the host reaches it at."""
    return (
        "#!/bin/bash\n"
        f"export KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://{host}:{port},BROKER://localhost:9093\n"
        "exec /etc/kafka/docker/run\n"
    )


def start_kafka(container: DockerContainer) -> str:
    """Start the broker; its bootstrap address once it serves."""
    from testcontainers.core.transferable import Transferable  # noqa: PLC0415
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy  # noqa: PLC0415

    container.start()
    host = container.get_container_host_ip()
    port = container.get_exposed_port(KAFKA_CLIENT_PORT)
    script: Transferable = kafka_start_script(host, port).encode()
    container.copy_into_container(script, KAFKA_START_SCRIPT, mode=0o755)
    LogMessageWaitStrategy(KAFKA_READY_LOG).with_startup_timeout(START_TIMEOUT_S).wait_until_ready(
        container
    )
    return f"{host}:{port}"


def clickhouse_container(password: str) -> ClickHouseContainer:
    """A shard on a fixed free host port, so that it keeps its URL when stopped and started."""
    from testcontainers.community.clickhouse import ClickHouseContainer  # noqa: PLC0415

    container = ClickHouseContainer(
        CLICKHOUSE_IMAGE,
        username=CLICKHOUSE_USER,
        password=password,
        dbname=CLICKHOUSE_DATABASE,
    )
    return container.with_bind_ports(CLICKHOUSE_HTTP_PORT, _free_port())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def shard_url(container: ClickHouseContainer) -> str:
    host = container.get_container_host_ip()
    port = container.get_exposed_port(CLICKHOUSE_HTTP_PORT)
    return f"http://{container.username}:{container.password}@{host}:{port}"


@dataclass(frozen=True)
class Started:
    pg_dsn: str
    kafka_bootstrap: str
    shard_urls: tuple[str, ...]
    shards: tuple[ClickHouseContainer, ...]

    def stop_shard(self, index: int) -> None:
        """Stop a shard's server (connections are refused) until ``start_shard``."""
        self.shards[index].get_wrapped_container().stop(timeout=5)

    def start_shard(self, index: int) -> None:
        shard = self.shards[index]
        shard.get_wrapped_container().start()
        shard._connect()  # the library's own readiness wait for this image


@contextlib.contextmanager
def started(pg_dsn: str | None) -> Iterator[Started]:
    """Every service running in a container (Postgres only if none is given), removed on exit."""
    from testcontainers.community.postgres import PostgresContainer  # noqa: PLC0415

    with contextlib.ExitStack() as stack:
        if pg_dsn is None:
            pg = stack.enter_context(PostgresContainer(POSTGRES_IMAGE, driver=None))
            pg_dsn = pg.get_connection_url()
        kafka = kafka_container()
        stack.callback(kafka.stop)
        bootstrap = start_kafka(kafka)
        password = secrets.token_urlsafe(16)
        shards = tuple(stack.enter_context(clickhouse_container(password)) for _ in range(SHARDS))
        yield Started(pg_dsn, bootstrap, tuple(shard_url(s) for s in shards), shards)
