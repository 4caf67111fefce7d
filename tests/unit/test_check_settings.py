"""``reindex check`` shows each setting masked, with where its value came from."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reindex.check import effective_settings
from reindex_common.settings import load_settings


def test_settings_are_masked_and_say_where_they_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("REINDEX_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "REINDEX_BATCH_SIZE=77\nREINDEX_PG_DSN=postgresql://a:dotpw@h/db\n"
    )
    monkeypatch.setenv("REINDEX_PG_DSN", "postgresql://u:envpw@h/db")  # the environment wins
    monkeypatch.setenv("REINDEX_CLICKHOUSE_SHARDS", "http://x:chpw@h1:8123,http://h2:8123")
    monkeypatch.setenv("REINDEX_KAFKA_SASL_PASSWORD", "saslpw")

    shown = {s.variable: (s.value, s.origin) for s in effective_settings(load_settings())}

    assert shown["REINDEX_PG_DSN"] == ("postgresql://u:***@h/db", "environment")
    assert shown["REINDEX_HISTORIC_PG_DSN"] == ("postgresql://u:***@h/db", "default")
    assert shown["REINDEX_BATCH_SIZE"] == ("77", ".env")
    assert shown["REINDEX_CLICKHOUSE_SHARDS"] == (
        "http://x:***@h1:8123,http://h2:8123",
        "environment",
    )
    assert shown["REINDEX_KAFKA_SASL_PASSWORD"] == ("***", "environment")
    assert shown["REINDEX_MODE"] == ("process", "default")
    assert not any(pw in str(shown) for pw in ("envpw", "dotpw", "chpw", "saslpw"))
