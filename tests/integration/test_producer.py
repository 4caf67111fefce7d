"""The producer against real Postgres and the real broker: selection, paging, publishing, resume,
the request service, bad input and unreachable services.

Every test has its own topic prefix and its own Postgres database(s). What reached Kafka is read
back from the topics and compared with Postgres, field by field.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from fix_services import run_reindex, settings_env
from psycopg.rows import dict_row

import producer.service
from producer.cli_options import build_request
from producer.job import MAX_PAGES_IN_FLIGHT, JobOptions, run_job
from producer.service import RequestService, ServeOptions, serve_group
from reindex_common.errors import SourceUnavailableError
from reindex_common.jobs import JobCheckpoint, read_checkpoint
from reindex_common.kafka import ensure_topics, reindexer_topics
from reindex_common.messages import DlqMessage, ReindexRequest, ScorecardMessage
from reindex_common.seed import SeedPlan, seed
from reindex_common.settings import Settings

START = datetime(2026, 3, 1, tzinfo=UTC)
END = datetime(2026, 3, 2, tzinfo=UTC)
US = timedelta(microseconds=1)

MakeSettings = Callable[..., Settings]
MakeDb = Callable[[], str]
Key = tuple[str, str, str]


# --- reading Kafka back ------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes


def read_records(settings: Settings, topic: str, timeout_s: float = 60) -> list[Record]:
    """Every message of ``topic`` from the beginning to its end (all partitions).

    The end is the end-of-partition event, not the high watermark: Tansu reports the base
    offset of the last batch + 1 as the high watermark, short of the end when that batch holds
    several messages.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"test-reader-{uuid.uuid4().hex[:8]}",  # never joins: assigned by hand
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
        }
    )
    try:
        found = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if found is None or found.error is not None:
            return []
        pending = set()
        for p in found.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                pending.add(p)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in pending])
        records = []
        deadline = time.monotonic() + timeout_s
        while pending:
            assert time.monotonic() < deadline, f"reading {topic}: still waiting for {pending}"
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            partition, offset, error = msg.partition(), msg.offset(), msg.error()
            assert partition is not None
            if error is not None:
                assert error.code() == KafkaError._PARTITION_EOF, error
                pending.discard(partition)
                continue
            assert offset is not None
            records.append(Record(partition, offset, msg.key(), msg.value() or b""))
        return records
    finally:
        consumer.close()


def scorecard_messages(
    settings: Settings, job_id: str | None = None
) -> list[tuple[Record, ScorecardMessage]]:
    out = []
    for record in read_records(settings, settings.scorecards_topic):
        message = ScorecardMessage.model_validate_json(record.value)
        # Floats travel as JSON numbers or the constants NaN/Infinity, never as strings (which
        # the model would also accept).
        raw = json.loads(record.value)
        floats = [raw["scorecard"]["score"], *(s["numeric_value"] for s in raw["scores"])]
        assert all(f is None or isinstance(f, int | float) for f in floats), record.value
        if job_id is None or message.job_id == job_id:
            out.append((record, message))
    return out


def key_of(message: ScorecardMessage) -> Key:
    s = message.scorecard
    return (s.customer_id, s.profile_id, s.scorecard_id)


def topics_with_prefix(settings: Settings) -> list[str]:
    metadata = AdminClient({"bootstrap.servers": settings.kafka_bootstrap}).list_topics(timeout=10)
    return [t for t in metadata.topics if t.startswith(settings.topic_prefix)]


def committed_offset(settings: Settings, group: str) -> int:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group})
    try:
        (tp,) = consumer.committed([TopicPartition(settings.requests_topic, 0)], timeout=10)
        return int(tp.offset)
    finally:
        consumer.close()


