"""Helpers for tests of the whole pipeline: source rows, workers, and the SPEC §3 result check."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from fix_services import run_reindex, settings_env

from devstack.workers import start_worker as start_worker_process
from producer.job import JobOptions, run_job
from reindex_common.clickhouse import shard_client
from reindex_common.messages import ReindexRequest
from reindex_common.routing import shard_for
from reindex_common.schema import SCORE_COLUMNS, SCORECARD_COLUMNS
from reindex_common.seed import SeedPlan, seed
from reindex_common.settings import Settings
from reindex_common.written import committed_offsets

# --- source rows -------------------------------------------------------------------------------


def insert_rows(dsn: str, table: str, rows: Iterable[dict[str, Any]]) -> None:
    rows = list(rows)
    if not rows:
        return
    columns = list(rows[0])
    copy_sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
    with psycopg.connect(dsn) as conn, conn.cursor() as cur, cur.copy(copy_sql) as copy:
        for row in rows:
            copy.write_row([row[c] for c in columns])


def template(
    customer: str, profile: str, template_id: str, kind: str, title: str = "T"
) -> dict[str, Any]:
    return {
        "customer_id": customer,
        "profile_id": profile,
        "template_id": template_id,
        "revision": "1",
        "type": kind,
        "title": title,
    }


def scorecard(
    customer: str,
    profile: str,
    scorecard_id: str,
    template_id: str,
    created: datetime,
    **extra: Any,
) -> dict[str, Any]:
    row = {
        "customer_id": customer,
        "profile_id": profile,
        "scorecard_id": scorecard_id,
        "template_id": template_id,
        "template_revision": "1",
        "conversation_id": None,
        "agent_user_id": "agent",
        "creator_user_id": None,
        "score": 1.5,
        "submitted_at": None,
        "created_at": created,
        "updated_at": created,
    }
    row.update(extra)
    return row


def score(
    customer: str, profile: str, scorecard_id: str, criterion: str, created: datetime, **extra: Any
) -> dict[str, Any]:
    row = {
        "customer_id": customer,
        "profile_id": profile,
        "scorecard_id": scorecard_id,
        "criterion_id": criterion,
        "numeric_value": 1.0,
        "not_applicable": False,
        "comment": None,
        "created_at": created,
        "updated_at": created,
    }
    row.update(extra)
    return row


# --- one job over a month of synthetic data ----------------------------------------------------

MONTH_START = datetime(2026, 1, 1, tzinfo=UTC)
MONTH_END = MONTH_START + timedelta(days=30)
BOTH_TYPES = ("PROCESS", "CONVERSATION")


def seed_month(settings: Settings, scorecards: int, seed_value: int = 5) -> None:
    """``scorecards`` synthetic scorecards (both types) created over the month."""
    dsn = settings.director_dsn
    seed(dsn, dsn, SeedPlan(scorecards, seed=seed_value, start=MONTH_START, days=30))


def run_month_job(
    settings: Settings,
    job_id: str,
    *,
    start: datetime = MONTH_START,
    end: datetime = MONTH_END,
    clean_up: bool = False,
    batch: int = 200,
) -> int:
    """Publish one job over [start, end), both types, in this process; its published count."""
    request = ReindexRequest(
        job_id=job_id,
        start=start,
        end=end,
        scorecard_types=BOTH_TYPES,
        batch_size=batch,
        clean_up=clean_up,
    )
    return run_job(settings, request, JobOptions(show_progress=False)).published_scorecards


def wait_written(settings: Settings, job_id: str, timeout_s: int = 180) -> None:
    """``reindex status JOB --wait``: the job complete and clean within ``timeout_s``."""
    result = reindex(settings, "status", job_id, "--wait", "--timeout", str(timeout_s))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "complete" in result.stdout


# --- workers -----------------------------------------------------------------------------------


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout_s)
        # A log line that cannot be formatted is lost (and its stack floods the output).
        assert "--- Logging error ---" not in self.output(), self.output()[-3000:]
        return code


def start_worker(settings: Settings, name: str, logs: Path, **env: str) -> Worker:
    log = logs / f"{name}.log"
    return Worker(name, start_worker_process(name, {**settings_env(settings), **env}, log), log)


@contextmanager
def workers(settings: Settings, logs: Path, *names: str) -> Iterator[list[Worker]]:
    started = [start_worker(settings, name, logs) for name in names]
    try:
        yield started
    finally:
        for w in started:
            if w.process.poll() is None:
                w.stop(signal.SIGKILL)


def reindex(
    settings: Settings, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return run_reindex(*args, env=settings_env(settings), timeout=timeout)


def wait_until(predicate: Any, timeout_s: float, what: str, poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def wait_committed(
    settings: Settings, partitions: int, messages: int, timeout_s: float = 60
) -> None:
    """Wait until the group's committed offsets of the scorecards topic add up to ``messages``
    (partitions starting at offset 0), then check they are not past it. ``status`` sees a job
    complete from the written records, before the commit that follows within
    ``REINDEX_CONSUMER_COMMIT_INTERVAL``."""

    def total() -> int:
        found = committed_offsets(settings, settings.scorecards_topic, range(partitions))
        return sum(max(o, 0) for o in found.values())

    wait_until(lambda: total() >= messages, timeout_s, f"{messages} messages committed")
    committed = committed_offsets(settings, settings.scorecards_topic, range(partitions))
    assert sum(max(o, 0) for o in committed.values()) == messages, committed


# --- the SPEC §3 result ------------------------------------------------------------------------

_EXPECTED_CARDS = """
SELECT s.customer_id, s.profile_id, s.scorecard_id, s.template_id, s.template_revision,
       r.type, r.title, s.conversation_id, s.agent_user_id, s.creator_user_id, s.score,
       s.submitted_at, s.created_at, s.updated_at
