"""From a batch of raw Kafka messages to what each shard is sent.

Two ways, the first tried first:

* :func:`build_json` — the shards parse the messages (``consumer/json_insert.py``): the worker
  only checks that each message is one JSON object (orjson, strict RFC 8259) with the top-level
  fields of SPEC §4, reads the scorecard's ids (to route and deduplicate), its job, ``clean_up``
  and its number of scores (to account), and sends each shard its messages' own bytes. It gives
  up (returns None) on the first message that is not so, and the batch takes the second way;
* :func:`build` — the Python path: each message is validated once (``parse_scorecard_message``,
  with the rules of ``ScorecardMessage``) and turned into columns; an invalid one becomes a
  :class:`Rejected` with its reason and origin (for the DLQ) and the rest of the batch goes on.
  A shard that refuses a batch of the first way gets that shard's messages this way
  (:meth:`ParsedBatch.replace_shard`).

Either way, when a scorecard appears twice in one batch (a producer that resumed republished
it), the later offset wins, so one write carries one version of it.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar, cast

import orjson
from pydantic import ValidationError

from reindex_common import datetime64
from reindex_common.messages import (
    JOB_ID_PATTERN,
    ScorecardMessageDict,
    describe_validation_error,
    parse_scorecard_message,
)
from reindex_common.routing import shard_for
from reindex_common.schema import SCORE_COLUMNS, SCORECARD_COLUMNS

T = TypeVar("T")

_JOB_ID = re.compile(JOB_ID_PATTERN)


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


JobOffsets = dict[str, dict[int, list[int]]]  # job id -> partition -> offsets


@dataclass
class ShardBatch:
    """Everything one batch writes to one shard, and what it accounts for.

    Either columns in SPEC §3 order (the Python path) or ``json_rows``, the messages' own JSON
    for the shard to parse, with ``raws`` kept for the Python path should the shard refuse them.
    """

    shard: int
    clean_up_keys: list[tuple[str, str, str]]
    scorecards: list[list[Any]]  # SCORECARD_COLUMNS (empty lists with json_rows)
    scores: list[list[Any]]  # SCORE_COLUMNS
    scorecard_count: int
    score_count: int
    # job id -> partition -> offsets of the job's messages routed here (superseded copies too)
    job_offsets: JobOffsets
    job_counts: dict[str, tuple[int, int]]  # job id -> (scorecards, scores) written here
    json_rows: bytes | None = None
    raws: list[KafkaRecord] = field(default_factory=list)
    duplicates: int = 0


@dataclass
class ParsedBatch:
    shards: dict[int, ShardBatch]
    rejected: list[Rejected]  # to the DLQ

    @property
    def scorecard_count(self) -> int:
        return sum(b.scorecard_count for b in self.shards.values())

    @property
    def score_count(self) -> int:
        return sum(b.score_count for b in self.shards.values())

    @property
    def duplicates(self) -> int:
        return sum(b.duplicates for b in self.shards.values())

    @property
    def job_offsets(self) -> JobOffsets:
        """Job id -> partition -> offsets of that job's messages accepted in this batch."""
        merged: JobOffsets = defaultdict(lambda: defaultdict(list))
        for batch in self.shards.values():
            for job, partitions in batch.job_offsets.items():
                for partition, offsets in partitions.items():
                    merged[job][partition] += offsets
        return {j: {p: sorted(o) for p, o in ps.items()} for j, ps in merged.items()}

    @property
    def job_counts(self) -> dict[str, tuple[int, int]]:
        """Job id -> (scorecards, scores) written by this batch."""
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for batch in self.shards.values():
            for job, (cards, scores) in batch.job_counts.items():
                counts[job][0] += cards
                counts[job][1] += scores
        return {j: (c[0], c[1]) for j, c in counts.items()}

    @property
    def job_shards(self) -> dict[str, dict[int, int]]:
        """Job id -> shard -> scorecards written there by this batch."""
        per_job: dict[str, dict[int, int]] = defaultdict(dict)
        for batch in self.shards.values():
            for job, (cards, _) in batch.job_counts.items():
                if cards:
                    per_job[job][batch.shard] = cards
        return dict(per_job)

    def replace_shard(self, shard: int, python_path: ParsedBatch) -> None:
        """Put the Python path's result for one shard's messages in place of that shard's."""
        del self.shards[shard]
        self.shards.update(python_path.shards)
        self.rejected += python_path.rejected


