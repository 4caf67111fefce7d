"""The source (Postgres) and target (ClickHouse) DDL of SPEC §2-3, and ``schema init``.

Both are idempotent: every statement is ``IF NOT EXISTS``. The target tables add one table setting
to SPEC §3, ``non_replicated_deduplication_window``, so that a retried insert carrying the same
``insert_deduplication_token`` adds no duplicate part on a non-replicated MergeTree (replicated
tables deduplicate by default).
"""

from __future__ import annotations

from collections.abc import Sequence

DIRECTOR_DDL: tuple[str, ...] = (
    "CREATE SCHEMA IF NOT EXISTS director",
    """
    CREATE TABLE IF NOT EXISTS director.scorecard_template_revisions (
        customer_id  text        NOT NULL,
        profile_id   text        NOT NULL,
        template_id  text        NOT NULL,
        revision     text        NOT NULL,
        type         text        NOT NULL CHECK (type IN ('CONVERSATION', 'PROCESS')),
        title        text        NOT NULL DEFAULT '',
        created_at   timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (customer_id, profile_id, template_id, revision)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS director.scorecards (
        customer_id        text        NOT NULL,
        profile_id         text        NOT NULL,
        scorecard_id       text        NOT NULL,
        template_id        text        NOT NULL,
        template_revision  text        NOT NULL,
        conversation_id    text,
        agent_user_id      text,
        creator_user_id    text,
        score              double precision,
        submitted_at       timestamptz,
        created_at         timestamptz NOT NULL,
        updated_at         timestamptz NOT NULL,
        PRIMARY KEY (customer_id, profile_id, scorecard_id),
        FOREIGN KEY (customer_id, profile_id, template_id, template_revision)
            REFERENCES director.scorecard_template_revisions
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS scorecards_created_at_idx
        ON director.scorecards (created_at, scorecard_id)
    """,
)

# ``historic.*`` may live in another database than ``director.*`` (REINDEX_HISTORIC_PG_DSN).
HISTORIC_DDL: tuple[str, ...] = (
    "CREATE SCHEMA IF NOT EXISTS historic",
    """
    CREATE TABLE IF NOT EXISTS historic.scorecard_scores (
        customer_id     text        NOT NULL,
        profile_id      text        NOT NULL,
        scorecard_id    text        NOT NULL,
        criterion_id    text        NOT NULL,
        numeric_value   double precision,
        not_applicable  boolean     NOT NULL DEFAULT false,
        comment         text,
        created_at      timestamptz NOT NULL,
        updated_at      timestamptz NOT NULL,
        PRIMARY KEY (customer_id, profile_id, scorecard_id, criterion_id)
    )
    """,
)

# The two target tables of SPEC §3: (column, ClickHouse type), in table order. The DDL below and
# the consumer's inserts (which send these types, sparing a DESCRIBE per insert) both use them.
SCORECARD_SCHEMA: tuple[tuple[str, str], ...] = (
    ("customer_id", "String"),
    ("profile_id", "String"),
    ("scorecard_id", "String"),
    ("template_id", "String"),
    ("template_revision", "String"),
    ("scorecard_type", "LowCardinality(String)"),
    ("template_title", "String"),
    ("conversation_id", "Nullable(String)"),
    ("agent_user_id", "Nullable(String)"),
    ("creator_user_id", "Nullable(String)"),
    ("score", "Nullable(Float64)"),
    ("submitted_at", "Nullable(DateTime64(6, 'UTC'))"),
    ("created_at", "DateTime64(6, 'UTC')"),
    ("updated_at", "DateTime64(6, 'UTC')"),
    ("reindex_job_id", "String"),
    ("reindexed_at", "DateTime64(6, 'UTC')"),
)

SCORE_SCHEMA: tuple[tuple[str, str], ...] = (
    ("customer_id", "String"),
    ("profile_id", "String"),
    ("scorecard_id", "String"),
    ("criterion_id", "String"),
    ("scorecard_type", "LowCardinality(String)"),
    ("is_process_scorecard", "UInt8"),
    ("conversation_id", "Nullable(String)"),
    ("agent_user_id", "Nullable(String)"),
    ("numeric_value", "Nullable(Float64)"),
    ("not_applicable", "UInt8"),
    ("comment", "Nullable(String)"),
    ("created_at", "DateTime64(6, 'UTC')"),
    ("updated_at", "DateTime64(6, 'UTC')"),
    ("reindex_job_id", "String"),
    ("reindexed_at", "DateTime64(6, 'UTC')"),
)

SCORECARD_COLUMNS: tuple[str, ...] = tuple(name for name, _ in SCORECARD_SCHEMA)
SCORE_COLUMNS: tuple[str, ...] = tuple(name for name, _ in SCORE_SCHEMA)
SCORECARD_TYPES: tuple[str, ...] = tuple(kind for _, kind in SCORECARD_SCHEMA)
SCORE_TYPES: tuple[str, ...] = tuple(kind for _, kind in SCORE_SCHEMA)

DEDUP_WINDOW = 10_000


def _table(database: str, name: str, schema: tuple[tuple[str, str], ...], key: str) -> str:
    columns = ",\n    ".join(f"{column} {kind}" for column, kind in schema)
    return (
        f"CREATE TABLE IF NOT EXISTS `{database}`.{name} (\n    {columns}\n)\n"
        f"ENGINE = ReplacingMergeTree(updated_at)\nORDER BY ({key})\n"
        f"SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}"
    )


def target_ddl(database: str) -> tuple[str, ...]:
    """``CREATE`` statements for the database and both tables of SPEC §3 on one shard."""
    return (
        f"CREATE DATABASE IF NOT EXISTS `{database}`",
        _table(database, "scorecards", SCORECARD_SCHEMA, "customer_id, profile_id, scorecard_id"),
        _table(
            database,
            "scorecard_scores",
            SCORE_SCHEMA,
            "customer_id, profile_id, scorecard_id, criterion_id",
        ),
    )


def statements(ddl: Sequence[str]) -> list[str]:
    """The DDL with its indentation folded, one statement per entry."""
    return [" ".join(stmt.split()) for stmt in ddl]