def wait_for(
    what: str, check: Callable[[], Any], timeout_s: float = 90, every_s: float = 0.3
) -> Any:
    """Poll ``check`` until it returns something truthy (a wait, not a timed assertion)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(every_s)


def checkpoint_where(
    settings: Settings, job_id: str, condition: Callable[[JobCheckpoint], bool]
) -> Callable[[], JobCheckpoint | None]:
    def check() -> JobCheckpoint | None:
        cp = read_checkpoint(settings, job_id)
        return cp if cp is not None and condition(cp) else None

    return check


# --- Postgres: hand-made rows and the truth to compare with ------------------------------------


class SourceRows:
    """Inserts hand-made source rows: director rows in one database, scores in another."""

    def __init__(self, director_dsn: str, historic_dsn: str) -> None:
        self.director = psycopg.connect(director_dsn, autocommit=True)
        self.historic = psycopg.connect(historic_dsn, autocommit=True)

    def close(self) -> None:
        self.director.close()
        self.historic.close()

    def template(
        self, customer: str, profile: str, template_id: str, revision: str, kind: str, title: str
    ) -> None:
        self.director.execute(
            "INSERT INTO director.scorecard_template_revisions "
            "(customer_id, profile_id, template_id, revision, type, title) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (customer, profile, template_id, revision, kind, title),
        )

    def scorecards(self, rows: Sequence[dict[str, Any]]) -> None:
        columns = (
            "customer_id, profile_id, scorecard_id, template_id, template_revision, "
            "conversation_id, agent_user_id, creator_user_id, score, submitted_at, created_at, "
            "updated_at"
        )
        with self.director.cursor() as cur:
            cur.executemany(
                f"INSERT INTO director.scorecards ({columns}) VALUES ("
                "%(customer_id)s, %(profile_id)s, %(scorecard_id)s, %(template_id)s, "
                "%(template_revision)s, %(conversation_id)s, %(agent_user_id)s, "
                "%(creator_user_id)s, %(score)s, %(submitted_at)s, %(created_at)s, "
                "%(updated_at)s)",
                list(rows),
            )

    def scores(self, rows: Sequence[tuple[Any, ...]], *, into_director: bool = False) -> None:
        conn = self.director if into_director else self.historic
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO historic.scorecard_scores (customer_id, profile_id, scorecard_id, "
                "criterion_id, numeric_value, not_applicable, comment, created_at, updated_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                rows,
            )


def card(
    scorecard_id: str,
    created_at: datetime,
    *,
    customer_id: str = "acme",
    profile_id: str = "p1",
    template_id: str = "t-process",
    template_revision: str = "1",
    **values: Any,
) -> dict[str, Any]:
    row = {
        "customer_id": customer_id,
        "profile_id": profile_id,
        "scorecard_id": scorecard_id,
        "template_id": template_id,
        "template_revision": template_revision,
        "conversation_id": None,
        "agent_user_id": "agent-7",
        "creator_user_id": "user-3",
        "score": 87.25,
        "submitted_at": created_at + timedelta(hours=1, microseconds=7),
        "created_at": created_at,
        "updated_at": created_at + timedelta(hours=2, microseconds=3),
    }
    row.update(values)
    return row


def score(key: Key, criterion: str, value: float | None = 1.0, **values: Any) -> tuple[Any, ...]:
    row: dict[str, Any] = {
        "numeric_value": value,
        "not_applicable": False,
        "comment": None,
        "created_at": START + timedelta(minutes=5, microseconds=123_456),
        "updated_at": START + timedelta(minutes=6, microseconds=654_321),
    }
    row.update(values)
    return (*key, criterion, *row.values())


_CARD_SQL = """
SELECT s.customer_id, s.profile_id, s.scorecard_id, s.template_id, s.template_revision,
       r.type AS scorecard_type, r.title AS template_title, s.conversation_id,
       s.agent_user_id, s.creator_user_id, s.score, s.submitted_at, s.created_at, s.updated_at
FROM director.scorecards s, director.scorecard_template_revisions r
WHERE (s.customer_id, s.profile_id, s.scorecard_id) = (%s, %s, %s)
  AND (r.customer_id, r.profile_id, r.template_id, r.revision)
    = (s.customer_id, s.profile_id, s.template_id, s.template_revision)
