from __future__ import annotations

import json

import pytest

from consumer.batch import RawMessage, build
from reindex_common.routing import shard_for
from reindex_common.schema import SCORE_COLUMNS, SCORECARD_COLUMNS
from reindex_common.written import WrittenRecord, WrittenTally, to_runs, to_runs_merged, union_size


def _message(
    customer: str,
    scorecard: str,
    *,
    job: str = "j",
    clean_up: bool = False,
    scores: int = 2,
    score: float = 1.0,
) -> bytes:
    return json.dumps(
        {
            "job_id": job,
            "clean_up": clean_up,
            "reindexed_at": "2026-03-01T00:00:00Z",
            "scorecard": {
                "customer_id": customer,
                "profile_id": "p",
                "scorecard_id": scorecard,
                "template_id": "t",
                "template_revision": "1",
                "scorecard_type": "PROCESS",
                "template_title": "T",
                "conversation_id": None,
                "agent_user_id": None,
                "creator_user_id": None,
                "score": score,
                "submitted_at": None,
                "created_at": "2026-03-01T00:00:00.000001Z",
                "updated_at": "2026-03-01T00:00:00.000002Z",
            },
            "scores": [
                {
                    "criterion_id": f"c{i}",
                    "numeric_value": None,
                    "not_applicable": True,
                    "comment": "x",
                    "created_at": "2026-03-01T00:00:00Z",
                    "updated_at": "2026-03-01T00:00:00Z",
                }
                for i in range(scores)
            ],
        }
    ).encode()


def _raw(offset: int, value: bytes | None, partition: int = 0) -> RawMessage:
    return RawMessage("topic", partition, offset, b"k", value)


def test_routes_each_scorecard_to_its_shard_with_all_columns() -> None:
    customers = [f"cust-{i}" for i in range(20)]
    batch = build([_raw(i, _message(c, f"s{i}")) for i, c in enumerate(customers)], 3)
    assert batch.scorecard_count == 20
    assert batch.score_count == 40
    for shard, shard_batch in batch.shards.items():
        assert len(shard_batch.scorecards) == len(SCORECARD_COLUMNS)
        assert len(shard_batch.scores) == len(SCORE_COLUMNS)
        for customer in shard_batch.scorecards[0]:
            assert shard_for(str(customer), 3) == shard
    assert batch.job_offsets == {"j": {0: list(range(20))}}
    assert batch.job_counts == {"j": (20, 40)}


def test_a_scorecard_twice_in_a_batch_is_written_once_as_its_later_copy() -> None:
    batch = build(
        [_raw(1, _message("c", "s", score=1.0)), _raw(5, _message("c", "s", score=2.0))], 2
    )
    assert batch.scorecard_count == 1
    assert batch.duplicates == 1
    (shard_batch,) = batch.shards.values()
    assert shard_batch.scorecards[SCORECARD_COLUMNS.index("score")] == [2.0]
    assert batch.job_offsets == {"j": {0: [1, 5]}}  # both copies are handled


def test_invalid_messages_are_rejected_with_a_reason_and_the_rest_goes_on() -> None:
    batch = build(
        [_raw(0, b"{nope"), _raw(1, b""), _raw(2, b'{"job_id": 1}'), _raw(3, _message("c", "s"))],
        2,
    )
    assert batch.scorecard_count == 1
    reasons = {r.raw.offset: r.reason for r in batch.rejected}
    assert set(reasons) == {0, 1, 2}
    assert "Invalid JSON" in reasons[0]
    assert reasons[1] == "empty message"
    assert "job_id" in reasons[2]


def test_clean_up_keys_and_flags() -> None:
    batch = build([_raw(0, _message("c", "s", clean_up=True, scores=0))], 1)
    shard_batch = batch.shards[0]
    assert shard_batch.clean_up_keys == [("c", "p", "s")]
    assert shard_batch.score_count == 0


@pytest.mark.parametrize(
    ("offsets", "runs"),
    [([], []), ([3, 4, 5, 9], [(3, 5), (9, 9)]), ([5, 3, 4, 4], [(3, 5)])],
)
def test_to_runs(offsets: list[int], runs: list[tuple[int, int]]) -> None:
    assert to_runs(offsets) == runs


def test_union_size_counts_redelivered_offsets_once() -> None:
    assert union_size([(0, 9), (5, 14), (20, 20), (0, 3)]) == 16
    assert union_size([]) == 0


def test_to_runs_merged() -> None:
    assert to_runs_merged([(3, 9), (0, 4), (10, 10), (20, 21)]) == [(0, 10), (20, 21)]


def test_written_tally_counts_one_job_and_redelivery_once() -> None:
    def record(job: str, runs: dict[int, list[tuple[int, int]]], n: int) -> tuple[bytes, bytes]:
        value = WrittenRecord(
            job_id=job, worker="w", runs=runs, scorecards=n, scores=2 * n, per_shard={0: n}
        )
        return job.encode(), value.model_dump_json().encode()

    tally = WrittenTally("j")
    tally.add([record("j", {0: [(0, 9)]}, 10), record("other", {0: [(10, 19)]}, 10)])
    tally.add([record("j", {0: [(5, 14)], 1: [(0, 0)]}, 11)])  # 5..9 written again
    summary = tally.summary()
    assert summary.scorecards == 16
    assert summary.workers == {"w": 21}
    assert summary.per_shard == {0: 21}
