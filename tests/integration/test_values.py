"""Odd values through the real pipeline: exactly in ClickHouse, or in the DLQ with the reason.

Postgres ``timestamptz`` holds ``infinity``, ``-infinity``, years past 9999 and BC dates, none of
which ``DateTime64(6, 'UTC')`` can hold; they must never be written clamped or shifted, and never
vanish: their scorecard is dead-lettered with ``<column> = <value>: outside what DateTime64(6,
'UTC') holds``. Times it can hold (0001 to 9999, 1850 and 2500 included) are written exactly,
whatever their offset, and so are NaN, ±Infinity, 1e308 and -1e-300.
"""

from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Producer
from fix_pipeline import (
    insert_rows,
    reindex,
    score,
    scorecard,
    start_worker,
    template,
    wait_until,
)

from producer.job import JobOptions, run_job
from reindex_common.clickhouse import shard_client
from reindex_common.kafka import ensure_topics, read_topic, reindexer_topics
from reindex_common.messages import ReindexRequest, scorecard_key
from reindex_common.routing import shard_for
from reindex_common.settings import Settings

START = datetime(1, 1, 1, tzinfo=UTC)
END = datetime(9000, 1, 1, tzinfo=UTC)
CREATED = datetime(2026, 1, 5, 10, 0, 0, 123_456, tzinfo=UTC)
OUTSIDE = "outside what DateTime64(6, 'UTC') holds"

# Scorecards whose times ClickHouse holds exactly: id -> scorecard columns, score columns.
GOOD: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "plain": ({}, {}),
    "y2500": (
        {
            "submitted_at": "2500-03-04 05:06:07.890123+00",
            "updated_at": "2500-12-31 23:59:59.999999+00",
        },
        {"created_at": "2500-01-01 00:00:00.000001+00", "updated_at": "2500-06-30 12:00:00+00"},
    ),
    "y1850": (
        {"created_at": "1850-06-01 12:00:00.000001+00", "updated_at": "1850-06-02 00:00:00+01"},
        {"created_at": "1850-01-01 00:00:00+00", "updated_at": "1899-12-31 23:59:59.999999+00"},
    ),
    "bounds": (
        {"created_at": "0001-01-01 00:00:00+00", "updated_at": "9999-12-31 23:59:59.999999+00"},
        {"created_at": "0001-01-01 00:00:00+00", "updated_at": "9999-12-31 23:59:59.999999+00"},
    ),
    "f-nan": ({"score": float("nan")}, {"numeric_value": float("nan")}),
    "f-inf": ({"score": float("inf")}, {"numeric_value": float("inf")}),
    "f-ninf": ({"score": float("-inf")}, {"numeric_value": float("-inf")}),
    "f-big": ({"score": 1e308}, {"numeric_value": 1e308}),
    "f-tiny": ({"score": -1e-300}, {"numeric_value": -1e-300}),
}
# Scorecards with a time it cannot hold: id -> scorecard columns, score columns, the DLQ reason.
BAD: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "inf": ({"updated_at": "infinity"}, {}, f"scorecard.updated_at = infinity: {OUTSIDE}"),
    "ninf": ({"submitted_at": "-infinity"}, {}, f"scorecard.submitted_at = -infinity: {OUTSIDE}"),
    "y12000": (
        {"updated_at": "12000-01-01 00:00:00+00"},
        {},
        f"scorecard.updated_at = 12000-01-01T00:00:00+00:00: {OUTSIDE}",
    ),
    "score-y12000": (
        {},
        {"updated_at": "12000-06-01 12:00:00.5+00"},
        f"scores[1].updated_at = 12000-06-01T12:00:00.5+00:00: {OUTSIDE}",
    ),
    "nan-inf": (  # the producer rewrites this one (NaN as a JSON constant): the time stays text
        {"score": float("nan"), "updated_at": "infinity"},
        {"numeric_value": float("-inf")},
        f"scorecard.updated_at = infinity: {OUTSIDE}",
    ),
    "bc": (
        {"submitted_at": "0044-03-15 00:00:00+00 BC"},
        {},
        f"scorecard.submitted_at = 0044-03-15T00:00:00+00:00 BC: {OUTSIDE}",
    ),
}


