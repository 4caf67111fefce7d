"""``reindex serve`` never crashes or stalls on a request (real broker and Postgres).

Bad requests go to the DLQ with their reason; a job that keeps failing is retried a bounded
number of times, then recorded failed, dead-lettered and committed; the next request runs.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from fix_pipeline import insert_rows, score, scorecard, template
from fix_services import settings_env

from producer.service import RequestService, ServeOptions, serve_group
from reindex_common.jobs import JobCheckpoint, read_checkpoint
from reindex_common.kafka import TopicTail, ensure_topics, read_topic, reindexer_topics
from reindex_common.messages import DlqMessage
from reindex_common.settings import Settings

START = datetime(2026, 1, 1, tzinfo=UTC)
END = START + timedelta(days=30)


def _seed(dsn: str, count: int) -> None:
    created = START + timedelta(days=2)
    insert_rows(
        dsn,
        "director.scorecard_template_revisions",
        [template(f"c{i}", "p", "t", "PROCESS") for i in range(count)],
    )
    insert_rows(
        dsn,
        "director.scorecards",
        [
            scorecard(f"c{i}", "p", f"s{i}", "t", created + timedelta(seconds=i))
            for i in range(count)
        ],
    )
    insert_rows(
        dsn,
        "historic.scorecard_scores",
        [score(f"c{i}", "p", f"s{i}", "k", created) for i in range(count)],
    )


def _produce_raw(settings: Settings, messages: list[tuple[bytes | None, bytes]]) -> None:
    ensure_topics(settings, reindexer_topics(settings))
    plain = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for key, value in messages:
        plain.produce(settings.requests_topic, value=value, key=key)
    assert plain.flush(30) == 0


def _request(job_id: str, **changes: Any) -> bytes:
    body = {"job_id": job_id, "start": START.isoformat(), "end": END.isoformat(), "batch_size": 4}
    body.update(changes)
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


def _dlq(settings: Settings) -> list[DlqMessage]:
    return [DlqMessage.model_validate_json(v) for v in read_topic(settings, settings.dlq_topic)]


def _wait(what: str, check: Callable[[], Any], timeout_s: float = 120) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.3)
    return result


@contextmanager
def _serve(settings: Settings, log: Path) -> Iterator[subprocess.Popen[str]]:
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reindex", "serve"],
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


def test_serve_dead_letters_bad_requests_and_runs_the_valid_one(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    settings = pipeline_settings
    _seed(settings.director_dsn, 10)
    year_one = _request("year-one", start="0001-01-01T00:00:00+01:00")
    huge = _request("huge", note="x" * 700_000)
    negative = _request("negative", batch_size=-5)
    _produce_raw(
        settings,
        [
            (b"year-one", year_one),
            (b"huge", huge),
            (b"negative", negative),
            (b"ok", _request("ok")),
        ],
    )

    log = tmp_path / "serve.log"
    with _serve(settings, log) as serve:
        _wait(
            "the valid job done",
            lambda: (cp := read_checkpoint(settings, "ok")) and cp.state == "done",
        )
        _wait("all four requests committed", lambda: _committed(settings) == 4)
        assert serve.poll() is None, log.read_text()
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0, log.read_text()
    text = log.read_text()
    assert "Traceback" not in text

    rejected = _dlq(settings)
    assert [m.source_offset for m in rejected] == [0, 1, 2]
    assert "0001-01-01T00:00:00+01:00 is out of range" in rejected[0].reason
    assert rejected[0].original_value == year_one.decode()
    assert "700,1" in rejected[1].reason  # its size
    assert "not parsed" in rejected[1].reason
    assert rejected[1].original_size == len(huge)
    assert not rejected[1].truncated  # the default limit holds it whole
    assert rejected[1].original_value == huge.decode()
    assert "batch_size" in rejected[2].reason
    assert rejected[2].original_value == negative.decode()
    for job_id in ("year-one", "huge", "negative"):
        assert read_checkpoint(settings, job_id) is None  # nothing ran


def _job_history(settings: Settings, job_id: str) -> list[JobCheckpoint]:
    with TopicTail(settings, settings.jobs_topic) as tail:
        return [
            JobCheckpoint.model_validate_json(value)
            for key, value in tail.read_new()
            if key == job_id.encode()
        ]


def test_a_job_that_keeps_failing_is_given_up_recorded_failed_and_the_next_one_runs(
    pipeline_settings: Settings,
) -> None:
    # A real failure: one scorecard is over a small size limit, at every attempt.
    settings = pipeline_settings.replace(max_message_bytes=128 * 1024)
    dsn = settings.director_dsn
    _seed(dsn, 10)
    big_at = START + timedelta(days=20)
    insert_rows(
        dsn, "director.scorecard_template_revisions", [template("big", "p", "t", "PROCESS")]
    )
    insert_rows(dsn, "director.scorecards", [scorecard("big", "p", "huge", "t", big_at)])
    insert_rows(
        dsn,
        "historic.scorecard_scores",
        [score("big", "p", "huge", f"k{i}", big_at, comment="y" * 2000) for i in range(100)],
    )
    _produce_raw(
        settings,
        [
            (b"doomed", _request("doomed")),
            (b"ok", _request("ok", end=(START + timedelta(days=10)).isoformat())),
        ],
    )
    options = ServeOptions(backoff_s=0.05, max_backoff_s=0.2, poll_s=0.2, max_attempts=3)
    service = RequestService(settings, options)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            service.run()
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        _wait("both requests committed", lambda: _committed(settings) == 2)
        _wait(
            "the next job done",
            lambda: (cp := read_checkpoint(settings, "ok")) and cp.state == "done",
        )
    finally:
        service.stop()
        thread.join(60)
    assert not thread.is_alive()
    assert errors == []

    history = _job_history(settings, "doomed")
    states = [cp.state for cp in history]
    assert states[-1] == "failed"
    assert "failed" not in states[:-1]  # retries never looked failed to `status --wait`
    assert states.count("running") >= 3  # three attempts, each got as far as its first page
    final = history[-1]
    assert final.error is not None
    assert "scorecard big/p/huge is " in final.error
    assert final.selected == 11  # the last checkpoint is kept, with the failure added

    (dead,) = _dlq(settings)
    assert dead.source_offset == 0
    assert dead.job_id == "doomed"
    assert dead.reason.startswith("job doomed failed after 3 attempts: scorecard big/p/huge is ")
