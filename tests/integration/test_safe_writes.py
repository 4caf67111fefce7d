"""The reindexer writes to Postgres only where it may (issue 11).

- The source connections of the producer and ``verify`` are read-only in the server
  (``default_transaction_read_only``), so a write through them fails even by mistake.
- ``seed`` writes only into source schemas reindex created itself, ``demo`` drops only the
  database it created; anything else needs ``--yes``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fix_services import Services, free_port_run, run_reindex
from psycopg.conninfo import make_conninfo

from devstack import stack
from producer.source import ScorecardSource
from reindex.demo import DEMO_DATABASE, _demo_dsn
from reindex_common.errors import BadInputError
from reindex_common.pg import CREATED_MARK, connect
from reindex_common.schema import DIRECTOR_DDL, HISTORIC_DDL, statements

INSERT = (
    "INSERT INTO director.scorecard_template_revisions "
    "(customer_id, profile_id, template_id, revision, type, title) "
    "VALUES ('c', 'p', 't', '1', 'PROCESS', 'x')"
)


@pytest.fixture
def blank_db(services: Services) -> Iterator[str]:
    """A new, empty database on the test server (no schemas), dropped afterwards."""
    name = f"reindex_w_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(services.pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        yield make_conninfo(services.pg_dsn, dbname=name)
    finally:
        with psycopg.connect(services.pg_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


def _foreign_schema(dsn: str) -> None:
    """The source tables as the application would create them: without reindex's mark."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for stmt in [*statements(DIRECTOR_DDL), *statements(HISTORIC_DDL)]:
            conn.execute(stmt.encode())


def _count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}".encode()).fetchone()
    assert row is not None
    return int(row[0])


def _env(dsn: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("REINDEX_")}
    return env | {"REINDEX_PG_DSN": dsn}


@pytest.mark.parametrize("autocommit", [True, False])
def test_source_connections_cannot_write(blank_db: str, autocommit: bool) -> None:
    _foreign_schema(blank_db)
    with (
        connect(blank_db, autocommit=autocommit) as conn,  # what verify uses
        pytest.raises(psycopg.errors.ReadOnlySqlTransaction),
    ):
        conn.execute(INSERT)
    options = make_conninfo(blank_db, options="-c search_path=director")
    with connect(options, autocommit=autocommit) as conn:  # options of the DSN are kept
        row = conn.execute("SHOW search_path").fetchone()
        assert row is not None
        assert row[0] == "director"
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TABLE director.x (i int)")
    with connect(blank_db, autocommit=autocommit, writable=True) as conn:
        conn.execute(INSERT)
    assert _count(blank_db, "director.scorecard_template_revisions") == 1


def test_the_producers_source_connections_cannot_write(blank_db: str) -> None:
    _foreign_schema(blank_db)
    conn = ScorecardSource._open(blank_db, "the director Postgres")
    try:
        assert conn.autocommit  # where conn.read_only alone had no effect
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute(INSERT)
    finally:
        conn.close()
    assert _count(blank_db, "director.scorecard_template_revisions") == 0


def test_seed_refuses_schemas_reindex_did_not_create(blank_db: str) -> None:
    _foreign_schema(blank_db)
    refused = run_reindex("seed", "--scorecards", "50", env=_env(blank_db))
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert "was not created by reindex" in lines[0]
    assert "--yes" in lines[0]
    assert _count(blank_db, "director.scorecards") == 0
    assert _count(blank_db, "director.scorecard_template_revisions") == 0

    forced = run_reindex("seed", "--scorecards", "50", "--yes", env=_env(blank_db))
    assert forced.returncode == 0, forced.stderr
    assert _count(blank_db, "director.scorecards") == 50


def test_seed_writes_where_it_created_the_schemas(blank_db: str) -> None:
    for expected in (50, 0):
        result = run_reindex("seed", "--scorecards", "50", env=_env(blank_db))
        assert result.returncode == 0, result.stderr
        assert f"seeded {expected} new scorecards" in result.stdout
    with psycopg.connect(blank_db) as conn:
        marks = conn.execute(
            "SELECT nspname, obj_description(oid, 'pg_namespace') FROM pg_namespace "
            "WHERE nspname IN ('director', 'historic') ORDER BY 1"
        ).fetchall()
    assert marks == [("director", CREATED_MARK), ("historic", CREATED_MARK)]


@pytest.fixture
def own_server() -> Iterator[str]:
    """A Postgres server of this test's own: the demo's database name is fixed, and the shared
    server may hold another run's demo. Under /tmp itself: under root the wheel runs the server
    as its own user, which cannot enter pytest's private temporary directories."""
    root = Path(tempfile.mkdtemp(prefix="reindex-safe-writes-"))
    root.chmod(0o755)
    try:
        yield stack.start_embedded_postgres(root)
    finally:
        stack.stop_embedded_postgres(root)
        shutil.rmtree(root, ignore_errors=True)


def test_demo_drops_only_the_database_it_created(own_server: str, tmp_path: Path) -> None:
    with psycopg.connect(own_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{DEMO_DATABASE}"'.encode())
    theirs = make_conninfo(own_server, dbname=DEMO_DATABASE)
    with psycopg.connect(theirs, autocommit=True) as conn:
        conn.execute("CREATE TABLE precious (i int)")
        conn.execute("INSERT INTO precious VALUES (1)")

    env = _env(own_server) | {"REINDEX_DEVSTACK_DIR": str(tmp_path / "stack")}
    refused = run_reindex(
        "demo",
        "--scorecards",
        "10",
        "--kafka-port",
        str(stack.free_port()),
        "--clickhouse-port",
        str(free_port_run(2)),
        env=env,
        timeout=600,
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("reindex:")]
    assert len(errors) == 1, refused.stderr
    assert "the demo did not create" in errors[0]
    assert "--yes" in errors[0]
    assert _count(theirs, "precious") == 1
    assert not (tmp_path / "stack" / "stack.json").exists()  # the stack it started is stopped

    with pytest.raises(BadInputError):
        _demo_dsn(own_server)
    demo_dsn = _demo_dsn(own_server, yes=True)  # what `demo --yes` does
    with psycopg.connect(demo_dsn) as conn:
        assert conn.execute("SELECT to_regclass('precious')").fetchone() == (None,)
    assert _demo_dsn(own_server) == demo_dsn  # now marked as the demo's: replaced freely


def test_demo_replaces_an_earlier_demos_database(own_server: str) -> None:
    """One made before databases were marked holds the source tables and nothing else."""
    with psycopg.connect(own_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{DEMO_DATABASE}"'.encode())
    _foreign_schema(make_conninfo(own_server, dbname=DEMO_DATABASE))
    dsn = _demo_dsn(own_server)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT to_regclass('director.scorecards')").fetchone() == (None,)
