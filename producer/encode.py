"""Turning a page into scorecard messages (SPEC §4).

Postgres already wrote each scorecard and its scores as JSON (``producer/source.py``); a message is
the job's fields followed by those two, joined as bytes. The consumer validates every message
against the rules of :class:`~reindex_common.messages.ScorecardMessage`; the producer's tests parse
what it publishes with that model and compare every value with Postgres.

Postgres writes ``NaN`` and ``±Infinity`` floats as JSON strings. The messages carry them as the
JSON constants ``NaN`` and ``Infinity`` instead, which the consumer reads back as floats: the few
scorecards holding one are parsed, fixed and written again by pydantic's serializer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from pydantic import ConfigDict, TypeAdapter

from producer.source import Page
from reindex_common.messages import SCHEMA_VERSION, scorecard_key

# orjson cannot write NaN or ±Infinity; pydantic writes them as the JSON constants.
_EXACT_JSON = TypeAdapter(Any, config=ConfigDict(ser_json_inf_nan="constants"))


def message_head(job_id: str, clean_up: bool, reindexed_at: datetime) -> bytes:
    """The bytes every message of a job starts with, up to the scorecard object."""
    return b"".join(
        (
            b'{"schema_version":',
            orjson.dumps(SCHEMA_VERSION),
            b',"job_id":',
            orjson.dumps(job_id),
            b',"clean_up":',
            orjson.dumps(clean_up),
            b',"reindexed_at":',
            orjson.dumps(reindexed_at, option=orjson.OPT_UTC_Z),
            b',"scorecard":',
        )
    )


def _float(value: Any) -> Any:
    return float(value) if isinstance(value, str) else value  # "NaN", "Infinity", "-Infinity"


def _with_constants(head: bytes, card: bytes, scores: bytes) -> bytes:
    message = orjson.loads(head + b"null}")
    scorecard = orjson.loads(card)
    scorecard["score"] = _float(scorecard["score"])
    message["scorecard"] = scorecard
    message["scores"] = orjson.loads(scores)
    for score in message["scores"]:
        score["numeric_value"] = _float(score["numeric_value"])
    return _EXACT_JSON.dump_json(message)


def page_messages(
    page: Page, *, job_id: str, clean_up: bool, reindexed_at: datetime
) -> list[tuple[bytes, bytes]]:
    """(key, value) of every scorecard of ``page``, in page order (the SPEC §4 message)."""
    head = message_head(job_id, clean_up, reindexed_at)
    out = []
    for position, ((customer, profile, scorecard), card, scores) in enumerate(
        zip(page.keys, page.cards, page.scores, strict=True)
    ):
        key = scorecard_key(customer, profile, scorecard)
        if position in page.non_finite:
            out.append((key, _with_constants(head, card, scores)))
        else:
            out.append((key, b"".join((head, card, b',"scores":', scores, b"}"))))
    return out
