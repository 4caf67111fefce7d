"""``reindex verify``: prove that the shards hold exactly what Postgres selects, bucket by bucket.

For every time bucket (by the scorecard's ``created_at``) it compares Postgres with the union of
the shards read with ``FINAL``: the number of scorecards and of scores, and an order-independent
checksum of every SPEC §3 column (the sum, modulo 2**64, of a 64-bit BLAKE2b hash of each row's
canonical form). It also counts rows that sit on the wrong shard: scorecard rows, and score rows
— also those whose scorecard row is not on that shard (:func:`stray_scores`; they are placed in
the bucket of their scorecard's ``created_at`` as Postgres, else the scorecard's own shard, has
it). Rows are streamed from both sides and hashed here, so memory stays flat whatever the range;
that costs a full read of the range on both sides, plus a scan of the score keys of each shard
for stray score rows — choose the range and bucket size accordingly.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg
from clickhouse_connect.driver.exceptions import ClickHouseError

from reindex_common.clickhouse import shard_client, time_param, wrap_error
from reindex_common.errors import SourceUnavailableError
from reindex_common.pg import connect, first_line, keep_unloadable_timestamps
from reindex_common.routing import shard_for
from reindex_common.selection import CREATED_AT, SCORECARD_FIELDS, SELECTION
from reindex_common.settings import Settings

Bucket = Literal["day", "hour"]
Key = tuple[str, str, str]  # (customer_id, profile_id, scorecard_id)
MASK = (1 << 64) - 1

# The columns compared, in the same order on both sides (the job columns are not compared).
_PG_CARDS = f"SELECT {SCORECARD_FIELDS} {SELECTION}"

_PG_SCORES = """
SELECT customer_id, profile_id, scorecard_id, criterion_id, numeric_value, not_applicable,
       comment, created_at, updated_at
FROM historic.scorecard_scores
WHERE (customer_id, profile_id, scorecard_id) IN (
    SELECT * FROM unnest(%(c)s::text[], %(p)s::text[], %(s)s::text[]))
"""

_CH_CARDS = """
SELECT customer_id, profile_id, scorecard_id, template_id, template_revision, scorecard_type,
       template_title, conversation_id, agent_user_id, creator_user_id, score, submitted_at,
       created_at, updated_at
FROM scorecards FINAL
WHERE created_at >= {start:DateTime64(6, 'UTC')} AND created_at < {end:DateTime64(6, 'UTC')}
  AND scorecard_type IN {types:Array(String)}
"""

_CH_SCORES = """
SELECT c.created_at, s.customer_id, s.profile_id, s.scorecard_id, s.criterion_id,
       s.scorecard_type, s.is_process_scorecard, s.conversation_id, s.agent_user_id,
       s.numeric_value, s.not_applicable, s.comment, s.created_at, s.updated_at
FROM scorecard_scores AS s FINAL
INNER JOIN (
    SELECT customer_id, profile_id, scorecard_id, created_at FROM scorecards FINAL
    WHERE created_at >= {start:DateTime64(6, 'UTC')} AND created_at < {end:DateTime64(6, 'UTC')}
      AND scorecard_type IN {types:Array(String)}
) AS c ON s.customer_id = c.customer_id AND s.profile_id = c.profile_id
      AND s.scorecard_id = c.scorecard_id
"""

# Score rows on a shard that is not their customer's, whose scorecard row (in range) is not on
# that shard either: the join above cannot see them. Without FINAL: uniqExact counts each score
# key once, as FINAL would.
_CH_STRAY_SCORES = """
SELECT customer_id, profile_id, scorecard_id, uniqExact(criterion_id)
FROM scorecard_scores
WHERE cityHash64(customer_id) % {shards:UInt64} != {index:UInt64}
  AND scorecard_type IN {types:Array(String)}
  AND (customer_id, profile_id, scorecard_id) NOT IN (
    SELECT customer_id, profile_id, scorecard_id FROM scorecards FINAL
    WHERE created_at >= {start:DateTime64(6, 'UTC')} AND created_at < {end:DateTime64(6, 'UTC')}
      AND scorecard_type IN {types:Array(String)})