"""

_SCORES_SQL = """
SELECT criterion_id, numeric_value, not_applicable, comment, created_at, updated_at
FROM historic.scorecard_scores
WHERE (customer_id, profile_id, scorecard_id) = (%s, %s, %s)
ORDER BY criterion_id
"""

_SELECTION_SQL = """
SELECT s.customer_id, s.profile_id, s.scorecard_id
FROM director.scorecards s
WHERE s.created_at >= %s AND s.created_at < %s
  AND EXISTS (SELECT 1 FROM director.scorecard_template_revisions r
              WHERE r.customer_id = s.customer_id AND r.profile_id = s.profile_id
                AND r.template_id = s.template_id AND r.revision = s.template_revision
                AND r.type = ANY(%s))
"""


def selection(dsn: str, start: datetime, end: datetime, types: Sequence[str]) -> set[Key]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(_SELECTION_SQL, (start, end, list(types))).fetchall()
    return {(r[0], r[1], r[2]) for r in rows}


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b) and type(a) is type(b)


def assert_as_in_postgres(
    messages: Sequence[ScorecardMessage], director: str, historic: str
) -> int:
    """Every field of every message equals Postgres; returns how many scores were compared."""
    compared = 0
    with (
        psycopg.connect(director, row_factory=dict_row) as d,
        psycopg.connect(historic, row_factory=dict_row) as h,
    ):
        for message in messages:
            key = key_of(message)
            row = d.execute(_CARD_SQL, key).fetchone()
            assert row is not None, key
            got = message.scorecard.model_dump()
            assert got.keys() == row.keys()
            for name, value in row.items():
                assert same(got[name], value), (key, name, got[name], value)
            rows = h.execute(_SCORES_SQL, key).fetchall()
            assert len(message.scores) == len(rows), key
            for got_score, want in zip(message.scores, rows, strict=True):
                dumped = got_score.model_dump()
                assert dumped.keys() == want.keys()
                for name, value in want.items():
                    assert same(dumped[name], value), (key, name, dumped[name], value)
            compared += len(rows)
    return compared


# --- subprocesses ------------------------------------------------------------------------------


def reindex(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return run_reindex(*args, env=env, timeout=timeout)


@contextlib.contextmanager
def background(
    args: Sequence[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[str]]:
    """``python -m reindex ARGS`` in the background, output to ``log``; killed at the end."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reindex", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)


def assert_one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    assert "rdkafka" not in stderr, stderr  # no librdkafka noise
    errors = [line for line in stderr.splitlines() if line.startswith("reindex: error: ")]
    assert len(errors) == 1, stderr
    assert stderr.strip().splitlines()[-1] == errors[0], stderr
    return errors[0]


def seeded(
    make_settings: MakeSettings, make_source_db: MakeDb, scorecards: int, **kw: Any
) -> tuple[Settings, SeedPlan]:
    dsn = make_source_db()
    settings = make_settings(pg_dsn=dsn, **kw)
    plan = SeedPlan(scorecards=scorecards, seed=11, days=30)
    seed(dsn, dsn, plan)
    return settings, plan


# --- selection, values, paging -----------------------------------------------------------------


