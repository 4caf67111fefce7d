"""``reindex check``: can the reindexer reach and use everything it is configured with?

One :class:`Check` per service: both Postgres DSNs (the source tables readable), Kafka (the
reindexer's topics and their partitions), every shard (the database, both tables with the SPEC
§3 columns and a ReplacingMergeTree engine), and the workers' consumer group (live members and
how many messages it is behind). Every check runs, whatever failed before it, so that one run
names every problem. Nothing is created or changed. The effective settings come with it, masked,
each with where its value came from (environment, ``.env``, default).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from clickhouse_connect.driver.exceptions import ClickHouseError
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from dotenv import dotenv_values
from psycopg import sql
from pydantic import SecretStr

from reindex_common.clickhouse import shard_client, wrap_error
from reindex_common.errors import ReindexError
from reindex_common.kafka import existing_topics, reindexer_topics
from reindex_common.pg import connect, first_line
from reindex_common.schema import SCORE_SCHEMA, SCORECARD_SCHEMA
from reindex_common.settings import Settings, ShardEndpoint, mask_url
from reindex_common.written import group_offsets_reader, read_committed

DIRECTOR_TABLES = ("director.scorecard_template_revisions", "director.scorecards")
HISTORIC_TABLES = ("historic.scorecard_scores",)
TARGET_TABLES = {"scorecards": SCORECARD_SCHEMA, "scorecard_scores": SCORE_SCHEMA}
TIMEOUT_S = 10.0
LIVE_STATES = frozenset({"STABLE", "PREPARING_REBALANCE", "COMPLETING_REBALANCE"})


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok' if self.ok else 'FAIL':<4}  {self.name:<22} {self.detail}"


@dataclass(frozen=True)
class Setting:
    variable: str
    value: str  # masked
    origin: str  # "environment", ".env" or "default"

    def line(self) -> str:
        return f"      setting {self.variable}={self.value} ({self.origin})"


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in a fixed order; none raises."""
    # An unreachable shard is a finding here, reported on its line: not a driver warning too.
    with _quiet("urllib3", "clickhouse_connect"):
        return _run_checks(settings)


@contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _run_checks(settings: Settings) -> list[Check]:
    checks = [
        _postgres("postgres director", settings.director_dsn, DIRECTOR_TABLES),
        _postgres("postgres historic", settings.historic_dsn, HISTORIC_TABLES),
    ]
    topics = _kafka(settings)
    checks += topics
    checks += [_shard(settings, shard) for shard in settings.shards]
    if topics[0].ok:
        checks.append(_group(settings))
    else:
        checks.append(Check("consumer group", False, f"{settings.group_id}: Kafka unreachable"))
    return checks


def _guard(name: str, body: Callable[[], Check]) -> Check:
    try:
        return body()
    except ReindexError as e:
        return Check(name, False, str(e))


def _postgres(name: str, dsn: str, tables: tuple[str, ...]) -> Check:
    def body() -> Check:
        unreadable = []
        what = name.replace("postgres", "the") + " Postgres"
        with connect(dsn, what=what, autocommit=True) as conn:
            for table in tables:
                query = sql.SQL("SELECT 1 FROM {} LIMIT 1").format(
                    sql.Identifier(*table.split("."))
                )
                try:
                    conn.execute(query)
                except psycopg.Error as e:
                    unreadable.append(f"{table}: {first_line(e)}")
        if unreadable:
            return Check(name, False, f"{mask_url(dsn)}: cannot read {'; '.join(unreadable)}")
        return Check(name, True, f"{mask_url(dsn)}: {', '.join(tables)} readable")

    return _guard(name, body)


def _kafka(settings: Settings) -> list[Check]:
    try:
        present = existing_topics(settings, timeout_s=TIMEOUT_S)
    except ReindexError as e:
        return [Check("kafka", False, str(e))]
    checks = [Check("kafka", True, f"{settings.kafka_bootstrap}: reachable")]
    for spec in reindexer_topics(settings):
        partitions = present.get(spec.name)
        if partitions is None:
            checks.append(
                Check(
                    "kafka topic",
                    False,
                    f"{spec.name}: missing (produce, serve and consume create it)",
                )
            )
        else:
            checks.append(Check("kafka topic", True, f"{spec.name}: {partitions} partition(s)"))
    return checks


