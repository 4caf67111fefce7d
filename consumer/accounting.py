"""What one batch did for each job: the :class:`WrittenRecord` a worker publishes per job.

A record names the job's messages the batch wrote (offset runs per partition) and the ones it sent
to the DLQ (:class:`DeadLetter`), so that ``status`` counts both (SPEC §7 job accounting). A
rejected message belongs to a job when the consumer could read its job id (``Rejected.job_id``,
or the ``job_id`` field of a message that is still JSON); one without a readable job id belongs to
no job: it is in the DLQ only.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from datetime import datetime

from consumer.batch import ParsedBatch, Rejected
from reindex_common.messages import JOB_ID_PATTERN
from reindex_common.written import DeadLetter, WrittenRecord, to_runs

_JOB_ID = re.compile(JOB_ID_PATTERN)

# A reason is kept whole in the DLQ; the written record needs only enough to recognise it.
REASON_CHARS = 300


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        found = datetime.fromisoformat(value)
    except ValueError:
        return None
    return None if found.tzinfo is None else found


def _peek(value: bytes | None) -> tuple[str | None, int, datetime | None]:
    """Best effort, for a rejected message: its job id, how many scores it carries, and its
    ``reindexed_at`` (the job run it came from)."""
    if not value:
        return None, 0, None
    try:
        doc = json.loads(value)
    except ValueError:
        return None, 0, None
    if not isinstance(doc, dict):
        return None, 0, None
    job_id = doc.get("job_id")
    scores = doc.get("scores")
    return (
        job_id if isinstance(job_id, str) and _JOB_ID.match(job_id) else None,
        len(scores) if isinstance(scores, list) else 0,
        _time(doc.get("reindexed_at")),
    )


def _scorecard_name(key: bytes | None) -> str | None:
    """``customer/profile/scorecard`` from a scorecard message's key (``scorecard_key``)."""
    if not key:
        return None
    text = key.decode("utf-8", errors="replace")
    parts = text.split("\x1f")
    return "/".join(parts) if len(parts) == 3 else text.encode("unicode_escape").decode()


def dead_letter(rejected: Rejected) -> tuple[str | None, DeadLetter]:
    """The job a rejected message belongs to (None: unknown), and its dead letter."""
    raw = rejected.raw
    job_id, scores, run = _peek(raw.value)
    return rejected.job_id or job_id, DeadLetter(
        partition=raw.partition,
        offset=raw.offset,
        scorecard=_scorecard_name(raw.key),
        scores=scores,
        reason=rejected.reason[:REASON_CHARS],
        reindexed_at=run,
    )


def job_records(parsed: ParsedBatch, worker: str) -> list[WrittenRecord]:
    """One record per job with messages in the batch: written offsets and dead letters."""
    dead: dict[str, list[DeadLetter]] = defaultdict(list)
    for rejected in parsed.rejected:
        job_id, letter = dead_letter(rejected)
        if job_id is not None:
            dead[job_id].append(letter)
    records = []
    for job_id in sorted(set(parsed.job_offsets) | set(dead)):
        dead_here = {(d.partition, d.offset) for d in dead.get(job_id, [])}
        offsets = parsed.job_offsets.get(job_id, {})
        scorecards, scores = parsed.job_counts.get(job_id, (0, 0))
        runs = {
            p: to_runs(o for o in found if (p, o) not in dead_here) for p, found in offsets.items()
        }
        records.append(
            WrittenRecord(
                job_id=job_id,
                worker=worker,
                runs={p: r for p, r in runs.items() if r},
                scorecards=scorecards,
                scores=scores,
                per_shard=parsed.job_shards.get(job_id, {}),
                dead_letters=dead.get(job_id, []),
            )
        )
    return records
