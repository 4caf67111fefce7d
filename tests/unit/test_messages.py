from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime

import pytest

from reindex_common.errors import BadInputError
from reindex_common.messages import (
    ReindexRequest,
    ScorecardMessage,
    dlq_message,
    dump,
    parse_request,
    parse_time,
)


def test_hand_written_request_from_the_spec() -> None:
    raw = (
        '{"job_id": "backfill-2026-03", "start": "2026-03-01T00:00:00Z", '
        '"end": "2026-04-01T00:00:00Z", "scorecard_types": ["PROCESS"], '
        '"batch_size": 500, "clean_up": true}'
    )
    req = parse_request(raw)
    assert req.job_id == "backfill-2026-03"
    assert req.start == datetime(2026, 3, 1, tzinfo=UTC)
    assert req.scorecard_types == ("PROCESS",)
    assert req.clean_up is True


def test_only_start_and_end_are_required() -> None:
    req = parse_request('{"start": "2026-03-01", "end": "2026-03-02T00:00:00+02:00"}')
    assert req.job_id.startswith("job-")
    assert req.scorecard_types == ("PROCESS",)
    assert req.clean_up is False
    assert req.batch_size == 500
    assert req.start.tzinfo is UTC  # no zone means UTC
    assert req.end == datetime(2026, 3, 1, 22, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("not json", "Invalid JSON"),
        ('{"start": "2026-03-02", "end": "2026-03-01"}', "must be before end"),
        ('{"start": "2026-03-01", "end": "2026-03-01"}', "must be before end"),
        ('{"start": "2026-03-01", "end": "2026-03-02", "scorecard_types": ["CHAT"]}', "CHAT"),
        ('{"start": "2026-03-01", "end": "2026-03-02", "batch_size": 0}', "batch_size"),
        ('{"start": "2026-03-01", "end": "2026-03-02", "cleanup": true}', "cleanup"),
        ('{"end": "2026-03-02"}', "start"),
        ('{"start": "yesterday", "end": "2026-03-02"}', "start"),
    ],
)
def test_invalid_requests_say_why(raw: str, reason: str) -> None:
    with pytest.raises(BadInputError, match="invalid reindex request") as info:
        parse_request(raw)
    assert reason in str(info.value)
    assert "\n" not in str(info.value)


def test_parse_time() -> None:
    assert parse_time("2026-03-01T10:00:00.123456Z") == datetime(
        2026, 3, 1, 10, 0, 0, 123456, tzinfo=UTC
    )
    assert parse_time("2026-03-01") == datetime(2026, 3, 1, tzinfo=UTC)
    with pytest.raises(BadInputError, match="not an ISO 8601 time"):
        parse_time("tomorrow")


def _scorecard(score: float | None) -> dict[str, object]:
    return {
        "job_id": "j",
        "clean_up": False,
        "reindexed_at": "2026-03-01T00:00:00Z",
        "scorecard": {
            "customer_id": "c'\"\\ü",
            "profile_id": "p",
            "scorecard_id": "s",
            "template_id": "t",
            "template_revision": "1",
            "scorecard_type": "PROCESS",
            "template_title": 'Qualité "x"\n',
            "conversation_id": None,
            "agent_user_id": None,
            "creator_user_id": "u",
            "score": score,
            "submitted_at": None,
            "created_at": "2026-03-01T00:00:00.000001Z",
            "updated_at": "2026-03-01T00:00:00.999999Z",
        },
        "scores": [
            {
                "criterion_id": "c1",
                "numeric_value": 0.1 + 0.2,
                "not_applicable": False,
                "comment": "🚀",
                "created_at": "2026-03-01T00:00:00.5Z",
                "updated_at": "2026-03-01T00:00:01Z",
            }
        ],
    }


@pytest.mark.parametrize("score", [None, 0.0, 1e-300, 12.345678901234567, math.inf, -math.inf])
def test_scorecard_message_round_trips_exactly(score: float | None) -> None:
    msg = ScorecardMessage.model_validate(_scorecard(score))
    back = ScorecardMessage.model_validate_json(dump(msg))
    assert back == msg
    assert back.scores[0].numeric_value == 0.1 + 0.2
    assert back.scorecard.created_at.microsecond == 1


def test_nan_survives_the_round_trip() -> None:
    msg = ScorecardMessage.model_validate(_scorecard(math.nan))
    back = ScorecardMessage.model_validate_json(dump(msg))
    assert back.scorecard.score is not None
    assert math.isnan(back.scorecard.score)


def test_key_keeps_one_scorecard_on_one_partition() -> None:
    a = ScorecardMessage.model_validate(_scorecard(1.0))
    b = ScorecardMessage.model_validate(_scorecard(2.0))
    assert a.key() == b.key()


def test_dlq_message_keeps_the_exact_bytes() -> None:
    raw = b"\xff\xfe not utf-8"
    msg = dlq_message(
        reason="bad", service="consumer", topic="t", partition=3, offset=7, key=b"k", value=raw
    )
    decoded = json.loads(dump(msg))
    assert base64.b64decode(decoded["original_value_base64"]) == raw
    assert decoded["original_value"] is None
    assert decoded["source_partition"] == 3
    assert decoded["source_offset"] == 7


def test_request_defaults_are_independent() -> None:
    a = ReindexRequest(start=datetime(2026, 1, 1), end=datetime(2026, 1, 2))
    b = ReindexRequest(start=datetime(2026, 1, 1), end=datetime(2026, 1, 2))
    assert a.job_id != b.job_id
