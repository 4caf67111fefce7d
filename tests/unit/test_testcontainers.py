"""The testcontainers path of the test fixture, run here without a Docker engine.

Only the Docker SDK's client is replaced (by ``FakeDocker``): testcontainers' own classes build,
validate, configure and "start" every container exactly as ``fix_services._testcontainers`` does
on a machine with Docker, and its own wait strategies run against what the fake containers show
(logs, exec results, and a real local HTTP server standing in for each ClickHouse port). So a
container the library refuses (as ``KafkaContainer("apache/kafka:…").with_kraft()`` did), a
start script for another image, or settings the images do not take fail here, in CI.
"""

from __future__ import annotations

import io
import itertools
import socket
import tarfile
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import fix_containers
import fix_services
import pytest
from docker.models.containers import ExecResult
from testcontainers.core import docker_client
from testcontainers.core.config import testcontainers_config

_ids = itertools.count(1)


class _ClickHousePing(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"Ok.\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class FakeContainer:
    image: str
    command: Any
    environment: dict[str, str]
    ports: dict[str, Any]
    host_ports: dict[int, int]
    id: str = field(default_factory=lambda: f"c{next(_ids):011d}")
    status: str = "created"
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    removed: bool = False
    server: ThreadingHTTPServer | None = None

    @property
    def short_id(self) -> str:
        return self.id[:10]

    def start(self) -> None:
        self.status = "running"
        if self.image == fix_containers.CLICKHOUSE_IMAGE:
            # What the server answers on its HTTP port, on the host port it was given.
            port = self.host_ports[fix_containers.CLICKHOUSE_HTTP_PORT]
            self.server = ThreadingHTTPServer(("127.0.0.1", port), _ClickHousePing)
            threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self, timeout: int = 10) -> None:
        self.status = "exited"
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def reload(self) -> None:
        pass

    def logs(self, stdout: bool = True, stderr: bool = True, **_: Any) -> bytes:
        # The broker starts once its start script exists (the command waits for it).
        started = fix_containers.KAFKA_START_SCRIPT in self.files
        if self.image == fix_containers.KAFKA_IMAGE and stdout and started:
            return b"[KafkaRaftServer nodeId=1] Kafka Server started\n"
        return b""

    def put_archive(self, path: str, data: bytes) -> bool:
        assert path == "/"
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                content = tar.extractfile(member)
                assert content is not None
                self.files["/" + member.name.lstrip("/")] = (content.read(), member.mode)
        return True

    def exec_run(self, cmd: Any, **_: Any) -> ExecResult:
        return ExecResult(0, b"ok")

    def remove(self, force: bool = False, v: bool = False) -> None:
        self.stop()
        self.removed = True


class FakeDocker:
    """The part of ``docker.DockerClient`` that testcontainers uses."""

    def __init__(self) -> None:
        self.created: list[FakeContainer] = []
        self.pulled: list[str] = []
        self._next_port = itertools.count(41000)
        fake = self

        class Api:
            base_url = "http://127.0.0.1:2375"

            def __init__(self) -> None:
                self.headers: dict[str, str] = {}

            def port(self, container_id: str, port: int) -> list[dict[str, str]]:
                (container,) = [c for c in fake.created if c.id == container_id]
                return [{"HostIp": "127.0.0.1", "HostPort": str(container.host_ports[int(port)])}]

        class Images:
            def get(self, image: str) -> object:
                fake.pulled.append(image)
                return object()

        class Containers:
            def create(self, image: str, **kwargs: Any) -> FakeContainer:
                assert kwargs.get("labels", {}).get("org.testcontainers") == "true"
                ports = kwargs.get("ports") or {}
                # A bound port as asked, otherwise one the engine picks.
                host_ports = {
                    int(str(p).split("/")[0]): int(bound or next(fake._next_port))
                    for p, bound in ports.items()
                }
                container = FakeContainer(
                    image=image,
                    command=kwargs.get("command"),
                    environment=dict(kwargs.get("environment") or {}),
                    ports=dict(ports),
                    host_ports=host_ports,
                )
                fake.created.append(container)
                return container

        class Networks:
            def list(self, **_: Any) -> list[object]:
                return []

        self.api = Api()
        self.images = Images()
        self.containers = Containers()
        self.networks = Networks()

    def close(self) -> None:
        pass

    def of_image(self, image: str) -> list[FakeContainer]:
        return [c for c in self.created if c.image == image]


