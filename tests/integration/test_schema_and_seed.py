"""``reindex schema init`` and ``reindex seed`` against the real Postgres and shards."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable

import psycopg
from fix_services import run_reindex, settings_env

from reindex_common.clickhouse import shard_client
from reindex_common.schema import SCORE_COLUMNS, SCORECARD_COLUMNS
from reindex_common.settings import Settings


def reindex(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_reindex(*args, env=env, timeout=300)


def test_schema_init_is_idempotent_on_every_shard_and_the_source(
    make_settings: Callable[..., Settings], make_source_db: Callable[[], str]
) -> None:
    dsn = make_source_db()
    database = f"reindex_schema_{uuid.uuid4().hex[:8]}"
    settings = make_settings(pg_dsn=dsn, clickhouse_database=database)
    env = settings_env(settings)
    try:
        for _ in range(2):
            result = reindex("schema", "init", "--source", env=env)
            assert result.returncode == 0, result.stderr
        assert "2 shard(s)" in result.stdout
        for shard in settings.shards:
            with shard_client(shard) as client:
                for table, columns in (
                    ("scorecards", SCORECARD_COLUMNS),
                    ("scorecard_scores", SCORE_COLUMNS),
                ):
                    got = client.query(
                        "SELECT name FROM system.columns WHERE database = {d:String} "
                        "AND table = {t:String} ORDER BY position",
                        parameters={"d": database, "t": table},
                    ).result_columns
                    assert tuple(got[0]) == columns
                    engine = client.command(
                        "SELECT engine_full FROM system.tables WHERE database = {d:String} "
                        "AND name = {t:String}",
                        parameters={"d": database, "t": table},
                    )
                    assert str(engine).startswith("ReplacingMergeTree(updated_at)")
        with psycopg.connect(dsn) as conn:
            tables = conn.execute(
                "SELECT table_schema || '.' || table_name FROM information_schema.tables "
                "WHERE table_schema IN ('director', 'historic') ORDER BY 1"
            ).fetchall()
        assert [t for (t,) in tables] == [
            "director.scorecard_template_revisions",
            "director.scorecards",
            "historic.scorecard_scores",
        ]
    finally:
        for shard in settings.shards:
            with shard_client(shard) as client:
                client.command(f"DROP DATABASE IF EXISTS `{database}`")


def _fingerprint(dsn: str) -> tuple[object, ...]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            """
            SELECT
              (SELECT count(*) FROM director.scorecards),
              (SELECT count(*) FROM historic.scorecard_scores),
              (SELECT md5(string_agg(s::text, '|' ORDER BY scorecard_id))
                 FROM director.scorecards s),
              (SELECT md5(string_agg(h::text, '|' ORDER BY scorecard_id, criterion_id))
                 FROM historic.scorecard_scores h)
            """
        ).fetchone()
    assert row is not None
    return tuple(row)


def test_seed_is_deterministic_idempotent_and_realistic(
    make_settings: Callable[..., Settings], make_source_db: Callable[[], str]
) -> None:
    first, second = make_source_db(), make_source_db()
    for dsn in (first, second):
        result = reindex(
            "seed",
            "--scorecards",
            "3000",
            "--seed",
            "11",
            env=settings_env(make_settings(pg_dsn=dsn)),
        )
        assert result.returncode == 0, result.stderr
        assert "seeded 3000 new scorecards" in result.stdout
    assert _fingerprint(first) == _fingerprint(second)

    again = reindex(
        "seed",
        "--scorecards",
        "3000",
        "--seed",
        "11",
        env=settings_env(make_settings(pg_dsn=first)),
    )
    assert "seeded 0 new scorecards and 0 new scores" in again.stdout
    other = reindex(
        "seed", "--scorecards", "100", "--seed", "12", env=settings_env(make_settings(pg_dsn=first))
    )
    assert "seeded 100 new scorecards" in other.stdout

    with psycopg.connect(first) as conn:
        facts = conn.execute(
            """
            WITH counts AS (
              SELECT s.scorecard_id, count(h.criterion_id) AS n
              FROM director.scorecards s
              LEFT JOIN historic.scorecard_scores h USING (customer_id, profile_id, scorecard_id)
              GROUP BY s.scorecard_id)
            SELECT
              (SELECT count(DISTINCT customer_id) FROM director.scorecards),
              (SELECT count(DISTINCT type) FROM director.scorecard_template_revisions),
              (SELECT count(*) FROM counts WHERE n = 0),
              (SELECT max(n) FROM counts),
              (SELECT count(*) FROM director.scorecards WHERE score IS NULL),
              (SELECT count(*) FROM historic.scorecard_scores WHERE numeric_value IS NULL),
              (SELECT count(*) FROM historic.scorecard_scores WHERE comment ~ '["''\\\\]'),
              (SELECT count(*) FROM director.scorecards WHERE customer_id ~ '[^\\x01-\\x7f]'),
              (SELECT count(*) FROM director.scorecards
                 WHERE extract(microseconds FROM created_at)::int % 1000000 <> 0),
              (SELECT max(c) FROM (SELECT count(*) c FROM director.scorecards
                 GROUP BY created_at) t),
              (SELECT extract(day FROM max(created_at) - min(created_at))
                 FROM director.scorecards)
            """
        ).fetchone()
    assert facts is not None
    customers, types, empty, most, null_scores, null_values, quoted, unicode, micros, tie, days = (
        facts
    )
    assert customers >= 5
    assert types == 2
    assert empty > 0
    assert most >= 100
    assert null_scores > 0
    assert null_values > 0
    assert quoted > 0
    assert unicode > 0
    assert micros > 2900
    assert tie >= 20  # many scorecards share one created_at
    assert days > 90