GROUP BY customer_id, profile_id, scorecard_id
"""

# Client-side binding (%(keys)s): the key list travels in the body, not the URL.
_CH_CARDS_OF_KEYS = """
SELECT customer_id, profile_id, scorecard_id, created_at, scorecard_type FROM scorecards FINAL
WHERE (customer_id, profile_id, scorecard_id) IN (SELECT arrayJoin(%(keys)s))
"""

_PG_CREATED_OF_KEYS = f"""
SELECT s.customer_id, s.profile_id, s.scorecard_id, s.created_at {SELECTION}
  AND (s.customer_id, s.profile_id, s.scorecard_id) IN (
    SELECT * FROM unnest(%(c)s::text[], %(p)s::text[], %(s)s::text[]))
"""

_BIG_QUERY = {"max_query_size": 4 * 1024 * 1024}


def _canon(value: Any) -> Any:
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        delta = aware - datetime(1970, 1, 1, tzinfo=UTC)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(value, bool):
        return int(value)
    return value


def row_hash(values: Iterable[Any]) -> int:
    text = repr(tuple(_canon(v) for v in values)).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def bucket_of(moment: datetime, bucket: Bucket) -> datetime:
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    aware = aware.astimezone(UTC)
    if bucket == "day":
        return aware.replace(hour=0, minute=0, second=0, microsecond=0)
    return aware.replace(minute=0, second=0, microsecond=0)


@dataclass
class Tally:
    scorecards: int = 0
    scores: int = 0
    card_sum: int = 0
    score_sum: int = 0
    wrong_shard: int = 0

    def add_card(self, values: Sequence[Any]) -> None:
        self.scorecards += 1
        self.card_sum = (self.card_sum + row_hash(values)) & MASK

    def add_score(self, values: Sequence[Any]) -> None:
        self.scores += 1
        self.score_sum = (self.score_sum + row_hash(values)) & MASK


@dataclass
class BucketResult:
    start: datetime
    source: Tally
    target: Tally

    @property
    def matches(self) -> bool:
        s, t = self.source, self.target
        return (s.scorecards, s.scores, s.card_sum, s.score_sum) == (
            t.scorecards,
            t.scores,
            t.card_sum,
            t.score_sum,
        ) and t.wrong_shard == 0


@dataclass
class VerifyReport:
    start: datetime
    end: datetime
    types: tuple[str, ...]
    bucket: Bucket
    buckets: list[BucketResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(b.matches for b in self.buckets)

    @property
    def differing(self) -> list[BucketResult]:
        return [b for b in self.buckets if not b.matches]

    def as_document(self) -> dict[str, Any]:
        """The report for ``verify -o json``: totals and every bucket, differing or not."""
        return {
            "ok": self.ok,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "types": list(self.types),
            "bucket": self.bucket,
            "buckets_total": len(self.buckets),
            "buckets_differing": len(self.differing),
            "scorecards": sum(b.source.scorecards for b in self.buckets),
            "scores": sum(b.source.scores for b in self.buckets),
            "buckets": [
                {
                    "start": b.start.isoformat(),
                    "matches": b.matches,
                    "postgres": asdict(b.source),
                    "clickhouse": asdict(b.target),
                }
                for b in self.buckets
            ],
        }

    def describe(self) -> str:
        cards = sum(b.source.scorecards for b in self.buckets)
        scores = sum(b.source.scores for b in self.buckets)
        where = f"[{self.start.isoformat()}, {self.end.isoformat()}) {','.join(self.types)}"
        if self.ok:
            return (
                f"all {len(self.buckets)} {self.bucket} buckets match: {cards:,} scorecards and "
                f"{scores:,} scores in {where}"
            )
        fmt = "%-25s %21s %21s %9s %9s %11s"
        lines = [
            f"{len(self.differing)} of {len(self.buckets)} {self.bucket} buckets differ in {where}",
            fmt % ("bucket", "scorecards pg/ch", "scores pg/ch", "cards", "scores", "wrong shard"),
        ]
        for b in self.differing:
            s, t = b.source, b.target
            lines.append(
                fmt
                % (
                    b.start.isoformat(),
                    f"{s.scorecards:,}/{t.scorecards:,}",
                    f"{s.scores:,}/{t.scores:,}",
                    "ok" if s.card_sum == t.card_sum else "DIFFERS",
                    "ok" if s.score_sum == t.score_sum else "DIFFERS",
                    f"{t.wrong_shard:,}",
                )
            )
        return "\n".join(lines)


def _source(
    settings: Settings, start: datetime, end: datetime, types: Sequence[str], bucket: Bucket
) -> dict[datetime, Tally]:
    tallies: dict[datetime, Tally] = defaultdict(Tally)
    params = {"start": start, "end": end, "types": list(types)}
    try:
        with (
            connect(settings.director_dsn, what="the director Postgres") as director,
            connect(settings.historic_dsn, what="the historic Postgres") as historic,
        ):
            director.execute("SET TimeZone = 'UTC'")
            historic.execute("SET TimeZone = 'UTC'")
            # infinity or year 12000 in Postgres: a value no shard holds, hence a difference
            keep_unloadable_timestamps(director)
            keep_unloadable_timestamps(historic)
            # One pass over the selection, streamed; the scores of each chunk in one query.
            with director.cursor(name="verify_cards") as cur:
                cur.execute(_PG_CARDS, params)
                while chunk := cur.fetchmany(5_000):
                    for row in chunk:
                        tallies[bucket_of(row[CREATED_AT], bucket)].add_card(row)
                    _tally_scores(historic, chunk, tallies, bucket)
    except psycopg.Error as e:
        raise SourceUnavailableError(f"cannot read Postgres for verify: {first_line(e)}") from e
    return tallies


def _tally_scores(
    historic: psycopg.Connection[Any],
    cards: list[tuple[Any, ...]],
    tallies: dict[datetime, Tally],
    bucket: Bucket,
) -> None:
    """Add the scores of ``cards`` (rows of SCORECARD_FIELDS), as the shards should hold them."""
    by_key = {(c[0], c[1], c[2]): c for c in cards}
    rows = historic.execute(
        _PG_SCORES,
        {"c": [c[0] for c in cards], "p": [c[1] for c in cards], "s": [c[2] for c in cards]},
    ).fetchall()
    for r in rows:
        card = by_key[(r[0], r[1], r[2])]
        kind = card[5]
        values = (
            r[0], r[1], r[2], r[3], kind, 1 if kind == "PROCESS" else 0, card[7], card[8],
            r[4], int(r[5]), r[6], r[7], r[8],
        )  # fmt: skip
        tallies[bucket_of(card[CREATED_AT], bucket)].add_score(values)


def _target(
    settings: Settings, start: datetime, end: datetime, types: Sequence[str], bucket: Bucket
) -> dict[datetime, Tally]:
    tallies: dict[datetime, Tally] = defaultdict(Tally)
    params = {"start": time_param(start), "end": time_param(end), "types": list(types)}
    count = len(settings.shards)
    for shard in settings.shards:
        try:
            with shard_client(shard, database=settings.clickhouse_database) as client:
                with client.query_row_block_stream(_CH_CARDS, parameters=params) as stream:
                    for block in stream:
                        for row in block:
                            tally = tallies[bucket_of(row[CREATED_AT], bucket)]
                            tally.add_card(row)
                            if shard_for(row[0], count) != shard.index:
                                tally.wrong_shard += 1
                with client.query_row_block_stream(_CH_SCORES, parameters=params) as stream:
                    for block in stream:
                        for row in block:
                            tally = tallies[bucket_of(row[0], bucket)]
                            tally.add_score(row[1:])
                            if shard_for(row[1], count) != shard.index:
                                tally.wrong_shard += 1
        except ClickHouseError as e:
            raise wrap_error(e, shard, "read for verify") from e
    for stray in stray_scores(settings, start, end, types):
        tallies[bucket_of(stray.created_at, bucket)].wrong_shard += stray.rows
    return tallies


@dataclass(frozen=True)
class StrayScores:
    """Score rows of one scorecard on a shard that is not its own, where that shard holds no
    scorecard row of it in the range; ``created_at`` is the scorecard's (in the range)."""

    shard: int
    key: Key
    rows: int
    created_at: datetime