def _job_id(message: Any) -> str | None:
    """The job id of a parsed-but-invalid message, when it has a valid one (SPEC §7)."""
    job = message.get("job_id") if isinstance(message, dict) else None
    return job if isinstance(job, str) and _JOB_ID.fullmatch(job) else None


def _invalid(raw: bytes, error: ValidationError | None) -> tuple[str, str | None]:
    """The DLQ reason for a message that failed validation (or carries sub-microseconds).

    A time the target cannot hold exactly gets ``<column> = <value>: outside what
    DateTime64(6, 'UTC') holds`` (SPEC §7): never written clamped, never dropped in silence.
    """
    try:
        message: Any = json.loads(raw)  # not orjson: it refuses the NaN and Infinity we carry
    except (ValueError, RecursionError):
        message = None
    reasons = datetime64.finer_than_microseconds(message)
    other = False
    for err in error.errors() if error is not None else []:
        why = datetime64.unholdable(cast("dict[str, Any]", err))
        if why is None:
            other = True
        else:
            reasons.append(why)
    if other:
        assert error is not None
        reasons.append(f"invalid scorecard message: {describe_validation_error(error)}")
    return "; ".join(reasons), _job_id(message)


def parse(raw: KafkaRecord) -> ScorecardMessageDict | Rejected:
    if not raw.value:
        return Rejected(raw, "empty message")
    try:
        parsed = parse_scorecard_message(raw.value)
    except ValidationError as e:
        reason, job_id = _invalid(raw.value, e)
        return Rejected(raw, reason, job_id)
    if datetime64.may_have_sub_microseconds(raw.value):  # rare: a quick look at the bytes first
        reason, job_id = _invalid(raw.value, None)
        if reason:
            return Rejected(raw, reason, job_id)
    return parsed


def _ticks(times: list[datetime]) -> list[int]:
    """DateTime64(6) values as microseconds since the epoch, exact for any offset, per value."""
    return datetime64.column_ticks(times)


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