def test_selection_boundaries_types_and_values_arrive_intact(
    make_settings: MakeSettings, make_source_db: MakeDb
) -> None:
    director, historic = make_source_db(), make_source_db()  # two databases, two DSNs
    settings = make_settings(pg_dsn=director, historic_pg_dsn=historic)
    rows = SourceRows(director, historic)
    odd = 'o\'brien & "sons" \\ 東京'
    try:
        rows.template("acme", "p1", "t-process", "1", "PROCESS", 'Qualité "du" service \\ ✓')
        rows.template("acme", "p1", "t-process", "2", "CONVERSATION", "rev 2 is a conversation")
        rows.template("acme", "p1", "t-conv", "1", "CONVERSATION", "Conversation review")
        rows.template("other", "p1", "t-process", "1", "PROCESS", "")
        rows.template(odd, "профиль ☃", "tpl 'x'", "r\n1", "PROCESS", "emoji 🚀\nnew line")
        rows.scorecards(
            [
                card("at-start", START),
                card("at-start", START, customer_id="other"),  # same id, another customer
                card("before-start", START - US),
                card("before-end", END - US),
                card("at-end", END),
                card(
                    "conversation",
                    START + timedelta(hours=3),
                    template_id="t-conv",
                    conversation_id="conv-1",
                ),
                card(
                    "rev-2",
                    START + timedelta(hours=4),
                    template_revision="2",
                    conversation_id="conv-2",
                    score=math.inf,  # Postgres writes it as a JSON string; the message may not
                ),
                card(
                    "all-nulls",
                    START + timedelta(hours=5, microseconds=1),
                    agent_user_id=None,
                    creator_user_id=None,
                    score=None,
                    submitted_at=None,
                ),
                card(
                    'id "quoted" \\ ü\n',
                    START + timedelta(hours=12, minutes=34, seconds=56, microseconds=789_012),
                    customer_id=odd,
                    profile_id="профиль ☃",
                    template_id="tpl 'x'",
                    template_revision="r\n1",
                    agent_user_id="агент 🎧",
                    creator_user_id="",
                    score=-0.000001,
                ),
            ]
        )
        unicode_key = (odd, "профиль ☃", 'id "quoted" \\ ü\n')
        rows.scores(
            [score(("acme", "p1", "at-start"), "c1", 3.5)]
            + [score(("acme", "p1", "before-end"), f"crit-{i:03d}", i / 7) for i in range(321)]
            + [
                score(unicode_key, "nan", math.nan, comment='say "hi" \\ 👍🏽'),
                score(unicode_key, "-inf", -math.inf, not_applicable=True, comment=""),
                score(unicode_key, "null", None, comment="multi\nline\ttab"),
                score(unicode_key, "ünï", 0.1, created_at=START + 999_999 * US),
            ]
        )
        # In the director database, not the historic one: must not be read.
        rows.scores([score(("acme", "p1", "all-nulls"), "decoy")], into_director=True)
    finally:
        rows.close()

    process = build_request(
        settings,
        start=START.isoformat(),
        end=END.isoformat(),
        types=None,
        mode=None,
        batch_size=2,  # pages end on the boundaries too
        clean_up=True,
        job_id="process",
    )
    done = run_job(settings, process, JobOptions(show_progress=False))
    everything = build_request(
        settings,
        start="2026-03-01T00:00:00",
        end="2026-03-02T00:00:00+00:00",
        types=None,
        mode="all",
        batch_size=3,
        clean_up=False,
        job_id="all",
    )
    run_job(settings, everything, JobOptions(show_progress=False))
    conversations = everything.model_copy(
        update={"job_id": "conversation", "scorecard_types": ("CONVERSATION",)}
    )
    run_job(settings, conversations, JobOptions(show_progress=False))

    published = scorecard_messages(settings)
    by_job: dict[str, list[ScorecardMessage]] = {}
    for _, message in published:
        by_job.setdefault(message.job_id, []).append(message)
    process_ids = [
        ("acme", "p1", "at-start"),
        ("other", "p1", "at-start"),
        ("acme", "p1", "before-end"),
        ("acme", "p1", "all-nulls"),
        unicode_key,
    ]
    conversation_ids = [("acme", "p1", "conversation"), ("acme", "p1", "rev-2")]
    assert sorted(key_of(m) for m in by_job["process"]) == sorted(process_ids)
    assert sorted(key_of(m) for m in by_job["conversation"]) == sorted(conversation_ids)
    assert sorted(key_of(m) for m in by_job["all"]) == sorted(process_ids + conversation_ids)

    scores = assert_as_in_postgres([m for _, m in published], director, historic)
    assert scores == 2 * (1 + 321 + 4)
    messages = {key_of(m): m for m in by_job["process"]}
    assert messages[("acme", "p1", "all-nulls")].scores == ()
    assert len(messages[("acme", "p1", "before-end")].scores) == 321
    assert all(m.clean_up for m in by_job["process"])
    assert not any(m.clean_up for m in by_job["all"])
    assert done.state == "done"
    assert (done.published_scorecards, done.published_scores) == (5, 326)
    assert done.pages == 3

    # One key per scorecard, and all messages of a scorecard on one partition.
    partitions: dict[Key, set[int]] = {}
    for record, message in published:
        assert record.key == "\x1f".join(key_of(message)).encode()
        partitions.setdefault(key_of(message), set()).add(record.partition)
    assert all(len(p) == 1 for p in partitions.values()), partitions


