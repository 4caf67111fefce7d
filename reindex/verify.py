"""``reindex verify``: prove that the shards hold exactly what Postgres selects, bucket by bucket.

For every time bucket (by the scorecard's ``created_at``) it compares Postgres with the union of
the shards read with ``FINAL``: the number of scorecards and of scores, and an order-independent
checksum of every SPEC §3 column (the sum, modulo 2**64, of a 64-bit BLAKE2b hash of each row's
canonical form). It also counts rows that sit on the wrong shard. Rows are streamed from both
sides and hashed here, so memory stays flat whatever the range; that costs a full read of the
range on both sides — choose the range and bucket size accordingly.
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

from reindex_common.clickhouse import shard_client, wrap_error
from reindex_common.errors import SourceUnavailableError
from reindex_common.pg import connect, first_line
from reindex_common.routing import shard_for
from reindex_common.selection import CREATED_AT, SCORECARD_FIELDS, SELECTION
from reindex_common.settings import Settings

Bucket = Literal["day", "hour"]
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
    params = {"start": start, "end": end, "types": list(types)}
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
    return tallies


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
