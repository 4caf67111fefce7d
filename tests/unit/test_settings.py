from __future__ import annotations

import pytest

from reindex_common.errors import ConfigError
from reindex_common.settings import MODE_TYPES, Settings, load_settings, mask_url


def test_defaults_match_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PG_DSN", "KAFKA_BOOTSTRAP", "CLICKHOUSE_SHARDS", "MODE", "BATCH_SIZE"):
        monkeypatch.delenv(f"REINDEX_{name}", raising=False)
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.director_dsn == "postgresql://postgres@127.0.0.1:5432/postgres"
    assert s.historic_dsn == s.director_dsn
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert [sh.url for sh in s.shards] == ["http://127.0.0.1:8123"]
    assert s.clickhouse_database == "reindex"
    assert s.mode == "process"
    assert s.batch_size == 500
    assert s.scorecards_topic == "scorecard-reindex"
    assert s.requests_topic == "scorecard-reindex-requests"
    assert s.dlq_topic == "scorecard-reindex-dlq"


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REINDEX_CLICKHOUSE_SHARDS", "http://a:8123, http://u:p%40ss@b:9000")
    monkeypatch.setenv("REINDEX_TOPIC_PREFIX", "stage.")
    monkeypatch.setenv("REINDEX_HISTORIC_PG_DSN", "postgresql://h/hist")
    monkeypatch.setenv("REINDEX_MODE", "all")
    s = load_settings()
    assert [(sh.index, sh.host, sh.port) for sh in s.shards] == [(0, "a", 8123), (1, "b", 9000)]
    assert s.shards[1].username == "u"
    assert s.shards[1].password.get_secret_value() == "p@ss"
    assert s.scorecards_topic == "stage.scorecard-reindex"
    assert s.historic_dsn == "postgresql://h/hist"
    assert MODE_TYPES[s.mode] == ("PROCESS", "CONVERSATION")


def test_secrets_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REINDEX_PG_DSN", "postgresql://app:hunter2@db:5432/prod")
    monkeypatch.setenv("REINDEX_CLICKHOUSE_SHARDS", "https://ch:sekret@ch1:8443")
    monkeypatch.setenv("REINDEX_KAFKA_SASL_PASSWORD", "kafkapass")
    monkeypatch.setenv("REINDEX_KAFKA_SASL_USERNAME", "svc")
    s = load_settings()
    shown = repr(s) + str(s.describe()) + repr(s.shards)
    for secret in ("hunter2", "sekret", "kafkapass"):
        assert secret not in shown
    assert s.describe()["pg_dsn"] == "postgresql://app:***@db:5432/prod"
    assert s.kafka_client_config()["sasl.password"] == "kafkapass"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BATCH_SIZE", "0"),
        ("MODE", "everything"),
        ("CLICKHOUSE_SHARDS", "ftp://x"),
        ("CLICKHOUSE_DATABASE", "drop table"),
        ("TOPIC_PREFIX", "a b"),
    ],
)
def test_invalid_settings_are_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"REINDEX_{name}", value)
    with pytest.raises(ConfigError, match=f"REINDEX_{name}") as info:
        load_settings()
    assert "\n" not in str(info.value)


def test_mask_url_leaves_urls_without_password_alone() -> None:
    assert mask_url("postgresql://postgres@h:5432/db") == "postgresql://postgres@h:5432/db"
    assert mask_url("http://u:pw@h") == "http://u:***@h"


def test_a_child_sees_exactly_these_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REINDEX_TOPIC_PREFIX", "parent-")
    monkeypatch.setenv("REINDEX_HISTORIC_PG_DSN", "postgresql://parent/historic")
    monkeypatch.setenv("UNRELATED", "kept")
    env = Settings(topic_prefix="child-", historic_pg_dsn=None).child_env()
    assert env["REINDEX_TOPIC_PREFIX"] == "child-"
    assert "REINDEX_HISTORIC_PG_DSN" not in env  # not the parent's: unset means the default
    assert env["UNRELATED"] == "kept"
