"""From a batch of raw Kafka messages to per-shard columns ready to insert.

Each message is validated once (``parse_scorecard_message``, with the rules of
``ScorecardMessage``); an invalid one becomes a :class:`Rejected` with its reason and origin (for
the DLQ) and the rest of the batch goes on. When
a scorecard appears twice in one batch (a producer that resumed republished it), the later offset
wins, so one write carries one version of it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar, cast

from pydantic import ValidationError

from reindex_common.messages import (
    ScorecardMessageDict,
    describe_validation_error,
    parse_scorecard_message,
)
from reindex_common.routing import shard_for

T = TypeVar("T")


class KafkaRecord(Protocol):
    """A consumed message: its bytes and where they came from (Faust's ``Message`` is one)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True)
class RawMessage:
    """A :class:`KafkaRecord` made by hand (tests)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class Rejected:
    raw: KafkaRecord
    reason: str
    job_id: str | None = None  # the job the message belongs to, when it could be read


@dataclass
class ShardBatch:
    """Everything one batch writes to one shard, as columns in SPEC §3 order."""

    shard: int
    clean_up_keys: list[tuple[str, str, str]]
    scorecards: list[list[Any]]  # SCORECARD_COLUMNS
    scores: list[list[Any]]  # SCORE_COLUMNS

    @property
    def scorecard_count(self) -> int:
        return len(self.scorecards[0])

    @property
    def score_count(self) -> int:
        return len(self.scores[0])


@dataclass
class ParsedBatch:
    shards: dict[int, ShardBatch]
    rejected: list[Rejected]
    # job id -> partition -> offsets of that job's messages accepted in this batch
    job_offsets: dict[str, dict[int, list[int]]]
    job_counts: dict[str, tuple[int, int]]  # job id -> (scorecards, scores)
    job_shards: dict[str, dict[int, int]]  # job id -> shard -> scorecards
    duplicates: int = 0

    @property
    def scorecard_count(self) -> int:
        return sum(b.scorecard_count for b in self.shards.values())

    @property
    def score_count(self) -> int:
        return sum(b.score_count for b in self.shards.values())


def parse(raw: KafkaRecord) -> ScorecardMessageDict | Rejected:
    if not raw.value:
        return Rejected(raw, "empty message")
    try:
        return parse_scorecard_message(raw.value)
    except ValidationError as e:
        return Rejected(raw, f"invalid scorecard message: {describe_validation_error(e)}")


_MICROSECOND = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ticks(times: list[datetime]) -> list[int]:
    """DateTime64(6) values as microseconds since the epoch, ready for the Native format.

    clickhouse-connect converts a datetime with ``timestamp()`` and ``floor`` per value, the
    largest part of an insert's serialization. Subtracting an epoch that carries the same
    ``tzinfo`` object (pydantic reuses one per offset) is exact and several times cheaper; a value
    with another offset is still subtracted correctly, only more slowly.
    """
    if not times:
        return []
    epoch = _EPOCH.replace(tzinfo=times[0].tzinfo)
    return [(t - epoch) // _MICROSECOND for t in times]


def _ticks_or_none(times: list[datetime | None]) -> list[int | None]:
    if None not in times:
        return cast("list[int | None]", _ticks(cast("list[datetime]", times)))
    present = [t for t in times if t is not None]
    ticks = iter(_ticks(present))
    return [None if t is None else next(ticks) for t in times]


def _repeated(values: list[T], counts: list[int]) -> list[T]:
    """Each value ``count`` times, in order (a scorecard's fields on each of its scores)."""
    out: list[T] = []
    for value, count in zip(values, counts, strict=True):
        out += [value] * count
    return out


def _columns(shard: int, messages: list[ScorecardMessageDict]) -> ShardBatch:
    """One shard's columns, built a column at a time (far fewer bytecodes than row by row)."""
    cards = [m["scorecard"] for m in messages]
    jobs = [m["job_id"] for m in messages]
    reindexed = _ticks([m["reindexed_at"] for m in messages])
    customers = [c["customer_id"] for c in cards]
    profiles = [c["profile_id"] for c in cards]
    ids = [c["scorecard_id"] for c in cards]
    types = [c["scorecard_type"] for c in cards]
    conversations = [c["conversation_id"] for c in cards]
    agents = [c["agent_user_id"] for c in cards]
    scorecard_columns: list[list[Any]] = [
        customers,
        profiles,
        ids,
        [c["template_id"] for c in cards],
        [c["template_revision"] for c in cards],
        types,
        [c["template_title"] for c in cards],
        conversations,
        agents,
        [c["creator_user_id"] for c in cards],
        [c["score"] for c in cards],
        _ticks_or_none([c["submitted_at"] for c in cards]),
        _ticks([c["created_at"] for c in cards]),
        _ticks([c["updated_at"] for c in cards]),
        jobs,
        reindexed,
    ]
    counts = [len(m["scores"]) for m in messages]
    scores = [s for m in messages for s in m["scores"]]
    score_columns: list[list[Any]] = [
        _repeated(customers, counts),
        _repeated(profiles, counts),
        _repeated(ids, counts),
        [s["criterion_id"] for s in scores],
        _repeated(types, counts),
        _repeated([1 if t == "PROCESS" else 0 for t in types], counts),
        _repeated(conversations, counts),
        _repeated(agents, counts),
        [s["numeric_value"] for s in scores],
        [1 if s["not_applicable"] else 0 for s in scores],
        [s["comment"] for s in scores],
        _ticks([s["created_at"] for s in scores]),
        _ticks([s["updated_at"] for s in scores]),
        _repeated(jobs, counts),
        _repeated(reindexed, counts),
    ]
    clean_up_keys = [
        (c["customer_id"], c["profile_id"], c["scorecard_id"])
        for m, c in zip(messages, cards, strict=True)
        if m["clean_up"]
    ]
    return ShardBatch(shard, clean_up_keys, scorecard_columns, score_columns)


def build(raws: Iterable[KafkaRecord], shard_count: int) -> ParsedBatch:
    """Validate, deduplicate and route a batch; columns per shard, rejects for the DLQ."""
    rejected: list[Rejected] = []
    latest: dict[tuple[str, str, str], ScorecardMessageDict] = {}
    job_offsets: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    seen = 0
    for raw in raws:
        parsed = parse(raw)
        if isinstance(parsed, Rejected):
            rejected.append(parsed)
            continue
        seen += 1
        s = parsed["scorecard"]
        latest[(s["customer_id"], s["profile_id"], s["scorecard_id"])] = parsed  # later wins
        # A superseded copy counts as handled: its scorecard is written (as the later copy).
        job_offsets[parsed["job_id"]][raw.partition].append(raw.offset)

    routed: dict[int, list[ScorecardMessageDict]] = defaultdict(list)
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    per_shard: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for (customer_id, _, _), msg in latest.items():
        shard = shard_for(customer_id, shard_count)
        routed[shard].append(msg)
        job = msg["job_id"]
        counts[job][0] += 1
        counts[job][1] += len(msg["scores"])
        per_shard[job][shard] += 1
    shards = {shard: _columns(shard, msgs) for shard, msgs in routed.items()}
    return ParsedBatch(
        shards=shards,
        rejected=rejected,
        job_offsets={j: dict(p) for j, p in job_offsets.items()},
        job_counts={j: (c[0], c[1]) for j, c in counts.items()},
        job_shards={j: dict(s) for j, s in per_shard.items()},
        duplicates=seen - len(latest),
    )