def test_two_thousand_scorecards_sharing_one_created_at_are_each_published_once(
    make_settings: MakeSettings, make_source_db: MakeDb
) -> None:
    dsn = make_source_db()
    settings = make_settings(pg_dsn=dsn)
    instant = START + timedelta(hours=6, microseconds=500_000)
    rows = SourceRows(dsn, dsn)
    try:
        for customer in ("c0", "c1"):
            for profile in ("p0", "p1"):
                rows.template(customer, profile, "t-process", "1", "PROCESS", "")
        # 500 scorecard ids x 2 customers x 2 profiles: ties on (created_at, scorecard_id) too.
        ties = [
            card(
                f"sc-{i % 500:03d}",
                instant,
                customer_id=f"c{i // 500 % 2}",
                profile_id=f"p{i // 1000}",
            )
            for i in range(2000)
        ]
        around = [
            card(f"around-{i}", instant + (i - 3) * US, customer_id="c0", profile_id="p0")
            for i in range(7)
            if i != 3
        ]
        rows.scorecards(ties + around)
    finally:
        rows.close()

    request = ReindexRequest(job_id="ties", start=START, end=END, batch_size=7)
    done = run_job(settings, request, JobOptions(show_progress=False))

    counts = Counter(key_of(m) for _, m in scorecard_messages(settings))
    assert len(counts) == 2006
    assert set(counts.values()) == {1}
    assert counts.keys() == selection(dsn, START, END, ["PROCESS"])
    assert done.published_scorecards == 2006
    assert done.pages == math.ceil(2006 / 7)


def test_dry_run_counts_and_publishes_nothing(
    make_settings: MakeSettings, make_source_db: MakeDb
) -> None:
    settings, plan = seeded(make_settings, make_source_db, 300)
    result = reindex(
        "produce",
        "--start",
        plan.start.isoformat(),
        "--end",
        plan.end.isoformat(),
        "--dry-run",
        env=settings_env(settings),
    )
    assert result.returncode == 0, result.stderr
    expected = len(selection(settings.director_dsn, plan.start, plan.end, ["PROCESS"]))
    assert f"dry run, {expected:,} scorecards would be published" in result.stdout
    assert read_records(settings, settings.scorecards_topic) == []


# --- resuming ----------------------------------------------------------------------------------


def test_producer_killed_mid_job_resumes_with_the_same_job_id(
    make_settings: MakeSettings, make_source_db: MakeDb, tmp_path: Path
) -> None:
    settings, plan = seeded(make_settings, make_source_db, 2500)
    env = settings_env(settings)
    job = [
        "produce",
        "--start",
        plan.start.isoformat(),
        "--end",
        plan.end.isoformat(),
        "--job-id",
        "resume-me",
        "--batch-size",
        "25",
    ]
    expected = selection(settings.director_dsn, plan.start, plan.end, ["PROCESS"])

    with background([*job, "--max-rate", "250"], env, tmp_path / "first.log") as first:
        seen = wait_for(
            "a checkpoint of a page or two",
            checkpoint_where(settings, "resume-me", lambda cp: cp.pages >= 2),
        )
        assert seen.state == "running"
        assert first.poll() is None, (tmp_path / "first.log").read_text()
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    log = (tmp_path / "first.log").read_text()
    assert f"{len(expected):,} scorecards match" in log  # counted up front

    before = read_checkpoint(settings, "resume-me")
    assert before is not None
    assert 0 < before.published_scorecards < len(expected)

    again = reindex(*job, env=env)
    assert again.returncode == 0, again.stderr
    assert "resuming job resume-me" in again.stderr
    assert f"job resume-me: published {len(expected):,} scorecards" in again.stdout
    assert " s (done)" in again.stdout

    counts = Counter(key_of(m) for _, m in scorecard_messages(settings))
    assert counts.keys() == expected
    total = sum(counts.values())
    assert total < 2 * len(expected)
    # at most the pages published but not yet checkpointed when it was killed
    assert total - len(expected) <= 25 * (MAX_PAGES_IN_FLIGHT + 1)
    done = read_checkpoint(settings, "resume-me")
    assert done is not None
    assert done.state == "done"
    assert done.published_scorecards == len(expected)

    finished = reindex(*job, env=env)
    assert finished.returncode == 0, finished.stderr
    assert "already done" in finished.stdout
    assert len(read_records(settings, settings.scorecards_topic)) == total

    restarted = reindex(*job, "--restart", env=env)
    assert restarted.returncode == 0, restarted.stderr
    assert len(read_records(settings, settings.scorecards_topic)) == total + len(expected)


