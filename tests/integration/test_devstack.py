"""``reindex devstack up | env | down`` on its own stack: idempotent, and leaves nothing running."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import clickhouse_connect
import psycopg
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError
from fix_services import free_port_run, run_reindex

from devstack import stack


def reindex(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_reindex(*args, env=env, timeout=300)


def test_up_is_idempotent_env_points_at_it_and_down_stops_everything(tmp_path: Path) -> None:
    root = tmp_path / "stack"
    kafka_port, ch_port = stack.free_port(), free_port_run(2)
    env = {**os.environ, "REINDEX_DEVSTACK_DIR": str(root)}
    args = ["--shards", "2", "--kafka-port", str(kafka_port), "--clickhouse-port", str(ch_port)]
    try:
        first = reindex("devstack", "up", *args, env=env)
        assert first.returncode == 0, first.stderr
        assert f"127.0.0.1:{kafka_port}" in first.stdout
        assert f"shard 1 http://127.0.0.1:{ch_port + 1}" in first.stdout
        pids = json.loads((root / "stack.json").read_text())
        # The state file holds the stack's password: its owner alone may read it.
        assert stat.S_IMODE((root / "stack.json").stat().st_mode) == 0o600
        password = pids["clickhouse_password"]
        assert len(password) >= 24
        assert password not in first.stdout + first.stderr

        again = reindex("devstack", "up", *args, env=env)
        assert again.returncode == 0, again.stderr
        assert json.loads((root / "stack.json").read_text()) == pids  # reused, not restarted

        exports = reindex("devstack", "env", env=env).stdout.splitlines()
        assert f"export REINDEX_KAFKA_BOOTSTRAP=127.0.0.1:{kafka_port}" in exports
        assert (
            f"export REINDEX_CLICKHOUSE_SHARDS=http://default:{password}@127.0.0.1:{ch_port},"
            f"http://default:{password}@127.0.0.1:{ch_port + 1}" in exports
        )
        shards = next(e for e in exports if e.startswith("export REINDEX_CLICKHOUSE_SHARDS="))
        for url in shards.split("=", 1)[1].split(","):
            parts = urlsplit(url)
            client = clickhouse_connect.get_client(
                host=parts.hostname, port=parts.port, username="default", password=parts.password
            )
            assert client.command("SELECT 1") == 1
            client.close()
            with pytest.raises(DatabaseError) as refused:  # no password, no access
                clickhouse_connect.get_client(host=parts.hostname, port=parts.port)
            assert refused.value.code == 516

        wrong = reindex("devstack", "up", "--shards", "3", "--kafka-port", str(kafka_port), env=env)
        assert wrong.returncode == 1
        assert "devstack down" in wrong.stderr
    finally:
        down = reindex("devstack", "down", env=env)
    assert down.returncode == 0, down.stderr
    assert "clickhouse-0" in down.stdout
    assert "kafka" in down.stdout
    procs = [pids["kafka"], *pids["shards"]]
    for proc in procs:
        assert stack._cmdline(proc["pid"]) is None, proc["name"]
    assert reindex("devstack", "down", env=env).stdout.strip() == "nothing was running"


def test_embedded_postgres_starts_when_none_answers(tmp_path: Path) -> None:
    config = stack.StackConfig(
        root=tmp_path / "stack",
        shards=1,
        kafka_port=stack.free_port(),
        clickhouse_port=stack.free_port(),
        pg_dsn="postgresql://postgres@127.0.0.1:1/postgres",  # nothing listens there
    )
    try:
        state = stack.up(config)
        assert state.pg_embedded
        assert state.env()["REINDEX_PG_DSN"] == state.pg_dsn
        with psycopg.connect(state.pg_dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        stopped = stack.down(config.root)
    assert "postgres" in stopped
    assert not stack.postgres_answers(state.pg_dsn)
