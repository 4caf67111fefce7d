"""The DLQ helpers without services: record ids, filters, the job of an envelope, replayability."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from reindex.dlq import DeadLetter, DlqFilter, ReplayResult, parse_id, replay_key
from reindex_common.errors import BadInputError
from reindex_common.messages import JOB_ID_PATTERN, DlqMessage, dlq_message

WHEN = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)


def _letter(value: bytes, **changes: object) -> DeadLetter:
    envelope = dlq_message(
        reason="invalid scorecard message: Invalid JSON",
        service="consumer:w1",
        topic="scorecard-reindex",
        partition=2,
        offset=40,
        key=b"k",
        value=value,
    ).model_copy(update={"failed_at": WHEN, **changes})
    return DeadLetter(0, 7, envelope)


def test_ids() -> None:
    assert parse_id("0:42") == (0, 42)
    assert parse_id(" 3:0 ") == (3, 0)
    for bad in ("0", "a:b", "0:-1", "0:1:2", ""):
        with pytest.raises(BadInputError, match="PARTITION:OFFSET"):
            parse_id(bad)


def test_replay_keys_are_never_job_ids() -> None:
    import re  # noqa: PLC0415

    key = replay_key(0, 7).decode()
    assert key == "dlq-replayed/0/7"
    assert not re.match(JOB_ID_PATTERN, key)


def test_job_comes_from_the_envelope_or_the_original() -> None:
    assert _letter(b"{}", job_id="j1").job_id == "j1"
    assert _letter(json.dumps({"job_id": "j2"}).encode()).job_id == "j2"
    assert _letter(b"{not json").job_id is None
    assert _letter(b"\xff\xfe").job_id is None
    assert _letter(b'{"job_id": "j3"}', truncated=True).job_id is None


def test_filters() -> None:
    letter = _letter(b'{"job_id": "j2"}')
    assert DlqFilter().matches(letter)
    assert DlqFilter(job="j2", reason="invalid json").matches(letter)
    assert not DlqFilter(job="j1").matches(letter)
    assert not DlqFilter(reason="too large").matches(letter)
    assert DlqFilter(since=WHEN).matches(letter)
    assert not DlqFilter(since=WHEN + timedelta(seconds=1)).matches(letter)


def test_what_can_be_replayed() -> None:
    assert _letter(b"{}").why_not_replayable is None
    truncated = _letter(b"{", truncated=True, original_size=20_000_000)
    assert "20,000,000 bytes" in (truncated.why_not_replayable or "")
    assert "cannot be replayed" in (truncated.why_not_replayable or "")
    letter = _letter(b"\xff")
    assert letter.original == b"\xff"
    assert letter.original_key == b"k"
    assert letter.source == "scorecard-reindex[2]@40"
    assert letter.summary()["original_size"] == 1


def test_replay_report() -> None:
    ok = _letter(b"{}")
    big = _letter(b"{", truncated=True)
    result = ReplayResult([ok], [], [(big, big.why_not_replayable or "")], dry_run=True)
    text = result.describe()
    assert text.startswith("would replay 1 dead letter(s) to scorecard-reindex; 0 already")
    assert "not replayed 0:7: only a prefix" in text
    assert result.document()["replayed"] == ["0:7"]
    DlqMessage.model_validate_json(ok.envelope.model_dump_json())
