from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from reindex_common.errors import BadInputError
from reindex_common.messages import (
    ReindexRequest,
    ScorecardDict,
    ScorecardMessage,
    ScorecardMessageDict,
    ScorecardRecord,
    ScoreDict,
    ScoreRecord,
    dlq_message,
    dump,
    parse_request,
    parse_scorecard_message,
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


def _variants() -> list[tuple[str, dict[str, object]]]:
    """A valid message and variants of it, each changing one thing."""
    out: list[tuple[str, dict[str, object]]] = [("valid", _scorecard(1.5))]

    def change(name: str, path: tuple[str, ...], value: object, *, drop: bool = False) -> None:
        message = json.loads(json.dumps(_scorecard(1.5)))
        target = message
        for part in path[:-1]:
            target = target[part] if not part.isdigit() else target[int(part)]
        if drop:
            target.pop(path[-1], None)
        else:
            target[path[-1]] = value
        out.append((name, message))

    change("no schema_version", ("schema_version",), None, drop=True)
    change("schema_version 1", ("schema_version",), 1)
    change("schema_version 2", ("schema_version",), 2)
    change("unknown field", ("cleanup",), True)
    change("unknown scorecard field", ("scorecard", "extra"), 1)
    change("unknown score field", ("scores", "0", "extra"), 1)
    change("missing job_id", ("job_id",), None, drop=True)
    change("missing created_at", ("scorecard", "created_at"), None, drop=True)
    change("null created_at", ("scorecard", "created_at"), None)
    change("naive time", ("scorecard", "created_at"), "2026-03-01T00:00:00")
    change("offset time", ("scorecard", "created_at"), "2026-03-01T02:00:00+02:00")
    change("not a time", ("reindexed_at",), "yesterday")
    change("unknown type", ("scorecard", "scorecard_type"), "EMAIL")
    change("score as text", ("scorecard", "score"), "1.5")
    change("score as int", ("scorecard", "score"), 2)
    change("flag as text", ("scores", "0", "not_applicable"), "yes")
    change("id as number", ("scorecard", "scorecard_id"), 7)
    change("scores not a list", ("scores",), {"a": 1})
    change("no scores", ("scores",), [])
    return out


@pytest.mark.parametrize(("name", "message"), _variants(), ids=[n for n, _ in _variants()])
def test_the_consumers_dict_view_accepts_and_rejects_as_the_model(
    name: str, message: dict[str, object]
) -> None:
    raw = json.dumps(message).encode()
    try:
        model: ScorecardMessage | None = ScorecardMessage.model_validate_json(raw)
    except ValidationError:
        model = None
    try:
        fast: ScorecardMessageDict | None = parse_scorecard_message(raw)
    except ValidationError:
        fast = None
    assert (model is None) == (fast is None), name
    if model is not None and fast is not None:
        as_dict = model.model_dump()
        as_dict["scores"] = list(as_dict["scores"])
        as_dict.setdefault("schema_version", 1)
        fast_dict = dict(fast)
        fast_dict.setdefault("schema_version", 1)
        assert fast_dict == as_dict, name


def test_the_dict_view_has_the_models_fields() -> None:
    for view, model in (
        (ScorecardMessageDict, ScorecardMessage),
        (ScorecardDict, ScorecardRecord),
        (ScoreDict, ScoreRecord),
    ):
        assert set(view.__annotations__) == set(model.model_fields), view.__name__
