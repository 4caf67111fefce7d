"""``reindex demo``: the main job on the embedded default, from nothing to a report.

Steps: bring the embedded stack up (or reuse a running one), create the schemas in a database of
its own (``reindex_demo`` on the Postgres server, ``reindex`` on the shards), seed synthetic data,
and report. It stops what it started unless ``keep`` is set.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from reindex_common.clickhouse import init_target_schema
from reindex_common.devstack import stack
from reindex_common.pg import connect, init_source_schema
from reindex_common.seed import SeedPlan, seed
from reindex_common.settings import Settings

DEMO_DATABASE = "reindex_demo"


@dataclass(frozen=True)
class DemoOptions:
    root: Path
    scorecards: int = 20_000
    seed: int = 42
    shards: int = 2
    keep: bool = False
    kafka_port: int = 9092
    clickhouse_port: int = 8123


def _demo_dsn(server_dsn: str) -> str:
    """The DSN of the demo's own database on the server ``server_dsn`` points at (created)."""
    with connect(server_dsn, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DEMO_DATABASE,)
        ).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DEMO_DATABASE}"'.encode())
    parts = urlsplit(server_dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{DEMO_DATABASE}", parts.query, ""))


def run_demo(options: DemoOptions, base: Settings, say: Callable[[str], None]) -> bool:
    """Run the demo; True when every step succeeded."""
    began = time.monotonic()
    already = stack.StackState.load(options.root.resolve())
    started_here = already is None or not stack.is_running(already.kafka)
    say("1/3 starting the embedded stack (Kafka-protocol broker, ClickHouse shards)…")
    state = stack.up(
        stack.StackConfig(
            root=options.root,
            shards=options.shards,
            kafka_port=options.kafka_port,
            clickhouse_port=options.clickhouse_port,
            pg_dsn=base.director_dsn,
        ),
        say=say,
    )
    try:
        dsn = _demo_dsn(state.pg_dsn)
        settings = base.replace(
            kafka_bootstrap=state.kafka_bootstrap,
            clickhouse_shards=",".join(state.shard_urls),
        )
        say("2/3 creating the source tables and the shard tables…")
        init_source_schema(dsn, dsn)
        init_target_schema(settings.shards, settings.clickhouse_database)
        say(f"3/3 seeding {options.scorecards:,} synthetic scorecards (seed {options.seed})…")
        result = seed(dsn, dsn, SeedPlan(options.scorecards, options.seed))
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM director.scorecards),"
                " (SELECT count(*) FROM historic.scorecard_scores)"
            ).fetchone()
        assert row is not None
        say(
            f"source: {row[0]:,} scorecards, {row[1]:,} scores in {DEMO_DATABASE} "
            f"({result.scorecards:,} new); created_at in [{result.start:%Y-%m-%d}, "
            f"{result.end:%Y-%m-%d})"
        )
        say(f"done in {time.monotonic() - began:.1f} s")
        return True
    finally:
        if options.keep or not started_here:
            say(
                'the stack keeps running: eval "$(reindex devstack env)"; '
                "stop it with: reindex devstack down"
            )
        else:
            stack.down(options.root)
            say("stopped the stack")