def _source_rows(dsn: str) -> None:
    insert_rows(dsn, "director.scorecard_template_revisions", [template("c", "p", "t", "PROCESS")])
    cards, scores = [], []
    for card_id, (card, one_score) in GOOD.items():
        cards.append(scorecard("c", "p", card_id, "t", CREATED) | card)
        scores.append(score("c", "p", card_id, "k0", CREATED))
        scores.append(score("c", "p", card_id, "k1", CREATED) | one_score)
    for card_id, (card, one_score, _) in BAD.items():
        cards.append(scorecard("c", "p", card_id, "t", CREATED) | card)
        scores.append(score("c", "p", card_id, "k0", CREATED))
        scores.append(score("c", "p", card_id, "k1", CREATED) | one_score)
    insert_rows(dsn, "director.scorecards", cards)
    insert_rows(dsn, "historic.scorecard_scores", scores)


def _hand_message(card_id: str, times: dict[str, str], score_times: tuple[str, str]) -> bytes:
    return json.dumps(
        {
            "schema_version": 1,
            "job_id": "by-hand",
            "clean_up": False,
            "reindexed_at": "2026-02-01T00:00:00+02:00",
            "scorecard": {
                "customer_id": "hand",
                "profile_id": "p",
                "scorecard_id": card_id,
                "template_id": "t",
                "template_revision": "1",
                "scorecard_type": "PROCESS",
                "template_title": "T",
                "conversation_id": None,
                "agent_user_id": "agent",
                "creator_user_id": None,
                "score": 2.5,
                **times,
            },
            "scores": [
                {
                    "criterion_id": "k0",
                    "numeric_value": 1.0,
                    "not_applicable": False,
                    "comment": None,
                    "created_at": score_times[0],
                    "updated_at": score_times[1],
                }
            ],
        }
    ).encode()


# Produced by hand, in this order, to one partition: the first batch's columns start with +02:00.
HAND_GOOD = {
    "mixed-1": (
        {
            "submitted_at": "2026-03-01T02:00:00.000001+02:00",
            "created_at": "2026-03-01T01:00:00+02:00",
            "updated_at": "2026-03-01T03:30:00.5+02:00",
        },
        ("2026-03-01T02:00:00+02:00", "2026-02-28T18:30:00-05:30"),
    ),
    "mixed-2": (
        {
            "submitted_at": "2026-03-01T00:00:00Z",
            "created_at": "2026-02-28T18:30:00.000002-05:30",
            "updated_at": "2026-03-01T00:00:00+00:00",
        },
        ("2026-03-01T00:00:00Z", "2026-03-01T00:00:00.999999Z"),
    ),
}
# What ClickHouse must show for them (toString of the DateTime64(6, 'UTC') columns).
HAND_WANT = {
    "mixed-1": (
        ("2026-03-01 00:00:00.000001", "2026-02-28 23:00:00.000000", "2026-03-01 01:30:00.500000"),
        ("2026-03-01 00:00:00.000000", "2026-03-01 00:00:00.000000"),
    ),
    "mixed-2": (
        ("2026-03-01 00:00:00.000000", "2026-03-01 00:00:00.000002", "2026-03-01 00:00:00.000000"),
        ("2026-03-01 00:00:00.000000", "2026-03-01 00:00:00.999999"),
    ),
}
HAND_BAD = {
    "offset-past-9999": (
        {
            "submitted_at": None,
            "created_at": "2026-03-01T00:00:00Z",
            "updated_at": "9999-12-31T23:00:00-02:00",  # year 10000 in UTC
        },
        ("2026-03-01T00:00:00Z", "2026-03-01T00:00:00Z"),
        f"scorecard.updated_at = 9999-12-31T23:00:00-02:00: {OUTSIDE}",
    ),
    "offset-before-1": (
        {
            "submitted_at": None,
            "created_at": "2026-03-01T00:00:00Z",
            "updated_at": "2026-03-01T00:00:00Z",
        },
        ("0001-01-01T00:30:00+01:00", "2026-03-01T00:00:00Z"),  # year 0 in UTC
        f"scores[0].created_at = 0001-01-01T00:30:00+01:00: {OUTSIDE}",
    ),
}

