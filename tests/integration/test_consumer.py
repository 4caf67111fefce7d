"""The consumer group against the real broker and shards: SPEC §3's correct result, always."""

from __future__ import annotations

import base64
import json
import signal
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import psycopg
from confluent_kafka import Producer
from fix_pipeline import (
    BOTH_TYPES,
    MONTH_END,
    MONTH_START,
    assert_correct_result,
    insert_rows,
    reindex,
    run_month_job,
    score,
    scorecard,
    seed_month,
    start_worker,
    template,
    wait_until,
    wait_written,
    workers,
)
from fix_services import Services
from prom_text import parse, total

from devstack import stack
from reindex_common.clickhouse import shard_client
from reindex_common.kafka import read_topic
from reindex_common.routing import shard_for
from reindex_common.settings import Settings
from reindex_common.written import committed_offsets, summarize_written

START, END, ALL = MONTH_START, MONTH_END, BOTH_TYPES


def test_two_workers_write_the_correct_result_and_status_waits_for_it(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    settings = pipeline_settings
    seed_month(settings, 1500)
    run_month_job(settings, "e2e")

    # Nothing consumes yet: --wait must not report success.
    early = reindex(settings, "status", "e2e", "--wait", "--timeout", "2")
    assert early.returncode == 4  # gave up waiting (SPEC §7)
    assert "not fully written" in early.stderr
    assert "written    0 scorecards" in early.stdout

    with workers(settings, tmp_path, "w1", "w2") as (w1, w2):
        wait_written(settings, "e2e")
        # Complete means written: check right away, before anything else could land.
        assert_correct_result(settings, settings.director_dsn, START, END, ALL)
        status = reindex(settings, "status", "e2e")
        assert "written    1,500 scorecards" in status.stdout, status.stdout
        for w in (w1, w2):
            assert w.stop(signal.SIGTERM) == 0, w.output()
            assert "leaving the group" in w.output()
    logs = w1.output() + w2.output()
    assert "assigned partitions" in logs


def test_clean_up_removes_scores_postgres_no_longer_has(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    settings = pipeline_settings
    dsn = settings.director_dsn
    created = START + timedelta(days=1)
    insert_rows(dsn, "director.scorecard_template_revisions", [template("c", "p", "t", "PROCESS")])
    insert_rows(
        dsn, "director.scorecards", [scorecard("c", "p", f"s{i}", "t", created) for i in range(5)]
    )
    insert_rows(
        dsn,
        "historic.scorecard_scores",
        [score("c", "p", f"s{i}", f"k{k}", created) for i in range(5) for k in range(4)],
    )
    with workers(settings, tmp_path, "w1"):
        run_month_job(settings, "first")
        wait_written(settings, "first")
        assert_correct_result(settings, dsn, START, END, ALL)

        with psycopg.connect(dsn) as conn:
            conn.execute("DELETE FROM historic.scorecard_scores WHERE criterion_id = 'k3'")
        run_month_job(settings, "no-clean-up")
        wait_written(settings, "no-clean-up")
        assert_correct_result(settings, dsn, START, END, ALL, extra_scores_allowed=True)
        shard = settings.shards[shard_for("c", len(settings.shards))]
        query = "SELECT count() FROM scorecard_scores FINAL WHERE criterion_id = 'k3'"
        with shard_client(shard, database=settings.clickhouse_database) as client:
            assert client.command(query) == 5  # without clean-up the stale rows stay

        run_month_job(settings, "with-clean-up", clean_up=True)
        wait_written(settings, "with-clean-up")
        with shard_client(shard, database=settings.clickhouse_database) as client:
            assert client.command(query) == 0
        assert_correct_result(settings, dsn, START, END, ALL)


def test_a_worker_killed_mid_job_loses_nothing(pipeline_settings: Settings, tmp_path: Path) -> None:
    settings = pipeline_settings.replace(consumer_batch_size=50)
    seed_month(settings, 3000)
    with workers(settings, tmp_path, "victim", "survivor") as (victim, survivor):
        wait_until(lambda: "assigned partitions" in victim.output(), 60, "the victim to join")
        run_month_job(settings, "kill")
        wait_until(lambda: "batch 3:" in victim.output(), 60, "the victim to write batches")
        victim.stop(signal.SIGKILL)
        wait_written(settings, "kill")
        assert survivor.process.poll() is None
    assert_correct_result(settings, settings.director_dsn, START, END, ALL)


def test_a_worker_joining_mid_job_takes_partitions_over_and_nothing_is_lost(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    # The rebalance revokes partitions while the first worker holds fetched, untaken messages in
    # its intake: those must be dropped there and read again by the new owner, never skipped.
    # Small batches keep the first worker busy with the backlog until the second has joined.
    settings = pipeline_settings.replace(consumer_batch_size=10)
    seed_month(settings, 4000)
    run_month_job(settings, "join")
    with workers(settings, tmp_path, "first") as (first,):
        wait_until(lambda: "batch 3:" in first.output(), 60, "the first to write batches")
        with workers(settings, tmp_path, "second") as (second,):
            wait_until(lambda: "] batch 1:" in second.output(), 90, "the second to write")
            wait_written(settings, "join")
        assert "gives up partitions" in first.output(), "no partition moved: no rebalance"
        assert first.process.poll() is None, first.output()
    assert_correct_result(settings, settings.director_dsn, START, END, ALL)


def test_a_shard_down_for_ten_seconds_delays_but_loses_nothing(
    pipeline_settings: Settings, services: Services, tmp_path: Path
) -> None:
    settings = pipeline_settings.replace(consumer_batch_size=50)
    seed_month(settings, 1500)
    with workers(settings, tmp_path, "w1") as (w1,):
        run_month_job(settings, "outage")
        wait_until(lambda: "batch 2:" in w1.output(), 60, "the first batches")
        services.stop_shard(1)
        time.sleep(10)
        services.start_shard(1)
        wait_written(settings, "outage")
        assert w1.process.poll() is None, w1.output()
        assert "retry" in w1.output()
    assert_correct_result(settings, settings.director_dsn, START, END, ALL)


def test_poison_messages_go_to_the_dlq_and_the_rest_is_written(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    settings = pipeline_settings
    seed_month(settings, 300)
    run_month_job(settings, "poison")
    producer = Producer(settings.kafka_client_config())
    poison = [b"{not json", json.dumps({"schema_version": 1, "job_id": "x"}).encode()]
    for value in poison:
        producer.produce(settings.scorecards_topic, value=value, key=b"poison")
    assert producer.flush(30) == 0
    port = stack.free_port()
    worker = start_worker(settings, "w1", tmp_path, REINDEX_METRICS_PORT=str(port))
    try:
        wait_written(settings, "poison")
        wait_until(
            lambda: len(read_topic(settings, settings.dlq_topic)) >= 2, 60, "two DLQ messages"
        )
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            metrics = response.read().decode()
        samples = parse(metrics)
        assert total(samples, "reindex_dlq_messages_total", worker="w1") == 2
        assert total(samples, "reindex_scorecards_written_total", worker="w1") == 300
    finally:
        assert worker.stop() == 0, worker.output()
    dlq = [json.loads(v) for v in read_topic(settings, settings.dlq_topic)]
    assert sorted(base64.b64decode(d["original_value_base64"]) for d in dlq) == sorted(poison)
    for entry in dlq:
        assert entry["source_topic"] == settings.scorecards_topic
        assert entry["source_offset"] >= 0
        assert entry["original_key_base64"] == base64.b64encode(b"poison").decode()
        assert entry["reason"].startswith("invalid scorecard message")
    reasons = " ".join(d["reason"] for d in dlq)
    assert "Invalid JSON" in reasons
    assert "scorecard: Field required" in reasons
    assert_correct_result(settings, settings.director_dsn, START, END, ALL)


def test_past_the_retry_deadline_the_worker_stops_and_commits_nothing_unwritten(
    pipeline_settings: Settings, services: Services, tmp_path: Path
) -> None:
    settings = pipeline_settings.replace(consumer_batch_size=50, write_retry_deadline=3.0)
    seed_month(settings, 600)
    services.stop_shard(0)
    try:
        run_month_job(settings, "deadline")
        with workers(settings, tmp_path, "doomed") as (doomed,):
            assert doomed.process.wait(90) == 1, doomed.output()
        last_line = doomed.output().strip().splitlines()[-1]
        assert last_line.startswith("reindex: error: shard 0"), last_line
        assert "gave up after" in last_line
        status = reindex(settings, "status", "deadline")
        assert "complete" not in status.stdout.splitlines()[0]
    finally:
        services.start_shard(0)
    with workers(settings, tmp_path, "rescuer"):
        wait_written(settings, "deadline")
    assert_correct_result(settings, settings.director_dsn, START, END, ALL)


def test_sigterm_finishes_and_commits_the_current_batch_then_leaves(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    settings = pipeline_settings.replace(consumer_batch_size=100)
    seed_month(settings, 2000)
    run_month_job(settings, "drain")
    with workers(settings, tmp_path, "leaver") as (leaver,):
        wait_until(lambda: "batch 2:" in leaver.output(), 60, "the leaver to write batches")
        leaver.process.send_signal(signal.SIGTERM)
        assert leaver.process.wait(60) == 0, leaver.output()
    log = leaver.output()
    assert "batch committed; leaving the group" in log or "SIGTERM: leaving the group" in log
    batches = log.count("] batch ")
    assert batches < 20, "the leaver wrote the whole job: the test did not stop it mid-job"
    # Exactly what it wrote is committed: as many messages behind the committed offsets as it
    # recorded written (each partition starts at offset 0; no message was written twice).
    committed = committed_offsets(settings, settings.scorecards_topic, range(4))
    written = summarize_written(settings, "drain").scorecards
    assert 0 < written < 2000
    assert sum(max(o, 0) for o in committed.values()) == written
    with workers(settings, tmp_path, "finisher"):
        wait_written(settings, "drain")
    assert_correct_result(settings, settings.director_dsn, START, END, ALL)
