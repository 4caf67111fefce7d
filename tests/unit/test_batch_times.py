"""Times and floats from a message to the columns the consumer inserts: exact, or refused."""

from __future__ import annotations

import calendar
import json
import math
import re
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from consumer.batch import RawMessage, Rejected, build
from reindex_common import datetime64
from reindex_common.messages import ScorecardMessage
from reindex_common.schema import SCORE_COLUMNS, SCORECARD_COLUMNS

_ISO = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?(Z|([+-])(\d\d):(\d\d))"
)


def reference_ticks(text: str) -> int:
    """Microseconds since the epoch of an ISO 8601 time, by integer arithmetic on its fields."""
    m = _ISO.fullmatch(text)
    assert m, text
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    fraction = int((m.group(7) or "").ljust(6, "0"))
    # timegm counts days with the proleptic Gregorian calendar from any year >= 1
    seconds = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
    if m.group(8) != "Z":
        offset = int(m.group(10)) * 3600 + int(m.group(11)) * 60
        seconds -= offset if m.group(9) == "+" else -offset
    return seconds * 1_000_000 + fraction


def _message(
    customer: str,
    card: str,
    *,
    times: dict[str, str | None] | None = None,
    score_times: tuple[str, str] = ("2026-03-01T00:00:00Z", "2026-03-01T00:00:00Z"),
    score: Any = 1.0,
    values: tuple[Any, ...] = (None,),
    job: str = "job-1",
) -> bytes:
    t = {
        "submitted_at": None,
        "created_at": "2026-03-01T00:00:00.000001Z",
        "updated_at": "2026-03-01T00:00:00.000002Z",
    } | (times or {})
    message = {
        "job_id": job,
        "clean_up": False,
        "reindexed_at": t.pop("reindexed_at", "2026-03-01T00:00:00Z"),
        "scorecard": {
            "customer_id": customer,
            "profile_id": "p",
            "scorecard_id": card,
            "template_id": "t",
            "template_revision": "1",
            "scorecard_type": "PROCESS",
            "template_title": "T",
            "conversation_id": None,
            "agent_user_id": None,
            "creator_user_id": None,
            "score": score,
            **t,
        },
        "scores": [
            {
                "criterion_id": f"c{i}",
                "numeric_value": v,
                "not_applicable": v is None,
                "comment": None,
                "created_at": score_times[0],
                "updated_at": score_times[1],
            }
            for i, v in enumerate(values)
        ],
    }
    return json.dumps(message).encode()  # writes NaN and Infinity as the JSON constants


