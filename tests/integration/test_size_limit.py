"""One size limit (REINDEX_MAX_MESSAGE_BYTES) against the real broker, shards and Postgres.

A scorecard of more than 1.5 MB goes through producer, topic and consumer and is written exactly;
a scorecard over a small configured limit fails the job with one line naming it.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from confluent_kafka import Producer
from fix_pipeline import (
    assert_correct_result,
    insert_rows,
    reindex,
    score,
    scorecard,
    template,
    workers,
)

from reindex_common.clickhouse import shard_client
from reindex_common.jobs import read_checkpoint
from reindex_common.kafka import ensure_topics, read_topic, reindexer_topics
from reindex_common.messages import DlqMessage
from reindex_common.routing import shard_for
from reindex_common.settings import Settings

START = datetime(2026, 1, 1, tzinfo=UTC)
END = START + timedelta(days=30)
CREATED = START + timedelta(days=3)


def _comment(i: int, length: int) -> str:
    # Unicode, quotes, backslashes and new lines: everything JSON must escape or encode.
    unit = f'score {i}: "très" \\ bien ✓ 東京\n'
    return (unit * (length // len(unit) + 1))[:length]


def _big_scorecard(dsn: str, scorecard_id: str, scores: int, comment_length: int) -> None:
    insert_rows(dsn, "director.scorecards", [scorecard("big", "p", scorecard_id, "t", CREATED)])
    insert_rows(
        dsn,
        "historic.scorecard_scores",
        [
            score(
                "big", "p", scorecard_id, f"c{i:04d}", CREATED, comment=_comment(i, comment_length)
            )
            for i in range(scores)
        ],
    )


def _small_scorecards(dsn: str, count: int) -> None:
    insert_rows(
        dsn,
        "director.scorecards",
        [
            scorecard(f"cust{i}", "p", f"s{i}", "t", CREATED + timedelta(minutes=i))
            for i in range(count)
        ],
    )
    insert_rows(
        dsn,
        "historic.scorecard_scores",
        [score(f"cust{i}", "p", f"s{i}", "k", CREATED) for i in range(count)],
    )


def _templates(dsn: str, count: int) -> None:
    rows = [template("big", "p", "t", "PROCESS")]
    rows += [template(f"cust{i}", "p", "t", "PROCESS") for i in range(count)]
    insert_rows(dsn, "director.scorecard_template_revisions", rows)


def test_a_scorecard_of_more_than_1_5_mb_is_written_exactly(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    settings = pipeline_settings
    dsn = settings.director_dsn
    _templates(dsn, 20)
    _big_scorecard(dsn, "huge", scores=400, comment_length=4000)
    _small_scorecards(dsn, 20)

    with workers(settings, tmp_path, "w1"):
        produced = reindex(
            settings,
            "produce",
            "--start",
            START.isoformat(),
            "--end",
            END.isoformat(),
            "--job-id",
            "big",
        )
        assert produced.returncode == 0, produced.stderr
        sizes = [len(v) for v in read_topic(settings, settings.scorecards_topic)]
        assert len(sizes) == 21
        assert max(sizes) >= 1_500_000, max(sizes)
        waited = reindex(settings, "status", "big", "--wait", "--timeout", "240")
        assert waited.returncode == 0, waited.stdout + waited.stderr

    assert_correct_result(settings, dsn, START, END)
    shard = settings.shards[shard_for("big", len(settings.shards))]
    with shard_client(shard, database=settings.clickhouse_database) as client:
        got = client.query(
            "SELECT criterion_id, comment FROM scorecard_scores FINAL "
            "WHERE scorecard_id = 'huge' ORDER BY criterion_id"
        ).result_rows
    assert [(c, m) for c, m in got] == [(f"c{i:04d}", _comment(i, 4000)) for i in range(400)]


def test_a_scorecard_over_a_small_limit_fails_the_job_with_one_line(
    pipeline_settings: Settings,
) -> None:
    settings = pipeline_settings.replace(max_message_bytes=256 * 1024)
    dsn = settings.director_dsn
    _templates(dsn, 5)
    _small_scorecards(dsn, 5)
    _big_scorecard(dsn, "too-big", scores=100, comment_length=4000)  # ~0.4 MB as a message

    produced = reindex(
        settings,
        "produce",
        "--start",
        START.isoformat(),
        "--end",
        END.isoformat(),
        "--job-id",
        "limited",
    )
    assert produced.returncode == 1, produced.stdout + produced.stderr
    assert "Traceback" not in produced.stderr
    lines = [line for line in produced.stderr.splitlines() if line.startswith("reindex: error: ")]
    assert len(lines) == 1, produced.stderr
    assert produced.stderr.strip().splitlines()[-1] == lines[0]
    assert "scorecard big/p/too-big is " in lines[0]
    assert "REINDEX_MAX_MESSAGE_BYTES=262,144" in lines[0]

    published = [json.loads(v) for v in read_topic(settings, settings.scorecards_topic)]
    assert all(m["scorecard"]["scorecard_id"] != "too-big" for m in published)
    failed = read_checkpoint(settings, "limited")
    assert failed is not None
    assert failed.state == "failed"
    assert failed.error is not None
    assert "big/p/too-big" in failed.error


def test_a_poison_message_near_the_limit_is_dead_lettered_bounded_and_the_worker_goes_on(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    settings = pipeline_settings.replace(max_message_bytes=512 * 1024)
    dsn = settings.director_dsn
    _templates(dsn, 20)
    _small_scorecards(dsn, 20)
    # Valid JSON, not a scorecard: its envelope (base64 + text) would be ~2.3 times its size.
    poison = json.dumps({"job_id": "x", "junk": "z" * 500_000}).encode()
    ensure_topics(settings, reindexer_topics(settings))
    plain = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    plain.produce(settings.scorecards_topic, value=poison, key=b"poison")
    assert plain.flush(30) == 0

    with workers(settings, tmp_path, "w1") as (w1,):
        produced = reindex(
            settings,
            "produce",
            "--start",
            START.isoformat(),
            "--end",
            END.isoformat(),
            "--job-id",
            "after-poison",
        )
        assert produced.returncode == 0, produced.stderr
        waited = reindex(settings, "status", "after-poison", "--wait", "--timeout", "240")
        assert waited.returncode == 0, waited.stdout + waited.stderr
        assert w1.process.poll() is None, w1.output()
        (envelope,) = [
            DlqMessage.model_validate_json(v) for v in read_topic(settings, settings.dlq_topic)
        ]
    assert "Traceback" not in w1.output()
    assert envelope.truncated
    assert envelope.original_size == len(poison)
    assert envelope.original_value is None
    kept = base64.b64decode(envelope.original_value_base64)
    assert poison.startswith(kept)
    assert len(kept) > 300_000
    assert envelope.reason.startswith("invalid scorecard message")
    assert_correct_result(settings, dsn, START, END)