def _job_counts(scorecards: Iterable[tuple[str, int]]) -> dict[str, tuple[int, int]]:
    """Job id -> (scorecards, scores), from each scorecard's job and number of scores."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for job, scores in scorecards:
        counts[job][0] += 1
        counts[job][1] += scores
    return {j: (c[0], c[1]) for j, c in counts.items()}


def _columns(
    shard: int, messages: list[ScorecardMessageDict], job_offsets: JobOffsets, duplicates: int
) -> ShardBatch:
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
    return ShardBatch(
        shard,
        clean_up_keys,
        scorecard_columns,
        score_columns,
        scorecard_count=len(messages),
        score_count=len(scores),
        job_offsets=job_offsets,
        job_counts=_job_counts(zip(jobs, counts, strict=True)),
        duplicates=duplicates,
    )


def build(raws: Iterable[KafkaRecord], shard_count: int) -> ParsedBatch:
    """Validate, deduplicate and route a batch; columns per shard, rejects for the DLQ."""
    rejected: list[Rejected] = []
    latest: dict[tuple[str, str, str], ScorecardMessageDict] = {}
    # shard -> job -> partition -> offsets. A superseded copy counts as handled: its scorecard
    # is written (as the later copy), and all copies of a scorecard go to one shard.
    job_offsets: dict[int, JobOffsets] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    seen: dict[int, int] = defaultdict(int)
    for raw in raws:
        parsed = parse(raw)
        if isinstance(parsed, Rejected):
            rejected.append(parsed)
            continue
        s = parsed["scorecard"]
        shard = shard_for(s["customer_id"], shard_count)
        seen[shard] += 1
        latest[(s["customer_id"], s["profile_id"], s["scorecard_id"])] = parsed  # later wins
        job_offsets[shard][parsed["job_id"]][raw.partition].append(raw.offset)

    routed: dict[int, list[ScorecardMessageDict]] = defaultdict(list)
    for (customer_id, _, _), msg in latest.items():
        routed[shard_for(customer_id, shard_count)].append(msg)
    shards = {
        shard: _columns(
            shard,
            msgs,
            {j: dict(p) for j, p in job_offsets[shard].items()},
            duplicates=seen[shard] - len(msgs),
        )
        for shard, msgs in routed.items()
    }
    return ParsedBatch(shards=shards, rejected=rejected)


# --- the shards parse: the worker's few checks ----------------------------------------------

_TOP_LEVEL = frozenset(
    ("schema_version", "job_id", "clean_up", "reindexed_at", "scorecard", "scores")
)
_REQUIRED = _TOP_LEVEL - {"schema_version"}


def _routable(message: Any) -> bool:
    """True when ``message`` has SPEC §4's top level and the types the worker reads.

    The shard checks everything else (``consumer/json_insert.py``); the top level is checked
    here because the shard would fill a missing top-level field with a default.
    """
    if type(message) is not dict or not (_REQUIRED <= message.keys() <= _TOP_LEVEL):
        return False
    version = message.get("schema_version", 1)
    card = message["scorecard"]
    return (
        type(version) is int
        and version == 1
        and type(message["job_id"]) is str
        and type(message["clean_up"]) is bool
        and type(message["scores"]) is list
        and type(card) is dict
        and type(card.get("customer_id")) is str
        and type(card.get("profile_id")) is str
        and type(card.get("scorecard_id")) is str
    )


def build_json(raws: Sequence[KafkaRecord], shard_count: int) -> ParsedBatch | None:
    """Route and deduplicate a batch for the shards to parse; None if a message is not fit.

    A message is fit when it is one strict JSON object (orjson refuses NaN and Infinity, so a
    message carrying one takes the Python path too) with the top level of SPEC §4.
    """
    routed: dict[int, list[tuple[KafkaRecord, dict[str, Any]]]] = defaultdict(list)
    for raw in raws:
        if not raw.value:
            return None
        try:
            message = orjson.loads(raw.value)
        except orjson.JSONDecodeError:
            return None
        if not _routable(message):
            return None
        routed[shard_for(message["scorecard"]["customer_id"], shard_count)].append((raw, message))
    return ParsedBatch(
        shards={shard: _json_shard(shard, items) for shard, items in routed.items()},
        rejected=[],
    )


def _json_shard(shard: int, items: list[tuple[KafkaRecord, dict[str, Any]]]) -> ShardBatch:
    latest: dict[tuple[str, str, str], tuple[KafkaRecord, dict[str, Any]]] = {}
    job_offsets: JobOffsets = defaultdict(lambda: defaultdict(list))
    for raw, message in items:
        card = message["scorecard"]
        latest[(card["customer_id"], card["profile_id"], card["scorecard_id"])] = (raw, message)
        job_offsets[message["job_id"]][raw.partition].append(raw.offset)
    messages = [message for _, message in latest.values()]
    counts = [len(message["scores"]) for message in messages]
    clean_up_keys = [key for key, (_, m) in latest.items() if m["clean_up"]]
    return ShardBatch(
        shard,
        clean_up_keys,
        scorecards=[[] for _ in SCORECARD_COLUMNS],
        scores=[[] for _ in SCORE_COLUMNS],
        scorecard_count=len(latest),
        score_count=sum(counts),
        job_offsets={j: dict(p) for j, p in job_offsets.items()},
        job_counts=_job_counts(zip((m["job_id"] for m in messages), counts, strict=True)),
        json_rows=b"\n".join(raw.value or b"" for raw, _ in latest.values()),
        raws=[raw for raw, _ in items],
        duplicates=len(items) - len(latest),
    )