def _columns(batch: Any, table: tuple[str, ...], attr: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {name: [] for name in table}
    for shard in batch.shards.values():
        for name, column in zip(table, getattr(shard, attr), strict=True):
            out[name] += column
    return out


def test_mixed_offsets_in_one_batch_convert_each_value_exactly() -> None:
    # The first message's zone is +02:00: before the fix the whole column moved by two hours.
    times = [
        ("2026-03-01T02:00:00.000001+02:00", "2026-03-01T01:59:59.999999-05:30"),
        ("2026-03-01T00:00:00Z", "2026-03-01T00:00:00.5+00:00"),
        ("1850-06-01T12:00:00.000001+23:59", "2500-03-04T05:06:07.890123-23:59"),
        ("2026-03-01T00:00:00-00:01", "2026-02-28T23:00:00-01:00"),
    ]
    raws = [
        RawMessage(
            "t",
            0,
            i,
            b"k",
            _message(
                "c",
                f"s{i}",
                times={"created_at": created, "updated_at": updated, "submitted_at": updated},
                score_times=(updated, created),
            ),
        )
        for i, (created, updated) in enumerate(times)
    ]
    batch = build(raws, 1)
    assert not batch.rejected
    cards = _columns(batch, SCORECARD_COLUMNS, "scorecards")
    by_id = dict(zip(cards["scorecard_id"], range(len(times)), strict=True))
    scores = _columns(batch, SCORE_COLUMNS, "scores")
    for i, (created, updated) in enumerate(times):
        row = by_id[f"s{i}"]
        assert cards["created_at"][row] == reference_ticks(created), created
        assert cards["updated_at"][row] == reference_ticks(updated), updated
        assert cards["submitted_at"][row] == reference_ticks(updated), updated
        assert scores["created_at"][row] == reference_ticks(updated), updated
        assert scores["updated_at"][row] == reference_ticks(created), created


def test_column_ticks_is_exact_for_every_zone_mix() -> None:
    from datetime import UTC, datetime, timedelta, timezone  # noqa: PLC0415

    base = datetime(2026, 3, 1, 12, 0, 0, 123_456, tzinfo=UTC)
    zones = [UTC, timezone(timedelta(hours=2)), timezone(-timedelta(hours=5, minutes=30))]
    values = [base.astimezone(z) for z in zones for _ in range(3)]
    want = (base - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert datetime64.column_ticks(values) == [want] * len(values)
    for zone in zones:
        assert datetime64.column_ticks([base.astimezone(zone)] * 2) == [want, want]
    berlin = ZoneInfo("Europe/Berlin")  # a zone whose offset changes (summer time)
    winter, summer = base, base + timedelta(days=120)
    mixed = [winter.astimezone(berlin), summer.astimezone(berlin), summer]
    mixed.append(winter.astimezone(zones[1]))
    exact = [(t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) for t in mixed]
    assert datetime64.column_ticks(mixed) == exact
    assert datetime64.column_ticks(mixed[::-1]) == exact[::-1]


def test_the_bounds_are_held_exactly() -> None:
    low, high = "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z"
    batch = build(
        [
            RawMessage(
                "t", 0, 0, b"k", _message("c", "s", times={"created_at": low, "updated_at": high})
            )
        ],
        1,
    )
    assert not batch.rejected
    cards = _columns(batch, SCORECARD_COLUMNS, "scorecards")
    assert cards["created_at"] == [datetime64.MIN_TICKS] == [reference_ticks(low)]
    assert cards["updated_at"] == [datetime64.MAX_TICKS] == [reference_ticks(high)]


OUT_OF_RANGE = [
    ("scorecard.updated_at", "infinity"),
    ("scorecard.submitted_at", "-infinity"),
    ("scorecard.updated_at", "12000-01-01T00:00:00+00:00"),
    ("scorecard.created_at", "294276-12-31T23:59:59.999999+00:00"),
    ("scorecard.created_at", "0044-03-15T00:00:00+00:00 BC"),
    ("scorecard.updated_at", "9999-12-31T23:00:00-02:00"),  # year 10000 in UTC
    ("scorecard.created_at", "0001-01-01T00:30:00+01:00"),  # year 0 in UTC
    ("scorecard.created_at", "0000-06-01T00:00:00Z"),
    ("reindexed_at", "Infinity"),
    ("scores[0].updated_at", "infinity"),
    ("scores[0].created_at", "10000-01-01T00:00:00Z"),
]


@pytest.mark.parametrize(("column", "value"), OUT_OF_RANGE)
def test_a_time_the_target_cannot_hold_dead_letters_its_scorecard(column: str, value: str) -> None:
    if column.startswith("scores[0]."):
        field = column.removeprefix("scores[0].")
        pair = (value, "2026-03-01T00:00:00Z")
        raw = _message("c", "bad", score_times=pair if field == "created_at" else pair[::-1])
    else:
        raw = _message("c", "bad", times={column.split(".")[-1]: value})
    good = _message("c", "good")
    batch = build([RawMessage("t", 3, 7, b"k", raw), RawMessage("t", 3, 8, b"k", good)], 1)
    assert batch.scorecard_count == 1  # the good one goes on
    assert batch.shards[0].scorecards[SCORECARD_COLUMNS.index("scorecard_id")] == ["good"]
    assert len(batch.rejected) == 1
    rejected = batch.rejected[0]
    assert isinstance(rejected, Rejected)
    assert rejected.reason == f"{column} = {value}: outside what DateTime64(6, 'UTC') holds"
    assert rejected.job_id == "job-1"
    assert (rejected.raw.partition, rejected.raw.offset) == (3, 7)
    assert batch.job_offsets == {"job-1": {3: [8]}}


def test_sub_microseconds_are_refused_not_truncated() -> None:
    finer = _message("c", "s1", times={"updated_at": "2026-03-01T00:00:00.1234567Z"})
    zeros = _message("c", "s2", times={"updated_at": "2026-03-01T00:00:00.123456000Z"})
    batch = build([RawMessage("t", 0, 0, b"k", finer), RawMessage("t", 0, 1, b"k", zeros)], 1)
    assert [r.reason for r in batch.rejected] == [
        "scorecard.updated_at = 2026-03-01T00:00:00.1234567Z: "
        "finer than the microseconds DateTime64(6, 'UTC') holds"
    ]
    cards = _columns(batch, SCORECARD_COLUMNS, "scorecards")
    assert cards["updated_at"] == [reference_ticks("2026-03-01T00:00:00.123456Z")]


def test_other_invalid_times_keep_the_general_reason_and_the_job() -> None:
    raw = _message("c", "s", times={"updated_at": "yesterday"}, job="job-2")
    batch = build([RawMessage("t", 0, 0, b"k", raw)], 1)
    (rejected,) = batch.rejected
    assert rejected.reason.startswith("invalid scorecard message: scorecard.updated_at")
    assert rejected.job_id == "job-2"
    bad_job = _message("c", "s", times={"updated_at": "infinity"}, job="bad job\n")
    (rejected,) = build([RawMessage("t", 0, 0, b"k", bad_job)], 1).rejected
    assert rejected.job_id is None  # not a valid job id: not repeated anywhere


def test_the_model_refuses_the_same_times() -> None:
    for column, value in OUT_OF_RANGE:
        if column.startswith("scorecard."):
            raw = _message("c", "s", times={column.split(".")[-1]: value})
            with pytest.raises(ValueError, match=column.split(".")[-1]):
                ScorecardMessage.model_validate_json(raw)


@pytest.mark.parametrize(
    "value", [math.nan, math.inf, -math.inf, 1e308, -1e-300, 5e-324, 0.1, -0.0]
)
def test_floats_reach_the_columns_exactly(value: float) -> None:
    raw = _message("c", "s", score=value, values=(value, None))
    batch = build([RawMessage("t", 0, 0, b"k", raw)], 1)
    assert not batch.rejected
    (card_score,) = _columns(batch, SCORECARD_COLUMNS, "scorecards")["score"]
    numeric = _columns(batch, SCORE_COLUMNS, "scores")["numeric_value"]
    for got in (card_score, numeric[0]):
        if math.isnan(value):
            assert math.isnan(got)
        else:
            assert got == value
            assert math.copysign(1, got) == math.copysign(1, value)
    assert numeric[1] is None


def test_a_time_out_of_range_and_another_fault_are_both_named() -> None:
    message = json.loads(_message("c", "s", times={"updated_at": "infinity"}))
    message["scorecard"]["scorecard_type"] = "EMAIL"
    (rejected,) = build([RawMessage("t", 0, 0, b"k", json.dumps(message).encode())], 1).rejected
    first, rest = rejected.reason.split("; ", 1)
    assert first == f"scorecard.updated_at = infinity: {datetime64.OUTSIDE}"
    assert rest.startswith("invalid scorecard message: ")
    assert "scorecard.scorecard_type" in rest
    assert rejected.job_id == "job-1"
