"""``reindex jobs cancel`` against the real broker, Postgres and shards.

The producer running the job (``serve`` or ``produce``) stops at a page boundary and records
``cancelled``; serve goes on with the next request; what was published is still written.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from fix_pipeline import reindex, workers
from fix_services import settings_env

from producer.service import serve_group
from reindex_common.cancel import cancel_key
from reindex_common.clickhouse import shard_client
from reindex_common.jobs import read_checkpoint
from reindex_common.kafka import ensure_topics, read_topic, reindexer_topics
from reindex_common.seed import SeedPlan, seed
from reindex_common.settings import Settings

PLAN = SeedPlan(scorecards=1500, seed=3, days=30)


def _wait(what: str, check: Callable[[], Any], timeout_s: float = 180) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.3)
    return result


def _state(settings: Settings, job_id: str) -> str | None:
    cp = read_checkpoint(settings, job_id)
    return None if cp is None else cp.state


def _request(job_id: str, start: datetime, end: datetime) -> bytes:
    body = {"job_id": job_id, "start": start.isoformat(), "end": end.isoformat(), "batch_size": 25}
    return json.dumps(body).encode()


def _committed(settings: Settings) -> int:
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": serve_group(settings)}
    )
    try:
        (tp,) = consumer.committed([TopicPartition(settings.requests_topic, 0)], timeout=10)
        return int(tp.offset)
    finally:
        consumer.close()


def _published_keys(settings: Settings, job_id: str) -> set[tuple[str, str, str]]:
    keys = set()
    for value in read_topic(settings, settings.scorecards_topic):
        message = json.loads(value)
        if message["job_id"] == job_id:
            s = message["scorecard"]
            keys.add((s["customer_id"], s["profile_id"], s["scorecard_id"]))
    return keys


def _written_keys(settings: Settings, job_id: str) -> set[tuple[str, str, str]]:
    keys: set[tuple[str, str, str]] = set()
    for shard in settings.shards:
        with shard_client(shard, database=settings.clickhouse_database) as client:
            rows = client.query(
                "SELECT customer_id, profile_id, scorecard_id FROM scorecards FINAL "
                "WHERE reindex_job_id = {job:String}",
                parameters={"job": job_id},
            ).result_rows
        keys |= {(a, b, c) for a, b, c in rows}
    return keys


def _markers(settings: Settings, job_id: str) -> list[bytes | None]:
    """The values of ``job_id``'s cancel-marker records, tombstones (None) included."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": "test-markers",  # assigned by hand, never joins
            "enable.partition.eof": True,
        }
    )
    try:
        consumer.assign([TopicPartition(settings.jobs_topic, 0, OFFSET_BEGINNING)])
        values = []
        while True:
            msg = consumer.poll(30)
            assert msg is not None, "timed out reading the jobs topic"
            error = msg.error()
            if error is not None:
                assert error.code() == KafkaError._PARTITION_EOF, error
                return values
            if msg.key() == cancel_key(job_id):
                values.append(msg.value())
    finally:
        consumer.close()


@contextmanager
def _background(settings: Settings, args: list[str], log: Path) -> Iterator[subprocess.Popen[str]]:
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reindex", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=settings_env(settings),
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)


def test_serve_stops_a_cancelled_job_goes_on_and_what_was_published_is_written(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    settings = pipeline_settings
    seed(settings.director_dsn, settings.director_dsn, PLAN)
    ensure_topics(settings, reindexer_topics(settings))
    plain = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    middle = PLAN.start + timedelta(days=20)  # two ranges: the rows keep the job that wrote them
    plain.produce(settings.requests_topic, key=b"slow", value=_request("slow", PLAN.start, middle))
    plain.produce(settings.requests_topic, key=b"next", value=_request("next", middle, PLAN.end))
    assert plain.flush(30) == 0

    log = tmp_path / "serve.log"
    with (
        workers(settings, tmp_path, "w1"),
        # Slow enough that the job outlasts a `reindex jobs cancel` on a loaded machine.
        _background(settings, ["serve", "--max-rate", "40"], log) as serve,
    ):
        _wait(
            "two pages of the slow job",
            lambda: (cp := read_checkpoint(settings, "slow")) and cp.pages >= 2,
        )
        cancelled = reindex(settings, "jobs", "cancel", "slow")
        assert cancelled.returncode == 0, cancelled.stderr
        assert "job slow: cancel requested" in cancelled.stdout

        _wait("the slow job cancelled", lambda: _state(settings, "slow") == "cancelled")
        _wait("the next job done", lambda: _state(settings, "next") == "done")
        _wait("both requests committed", lambda: _committed(settings) == 2)
        assert serve.poll() is None, log.read_text()

        slow = read_checkpoint(settings, "slow")
        assert slow is not None
        assert slow.selected is not None
        assert 0 < slow.published_scorecards < slow.selected
        published = _published_keys(settings, "slow")
        assert len(published) >= slow.published_scorecards
        _wait("what was published written", lambda: _written_keys(settings, "slow") == published)

    text = log.read_text()
    assert "Traceback" not in text
    assert "job slow cancelled after" in text
    assert read_topic(settings, settings.dlq_topic) == []  # a cancel is not a dead letter
    markers = _markers(settings, "slow")
    assert len(markers) == 2
    assert markers[-1] is None  # the marker was deleted (a tombstone) once honoured


def test_produce_stops_when_cancelled_and_a_rerun_resumes(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    settings = pipeline_settings
    seed(settings.director_dsn, settings.director_dsn, PLAN)
    args = ["produce", "--start", PLAN.start.isoformat(), "--end", PLAN.end.isoformat()]
    args += ["--job-id", "p1", "--batch-size", "25"]
    # Slow enough (~40 s in all) that the job outlasts a `reindex jobs cancel` on a loaded machine.
    with _background(settings, [*args, "--max-rate", "40"], tmp_path / "p.log") as produce:
        _wait("two pages", lambda: (cp := read_checkpoint(settings, "p1")) and cp.pages >= 2)
        cancelled = reindex(settings, "jobs", "cancel", "p1")
        assert cancelled.returncode == 0, cancelled.stderr
        assert produce.wait(120) == 1
    output = (tmp_path / "p.log").read_text()
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("reindex: error: ")]
    assert len(errors) == 1, output
    assert "job p1 cancelled after" in errors[0]
    stopped = read_checkpoint(settings, "p1")
    assert stopped is not None
    assert stopped.state == "cancelled"
    assert stopped.selected is not None
    assert stopped.published_scorecards < stopped.selected

    again = reindex(settings, *args)  # resumes: the marker is gone
    assert again.returncode == 0, again.stderr
    done = read_checkpoint(settings, "p1")
    assert done is not None
    assert (done.state, done.published_scorecards) == ("done", done.selected)

    late = reindex(settings, "jobs", "cancel", "p1")
    assert late.returncode == 2
    assert late.stderr.strip().endswith("job p1 is done already: nothing to cancel")
