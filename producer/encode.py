"""Turning Postgres rows into scorecard messages (SPEC §4).

Rows come from our own queries with known types, so the models are built without validating
again (``model_construct``); the consumer validates every message it receives.
"""

from __future__ import annotations

from datetime import datetime

from producer.source import Page, ScorecardRow, ScoreRow
from reindex_common.messages import ScorecardMessage, ScorecardRecord, ScoreRecord


def _record(row: ScorecardRow) -> ScorecardRecord:
    return ScorecardRecord.model_construct(
        customer_id=row[0],
        profile_id=row[1],
        scorecard_id=row[2],
        template_id=row[3],
        template_revision=row[4],
        scorecard_type=row[5],
        template_title=row[6],
        conversation_id=row[7],
        agent_user_id=row[8],
        creator_user_id=row[9],
        score=row[10],
        submitted_at=row[11],
        created_at=row[12],
        updated_at=row[13],
    )


def _score(row: ScoreRow) -> ScoreRecord:
    return ScoreRecord.model_construct(
        criterion_id=row[3],
        numeric_value=row[4],
        not_applicable=row[5],
        comment=row[6],
        created_at=row[7],
        updated_at=row[8],
    )


def page_messages(
    page: Page, *, job_id: str, clean_up: bool, reindexed_at: datetime
) -> list[tuple[bytes, bytes]]:
    """(key, value) of every scorecard of ``page``, in page order."""
    out = []
    for row in page.scorecards:
        message = ScorecardMessage.model_construct(
            schema_version=1,
            job_id=job_id,
            clean_up=clean_up,
            reindexed_at=reindexed_at,
            scorecard=_record(row),
            scores=tuple(_score(s) for s in page.scores.get((row[0], row[1], row[2]), ())),
        )
        out.append((message.key(), message.model_dump_json().encode()))
    return out