@pytest.fixture
def fake_docker(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDocker]:
    fake = FakeDocker()
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr(docker_client.docker, "from_env", lambda **_: fake)
    monkeypatch.setattr(testcontainers_config, "ryuk_disabled", True)
    # As on a developer's machine (CI itself may run in a container): the host's mapped ports.
    monkeypatch.setattr(docker_client.utils, "inside_container", lambda: False)
    monkeypatch.setattr(fix_containers, "START_TIMEOUT_S", 10)
    yield fake
    for container in fake.created:
        container.stop()


def test_the_fixture_builds_and_starts_every_container_the_library_accepts(
    fake_docker: FakeDocker,
) -> None:
    with fix_services._testcontainers(None) as services:
        (kafka,) = fake_docker.of_image(fix_containers.KAFKA_IMAGE)
        shards = fake_docker.of_image(fix_containers.CLICKHOUSE_IMAGE)
        (postgres,) = fake_docker.of_image(fix_containers.POSTGRES_IMAGE)
        assert all(c.status == "running" for c in fake_docker.created)

        # Kafka: Apache's image in KRaft mode, started by a script that advertises the port the
        # host reaches, and runs the image's own launcher (not Confluent's /etc/confluent/...).
        assert kafka.environment["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert kafka.environment["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@localhost:9094"
        assert "CONTROLLER://" in kafka.environment["KAFKA_LISTENERS"]
        assert not any("ZOOKEEPER" in key for key in kafka.environment)
        assert fix_containers.KAFKA_START_SCRIPT in " ".join(kafka.command)
        script, mode = kafka.files[fix_containers.KAFKA_START_SCRIPT]
        mapped = kafka.host_ports[fix_containers.KAFKA_CLIENT_PORT]
        assert mode & 0o444
        assert f"KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://127.0.0.1:{mapped}," in script.decode()
        assert "exec /etc/kafka/docker/run" in script.decode()
        assert "confluent" not in script.decode()
        assert services.kafka_bootstrap == f"127.0.0.1:{mapped}"

        # ClickHouse: two shards, each with a user and a password (never a password-less
        # `default`, which the images refuse over the network), carried in the shard URLs.
        assert len(shards) == fix_services_shards() == len(services.shard_urls)
        for shard, url in zip(shards, services.shard_urls, strict=True):
            env = shard.environment
            assert env["CLICKHOUSE_USER"] == fix_containers.CLICKHOUSE_USER != "default"
            assert len(env["CLICKHOUSE_PASSWORD"]) >= 16
            assert env["CLICKHOUSE_DB"] == fix_containers.CLICKHOUSE_DATABASE
            assert url.startswith(
                f"http://{env['CLICKHOUSE_USER']}:{env['CLICKHOUSE_PASSWORD']}@127.0.0.1:"
            )
            assert str(fix_containers.CLICKHOUSE_HTTP_PORT) in shard.ports

        # Postgres only because none was given.
        assert postgres.environment["POSTGRES_PASSWORD"]
        assert services.pg_dsn.startswith("postgresql://")
        assert services.origin == "testcontainers"
    assert all(c.removed for c in fake_docker.created)


def test_a_given_postgres_is_used_and_no_postgres_container_starts(
    fake_docker: FakeDocker,
) -> None:
    dsn = "postgresql://postgres@127.0.0.1:5432/postgres"
    with fix_services._testcontainers(dsn) as services:
        assert services.pg_dsn == dsn
    assert fake_docker.of_image(fix_containers.POSTGRES_IMAGE) == []
    assert {c.image for c in fake_docker.created} == {
        fix_containers.KAFKA_IMAGE,
        fix_containers.CLICKHOUSE_IMAGE,
    }


def fix_services_shards() -> int:
    return fix_containers.SHARDS


def test_a_stopped_shard_refuses_connections_and_comes_back_at_the_same_url(
    fake_docker: FakeDocker,
) -> None:
    with fix_services._testcontainers("postgresql://postgres@127.0.0.1:5432/postgres") as services:
        url = services.shard_urls[1]
        port = int(url.rsplit(":", 1)[1])
        services.stop_shard(1)
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
            pass
        services.start_shard(1)
        assert services.shard_urls[1] == url
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            assert response.read() == b"Ok.\n"
