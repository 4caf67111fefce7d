"""Operating commands against the real stack: the DLQ (list, show, replay once), ``-o json``,
exit code 3 from ``verify``, ``--last`` ranges and ``--max-lag`` back-pressure."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Producer
from fix_pipeline import reindex, start_worker, wait_until, workers
from fix_services import settings_env

from producer.job import MAX_PAGES_IN_FLIGHT, JobOptions, run_job
from reindex_common.clickhouse import shard_client
from reindex_common.jobs import read_checkpoint
from reindex_common.kafka import ensure_topics, read_topic, reindexer_topics
from reindex_common.messages import ReindexRequest, dlq_message, dump, scorecard_key
from reindex_common.schema import SCORE_COLUMNS
from reindex_common.seed import SeedPlan, seed
from reindex_common.settings import Settings

START = datetime(2026, 2, 1, tzinfo=UTC)
END = START + timedelta(days=5)
RANGE = ("--start", START.isoformat(), "--end", END.isoformat(), "--mode", "all")


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    """stdout parsed as one JSON document (fails if anything else was printed there)."""
    try:
        return json.loads(result.stdout)
    except ValueError as e:
        raise AssertionError(f"stdout is not one JSON document:\n{result.stdout}") from e


def _on_shards(settings: Settings, scorecard_id: str) -> int:
    total = 0
    for shard in settings.shards:
        with shard_client(shard, database=settings.clickhouse_database) as client:
            total += int(
                client.command(
                    "SELECT count() FROM scorecards FINAL WHERE scorecard_id = {s:String}",
                    parameters={"s": scorecard_id},
                )
            )
    return total


# --- the DLQ -----------------------------------------------------------------------------------


def test_dlq_list_show_and_replay_once(pipeline_settings: Settings, tmp_path: Path) -> None:
    settings = pipeline_settings
    dsn = settings.director_dsn
    seed(dsn, dsn, SeedPlan(40, seed=3, start=START, days=5))
    request = ReindexRequest(
        job_id="main", start=START, end=END, scorecard_types=("PROCESS", "CONVERSATION")
    )
    run_job(settings, request, JobOptions(show_progress=False))

    # A message an older consumer dead-lettered by mistake (a bug since fixed): a valid
    # scorecard message for a scorecard the shards do not hold. The envelope is written by hand.
    original = json.loads(read_topic(settings, settings.scorecards_topic)[0])
    original["job_id"] = "job-fix"
    card = original["scorecard"]
    card["scorecard_id"] = "replayed-1"
    fixed = json.dumps(original).encode()
    fixed_key = scorecard_key(card["customer_id"], card["profile_id"], "replayed-1")
    mistaken = dlq_message(
        reason="shard rejected the row (bug 123, fixed since)",
        service="consumer:old",
        topic=settings.scorecards_topic,
        partition=0,
        offset=999,
        key=fixed_key,
        value=fixed,
    )
    # An envelope that kept only a prefix of a too-large original.
    big = dlq_message(
        reason="message too large",
        service="consumer:w0",
        topic=settings.scorecards_topic,
        partition=1,
        offset=5,
        key=b"big",
        value=b'{"schema_version": 1, "job_id": "job-big", ',
    ).model_copy(update={"job_id": "job-big", "truncated": True, "original_size": 40_000_000})
    producer = Producer(settings.kafka_client_config())
    for envelope in (mistaken, big):
        producer.produce(settings.dlq_topic, value=dump(envelope))
    # And a poison message that the running consumer dead-letters itself.
    producer.produce(settings.scorecards_topic, value=b"{not json", key=b"poison")
    assert producer.flush(30) == 0

    with workers(settings, tmp_path, "w1"):
        done = reindex(settings, "status", "main", "--wait", "--timeout", "180")
        assert done.returncode == 0, done.stdout + done.stderr
        wait_until(lambda: len(read_topic(settings, settings.dlq_topic)) >= 3, 90, "3 DLQ records")

        listed = reindex(settings, "dlq", "list", "-o", "json")
        assert listed.returncode == 0, listed.stderr
        document = _json(listed)
        assert document["count"] == 3
        by_job = {x["job_id"]: x for x in document["dead_letters"]}
        assert set(by_job) == {"job-fix", "job-big", None}
        poison = by_job[None]
        assert poison["reason"].startswith("invalid scorecard message")
        assert poison["source_topic"] == settings.scorecards_topic
        assert poison["source_offset"] >= 0
        assert poison["original_size"] == len(b"{not json")
        assert not poison["replayed"]
        assert by_job["job-big"]["truncated"]
        assert by_job["job-big"]["original_size"] == 40_000_000
        assert by_job["job-fix"]["source_offset"] == 999

        only = _json(reindex(settings, "dlq", "list", "--job", "job-fix", "-o", "json"))
        assert [x["job_id"] for x in only["dead_letters"]] == ["job-fix"]
        only = _json(reindex(settings, "dlq", "list", "--reason", "INVALID JSON", "-o", "json"))
        assert [x["id"] for x in only["dead_letters"]] == [poison["id"]]
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        assert _json(reindex(settings, "dlq", "list", "--since", later, "-o", "json"))["count"] == 0
        assert _json(reindex(settings, "dlq", "list", "--since", "1h", "-o", "json"))["count"] == 3
        text = reindex(settings, "dlq", "list")
        assert text.returncode == 0
        assert "3 dead letter(s)" in text.stdout

        shown = reindex(settings, "dlq", "show", poison["id"])
        assert shown.returncode == 0, shown.stderr
        assert "invalid scorecard message" in shown.stdout
        assert f"{settings.scorecards_topic}[" in shown.stdout
        assert "{not json" in shown.stdout
        shown_json = _json(reindex(settings, "dlq", "show", poison["id"], "-o", "json"))
        assert shown_json["original_value"] == "{not json"
        assert shown_json["reason"] == poison["reason"]
        assert reindex(settings, "dlq", "show", "0:999999").returncode == 1
        assert reindex(settings, "dlq", "show", "zero").returncode == 2

        before = len(read_topic(settings, settings.scorecards_topic))
        dry = reindex(settings, "dlq", "replay", "--job", "job-fix", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.startswith("would replay 1 dead letter(s)")
        assert len(read_topic(settings, settings.scorecards_topic)) == before
        assert _on_shards(settings, "replayed-1") == 0

        replayed = reindex(settings, "dlq", "replay", "--job", "job-fix")
        assert replayed.returncode == 0, replayed.stderr
        assert replayed.stdout.startswith(
            f"replayed 1 dead letter(s) to {settings.scorecards_topic}"
        )
        wait_until(lambda: _on_shards(settings, "replayed-1") == 1, 90, "the replayed scorecard")
        assert len(read_topic(settings, settings.scorecards_topic)) == before + 1

        again = reindex(settings, "dlq", "replay", "--job", "job-fix", "-o", "json")
        assert again.returncode == 0, again.stderr
        assert _json(again) == {
            "dry_run": False,
            "replayed": [],
            "already_replayed": [by_job["job-fix"]["id"]],
            "not_replayable": [],
        }
        truncated = reindex(settings, "dlq", "replay", "--job", "job-big")
        assert truncated.returncode == 0, truncated.stderr
        assert truncated.stdout.startswith("replayed 0 dead letter(s)")
        assert "truncated" in truncated.stdout
        assert "cannot be replayed" in truncated.stdout
        assert len(read_topic(settings, settings.scorecards_topic)) == before + 1
        marked = _json(reindex(settings, "dlq", "list", "--job", "job-fix", "-o", "json"))
        assert marked["dead_letters"][0]["replayed"] is True
        # The replay markers live in the jobs topic but are no job: the job still reads back.
        checkpoint = read_checkpoint(settings, "main")
        assert checkpoint is not None
        assert checkpoint.state == "done"


# --- -o json, exit 3 and --last ----------------------------------------------------------------


def test_last_selects_the_range_and_json_outputs_parse(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    settings = pipeline_settings
    dsn = settings.director_dsn
    now = datetime.now(UTC)
    seed(dsn, dsn, SeedPlan(150, seed=4, start=now - timedelta(days=3), days=3))

    produced = reindex(
        settings, "produce", "--last", "24h", "--mode", "all", "--job-id", "last", "-o", "json"
    )
    assert produced.returncode == 0, produced.stderr
    summary = _json(produced)
    start = datetime.fromisoformat(summary["request"]["start"])
    end = datetime.fromisoformat(summary["request"]["end"])
    assert end - start == timedelta(hours=24)
    assert now <= end <= datetime.now(UTC)
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE created_at >= %s AND created_at < %s) "
            "FROM director.scorecards",
            (start, end),
        ).fetchone()
    assert row is not None
    total, in_range = row
    assert 0 < in_range < total
    assert summary["job_id"] == "last"
    assert summary["state"] == "done"
    assert summary["selected"] == summary["published_scorecards"] == in_range

    # No consumer yet: --verify gives up waiting (exit 4), and stdout stays empty.
    waited = reindex(
        settings, "produce", "--start", start.isoformat(), "--end", end.isoformat(),
        "--mode", "all", "--job-id", "last", "--verify", "--timeout", "2", "-o", "json",
    )  # fmt: skip
    assert waited.returncode == 4, waited.stderr
    assert waited.stdout == ""
    assert "not fully written after 2 s" in waited.stderr

    with workers(settings, tmp_path, "w1"):
        done = reindex(settings, "status", "last", "--wait", "--timeout", "180")
        assert done.returncode == 0, done.stdout + done.stderr
        # The same job again, with --verify: already done, then waited for and verified; the
        # waiting lines go to stderr, stdout holds the JSON summary alone.
        again = reindex(
            settings, "produce", "--start", start.isoformat(), "--end", end.isoformat(),
            "--mode", "all", "--job-id", "last", "--verify", "--timeout", "180", "-o", "json",
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
        repeated = _json(again)
        assert repeated["already_done"] is True
        assert repeated["verify"]["ok"] is True
        assert repeated["verify"]["scorecards"] == in_range
        assert "job last" in again.stderr
        clean = reindex(settings, "verify", "--last", "4d", "--mode", "all", "-o", "json")
    # Only the last 24 h were reindexed: the 4 days differ, the last 24 h match.
    assert clean.returncode == 3, clean.stderr
    report = _json(clean)
    assert report["ok"] is False
    assert report["scorecards"] == total
    assert sum(b["clickhouse"]["scorecards"] for b in report["buckets"]) == in_range

    checked = reindex(
        settings, "verify", "--start", start.isoformat(), "--end", end.isoformat(), "--mode",
        "all", "-o", "json",
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    report = _json(checked)
    assert report["ok"] is True
    assert report["buckets_differing"] == 0
    assert report["scorecards"] == in_range

    # One score changed on its shard: verify exits 3 and names the bucket in the JSON.
    select = f"SELECT {', '.join(SCORE_COLUMNS)} FROM scorecard_scores FINAL LIMIT 1"
    for shard in settings.shards:
        with shard_client(shard, database=settings.clickhouse_database) as client:
            rows = client.query(select).result_rows
            if rows:
                row = list(rows[0])
                row[SCORE_COLUMNS.index("numeric_value")] = 987654.0
                client.insert("scorecard_scores", [row], column_names=list(SCORE_COLUMNS))
                break
    broken = reindex(
        settings, "verify", "--start", start.isoformat(), "--end", end.isoformat(), "--mode",
        "all", "-o", "json",
    )  # fmt: skip
    assert broken.returncode == 3, broken.stderr
    report = _json(broken)
    assert report["ok"] is False
    assert report["buckets_differing"] == 1
    (differing,) = [b for b in report["buckets"] if not b["matches"]]
    assert differing["postgres"]["score_sum"] != differing["clickhouse"]["score_sum"]
    assert "verification failed" in broken.stderr
    text = reindex(
        settings, "verify", "--start", start.isoformat(), "--end", end.isoformat(), "--mode", "all"
    )
    assert text.returncode == 3
    assert "1 of" in text.stdout
    assert "DIFFERS" in text.stdout


# --- --max-lag ---------------------------------------------------------------------------------


def test_max_lag_pauses_the_producer_until_a_consumer_drains(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    settings = pipeline_settings
    dsn = settings.director_dsn
    seed(dsn, dsn, SeedPlan(2000, seed=6, start=START, days=5, mean_scores=2))
    ensure_topics(settings, reindexer_topics(settings))
    max_lag, batch = 200, 50
    stderr = tmp_path / "produce.err"
    with stderr.open("wb") as err:
        produce = subprocess.Popen(
            [sys.executable, "-m", "reindex", "produce", *RANGE, "--job-id", "lag",
             "--batch-size", str(batch), "--max-lag", str(max_lag)],
            env=settings_env(settings),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )  # fmt: skip
    try:
        wait_until(
            lambda: "waiting" in stderr.read_text() or produce.poll() is not None,
            120,
            "the producer to wait for the consumers",
        )
        assert produce.poll() is None, stderr.read_text()
        paused_at = len(read_topic(settings, settings.scorecards_topic))
        # What it published before pausing: past the limit by at most the pages in flight.
        assert max_lag < paused_at <= max_lag + (MAX_PAGES_IN_FLIGHT + 1) * batch
        checkpoint = read_checkpoint(settings, "lag")
        assert checkpoint is not None
        assert checkpoint.state == "running"
        assert checkpoint.published_scorecards == paused_at  # recorded before the wait
        time.sleep(3)  # no consumer: it stays paused
        assert produce.poll() is None
        assert len(read_topic(settings, settings.scorecards_topic)) == paused_at

        worker = start_worker(settings, "w1", tmp_path)
        try:
            assert produce.wait(300) == 0, stderr.read_text()
            done = reindex(settings, "status", "lag", "--wait", "--timeout", "180")
            assert done.returncode == 0, done.stdout + done.stderr
        finally:
            worker.stop()
    finally:
        if produce.poll() is None:
            produce.kill()
            produce.wait(30)
    checkpoint = read_checkpoint(settings, "lag")
    assert checkpoint is not None
    assert checkpoint.state == "done"
    assert checkpoint.published_scorecards == 2000
    assert len(read_topic(settings, settings.scorecards_topic)) == 2000
    assert "publishing again" in stderr.read_text()


def test_serve_with_max_lag_waits_stops_on_sigterm_and_resumes(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    settings = pipeline_settings
    dsn = settings.director_dsn
    seed(dsn, dsn, SeedPlan(1000, seed=8, start=START, days=5, mean_scores=2))
    ensure_topics(settings, reindexer_topics(settings))
    max_lag, batch = 100, 50
    requested = reindex(settings, "request", *RANGE, "--job-id", "served", "--batch-size", "50")
    assert requested.returncode == 0, requested.stderr

    def serve(log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "reindex", "serve", "--max-lag", str(max_lag)],
                env=settings_env(settings),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    first_log = tmp_path / "serve-1.log"
    service = serve(first_log)
    try:
        wait_until(
            lambda: "waiting" in first_log.read_text() or service.poll() is not None,
            120,
            "the service to wait for the consumers",
        )
        paused_at = len(read_topic(settings, settings.scorecards_topic))
        assert max_lag < paused_at <= max_lag + (MAX_PAGES_IN_FLIGHT + 1) * batch
        # While it waits, a stop is still noticed: it leaves at once, the job unfinished.
        service.send_signal(signal.SIGTERM)
        assert service.wait(60) == 0, first_log.read_text()
    finally:
        if service.poll() is None:
            service.kill()
            service.wait(30)
    checkpoint = read_checkpoint(settings, "served")
    assert checkpoint is not None
    assert checkpoint.state == "running"
    assert checkpoint.published_scorecards == paused_at

    second_log = tmp_path / "serve-2.log"
    with workers(settings, tmp_path, "w1"):
        service = serve(second_log)
        try:
            done = reindex(settings, "status", "served", "--wait", "--timeout", "240")
            assert done.returncode == 0, done.stdout + done.stderr + second_log.read_text()
        finally:
            service.send_signal(signal.SIGTERM)
            service.wait(60)
    checkpoint = read_checkpoint(settings, "served")
    assert checkpoint is not None
    assert checkpoint.state == "done"
    assert checkpoint.published_scorecards == 1000
