"""The engine's own limit: each shard's part copied by ClickHouse straight from Postgres.

ClickHouse (chdb, in-process) reads the source tables with the ``postgresql()`` table function and
inserts into the target tables, one process per shard (as the dev stack runs one engine per
shard), each only its shard's customers (``cityHash64(customer_id) % shards``). No Python touches
a row: an upper bound for the pipeline.

The engine runs here rather than behind the shards' HTTP fronts, which refuse table functions that
reach other servers (``postgresql()`` among them). Each process writes into its own temporary
data directory, which is removed afterwards; the time is that of the slowest shard's copy, not of
starting the processes.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from reindex_common.schema import statements, target_ddl
from reindex_common.settings import Settings


def _pg(dsn: str, table: str, schema: str) -> str:
    parts = urlsplit(dsn)
    host = f"{parts.hostname or '127.0.0.1'}:{parts.port or 5432}"
    database = parts.path.lstrip("/") or "postgres"
    user, password = parts.username or "postgres", parts.password or ""
    return f"postgresql('{host}', '{database}', '{table}', '{user}', '{password}', '{schema}')"


def _copy_statements(
    settings: Settings, shard_index: int, start: datetime, end: datetime, types: list[str]
) -> list[str]:
    cards = _pg(settings.director_dsn, "scorecards", "director")
    revisions = _pg(settings.director_dsn, "scorecard_template_revisions", "director")
    scores = _pg(settings.historic_dsn, "scorecard_scores", "historic")
    where = (
        f"s.created_at >= toDateTime64('{start:%Y-%m-%d %H:%M:%S}', 6, 'UTC') "
        f"AND s.created_at < toDateTime64('{end:%Y-%m-%d %H:%M:%S}', 6, 'UTC') "
        f"AND r.type IN ({', '.join(repr(t) for t in types)}) "
        f"AND cityHash64(s.customer_id) % {len(settings.shards)} = {shard_index}"
    )
    join = (
        f"FROM {cards} AS s INNER JOIN {revisions} AS r ON r.customer_id = s.customer_id "
        "AND r.profile_id = s.profile_id AND r.template_id = s.template_id "
        "AND r.revision = s.template_revision"
    )
    database = settings.clickhouse_database
    cards_columns = (
        "s.customer_id, s.profile_id, s.scorecard_id, s.template_id, s.template_revision, "
        "r.type, r.title, s.conversation_id, s.agent_user_id, s.creator_user_id, s.score, "
        "s.submitted_at, s.created_at, s.updated_at, 'engine', now64(6)"
    )
    scores_columns = (
        "h.customer_id, h.profile_id, h.scorecard_id, h.criterion_id, r.type, "
        "r.type = 'PROCESS', s.conversation_id, s.agent_user_id, h.numeric_value, "
        "h.not_applicable, h.comment, h.created_at, h.updated_at, 'engine', now64(6)"
    )
    scores_join = (
        f"INNER JOIN {scores} AS h ON h.customer_id = s.customer_id "
        "AND h.profile_id = s.profile_id AND h.scorecard_id = s.scorecard_id"
    )
    return [
        f"INSERT INTO `{database}`.scorecards SELECT {cards_columns} {join} WHERE {where}",
        f"INSERT INTO `{database}`.scorecard_scores SELECT {scores_columns} {join} "
        f"{scores_join} WHERE {where}",
    ]


@dataclass(frozen=True)
class EngineCopy:
    """What the engine copied: the slowest shard's time, and the rows it wrote in all."""

    seconds: float
    scorecards: int
    scores: int


def _copy_in_process(database: str, copies: list[str]) -> tuple[float, int, int]:
    """In a fresh process: create the target tables, run the copies; their time and rows."""
    os.environ["TZ"] = "UTC"  # the engine's server timezone, read when it loads
    time.tzset()
    import chdb.session  # noqa: PLC0415 - loaded in the worker process only, after TZ is set

    data_dir = tempfile.mkdtemp(prefix="reindex-bench-engine-")
    session: Any = chdb.session.Session(path=data_dir)  # type: ignore[no-untyped-call]
    try:
        for stmt in statements(target_ddl(database)):
            session.query(stmt)
        began = time.monotonic()
        for sql in copies:
            session.query(sql)
        seconds = time.monotonic() - began
        counts = [
            int(bytes(session.query(f"SELECT count() FROM `{database}`.{table}").bytes()))
            for table in ("scorecards", "scorecard_scores")
        ]
        return seconds, counts[0], counts[1]
    finally:
        session.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def run_engine_copy(
    settings: Settings, start: datetime, end: datetime, types: list[str]
) -> EngineCopy:
    """All shards' parts copied at once, one engine process each."""
    shards = range(len(settings.shards))
    context = multiprocessing.get_context("spawn")  # chdb allows one session per process
    with ProcessPoolExecutor(len(shards), mp_context=context) as pool:
        futures = [
            pool.submit(
                _copy_in_process,
                settings.clickhouse_database,
                _copy_statements(settings, i, start, end, types),
            )
            for i in shards
        ]
        results = [future.result() for future in futures]
    return EngineCopy(
        seconds=max(r[0] for r in results),
        scorecards=sum(r[1] for r in results),
        scores=sum(r[2] for r in results),
    )
