"""``reindex check``: every service reachable and usable, or a named failure and exit 1."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from fix_pipeline import workers
from fix_services import free_port_run, settings_env

from reindex_common.clickhouse import shard_client
from reindex_common.settings import Settings


def _check(settings: Settings, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reindex", "check"],
        capture_output=True,
        text=True,
        timeout=120,
        env=settings_env(settings),
        cwd=cwd,
        check=False,
    )


def _with_password(dsn: str, password: str) -> str:
    parts = urlsplit(dsn)
    netloc = f"{parts.username or 'postgres'}:{password}@{parts.hostname}:{parts.port or 5432}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def test_check_passes_with_a_live_worker_and_shows_where_settings_came_from(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    # Postgres trusts local connections, so a password in the DSN is accepted and ignored:
    # enough to see that check never prints it.
    settings = pipeline_settings.replace(
        pg_dsn=_with_password(pipeline_settings.director_dsn, "s3cret-pw")
    )
    (tmp_path / ".env").write_text("REINDEX_METRICS_PORT=9911\n")
    with workers(settings, tmp_path, "w1"):
        # The worker needs a while to create the topics and join its group.
        deadline = time.monotonic() + 180
        result = _check(settings, tmp_path)
        while result.returncode != 0 and time.monotonic() < deadline:
            time.sleep(2)
            result = _check(settings, tmp_path)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    lines = out.splitlines()
    checks = [x for x in lines if not x.lstrip().startswith("setting ")]
    assert checks
    assert all(x.startswith("ok  ") for x in checks), out
    for name in ("postgres director", "postgres historic", "kafka", "shard 0", "shard 1"):
        assert any(x[6:].startswith(name) for x in checks), name
    assert f"{settings.scorecards_topic}: 4 partition(s)" in out
    group = next(x for x in checks if "consumer group" in x)
    assert "no live member" not in group, group
    assert "0 message(s) behind" in group, group
    assert "s3cret-pw" not in out + result.stderr
    assert "postgres:***@" in out
    assert "REINDEX_METRICS_PORT=9911 (.env)" in out
    assert f"REINDEX_CLICKHOUSE_DATABASE={settings.clickhouse_database} (environment)" in out
    historic = next(x for x in lines if "REINDEX_HISTORIC_PG_DSN=" in x)
    assert historic.endswith(" (default)"), historic  # defaults to REINDEX_PG_DSN, masked
    assert "postgres:***@" in historic, historic


def test_check_names_a_missing_table_and_an_unreachable_shard(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    settings = pipeline_settings
    database = settings.clickhouse_database
    with shard_client(settings.shards[1], database=database) as client:
        client.command("DROP TABLE scorecard_scores")
    dead = f"http://127.0.0.1:{free_port_run(1)}"
    shards = f"{settings.clickhouse_shards.get_secret_value()},{dead}"
    result = _check(settings.replace(clickhouse_shards=shards), tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    shard0 = next(x for x in lines if "shard 0" in x)
    shard1 = next(x for x in lines if "shard 1" in x)
    shard2 = next(x for x in lines if "shard 2" in x)
    assert shard0.startswith("ok  "), shard0
    assert shard1.startswith("FAIL"), shard1
    assert f"table {database}.scorecard_scores missing" in shard1, shard1
    assert shard2.startswith("FAIL"), shard2
    assert dead in shard2, shard2
    assert "refused" in shard2, shard2
    assert next(x for x in lines if "postgres director" in x).startswith("ok  ")
    group = next(x for x in lines if "consumer group" in x)
    assert group.startswith("FAIL"), group  # no worker runs
    assert "no live member" in group, group
    err = result.stderr.strip().splitlines()
    assert len(err) == 1, result.stdout + result.stderr
    assert "shard 1, shard 2" in err[0], err
