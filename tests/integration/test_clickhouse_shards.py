"""Each shard of the stack takes the SPEC §3 tables, 200,000-row inserts and returns real errors."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError
from fix_services import Services

from reindex_common.clickhouse import init_target_schema, shard_client
from reindex_common.schema import SCORE_COLUMNS, SCORECARD_COLUMNS
from reindex_common.settings import Settings, ShardEndpoint

ROWS = 200_000
T0 = datetime(2026, 1, 1, tzinfo=UTC)
TEXTS = ["plain", "ü ß 東京 🚀", "it's", 'say "hi"', "back\\slash", "tab\tnew\nline", ""]


def _naive(value: object) -> object:
    """clickhouse-connect returns DateTime64(6, 'UTC') as naive or aware UTC: compare as naive."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def _scorecard_rows(rng: random.Random) -> list[tuple[object, ...]]:
    rows = []
    for i in range(ROWS):
        created = T0 + timedelta(microseconds=rng.randrange(10**13))
        kind = "PROCESS" if i % 3 else "CONVERSATION"
        rows.append(
            (
                f"cust-{i % 17}-{rng.choice(TEXTS)}",
                f"profile-{i % 5}",
                f"sc-{i:07d}",
                "tpl",
                str(i % 4),
                kind,
                rng.choice(TEXTS),
                None if kind == "PROCESS" else f"conv-{i}",
                None if i % 7 == 0 else f"agent-{i % 100}",
                None if i % 11 == 0 else rng.choice(TEXTS),
                None if i % 5 == 0 else rng.uniform(-1e6, 1e6),
                None if i % 4 == 0 else created + timedelta(seconds=1),
                created,
                created + timedelta(microseconds=rng.randrange(10**9)),
                "job-x",
                T0,
            )
        )
    return rows


def _score_rows(rng: random.Random) -> list[tuple[object, ...]]:
    rows = []
    for i in range(ROWS):
        created = T0 + timedelta(microseconds=rng.randrange(10**13))
        kind = "PROCESS" if i % 2 else "CONVERSATION"
        rows.append(
            (
                f"cust-{i % 13}",
                "p",
                f"sc-{i // 10:07d}",
                f"crit-{i % 10}-{rng.choice(TEXTS)}",
                kind,
                1 if kind == "PROCESS" else 0,
                None if kind == "PROCESS" else f"conv-{i}",
                None if i % 3 == 0 else "agent",
                None if i % 6 == 0 else rng.random() * 10,
                i % 2,
                None if i % 4 == 0 else rng.choice(TEXTS),
                created,
                created + timedelta(microseconds=1),
                "job-y",
                T0,
            )
        )
    return rows


@pytest.fixture(scope="module")
def rows() -> dict[str, list[tuple[object, ...]]]:
    rng = random.Random(7)
    return {"scorecards": _scorecard_rows(rng), "scorecard_scores": _score_rows(rng)}


@pytest.fixture(params=[0, 1], ids=["shard0", "shard1"])
def shard_database(
    request: pytest.FixtureRequest, services: Services
) -> Iterator[tuple[ShardEndpoint, str]]:
    shard = Settings(clickhouse_shards=",".join(services.shard_urls)).shards[request.param]
    database = f"reindex_shardtest_{uuid.uuid4().hex[:8]}"
    init_target_schema([shard], database)
    yield shard, database
    with shard_client(shard) as client:
        client.command(f"DROP DATABASE IF EXISTS `{database}`")


COLUMNS = {"scorecards": SCORECARD_COLUMNS, "scorecard_scores": SCORE_COLUMNS}
KEYS = {"scorecards": 3, "scorecard_scores": 4}  # length of each table's ORDER BY


@pytest.mark.parametrize("compress", ["lz4", False], ids=["lz4", "uncompressed"])
def test_200k_rows_round_trip_with_every_type(
    shard_database: tuple[ShardEndpoint, str],
    rows: dict[str, list[tuple[object, ...]]],
    compress: str | bool,
) -> None:
    shard, database = shard_database
    with shard_client(shard, database=database, compress=compress) as client:
        for table, data in rows.items():
            columns = COLUMNS[table]
            summary = client.insert(table, data, column_names=list(columns))
            assert summary.written_rows == ROWS
            key = KEYS[table]
            select = f"SELECT {', '.join(columns)} FROM {table} FINAL"
            back = client.query(f"{select} ORDER BY {', '.join(columns[:key])}").result_rows
            assert len(back) == ROWS
            want = sorted(data, key=lambda r: tuple(str(v) for v in r[:key]))
            assert [tuple(map(_naive, r)) for r in back] == [tuple(map(_naive, r)) for r in want]


def test_bad_query_raises_database_error_with_the_engine_code(
    shard_database: tuple[ShardEndpoint, str],
) -> None:
    shard, database = shard_database
    with shard_client(shard, database=database) as client:
        with pytest.raises(DatabaseError, match="Code: 60") as unknown_table:
            client.query("SELECT * FROM no_such_table")
        assert "UNKNOWN_TABLE" in str(unknown_table.value)
        with pytest.raises(DatabaseError, match="Code: 62"):
            client.query("SELEKT 1")
        # the shard still answers after errors
        assert client.command("SELECT 1") == 1
