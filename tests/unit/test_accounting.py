"""Job accounting: a batch's dead letters are recorded per job and counted once (SPEC §7)."""

from __future__ import annotations

import json
from datetime import datetime

from consumer.accounting import job_records
from consumer.batch import RawMessage, build
from reindex_common.messages import scorecard_key
from reindex_common.written import WrittenTally


def _poison(offset: int, job: str | None, run: str | None = None) -> RawMessage:
    doc = {"schema_version": 1, "job_id": job, "scores": [{}, {}, {}], "reindexed_at": run}
    key = scorecard_key("c", "p", f"s{offset}")
    return RawMessage("t", 1, offset, key, json.dumps(doc).encode())


def test_dead_letters_are_recorded_per_job_and_a_redelivery_counts_once() -> None:
    batch = build([_poison(7, "j"), _poison(8, "j"), _poison(9, None), _poison(10, "x/y")], 2)
    records = job_records(batch, "w1")
    assert [r.job_id for r in records] == ["j"]  # no job id, or not a job id: no job's
    (record,) = records
    assert [(d.partition, d.offset, d.scorecard, d.scores) for d in record.dead_letters] == [
        (1, 7, "c/p/s7", 3),
        (1, 8, "c/p/s8", 3),
    ]
    assert "invalid scorecard message" in record.dead_letters[0].reason

    tally = WrittenTally("j")
    value = record.model_dump_json().encode()
    tally.add([(b"j", value), (b"j", value)])  # the batch redelivered and recorded again
    summary = tally.summary()
    assert (summary.dead_lettered, summary.dead_lettered_scores) == (2, 6)
    assert summary.scorecards == 0
    assert [d.scorecard for d in summary.first_dead_letters] == ["c/p/s7", "c/p/s8"]


def test_a_job_run_again_is_not_charged_with_its_earlier_runs_dead_letters() -> None:
    first, second = "2026-03-01T00:00:00Z", "2026-03-02T00:00:00.5+00:00"
    batch = build([_poison(1, "j", first), _poison(2, "j", second), _poison(3, "j")], 2)
    (record,) = job_records(batch, "w1")
    tally = WrittenTally("j")
    tally.add([(b"j", record.model_dump_json().encode())])
    run = datetime.fromisoformat(second)
    now = tally.summary(run=run)  # offset 3 has no readable run: it counts
    assert [d.offset for d in now.first_dead_letters] == [2, 3]
    assert now.dead_lettered == 2
    assert tally.summary().dead_lettered == 3
