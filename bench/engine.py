"""The engine's own limit: each shard copies its rows straight from Postgres.

ClickHouse (chdb behind the shard's HTTP front) reads the source tables with the ``postgresql()``
table function and inserts into the same tables, each shard only its own customers
(``cityHash64(customer_id) % shards``). No Python touches a row: an upper bound for the pipeline.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from urllib.parse import urlsplit

from reindex_common.clickhouse import connect_shard
from reindex_common.settings import Settings, ShardEndpoint


def _pg(dsn: str, table: str, schema: str) -> str:
    parts = urlsplit(dsn)
    host = f"{parts.hostname or '127.0.0.1'}:{parts.port or 5432}"
    database = parts.path.lstrip("/") or "postgres"
    user, password = parts.username or "postgres", parts.password or ""
    return f"postgresql('{host}', '{database}', '{table}', '{user}', '{password}', '{schema}')"


def _copy_shard(
    settings: Settings, shard: ShardEndpoint, start: datetime, end: datetime, types: list[str]
) -> None:
    cards = _pg(settings.director_dsn, "scorecards", "director")
    revisions = _pg(settings.director_dsn, "scorecard_template_revisions", "director")
    scores = _pg(settings.historic_dsn, "scorecard_scores", "historic")
    where = (
        f"s.created_at >= toDateTime64('{start:%Y-%m-%d %H:%M:%S}', 6, 'UTC') "
        f"AND s.created_at < toDateTime64('{end:%Y-%m-%d %H:%M:%S}', 6, 'UTC') "
        f"AND r.type IN ({', '.join(repr(t) for t in types)}) "
        f"AND cityHash64(s.customer_id) % {len(settings.shards)} = {shard.index}"
    )
    join = (
        f"FROM {cards} AS s INNER JOIN {revisions} AS r ON r.customer_id = s.customer_id "
        "AND r.profile_id = s.profile_id AND r.template_id = s.template_id "
        "AND r.revision = s.template_revision"
    )
    client = connect_shard(shard, database=settings.clickhouse_database, timeout_s=600)
    try:
        client.command(
            "INSERT INTO scorecards SELECT s.customer_id, s.profile_id, s.scorecard_id, "
            "s.template_id, s.template_revision, r.type, r.title, s.conversation_id, "
            "s.agent_user_id, s.creator_user_id, s.score, s.submitted_at, s.created_at, "
            f"s.updated_at, 'engine', now64(6) {join} WHERE {where}"
        )
        client.command(
            "INSERT INTO scorecard_scores SELECT h.customer_id, h.profile_id, h.scorecard_id, "
            "h.criterion_id, r.type, r.type = 'PROCESS', s.conversation_id, s.agent_user_id, "
            "h.numeric_value, h.not_applicable, h.comment, h.created_at, h.updated_at, "
            f"'engine', now64(6) {join} INNER JOIN {scores} AS h ON h.customer_id = "
            "s.customer_id AND h.profile_id = s.profile_id AND h.scorecard_id = s.scorecard_id "
            f"WHERE {where}"
        )
    finally:
        client.close()


def run_engine_copy(settings: Settings, start: datetime, end: datetime, types: list[str]) -> None:
    """All shards copy their part at once (each shard is its own process)."""
    with ThreadPoolExecutor(len(settings.shards)) as pool:
        futures = [
            pool.submit(_copy_shard, settings, shard, start, end, types)
            for shard in settings.shards
        ]
        for future in futures:
            future.result()
