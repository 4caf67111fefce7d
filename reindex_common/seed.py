"""A deterministic generator of realistic source rows (SPEC §2) for the demo, tests and benchmarks.

The same ``seed`` always yields the same rows, and seeding twice with the same seed adds nothing
(rows are copied into temporary tables, then inserted with ``ON CONFLICT DO NOTHING``). The data
has what production data has and naive code gets wrong: several customers and profiles, both
scorecard types, scorecards with no scores and with hundreds, NULLs in every nullable column,
Unicode, quotes, backslashes and newlines in text, microsecond timestamps spread over months, and
scorecards that share one ``created_at``.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg

from reindex_common.errors import SourceUnavailableError
from reindex_common.pg import connect, first_line

# A few names that test quoting and Unicode, and enough others to spread over the shards.
CUSTOMERS = (
    "acme-corp",
    "globex",
    "initech",
    "umbrella",
    "kunde-müller-gmbh",
    "東京-support",
    "o'brien & sons",
    *(f"customer-{i:03d}" for i in range(33)),
)

TITLES = (
    "Onboarding call",
    'Escalation "priority" review',
    "Qualité du service",
    "Compliance — refunds",
    "Back\\slash audit",
    "Проверка качества",
    "Ventas 🚀 Q3",
)

COMMENTS = (
    "Great job",
    'Customer said "thanks" twice',
    "Didn't verify the account",
    "Multi-line\ncomment\twith tab",
    "Path C:\\temp\\notes",
    "Überprüfung nötig",
    "顧客満足",
    "emoji 👍🏽",
    "",
)

SCORECARD_COLUMNS = (
    "customer_id",
    "profile_id",
    "scorecard_id",
    "template_id",
    "template_revision",
    "conversation_id",
    "agent_user_id",
    "creator_user_id",
    "score",
    "submitted_at",
    "created_at",
    "updated_at",
)
SCORE_COLUMNS = (
    "customer_id",
    "profile_id",
    "scorecard_id",
    "criterion_id",
    "numeric_value",
    "not_applicable",
    "comment",
    "created_at",
    "updated_at",
)
TEMPLATE_COLUMNS = (
    "customer_id",
    "profile_id",
    "template_id",
    "revision",
    "type",
    "title",
    "created_at",
)


@dataclass(frozen=True)
class SeedPlan:
    """What to generate: ``scorecards`` rows created in ``[start, start + days)``."""

    scorecards: int
    seed: int = 42
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    days: int = 180
    mean_scores: int = 10

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=self.days)


@dataclass(frozen=True)
class SeedResult:
    scorecards: int
    scores: int
    templates: int
    start: datetime
    end: datetime


Template = tuple[str, str, str, str, str, str, datetime]


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _templates(rng: random.Random, plan: SeedPlan) -> list[Template]:
    rows: list[Template] = []
    for customer in CUSTOMERS:
        for p in range(rng.randint(1, 3)):
            profile = f"{customer}/profile-{p}"
            for t in range(3):
                template_id = f"tpl-{_uuid(rng)[:8]}-{t}"
                kind = "PROCESS" if rng.random() < 0.6 else "CONVERSATION"
                for revision in range(1, rng.randint(1, 3) + 1):
                    rows.append(
                        (
                            customer,
                            profile,
                            template_id,
                            str(revision),
                            kind,
                            rng.choice(TITLES),
                            plan.start - timedelta(days=30),
                        )
                    )
    return rows


def _micros(rng: random.Random, start: datetime, span: timedelta) -> datetime:
    return start + timedelta(microseconds=rng.randrange(int(span.total_seconds() * 1_000_000)))


def _score_count(rng: random.Random, mean: int) -> int:
    draw = rng.random()
    if draw < 0.05:
        return 0
    if draw < 0.06:
        return rng.randint(100, 350)
    return rng.randint(1, max(1, 2 * mean - 1))


def generate(
    plan: SeedPlan,
) -> tuple[list[Template], Iterator[tuple[tuple[object, ...], list[tuple[object, ...]]]]]:
    """The template rows, and a lazy stream of (scorecard row, its score rows)."""
    rng = random.Random(plan.seed)
    templates = _templates(rng, plan)
    span = timedelta(days=plan.days)

    def scorecards() -> Iterator[tuple[tuple[object, ...], list[tuple[object, ...]]]]:
        shared_created_at = _micros(rng, plan.start, span)
        for _ in range(plan.scorecards):
            customer, profile, template_id, revision, kind, _title, _ = rng.choice(templates)
            # About 2% share one instant, so paging must break ties on scorecard_id.
            created = shared_created_at if rng.random() < 0.02 else _micros(rng, plan.start, span)
            updated = created + timedelta(microseconds=rng.randrange(0, 86_400_000_000))
            scorecard_id = _uuid(rng)
            submitted = None if rng.random() < 0.2 else updated
            card: tuple[object, ...] = (
                customer,
                profile,
                scorecard_id,
                template_id,
                revision,
                f"conv-{_uuid(rng)}" if kind == "CONVERSATION" else None,
                None if rng.random() < 0.1 else f"agent-{rng.randint(1, 500)}",
                None if rng.random() < 0.1 else f"user-{rng.randint(1, 50)}",
                None if rng.random() < 0.15 else round(rng.uniform(0, 100), rng.randint(0, 6)),
                submitted,
                created,
                updated,
            )
            scores: list[tuple[object, ...]] = []
            for c in range(_score_count(rng, plan.mean_scores)):
                value = None if rng.random() < 0.1 else rng.choice((0.0, 1.0, rng.random() * 10))
                scores.append(
                    (
                        customer,
                        profile,
                        scorecard_id,
                        f"criterion-{c:03d}",
                        value,
                        rng.random() < 0.05,
                        None if rng.random() < 0.5 else rng.choice(COMMENTS),
                        created + timedelta(microseconds=rng.randrange(0, 1_000_000)),
                        updated,
                    )
                )
            yield card, scores

    return templates, scorecards()


def _copy_then_merge(
    cur: psycopg.Cursor[tuple[object, ...]],
    table: str,
    columns: tuple[str, ...],
    rows: list[tuple[object, ...]],
) -> int:
    """COPY rows into a temp table shaped like ``table``, then insert the new ones; count them."""
    staging = "seed_" + table.replace(".", "_")
    cols = ", ".join(columns)
    cur.execute(f"CREATE TEMP TABLE {staging} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP")
    with cur.copy(f"COPY {staging} ({cols}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    cur.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {staging} ON CONFLICT DO NOTHING")
    return cur.rowcount


def seed(director_dsn: str, historic_dsn: str, plan: SeedPlan) -> SeedResult:
    """Write the plan's rows to Postgres (the source schema must exist) and count what was new."""
    templates, stream = generate(plan)
    cards: list[tuple[object, ...]] = []
    scores: list[tuple[object, ...]] = []
    for card, card_scores in stream:
        cards.append(card)
        scores.extend(card_scores)
    try:
        with connect(director_dsn, writable=True) as conn, conn.cursor() as cur:
            new_templates = _copy_then_merge(
                cur,
                "director.scorecard_template_revisions",
                TEMPLATE_COLUMNS,
                list(templates),
            )
            new_cards = _copy_then_merge(cur, "director.scorecards", SCORECARD_COLUMNS, cards)
            # Fresh statistics, as autovacuum would give them: without, the planner sorts the
            # whole selection for every page instead of walking the created_at index.
            cur.execute("ANALYZE director.scorecard_template_revisions")
            cur.execute("ANALYZE director.scorecards")
        with connect(historic_dsn, writable=True) as conn, conn.cursor() as cur:
            new_scores = _copy_then_merge(cur, "historic.scorecard_scores", SCORE_COLUMNS, scores)
            cur.execute("ANALYZE historic.scorecard_scores")
    except psycopg.Error as e:
        raise SourceUnavailableError(f"cannot seed the source tables: {first_line(e)}") from e
    return SeedResult(new_cards, new_scores, new_templates, plan.start, plan.end)