_TEXT = "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"
_CARDS_PG = f"""
SELECT scorecard_id, score::text, {_TEXT.format("submitted_at")}, {_TEXT.format("created_at")},
       {_TEXT.format("updated_at")}
FROM director.scorecards WHERE scorecard_id = ANY(%(ids)s)
"""
_SCORES_PG = f"""
SELECT scorecard_id, criterion_id, numeric_value::text, {_TEXT.format("created_at")},
       {_TEXT.format("updated_at")}
FROM historic.scorecard_scores WHERE scorecard_id = ANY(%(ids)s)
"""
_CARDS_CH = """
SELECT scorecard_id, score, toString(submitted_at), toString(created_at), toString(updated_at)
FROM scorecards FINAL WHERE customer_id = %(customer)s
"""
_SCORES_CH = """
SELECT scorecard_id, criterion_id, numeric_value, toString(created_at), toString(updated_at)
FROM scorecard_scores FINAL WHERE customer_id = %(customer)s
"""


def _float_text(value: float | None) -> str | None:
    """A float as Postgres writes it as text (NaN, Infinity, -Infinity, 1e+308, ...)."""
    if value is None:
        return None
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def _pg_float(text: str | None) -> str | None:
    return None if text is None else _float_text(float(text))


def _shard_rows(settings: Settings, customer: str) -> tuple[set[tuple[Any, ...]], ...]:
    shard = settings.shards[shard_for(customer, len(settings.shards))]
    with shard_client(shard, database=settings.clickhouse_database) as client:
        params = {"customer": customer}
        cards = client.query(_CARDS_CH, parameters=params).result_rows
        scores = client.query(_SCORES_CH, parameters=params).result_rows
    return (
        {(r[0], _float_text(r[1]), *r[2:]) for r in cards},
        {(r[0], r[1], _float_text(r[2]), *r[3:]) for r in scores},
    )


def _handled(settings: Settings, *customers: str) -> int:
    """Scorecards of ``customers`` written, plus every record in the DLQ."""
    written = sum(len(_shard_rows(settings, c)[0]) for c in customers)
    return written + len(read_topic(settings, settings.dlq_topic))


def _dlq(settings: Settings) -> dict[str, dict[str, Any]]:
    """The DLQ's records by the scorecard id of the message they hold."""
    out = {}
    for value in read_topic(settings, settings.dlq_topic):
        record = json.loads(value)
        original = json.loads(base64.b64decode(record["original_value_base64"]))
        out[original["scorecard"]["scorecard_id"]] = record
    return out