def stray_scores(
    settings: Settings, start: datetime, end: datetime, types: Sequence[str]
) -> list[StrayScores]:
    """Every :class:`StrayScores` whose scorecard lies in ``[start, end)`` with a type in
    ``types``: by Postgres's selection, else by the scorecard row on the scorecard's own shard.
    Stray score rows of scorecards found in neither are not in the range: they are left out."""
    count = len(settings.shards)
    found: list[tuple[int, Key, int]] = []
    params = {
        "start": time_param(start),
        "end": time_param(end),
        "types": list(types),
        "shards": count,
    }
    for shard in settings.shards:
        try:
            with shard_client(shard, database=settings.clickhouse_database) as client:
                rows = client.query(
                    _CH_STRAY_SCORES, parameters={**params, "index": shard.index}
                ).result_rows
        except ClickHouseError as e:
            raise wrap_error(e, shard, "look for stray score rows") from e
        found += [(shard.index, (str(r[0]), str(r[1]), str(r[2])), int(r[3])) for r in rows]
    if not found:
        return []
    keys = sorted({key for _, key, _ in found})
    created = _created_in_source(settings, start, end, types, keys)
    missing = [k for k in keys if k not in created]
    if missing:
        created.update(_created_on_own_shards(settings, start, end, types, missing))
    return [
        StrayScores(index, key, rows, created[key]) for index, key, rows in found if key in created
    ]