# --- the request service -----------------------------------------------------------------------


def produce_raw(settings: Settings, messages: Sequence[tuple[bytes | None, bytes]]) -> None:
    """Write requests the way any client may: a plain producer, bytes chosen by hand."""
    ensure_topics(settings, reindexer_topics(settings))
    plain = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for key, value in messages:
        plain.produce(settings.requests_topic, value=value, key=key)
    assert plain.flush(30) == 0


def dlq(settings: Settings) -> list[DlqMessage]:
    return [
        DlqMessage.model_validate_json(r.value) for r in read_records(settings, settings.dlq_topic)
    ]


def test_serve_runs_raw_json_requests_and_sends_invalid_ones_to_the_dlq(
    make_settings: MakeSettings, make_source_db: MakeDb, tmp_path: Path
) -> None:
    settings, plan = seeded(make_settings, make_source_db, 400)
    middle = plan.start + timedelta(days=10)
    spec_like = json.dumps(
        {
            "job_id": "backfill-2026-03",
            "start": plan.start.isoformat().replace("+00:00", "Z"),
            "end": middle.isoformat().replace("+00:00", "Z"),
            "scorecard_types": ["PROCESS"],
            "batch_size": 50,
            "clean_up": True,
        }
    ).encode()
    minimal = json.dumps({"start": middle.isoformat(), "end": plan.end.isoformat()}).encode()
    backwards = json.dumps({"start": plan.end.isoformat(), "end": plan.start.isoformat()}).encode()
    unknown_type = json.dumps(
        {"start": plan.start.isoformat(), "end": plan.end.isoformat(), "scorecard_types": ["CHAT"]}
    ).encode()
    produce_raw(
        settings,
        [
            (b"broken", b'{"job_id": "x", "start": '),
            (b"backwards", backwards),
            (b"backfill-2026-03", spec_like),
            (None, unknown_type),
            (None, minimal),
        ],
    )

    log = tmp_path / "serve.log"
    with background(["serve"], settings_env(settings), log) as serve:
        wait_for(
            "the backfill job",
            checkpoint_where(settings, "backfill-2026-03", lambda cp: cp.state == "done"),
        )
        wait_for(
            "all five requests committed",
            lambda: committed_offset(settings, serve_group(settings)) == 5,
        )
        assert serve.poll() is None, log.read_text()
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0, log.read_text()
    text = log.read_text()
    assert "Traceback" not in text

    rejected = dlq(settings)
    assert [(m.source_offset, m.original_key_base64) for m in rejected] == [
        (0, base64.b64encode(b"broken").decode()),
        (1, base64.b64encode(b"backwards").decode()),
        (3, None),
    ]
    assert "Invalid JSON" in rejected[0].reason
    assert "must be before end" in rejected[1].reason
    assert "scorecard_types" in rejected[2].reason
    assert rejected[0].original_value == '{"job_id": "x", "start": '
    assert base64.b64decode(rejected[1].original_value_base64) == backwards
    assert {(m.service, m.source_topic, m.source_partition) for m in rejected} == {
        ("serve", settings.requests_topic, 0)
    }

    first = scorecard_messages(settings, "backfill-2026-03")
    assert {key_of(m) for _, m in first} == selection(
        settings.director_dsn, plan.start, middle, ["PROCESS"]
    )
    assert len(first) == len({key_of(m) for _, m in first})
    assert all(m.clean_up for _, m in first)
    assert_as_in_postgres([m for _, m in first[:50]], settings.director_dsn, settings.historic_dsn)

    derived = [m.job_id for _, m in scorecard_messages(settings) if m.job_id != "backfill-2026-03"]
    assert len(set(derived)) == 1
    assert derived[0].startswith("request-0-4-")
    assert len(derived) == len(selection(settings.director_dsn, middle, plan.end, ["PROCESS"]))
    for line in ("request " + settings.requests_topic + "[0]@2", "job backfill-2026-03 done:"):
        assert line in text