def test_odd_values_are_written_exactly_or_dead_lettered_with_their_reason(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    settings = pipeline_settings
    dsn = settings.director_dsn
    _source_rows(dsn)
    ensure_topics(settings, reindexer_topics(settings))

    # 1. Messages written by hand, with offsets, alone in the first batch of one worker.
    producer = Producer(settings.kafka_client_config())
    key = scorecard_key("hand", "p", "all")  # one key: one partition, in this order
    for card_id, (times, score_times) in HAND_GOOD.items():
        producer.produce(settings.scorecards_topic, _hand_message(card_id, times, score_times), key)
    for card_id, (times, score_times, _) in HAND_BAD.items():
        producer.produce(settings.scorecards_topic, _hand_message(card_id, times, score_times), key)
    assert producer.flush(30) == 0
    worker = start_worker(settings, "w1", tmp_path)
    try:
        # Each message ends up written or dead-lettered; which one is asserted below.
        hand = len(HAND_GOOD) + len(HAND_BAD)
        wait_until(lambda: _handled(settings, "hand") >= hand, 180, "the hand messages")

        # 2. A job over Postgres rows with values ClickHouse can and cannot hold.
        request = ReindexRequest(job_id="odd", start=START, end=END, batch_size=4)
        run_job(settings, request, JobOptions(show_progress=False))  # must not fail
        total = hand + len(GOOD) + len(BAD)
        wait_until(lambda: _handled(settings, "hand", "c") >= total, 180, "the job's messages")
        assert worker.process.poll() is None, worker.output()
    finally:
        assert worker.stop() == 0, worker.output()

    # status counts the job's dead letters (SPEC §7): complete but not clean, exit 3.
    status = reindex(settings, "status", "odd", "--wait", "--timeout", "180", "-o", "json")
    assert status.returncode == 3, status.stdout + status.stderr
    assert f"job odd complete, {len(BAD)} scorecards dead-lettered: " in status.stderr
    report = json.loads(status.stdout)
    assert report["dead_lettered"]["scorecards"] == len(BAD)
    named = {d["scorecard"].rsplit("/", 1)[-1] for d in report["dead_lettered"]["first"]}
    assert named == set(BAD)

    # Hand messages: each time converted with its own offset, to the microsecond.
    cards, scores = _shard_rows(settings, "hand")
    assert cards == {(card_id, "2.5", *want_card) for card_id, (want_card, _) in HAND_WANT.items()}
    assert scores == {
        (card_id, "k0", "1.0", *want_score) for card_id, (_, want_score) in HAND_WANT.items()
    }

    # Postgres rows: every good scorecard and score exactly as Postgres has it, as text.
    with psycopg.connect(dsn) as conn:
        ids = {"ids": list(GOOD)}
        want_cards = {(r[0], _pg_float(r[1]), *r[2:]) for r in conn.execute(_CARDS_PG, ids)}
        want_scores = {(*r[:2], _pg_float(r[2]), *r[3:]) for r in conn.execute(_SCORES_PG, ids)}
    cards, scores = _shard_rows(settings, "c")
    assert cards == want_cards
    assert scores == want_scores
    assert ("y2500", "1.5", "2500-03-04 05:06:07.890123", "2026-01-05 10:00:00.123456",
            "2500-12-31 23:59:59.999999") in cards  # fmt: skip
    assert ("y1850", "1.5", None, "1850-06-01 12:00:00.000001",
            "1850-06-01 23:00:00.000000") in cards  # fmt: skip
    assert {r[1] for r in cards if r[0].startswith("f-")} == {
        "NaN", "Infinity", "-Infinity", "1e+308", "-1e-300"
    }  # fmt: skip

    # Nothing of a dead-lettered scorecard was written; each is in the DLQ with its reason.
    dlq = _dlq(settings)
    assert set(dlq) == set(BAD) | set(HAND_BAD)
    for card_id, (_, _, reason) in BAD.items():
        assert dlq[card_id]["reason"] == reason, card_id
    for card_id, (_, _, reason) in HAND_BAD.items():
        assert dlq[card_id]["reason"] == reason, card_id
    for record in dlq.values():
        assert record["source_topic"] == settings.scorecards_topic
        assert record["source_offset"] >= 0


def test_verify_reports_values_no_shard_can_hold_as_differences(
    pipeline_settings: Settings,
) -> None:
    """psycopg cannot load infinity or year 12000 into a datetime; verify must not stop on them:
    the shards cannot hold those rows, so their buckets differ (exit 3), named, not an error."""
    settings = pipeline_settings
    _source_rows(settings.director_dsn)
    run = reindex(
        settings, "verify", "--start", START.isoformat(), "--end", END.isoformat(), "-o", "json"
    )
    assert run.returncode == 3, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert report["scorecards"] == len(GOOD) + len(BAD)
    assert report["buckets_differing"] >= 1
    assert "cannot read Postgres" not in run.stderr
