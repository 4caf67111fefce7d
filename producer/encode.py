"""Turning Postgres rows into scorecard messages (SPEC §4).

The rows come from our own queries with known types, so they are not validated again here: plain
dicts go straight to orjson (several times faster than building and dumping the models).
The consumer validates every message it receives against :class:`ScorecardMessage`, and
``tests/unit/test_producer_units.py`` checks that both describe the same message. Non-finite
floats are written as the JSON constants ``NaN`` and ``Infinity``, which the consumer reads back.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import orjson
from pydantic import ConfigDict, TypeAdapter

from producer.source import Page, ScorecardRow, ScoreRow
from reindex_common.messages import SCHEMA_VERSION

# orjson writes NaN and ±Infinity as null: messages holding one go through pydantic's
# serializer instead, which writes the JSON constants the consumer reads back.
_EXACT_JSON = TypeAdapter(Any, config=ConfigDict(ser_json_inf_nan="constants"))


def _finite(value: float | None) -> bool:
    return value is None or math.isfinite(value)


def _record(row: ScorecardRow) -> dict[str, Any]:
    return {
        "customer_id": row[0],
        "profile_id": row[1],
        "scorecard_id": row[2],
        "template_id": row[3],
        "template_revision": row[4],
        "scorecard_type": row[5],
        "template_title": row[6],
        "conversation_id": row[7],
        "agent_user_id": row[8],
        "creator_user_id": row[9],
        "score": row[10],
        "submitted_at": row[11],
        "created_at": row[12],
        "updated_at": row[13],
    }


def _score(row: ScoreRow) -> dict[str, Any]:
    return {
        "criterion_id": row[3],
        "numeric_value": row[4],
        "not_applicable": row[5],
        "comment": row[6],
        "created_at": row[7],
        "updated_at": row[8],
    }


def page_messages(
    page: Page, *, job_id: str, clean_up: bool, reindexed_at: datetime
) -> list[tuple[bytes, bytes]]:
    """(key, value) of every scorecard of ``page``, in page order (the SPEC §4 message)."""
    out = []
    for row in page.scorecards:
        score_rows = page.scores.get((row[0], row[1], row[2]), ())
        message = {
            "schema_version": SCHEMA_VERSION,
            "job_id": job_id,
            "clean_up": clean_up,
            "reindexed_at": reindexed_at,
            "scorecard": _record(row),
            "scores": [_score(s) for s in score_rows],
        }
        key = f"{row[0]}\x1f{row[1]}\x1f{row[2]}".encode()  # = ScorecardMessage.key()
        if _finite(row[10]) and all(_finite(s[4]) for s in score_rows):
            out.append((key, orjson.dumps(message, option=orjson.OPT_UTC_Z)))
        else:
            out.append((key, _EXACT_JSON.dump_json(message)))
    return out