def test_serve_killed_or_stopped_mid_job_resumes_it_on_restart(
    make_settings: MakeSettings, make_source_db: MakeDb, tmp_path: Path
) -> None:
    settings, plan = seeded(make_settings, make_source_db, 2500)
    env = settings_env(settings)
    requested = reindex(
        "request",
        "--start",
        plan.start.isoformat(),
        "--end",
        plan.end.isoformat(),
        "--job-id",
        "served",
        "--batch-size",
        "25",
        env=env,
    )
    assert requested.returncode == 0, requested.stderr
    expected = selection(settings.director_dsn, plan.start, plan.end, ["PROCESS"])
    group = serve_group(settings)
    slow = ["serve", "--max-rate", "250"]

    with background(slow, env, tmp_path / "killed.log") as killed:
        wait_for("two pages", checkpoint_where(settings, "served", lambda cp: cp.pages >= 2))
        assert killed.poll() is None
        killed.send_signal(signal.SIGKILL)
        killed.wait(30)
    assert committed_offset(settings, group) < 0  # nothing committed yet
    after_kill = read_checkpoint(settings, "served")
    assert after_kill is not None

    log = tmp_path / "stopped.log"
    with background(slow, env, log) as stopped:
        wait_for(
            "two more pages",
            checkpoint_where(settings, "served", lambda cp: cp.pages >= after_kill.pages + 2),
            timeout_s=120,  # the killed member holds the partition until its session expires
        )
        stopped.send_signal(signal.SIGTERM)  # stops at the next page boundary
        assert stopped.wait(60) == 0, log.read_text()
    assert "resuming job served" in log.read_text()
    assert "job served stopped after" in log.read_text()
    after_stop = read_checkpoint(settings, "served")
    assert after_stop is not None
    assert after_stop.state == "running"
    assert after_stop.published_scorecards < len(expected)
    assert committed_offset(settings, group) < 0

    log = tmp_path / "last.log"
    with background(["serve"], env, log) as last:
        wait_for("the request committed", lambda: committed_offset(settings, group) == 1)
        last.send_signal(signal.SIGTERM)
        assert last.wait(60) == 0, log.read_text()
    assert "Traceback" not in log.read_text()

    counts = Counter(key_of(m) for _, m in scorecard_messages(settings))
    assert counts.keys() == expected
    assert sum(counts.values()) - len(expected) <= 25  # only the killed run left a page behind
    done = read_checkpoint(settings, "served")
    assert done is not None
    assert (done.state, done.published_scorecards) == ("done", len(expected))


