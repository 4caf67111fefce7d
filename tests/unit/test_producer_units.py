"""The producer's pure parts: job options, message encoding, request job ids (no services)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import Message

from producer.cli_options import build_request
from producer.encode import page_messages
from producer.service import derived_job_id
from producer.source import Page
from reindex_common.errors import BadInputError
from reindex_common.jobs import PageCursor
from reindex_common.messages import ReindexRequest, ScorecardMessage
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


def test_page_messages_keep_every_value() -> None:
    card = (
        "o'brien & sons",
        "東京/☃",
        'sc-"1"\\\n',
        "tpl",
        "2",
        "PROCESS",
        "Qualité — “title”",
        None,
        None,
        None,
        None,
        None,
        T0,
        T0 + timedelta(microseconds=1),
    )
    scores = [
        (*card[:3], "c-1", math.nan, False, "emoji 👍🏽\t\\", T0, T0),
        (*card[:3], "c-2", -math.inf, True, None, T0, T0),
        (*card[:3], "c-3", None, False, "", T0, T0),
    ]
    other = ("x", "y", "z", *card[3:])
    cursor = PageCursor(created_at=T0, scorecard_id="z", customer_id="x", profile_id="y")
    page = Page([card, other], {(card[0], card[1], card[2]): scores}, cursor)
    encoded = page_messages(page, job_id="j", clean_up=True, reindexed_at=T0)
    assert [key for key, _ in encoded] == [
        f"{card[0]}\x1f{card[1]}\x1f{card[2]}".encode(),
        b"x\x1fy\x1fz",
    ]
    first = ScorecardMessage.model_validate_json(encoded[0][1])
    assert first.job_id == "j"
    assert first.clean_up is True
    assert first.scorecard.customer_id == card[0]
    assert first.scorecard.scorecard_id == card[2]
    assert first.scorecard.template_title == card[6]
    assert first.scorecard.score is None
    assert first.scorecard.updated_at == T0 + timedelta(microseconds=1)
    assert [s.criterion_id for s in first.scores] == ["c-1", "c-2", "c-3"]
    assert math.isnan(first.scores[0].numeric_value or 0.0)
    assert first.scores[1].numeric_value == -math.inf
    assert first.scores[0].comment == "emoji 👍🏽\t\\"
    assert first.scores[2].comment == ""
    assert ScorecardMessage.model_validate_json(encoded[1][1]).scores == ()


def test_a_request_without_job_id_gets_the_same_id_each_time_it_is_read() -> None:
    def message(offset: int, value: bytes) -> Message:
        return Message(topic="requests", partition=0, offset=offset, value=value)

    raw = b'{"start": "2026-03-01", "end": "2026-03-02"}'
    assert derived_job_id(message(7, raw)) == derived_job_id(message(7, raw))
    assert derived_job_id(message(7, raw)).startswith("request-0-7-")
    assert derived_job_id(message(8, raw)) != derived_job_id(message(7, raw))
