"""The producer's pure parts: job options, message encoding, request job ids (no services)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import Message

from producer.cli_options import build_request
from producer.encode import page_messages
from producer.service import derived_job_id
from producer.source import SCORE_JSON_FIELDS, SCORECARD_JSON_FIELDS, Page
from reindex_common.errors import BadInputError
from reindex_common.jobs import PageCursor
from reindex_common.messages import (
    ReindexRequest,
    ScorecardMessage,
    ScorecardRecord,
    ScoreRecord,
)
from reindex_common.progress import ProgressView
from reindex_common.settings import Settings

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def request_of(settings: Settings | None = None, **options: Any) -> ReindexRequest:
    values: dict[str, Any] = {
        "start": "2026-03-01T00:00:00Z",
        "end": "2026-04-01T00:00:00Z",
        "types": None,
        "mode": None,
        "batch_size": None,
        "clean_up": False,
        "job_id": None,
    }
    values.update(options)
    return build_request(settings or Settings(), **values)


def test_defaults_come_from_the_settings() -> None:
    req = request_of(Settings(mode="all", batch_size=77))
    assert req.scorecard_types == ("PROCESS", "CONVERSATION")
    assert req.batch_size == 77
    assert req.job_id.startswith("job-")


def test_types_mode_and_zoneless_times() -> None:
    req = request_of(types="conversation, PROCESS", start="2026-03-01T00:00:00")
    assert req.scorecard_types == ("CONVERSATION", "PROCESS")
    assert req.start == datetime(2026, 3, 1, tzinfo=UTC)
    assert request_of(mode="conversation").scorecard_types == ("CONVERSATION",)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"start": "yesterday"}, "not an ISO 8601 time"),
        ({"end": "2026-02-30"}, "not an ISO 8601 time"),
        ({"end": "2026-03-01T00:00:00Z"}, "must be before end"),
        ({"end": "2026-02-01T00:00:00+01:00"}, "must be before end"),
        ({"types": "PROCESS,CHAT"}, "unknown scorecard type CHAT"),
        ({"types": " , "}, "unknown scorecard type"),
        ({"types": "PROCESS", "mode": "all"}, "not both"),
        ({"batch_size": 0}, "at least 1"),
        ({"job_id": ""}, "job_id"),
    ],
)
def test_bad_options_are_bad_input(options: dict[str, object], says: str) -> None:
    with pytest.raises(BadInputError, match=says):
        request_of(**options)


def _card_json(customer: str, profile: str, scorecard: str, score: object) -> bytes:
    """A scorecard as Postgres's row_to_json writes it (see producer/source.py)."""
    card = {
        "customer_id": customer,
        "profile_id": profile,
        "scorecard_id": scorecard,
        "template_id": "tpl",
        "template_revision": "2",
        "scorecard_type": "PROCESS",
        "template_title": "Qualité — “title”",
        "conversation_id": None,
        "agent_user_id": None,
        "creator_user_id": None,
        "score": score,
        "submitted_at": None,
        "created_at": "2026-03-01T12:00:00.123456+00:00",
        "updated_at": "2026-03-01T12:00:00.123457+00:00",
    }
    return json.dumps(card, ensure_ascii=False).encode()


def _score_json(criterion: str, value: object, comment: str | None) -> dict[str, object]:
    return {
        "criterion_id": criterion,
        "numeric_value": value,
        "not_applicable": False,
        "comment": comment,
        "created_at": "2026-03-01T12:00:00+00:00",
        "updated_at": "2026-03-01T12:00:00.5+00:00",
    }


def test_page_messages_join_the_job_fields_and_postgres_json() -> None:
    keys = [("o'brien & sons", "東京/☃", 'sc-"1"\\\n'), ("x", "y", "z")]
    scores = [_score_json("c-1", 1.5, "emoji 👍🏽\t\\"), _score_json("c-2", None, "")]
    cursor = PageCursor(created_at=T0, scorecard_id="z", customer_id="x", profile_id="y")
    page = Page(
        keys=keys,
        cards=[_card_json(*keys[0], 69), _card_json(*keys[1], None)],
        scores=[json.dumps(scores, ensure_ascii=False).encode(), b"[]"],
        score_count=2,
        cursor=cursor,
    )
    encoded = page_messages(page, job_id='j"1', clean_up=True, reindexed_at=T0)
    assert [key for key, _ in encoded] == ["\x1f".join(k).encode() for k in keys]
    first = ScorecardMessage.model_validate_json(encoded[0][1])
    assert first.job_id == 'j"1'
    assert first.clean_up is True
    assert first.reindexed_at == T0
    assert first.scorecard.customer_id == keys[0][0]
    assert first.scorecard.scorecard_id == keys[0][2]
    assert first.scorecard.template_title == "Qualité — “title”"
    assert first.scorecard.score == 69
    assert first.scorecard.updated_at == T0 + timedelta(microseconds=1)
    assert [s.criterion_id for s in first.scores] == ["c-1", "c-2"]
    assert first.scores[0].comment == "emoji 👍🏽\t\\"
    assert first.scores[1].comment == ""
    second = ScorecardMessage.model_validate_json(encoded[1][1])
    assert second.scores == ()
    assert second.scorecard.score is None


def test_non_finite_floats_become_json_constants() -> None:
    # Postgres writes NaN and ±Infinity as strings; the message must carry the constants.
    keys = [("c", "p", "s")]
    scores = [_score_json("a", "NaN", "NaN"), _score_json("b", "-Infinity", None)]
    page = Page(
        keys=keys,
        cards=[_card_json(*keys[0], "Infinity")],
        scores=[json.dumps(scores).encode()],
        score_count=2,
        cursor=PageCursor(created_at=T0, scorecard_id="s", customer_id="c", profile_id="p"),
        non_finite=frozenset({0}),
    )
    [(_, value)] = page_messages(page, job_id="j", clean_up=False, reindexed_at=T0)
    assert b'"NaN"' not in value.replace(b'"comment":"NaN"', b"")
    message = ScorecardMessage.model_validate_json(value)
    assert message.scorecard.score == math.inf
    assert math.isnan(message.scores[0].numeric_value or 0.0)
    assert message.scores[0].comment == "NaN"  # a string that says NaN stays a string
    assert message.scores[1].numeric_value == -math.inf


def test_a_request_without_job_id_gets_the_same_id_each_time_it_is_read() -> None:
    def message(offset: int, value: bytes) -> Message:
        return Message(topic="requests", partition=0, offset=offset, value=value)

    raw = b'{"start": "2026-03-01", "end": "2026-03-02"}'
    assert derived_job_id(message(7, raw)) == derived_job_id(message(7, raw))
    assert derived_job_id(message(7, raw)).startswith("request-0-7-")
    assert derived_job_id(message(8, raw)) != derived_job_id(message(7, raw))


def test_postgres_writes_the_message_field_names_in_model_order() -> None:
    assert [name for name, _ in SCORECARD_JSON_FIELDS] == list(ScorecardRecord.model_fields)
    assert [name for name, _ in SCORE_JSON_FIELDS] == list(ScoreRecord.model_fields)


def test_a_resumed_jobs_rate_counts_only_this_run() -> None:
    view = ProgressView("publishing j", 1_000, bar=False)
    view.advance(0, start_at=900)  # published by an earlier run
    view.advance(10)
    view._began -= 10.0  # ten seconds into this run
    assert view.rate == pytest.approx(1.0, rel=0.01)