FROM director.scorecards s
JOIN director.scorecard_template_revisions r
  ON (r.customer_id, r.profile_id, r.template_id, r.revision)
   = (s.customer_id, s.profile_id, s.template_id, s.template_revision)
WHERE s.created_at >= %(start)s AND s.created_at < %(end)s AND r.type = ANY(%(types)s)
"""

_EXPECTED_SCORES = """
SELECT h.customer_id, h.profile_id, h.scorecard_id, h.criterion_id, r.type,
       CASE WHEN r.type = 'PROCESS' THEN 1 ELSE 0 END, s.conversation_id, s.agent_user_id,
       h.numeric_value, CASE WHEN h.not_applicable THEN 1 ELSE 0 END, h.comment,
       h.created_at, h.updated_at
FROM director.scorecards s
JOIN director.scorecard_template_revisions r
  ON (r.customer_id, r.profile_id, r.template_id, r.revision)
   = (s.customer_id, s.profile_id, s.template_id, s.template_revision)
JOIN historic.scorecard_scores h
  ON (h.customer_id, h.profile_id, h.scorecard_id) = (s.customer_id, s.profile_id, s.scorecard_id)
WHERE s.created_at >= %(start)s AND s.created_at < %(end)s AND r.type = ANY(%(types)s)
"""


def _utc(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return value


def expected_rows(
    dsn: str, start: datetime, end: datetime, types: Iterable[str]
) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    """The scorecard and score rows SPEC §3 says the shards must hold (without job columns)."""
    params = {"start": start, "end": end, "types": list(types)}
    with psycopg.connect(dsn) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        cards = {tuple(map(_utc, r)) for r in conn.execute(_EXPECTED_CARDS, params).fetchall()}
        scores = {tuple(map(_utc, r)) for r in conn.execute(_EXPECTED_SCORES, params).fetchall()}
    return cards, scores


def shard_rows(settings: Settings) -> list[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
    """Per shard, its scorecard and score rows read with FINAL (without the job columns)."""
    out = []
    card_cols = ", ".join(SCORECARD_COLUMNS[:-2])
    score_cols = ", ".join(SCORE_COLUMNS[:-2])
    for shard in settings.shards:
        with shard_client(shard, database=settings.clickhouse_database) as client:
            cards = client.query(f"SELECT {card_cols} FROM scorecards FINAL").result_rows
            scores = client.query(f"SELECT {score_cols} FROM scorecard_scores FINAL").result_rows
        out.append(([tuple(map(_utc, r)) for r in cards], [tuple(map(_utc, r)) for r in scores]))
    return out


def assert_correct_result(
    settings: Settings,
    dsn: str,
    start: datetime,
    end: datetime,
    types: Iterable[str] = ("PROCESS",),
    *,
    extra_scores_allowed: bool = False,
) -> None:
    """SPEC §3: every selected scorecard and score on its shard, exactly once, equal; no more."""
    cards, scores = expected_rows(dsn, start, end, types)
    assert cards, "the selection is empty: the test proves nothing"
    count = len(settings.shards)
    for index, (got_cards, got_scores) in enumerate(shard_rows(settings)):
        want_cards = {c for c in cards if shard_for(c[0], count) == index}
        want_scores = {s for s in scores if shard_for(s[0], count) == index}
        assert len(got_cards) == len(set(got_cards)), f"shard {index}: duplicate scorecards"
        assert len(got_scores) == len(set(got_scores)), f"shard {index}: duplicate scores"
        missing = want_cards - set(got_cards)
        extra = set(got_cards) - want_cards
        assert not missing, (
            f"shard {index}: {len(missing)} scorecards missing, e.g. {next(iter(missing))}"
        )
        assert not extra, f"shard {index}: {len(extra)} scorecards extra, e.g. {next(iter(extra))}"
        missing_s = want_scores - set(got_scores)
        assert not missing_s, f"shard {index}: {len(missing_s)} scores missing"
        if not extra_scores_allowed:
            extra_s = set(got_scores) - want_scores
            assert not extra_s, f"shard {index}: {len(extra_s)} scores extra"