def _created_in_source(
    settings: Settings, start: datetime, end: datetime, types: Sequence[str], keys: list[Key]
) -> dict[Key, datetime]:
    params = {
        "start": start,
        "end": end,
        "types": list(types),
        "c": [k[0] for k in keys],
        "p": [k[1] for k in keys],
        "s": [k[2] for k in keys],
    }
    try:
        with connect(settings.director_dsn, what="the director Postgres") as director:
            rows = director.execute(_PG_CREATED_OF_KEYS, params).fetchall()
    except psycopg.Error as e:
        raise SourceUnavailableError(f"cannot read Postgres for verify: {first_line(e)}") from e
    return {(r[0], r[1], r[2]): r[3] for r in rows}


def _created_on_own_shards(
    settings: Settings, start: datetime, end: datetime, types: Sequence[str], keys: list[Key]
) -> dict[Key, datetime]:
    count = len(settings.shards)
    by_shard: dict[int, list[Key]] = defaultdict(list)
    for key in keys:
        by_shard[shard_for(key[0], count)].append(key)
    lo, hi = _aware(start), _aware(end)
    created: dict[Key, datetime] = {}
    for index, wanted in by_shard.items():
        shard = settings.shards[index]
        try:
            with shard_client(shard, database=settings.clickhouse_database) as client:
                rows = client.query(
                    _CH_CARDS_OF_KEYS, parameters={"keys": wanted}, settings=_BIG_QUERY
                ).result_rows
        except ClickHouseError as e:
            raise wrap_error(e, shard, "read for verify") from e
        for r in rows:
            when = _aware(r[3])
            if lo <= when < hi and r[4] in types:
                created[(str(r[0]), str(r[1]), str(r[2]))] = when
    return created


def _aware(moment: datetime) -> datetime:
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def verify(
    settings: Settings,
    start: datetime,
    end: datetime,
    types: Sequence[str],
    bucket: Bucket = "day",
) -> VerifyReport:
    source = _source(settings, start, end, types, bucket)
    target = _target(settings, start, end, types, bucket)
    report = VerifyReport(start, end, tuple(types), bucket)
    for moment in sorted(set(source) | set(target)):
        report.buckets.append(
            BucketResult(moment, source.get(moment, Tally()), target.get(moment, Tally()))
        )
    return report