def test_serve_retries_a_failing_job_and_commits_only_once_it_is_done(
    make_settings: MakeSettings, make_source_db: MakeDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, plan = seeded(make_settings, make_source_db, 100)
    produce_raw(
        settings,
        [
            (
                b"k",
                json.dumps(
                    {
                        "job_id": "flaky",
                        "start": plan.start.isoformat(),
                        "end": plan.end.isoformat(),
                    }
                ).encode(),
            )
        ],
    )
    failures = 2
    healthy = threading.Event()
    calls: list[str] = []
    real_run_job = producer.service.run_job

    def flaky_run_job(
        settings: Settings, request: ReindexRequest, options: JobOptions
    ) -> JobCheckpoint:
        calls.append(request.job_id)
        if len(calls) <= failures or not healthy.is_set():
            raise SourceUnavailableError("cannot connect to the director Postgres (test)")
        return real_run_job(settings, request, options)

    monkeypatch.setattr(producer.service, "run_job", flaky_run_job)
    service = RequestService(settings, ServeOptions(backoff_s=0.05, max_backoff_s=0.2, poll_s=0.2))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            service.run()
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_for("a few failed attempts", lambda: len(calls) > failures)
        assert committed_offset(settings, serve_group(settings)) < 0
        healthy.set()
        wait_for(
            "the request committed", lambda: committed_offset(settings, serve_group(settings)) == 1
        )
    finally:
        service.stop()
        thread.join(60)
    assert not thread.is_alive()
    assert errors == []
    assert set(calls) == {"flaky"}
    done = read_checkpoint(settings, "flaky")
    assert done is not None
    assert done.state == "done"


# --- bad input and unreachable services --------------------------------------------------------

RANGE = ["--start", "2026-03-01T00:00:00Z", "--end", "2026-04-01T00:00:00Z"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["produce", "--start", "yesterday", "--end", "2026-04-01"], "not an ISO 8601 time"),
        (
            ["produce", "--start", "2026-04-01", "--end", "2026-04-01T00:00:00Z"],
            "must be before end",
        ),
        (["produce", "--start", "2026-04-02", "--end", "2026-04-01"], "must be before end"),
        (["produce", *RANGE, "--types", "PROCESS,CHAT"], "unknown scorecard type CHAT"),
        (["produce", *RANGE, "--batch-size", "0"], "--batch-size must be at least 1"),
        (["produce", *RANGE, "--mode", "everything"], "Invalid value for '--mode'"),
        (["produce", *RANGE, "--max-rate", "0"], "--max-rate must be positive"),
        (["request", "--start", "2026-13-01", "--end", "2026-04-01"], "not an ISO 8601 time"),
        (["request", *RANGE, "--types", "conversation,bogus"], "unknown scorecard type BOGUS"),
        (["request", *RANGE, "--batch-size", "-3"], "--batch-size must be at least 1"),
        (["serve", "--max-rate", "-1"], "--max-rate must be positive"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_publishes_nothing(
    make_settings: MakeSettings, args: list[str], says: str
) -> None:
    settings = make_settings()
    result = reindex(*args, env=settings_env(settings))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("reindex: error: ")
    assert says in lines[0]
    assert topics_with_prefix(settings) == []


def test_unreachable_kafka_or_postgres_is_one_line_and_exit_1(
    make_settings: MakeSettings, make_source_db: MakeDb
) -> None:
    dsn = make_source_db()
    no_kafka = make_settings(pg_dsn=dsn, kafka_bootstrap="127.0.0.1:1")
    no_director = make_settings(pg_dsn="postgresql://postgres@127.0.0.1:1/postgres")
    no_historic = make_settings(pg_dsn=dsn, historic_pg_dsn="postgresql://nobody@127.0.0.1:1/h")
    cases = [
        (["produce", *RANGE], no_kafka, "cannot reach Kafka at 127.0.0.1:1"),
        (["request", *RANGE], no_kafka, "cannot reach Kafka at 127.0.0.1:1"),
        (["serve"], no_kafka, "cannot reach Kafka at 127.0.0.1:1"),
        (["produce", *RANGE], no_director, "cannot connect to the director Postgres"),
        (["produce", *RANGE], no_historic, "cannot connect to the historic Postgres"),
    ]
    running = [
        (
            subprocess.Popen(
                [sys.executable, "-m", "reindex", *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=settings_env(settings),
            ),
            says,
        )
        for args, settings, says in cases
    ]
    for proc, says in running:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 1, stderr
        assert says in assert_one_error_line(stderr)
    assert (
        "Traceback" in reindex("--debug", "produce", *RANGE, env=settings_env(no_director)).stderr
    )
    for settings in (no_director, no_historic):
        assert read_records(settings, settings.scorecards_topic) == []
