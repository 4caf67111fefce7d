"""docker-compose.yml (which cannot run here) agrees with the settings' defaults and the README."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fix_containers
import yaml

from reindex_common.schema import DIRECTOR_DDL, HISTORIC_DDL, statements
from reindex_common.settings import Settings

ROOT = Path(__file__).parents[2]


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _host_port(service: dict[str, Any]) -> tuple[str, int]:
    (mapping,) = service["ports"]
    host, port, _inner = mapping.split(":")
    return host, int(port)


def test_services_and_ports_match_the_defaults() -> None:
    services = _compose()["services"]
    assert set(services) == {"postgres", "kafka", "clickhouse-0", "clickhouse-1"}
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert f"{_host_port(services['kafka'])[0]}:{_host_port(services['kafka'])[1]}" == (
        defaults.kafka_bootstrap
    )
    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert advertised == f"PLAINTEXT://{defaults.kafka_bootstrap}"
    assert _host_port(services["postgres"]) == ("127.0.0.1", 5432)
    assert "127.0.0.1:5432" in defaults.director_dsn
    shard0 = defaults.shards[0]
    assert _host_port(services["clickhouse-0"]) == (shard0.host, shard0.port)
    assert _host_port(services["clickhouse-1"]) == (shard0.host, shard0.port + 1)
    for name in ("clickhouse-0", "clickhouse-1"):
        assert services[name]["environment"]["CLICKHOUSE_DB"] == defaults.clickhouse_database


def test_readme_names_the_compose_shards() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docker compose up -d" in readme
    assert "REINDEX_CLICKHOUSE_SHARDS=http://127.0.0.1:8123,http://127.0.0.1:8124" in readme


def test_postgres_init_script_is_the_source_ddl() -> None:
    script = (ROOT / "deploy" / "postgres-source.sql").read_text()
    body = [line for line in script.splitlines() if not line.startswith("--")]
    assert body == [s + ";" for s in statements(DIRECTOR_DDL + HISTORIC_DDL)]
    volume = _compose()["services"]["postgres"]["volumes"][0]
    assert volume.startswith("./deploy/postgres-source.sql:/docker-entrypoint-initdb.d/")


def test_images_and_kafka_settings_are_the_fixtures() -> None:
    """One version of each image in the compose file, the testcontainers fixture and README."""
    services = _compose()["services"]
    assert services["kafka"]["image"] == fix_containers.KAFKA_IMAGE
    assert services["postgres"]["image"] == fix_containers.POSTGRES_IMAGE
    for name in ("clickhouse-0", "clickhouse-1"):
        assert services[name]["image"] == fix_containers.CLICKHOUSE_IMAGE
    # The KRaft settings that do not depend on listeners are the fixture's.
    kafka_env = {k: str(v) for k, v in services["kafka"]["environment"].items()}
    for key in (
        "KAFKA_NODE_ID",
        "KAFKA_PROCESS_ROLES",
        "KAFKA_CONTROLLER_LISTENER_NAMES",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS",
    ):
        assert kafka_env[key] == fix_containers.KAFKA_ENV[key], key
    readme = (ROOT / "README.md").read_text()
    for image in (
        fix_containers.KAFKA_IMAGE,
        fix_containers.CLICKHOUSE_IMAGE,
        fix_containers.POSTGRES_IMAGE,
    ):
        assert f"`{image}`" in readme, image


def test_every_service_has_a_healthcheck_so_up_wait_returns_when_they_serve() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        test = service["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), name
    assert "--bootstrap-server 127.0.0.1:9092" in services["kafka"]["healthcheck"]["test"][1]


def test_clickhouse_default_user_is_reachable_without_a_password() -> None:
    """The images refuse network access to a password-less `default` unless told otherwise;
    the settings' default shard URLs carry no user, so the compose file tells them."""
    services = _compose()["services"]
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert defaults.shards[0].username in (None, "", "default")
    for name in ("clickhouse-0", "clickhouse-1"):
        env = services[name]["environment"]
        assert str(env["CLICKHOUSE_SKIP_USER_SETUP"]) == "1"
        assert "CLICKHOUSE_PASSWORD" not in env
        (mapping,) = services[name]["ports"]
        assert mapping.startswith("127.0.0.1:")
