"""Job accounting against the real stack (SPEC §7): dead letters, requested jobs, failures, listing.

``status`` counts published, written and dead-lettered scorecards per job; a job complete with
dead letters exits 3, a failed or cancelled one exits 1 at once, ``--wait`` waits for a job that
is only requested, and ``reindex jobs`` lists them all.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Producer
from fix_pipeline import (
    BOTH_TYPES,
    MONTH_END,
    MONTH_START,
    reindex,
    seed_month,
    wait_until,
    workers,
)
from fix_services import settings_env

from producer.job import JobOptions, run_job
from producer.requests import publish_request
from reindex_common.errors import SourceUnavailableError
from reindex_common.jobs import (
    JobCheckpoint,
    read_checkpoint,
    write_checkpoint,
)
from reindex_common.kafka import ReliableProducer, ensure_topics, reindexer_topics
from reindex_common.messages import ReindexRequest, scorecard_key
from reindex_common.settings import Settings

START, END, ALL = MONTH_START, MONTH_END, BOTH_TYPES


def _request(job_id: str, batch: int = 100) -> ReindexRequest:
    return ReindexRequest(
        job_id=job_id, start=START, end=END, scorecard_types=ALL, batch_size=batch
    )


def _publish_poison(
    settings: Settings, job_id: str, count: int, reindexed_at: datetime
) -> list[str]:
    """Messages of ``job_id``'s run ``reindexed_at`` that the consumer must dead-letter (a
    scorecard field missing), each with 3 scores; returns their scorecard names."""
    producer = Producer(settings.kafka_client_config())
    names = []
    for i in range(count):
        doc = {
            "schema_version": 1,
            "job_id": job_id,
            "clean_up": False,
            "reindexed_at": reindexed_at.isoformat(),
            "scorecard": {"customer_id": "cust-poison", "profile_id": "p", "scorecard_id": f"s{i}"},
            "scores": [{}, {}, {}],
        }
        key = scorecard_key("cust-poison", "p", f"s{i}")
        producer.produce(settings.scorecards_topic, value=json.dumps(doc).encode(), key=key)
        names.append(f"cust-poison/p/s{i}")
    assert producer.flush(30) == 0
    return names


def test_a_job_with_dead_letters_is_complete_but_not_clean(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    settings = pipeline_settings
    seed_month(settings, 300, seed_value=7)
    ensure_topics(settings, reindexer_topics(settings))
    poison: list[str] = []

    def before_the_pages(cp: JobCheckpoint) -> None:
        # Before the job's own messages: on their partition they sit below the job's last
        # offset, so the job is complete only once they were handled.
        if not poison:
            poison.extend(_publish_poison(settings, "dl", 3, cp.started_at))

    run_job(settings, _request("dl"), JobOptions(show_progress=False, on_page=before_the_pages))

    with workers(settings, tmp_path, "w1"):
        waited = reindex(settings, "status", "dl", "--wait", "--timeout", "300")
        assert waited.returncode == 3, waited.stdout + waited.stderr
        error = waited.stderr.strip().splitlines()[-1]
        assert error.startswith("reindex: error: job dl complete, 3 scorecards dead-lettered: ")
        for name in poison:
            assert name in error
        assert "job dl: complete, 3 scorecards dead-lettered" in waited.stdout
        assert "written    300 scorecards" in waited.stdout
        assert "dead-lettered 3 scorecards with 9 scores" in waited.stdout

        as_json = reindex(settings, "status", "dl", "-o", "json")
        assert as_json.returncode == 3, as_json.stderr
        doc = json.loads(as_json.stdout)  # one document, nothing else on stdout
        assert doc["state"] == "done"
        assert doc["complete"] is True
        assert doc["clean"] is False
        assert doc["published"]["scorecards"] == 300
        assert doc["written"]["scorecards"] == 300
        assert doc["dead_lettered"]["scorecards"] == 3
        assert doc["dead_lettered"]["scores"] == 9
        assert sorted(d["scorecard"] for d in doc["dead_lettered"]["first"]) == poison
        assert all(
            "invalid scorecard message" in d["reason"] for d in doc["dead_lettered"]["first"]
        )

        # produce --verify follows the same rule (the job is done: nothing is published again).
        again = reindex(
            settings,
            "produce",
            "--start",
            START.isoformat(),
            "--end",
            END.isoformat(),
            "--mode",
            "all",
            "--batch-size",
            "100",
            "--job-id",
            "dl",
            "--verify",
            "--timeout",
            "300",
        )
        assert again.returncode == 3, again.stdout + again.stderr
        assert "complete, 3 scorecards dead-lettered" in again.stderr

        # Run again from the start (cause fixed): the earlier run's dead letters do not count.
        run_job(settings, _request("dl"), JobOptions(show_progress=False, restart=True))
        clean = reindex(settings, "status", "dl", "--wait", "--timeout", "300", "-o", "json")
        assert clean.returncode == 0, clean.stdout + clean.stderr
        doc = json.loads(clean.stdout)
        assert (doc["clean"], doc["dead_lettered"]["scorecards"]) == (True, 0)


def _background(settings: Settings, log: Path, *args: str) -> subprocess.Popen[str]:
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "reindex", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=settings_env(settings),
        )


def test_status_wait_right_after_request_waits_while_serve_is_busy_with_another_job(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    settings = pipeline_settings
    seed_month(settings, 400, seed_value=7)
    publish_request(settings, _request("busy", batch=50))  # serve takes this one first
    requested = reindex(
        settings,
        "request",
        "--start",
        START.isoformat(),
        "--end",
        END.isoformat(),
        "--mode",
        "all",
        "--job-id",
        "early",
    )
    assert requested.returncode == 0, requested.stderr

    # No serve has taken it: the job shows as requested, and --wait waits instead of "no job".
    shown = reindex(settings, "status", "early")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("job early: requested"), shown.stdout
    listed = json.loads(reindex(settings, "jobs", "-o", "json").stdout)
    assert [(j["job_id"], j["state"], j["started_at"]) for j in listed["jobs"]] == [
        ("early", "requested", None),
        ("busy", "requested", None),
    ]

    log = tmp_path / "wait.log"
    waiter = _background(settings, log, "status", "early", "--wait", "--timeout", "600")
    serve = None
    try:
        with workers(settings, tmp_path, "w1"):
            wait_until(lambda: "job early: requested" in log.read_text(), 60, "a first report")
            assert waiter.poll() is None, log.read_text()
            # Slow enough that "busy" keeps serve busy for a few seconds before "early".
            serve = _background(settings, tmp_path / "serve.log", "serve", "--max-rate", "100")
            assert waiter.wait(600) == 0, log.read_text()
        assert "job early: complete" in log.read_text()
        busy, early = read_checkpoint(settings, "busy"), read_checkpoint(settings, "early")
        assert busy is not None
        assert early is not None
        assert (busy.state, early.state) == ("done", "done")
        assert busy.finished_at is not None
        assert early.finished_at is not None
        assert busy.finished_at < early.finished_at
    finally:
        for proc in (waiter, serve):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(30)


def test_a_failed_or_cancelled_job_ends_the_wait_at_once_with_exit_1(
    pipeline_settings: Settings,
) -> None:
    settings = pipeline_settings
    broken = settings.replace(pg_dsn=settings.director_dsn + "_no_such_database")
    with pytest.raises(SourceUnavailableError):
        run_job(broken, _request("broken"), JobOptions(show_progress=False))
    cp = read_checkpoint(settings, "broken")
    assert cp is not None
    assert cp.state == "failed"

    # An hour's timeout: the subprocess limit (300 s) fails the test if --wait does not return.
    failed = reindex(settings, "status", "broken", "--wait", "--timeout", "3600", timeout=300)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert failed.stderr.strip().splitlines() == [f"reindex: error: job broken failed: {cp.error}"]
    assert "no_such_database" in failed.stderr

    producer = ReliableProducer(settings, client_id="test")
    cancelled = JobCheckpoint(
        job_id="stopped",
        request=_request("stopped"),
        state="cancelled",
        error="cancelled by the operator",
        started_at=datetime.now(UTC),
    )
    write_checkpoint(producer, settings, cancelled)
    result = reindex(settings, "status", "stopped", "--wait", "--timeout", "3600", timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "job stopped was cancelled: cancelled by the operator" in result.stderr

    gave_up = reindex(settings, "status", "never-requested", "--wait", "--timeout", "3")
    assert gave_up.returncode == 4, gave_up.stderr
    assert "no job 'never-requested' appeared within 3 s" in gave_up.stderr


def test_jobs_lists_every_job_newest_first_and_skips_other_records(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    settings = pipeline_settings
    seed_month(settings, 200, seed_value=7)
    ensure_topics(settings, reindexer_topics(settings))
    with workers(settings, tmp_path, "w1"):
        run_job(settings, _request("first"), JobOptions(show_progress=False))
        assert reindex(settings, "status", "first", "--wait", "--timeout", "300").returncode == 0
    broken = settings.replace(pg_dsn=settings.director_dsn + "_no_such_database")
    with pytest.raises(SourceUnavailableError):
        run_job(broken, _request("second"), JobOptions(show_progress=False))
    publish_request(settings, _request("third").model_copy(update={"clean_up": True}))
    # Records of other kinds share the topic; their keys hold a "/".
    producer = ReliableProducer(settings, client_id="test")
    producer.send(settings.jobs_topic, b'{"job_id": "first"}', key=b"cancel/first")
    producer.send(settings.jobs_topic, b"{}", key=b"dlq-replayed/0/5")
    producer.flush(30)

    listed = reindex(settings, "jobs", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    doc = json.loads(listed.stdout)
    assert doc["total"] == 3
    rows = {j["job_id"]: j for j in doc["jobs"]}
    assert [j["job_id"] for j in doc["jobs"]] == ["third", "second", "first"]
    assert rows["first"]["state"] == "done"
    assert rows["first"]["complete"] is True
    assert rows["first"]["published"]["scorecards"] == 200
    assert rows["first"]["written"]["scorecards"] == 200
    assert rows["first"]["dead_lettered"]["scorecards"] == 0
    assert rows["second"]["state"] == "failed"
    assert "no_such_database" in rows["second"]["error"]
    assert rows["third"]["state"] == "requested"
    assert rows["third"]["request"]["clean_up"] is True
    assert rows["third"]["request"]["scorecard_types"] == list(ALL)
    assert rows["third"]["request"]["start"] == START.isoformat()

    table = reindex(settings, "jobs", "--all")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.strip().splitlines()
    assert lines[0].split()[:5] == ["JOB", "STATE", "RANGE", "TYPES", "CLEAN-UP"]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["third", "requested"],
        ["second", "failed"],
        ["first", "done"],
    ]
    assert "2026-01-01..2026-01-31" in lines[3]
    assert "200" in lines[3]
    assert "cancel/" not in table.stdout
    assert "dlq-replayed" not in table.stdout