def _shard(settings: Settings, shard: ShardEndpoint) -> Check:
    name = f"shard {shard.index}"
    database = settings.clickhouse_database

    def body() -> Check:
        problems: list[str] = []
        try:
            with shard_client(shard, timeout_s=TIMEOUT_S) as client:
                params = {"db": database}
                if not client.command(
                    "SELECT count() FROM system.databases WHERE name = {db:String}",
                    parameters=params,
                ):
                    return Check(name, False, f"{shard.url}: database {database} missing")
                engines: dict[str, str] = {
                    str(r[0]): str(r[1])
                    for r in client.query(
                        "SELECT name, engine FROM system.tables WHERE database = {db:String}",
                        parameters=params,
                    ).result_rows
                }
                columns: dict[str, dict[str, str]] = {}
                for table, column, kind in client.query(
                    "SELECT table, name, type FROM system.columns WHERE database = {db:String}",
                    parameters=params,
                ).result_rows:
                    columns.setdefault(table, {})[column] = kind
        except ClickHouseError as e:
            raise wrap_error(e, shard, "answer the check") from e
        for table, schema in TARGET_TABLES.items():
            if table not in engines:
                problems.append(f"table {database}.{table} missing")
                continue
            if not str(engines[table]).endswith("ReplacingMergeTree"):
                problems.append(
                    f"{database}.{table} has engine {engines[table]}, not ReplacingMergeTree"
                )
            have = columns.get(table, {})
            for column, kind in schema:
                if column not in have:
                    problems.append(f"{database}.{table}.{column} missing")
                elif have[column] != kind:
                    problems.append(f"{database}.{table}.{column} is {have[column]}, not {kind}")
        if problems:
            return Check(name, False, f"{shard.url}: {'; '.join(problems)}")
        return Check(
            name,
            True,
            f"{shard.url}: {database}.scorecards and {database}.scorecard_scores as SPEC §3 says",
        )

    return _guard(name, body)


def _group(settings: Settings) -> Check:
    name = "consumer group"
    group = settings.group_id
    topic = settings.scorecards_topic
    admin = AdminClient(settings.kafka_client_config())
    try:
        described = admin.describe_consumer_groups([group], request_timeout=TIMEOUT_S)[group]
        info = described.result(timeout=TIMEOUT_S)
    except KafkaException as e:
        return Check(name, False, f"{group}: cannot describe it: {e.args[0].str()}")
    members = len(info.members)
    state = getattr(info.state, "name", str(info.state))
    # Some brokers (Tansu) describe a live group as STABLE without listing its members.
    alive = members > 0 or state in LIVE_STATES
    try:
        behind = _lag(settings, topic)
    except ReindexError as e:
        return Check(name, False, f"{group}: {e}")
    lag = "?" if behind is None else f"{behind:,}"
    who = f"{members} live member(s)" if members else ("live" if alive else "no live member")
    detail = f"{group}: {who} ({state}), {lag} message(s) behind on {topic}"
    if not alive:
        return Check(name, False, detail + "; no worker runs (start `reindex consume`)")
    return Check(name, True, detail)


def _lag(settings: Settings, topic: str) -> int | None:
    """Messages of ``topic`` after the group's committed offsets; None when it is missing."""
    watcher = Consumer({**settings.kafka_client_config(), "group.id": settings.group_id})
    try:
        metadata = watcher.list_topics(topic, timeout=TIMEOUT_S).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return None
        partitions = sorted(metadata.partitions)
        ends = {
            p: watcher.get_watermark_offsets(TopicPartition(topic, p), timeout=TIMEOUT_S)
            for p in partitions
        }
    except KafkaException as e:
        raise ReindexError(f"cannot read the offsets of {topic}: {e.args[0].str()}") from e
    finally:
        watcher.close()
    reader = group_offsets_reader(settings)
    try:
        committed = read_committed(reader, topic, partitions)
    finally:
        reader.close()
    return sum(high - max(committed.get(p, -1), low) for p, (low, high) in ends.items())


# --- settings ----------------------------------------------------------------------------------


def effective_settings(settings: Settings, env_file: Path = Path(".env")) -> list[Setting]:
    """Each setting's value (secrets masked) and where it came from."""
    environ = {k.upper(): v for k, v in os.environ.items()}
    dotenv = (
        {k.upper(): v for k, v in dotenv_values(env_file).items()} if env_file.is_file() else {}
    )
    out = []
    for field in type(settings).model_fields:
        variable = f"REINDEX_{field.upper()}"
        origin = (
            "environment" if variable in environ else ".env" if variable in dotenv else "default"
        )
        value = getattr(settings, field)
        if field == "historic_pg_dsn":  # show what it defaults to: REINDEX_PG_DSN
            value = settings.historic_dsn
        elif field == "consumer_group":
            value = settings.group_id
        out.append(Setting(variable, _masked(field, value), origin))
    return out


def _masked(field: str, value: Any) -> str:
    if value is None:
        return ""
    secret = value.get_secret_value() if isinstance(value, SecretStr) else value
    if isinstance(secret, str) and field in ("pg_dsn", "historic_pg_dsn", "clickhouse_shards"):
        return ",".join(mask_url(u.strip()) for u in secret.split(",") if u.strip())
    if isinstance(value, SecretStr):
        return "***" if secret else ""
    return str(value)
