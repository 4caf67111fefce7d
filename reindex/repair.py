"""``reindex repair``: mend exactly the buckets of a range that ``verify`` finds different.

In rounds, at most ``max_rounds``:

1. verify the targets (in the first round the whole range, per ``bucket``);
2. for each bucket that differs, in time order:

   a. on every shard, read the keys of the scorecard rows it holds in the bucket (of the types),
      *then* look those keys up in Postgres: a scorecard created in the meantime is found there
      and kept;
   b. delete, on the shard that holds them: the rows of scorecards Postgres does not have (their
      scorecard rows in the bucket and their score rows); the scorecard row in the bucket of a
      scorecard Postgres has in another bucket or of another type (its score rows stay: they
      belong to the scorecard Postgres has); rows on a shard that is not their own (scorecard
      rows in the bucket with their score rows there, and stray score rows whose scorecard lies
      in the bucket);
   c. publish the bucket as a job with clean-up (the producer's job runner): the consumers delete
      what the owning shard holds for each selected scorecard and write it again from Postgres;

3. wait until every job of the round is written, verify each repaired bucket again per hour, and
   take the hours that still differ into the next round (a day narrows to its differing hours);
   once every repaired bucket matches, verify the whole range once more (a delete can uncover an
   older version of a row in another bucket) and take what differs into the next round.

Every DELETE names the keys and the types, and deletes of scorecard rows also the bucket's
``created_at`` range: rows outside the range or of other types are never touched. The deletes
of step 2b cannot race the consumers: they write only scorecards Postgres has, only to their own
shard, and step 2b deletes neither. A crash leaves some buckets mended and others not; running
the same repair again finds what is left.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from clickhouse_connect.driver.exceptions import ClickHouseError

from producer.job import JobOptions, run_job
from reindex.status import wait_for_job
from reindex.verify import Bucket, BucketResult, Key, StrayScores, stray_scores, verify
from reindex_common.clickhouse import shard_client, time_param, wrap_error
from reindex_common.errors import GaveUpWaitingError, SourceUnavailableError
from reindex_common.messages import ReindexRequest
from reindex_common.pg import connect, first_line
from reindex_common.routing import shard_for
from reindex_common.settings import Settings

log = logging.getLogger("reindex.repair")

SPAN = {"day": timedelta(days=1), "hour": timedelta(hours=1)}
KEYS_PER_STATEMENT = 10_000
_BIG_QUERY = {"max_query_size": 16 * 1024 * 1024}

_CH_KEYS = """
SELECT customer_id, profile_id, scorecard_id FROM scorecards FINAL
WHERE created_at >= {start:DateTime64(6, 'UTC')} AND created_at < {end:DateTime64(6, 'UTC')}
  AND scorecard_type IN {types:Array(String)}
"""

_PG_KEYS = """
SELECT s.customer_id, s.profile_id, s.scorecard_id, s.created_at, r.type
FROM director.scorecards s
JOIN director.scorecard_template_revisions r
  ON r.customer_id = s.customer_id AND r.profile_id = s.profile_id
 AND r.template_id = s.template_id AND r.revision = s.template_revision
WHERE (s.customer_id, s.profile_id, s.scorecard_id) IN (
    SELECT * FROM unnest(%(c)s::text[], %(p)s::text[], %(s)s::text[]))
"""

# Client-side binding (%(...)s): key lists travel escaped in the body, not in the URL.
_DELETE_CARDS = """
DELETE FROM scorecards
WHERE (customer_id, profile_id, scorecard_id) IN (SELECT arrayJoin(%(keys)s))
  AND created_at >= toDateTime64(%(start)s, 6, 'UTC')
  AND created_at < toDateTime64(%(end)s, 6, 'UTC')
  AND has(%(types)s, scorecard_type)
"""

_DELETE_SCORES = """
DELETE FROM scorecard_scores
WHERE (customer_id, profile_id, scorecard_id) IN (SELECT arrayJoin(%(keys)s))
  AND has(%(types)s, scorecard_type)
"""


@dataclass
class BucketMend:
    """What one round found in one bucket and what it did there."""

    start: datetime
    end: datetime
    found: BucketResult
    gone: int = 0  # scorecards Postgres does not have: their rows deleted
    elsewhere: int = 0  # scorecard rows of scorecards Postgres has in another bucket or type
    elsewhere_at: list[datetime] = field(default_factory=list)  # where Postgres has those
    wrong_shard: int = 0  # scorecard rows deleted from a shard not their own
    stray_scores: int = 0  # score rows deleted from a shard not their own (scorecard elsewhere)
    job_id: str = ""
    published: int = 0
    published_scores: int = 0
    dead_lettered: int = 0  # of the job's scorecards (reindex dlq list --job JOB)
    still_differing: list[datetime] = field(default_factory=list)  # hours, after the round

    def describe(self) -> str:
        s, t = self.found.source, self.found.target
        found = (
            f"scorecards pg/ch {s.scorecards:,}/{t.scorecards:,}, scores pg/ch "
            f"{s.scores:,}/{t.scores:,}, scorecard rows "
            f"{'equal' if s.card_sum == t.card_sum else 'DIFFER'}, score rows "
            f"{'equal' if s.score_sum == t.score_sum else 'DIFFER'}, "
            f"{t.wrong_shard:,} on the wrong shard"
        )
        did = (
            f"deleted {self.gone:,} scorecards Postgres does not have, {self.elsewhere:,} "
            f"scorecard rows Postgres has elsewhere, {self.wrong_shard:,} scorecard rows and "
            f"{self.stray_scores:,} score rows on the wrong shard; job {self.job_id} rewrote "
            f"{self.published:,} scorecards with {self.published_scores:,} scores (clean-up)"
        )
        if self.dead_lettered:
            did += f", {self.dead_lettered:,} of them dead-lettered"
        if self.elsewhere_at:
            times = sorted({t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in self.elsewhere_at})
            shown = ", ".join(times[:5]) + (", ..." if len(times) > 5 else "")
            did += (
                f"\n    note: Postgres has those {self.elsewhere:,} scorecards at other times or "
                f"types (created_at {shown}): verify there too"
            )
        after = (
            "now matches"
            if not self.still_differing
            else "still differs in hours "
            + ", ".join(h.strftime("%Y-%m-%dT%H:00Z") for h in self.still_differing)
        )
        return (
            f"[{self.start.isoformat()}, {self.end.isoformat()}): found {found}\n"
            f"    did: {did}\n    then: {after}"
        )


@dataclass
class RepairReport:
    start: datetime
    end: datetime
    types: tuple[str, ...]
    bucket: Bucket
    buckets_checked: int = 0
    rounds: list[list[BucketMend]] = field(default_factory=list)
    left: list[tuple[datetime, datetime]] = field(default_factory=list)  # still differing

    @property
    def ok(self) -> bool:
        return not self.left

    def describe(self) -> str:
        where = f"[{self.start.isoformat()}, {self.end.isoformat()}) {','.join(self.types)}"
        first = len(self.rounds[0]) if self.rounds else 0
        lines = [
            f"repair {where}: {first} of {self.buckets_checked} {self.bucket} buckets differed"
        ]
        for number, mends in enumerate(self.rounds, 1):
            lines.append(f"round {number}: {len(mends)} bucket(s)")
            lines += [f"  {m.describe()}" for m in mends]
        if self.ok and not self.rounds:
            lines.append("the whole range matches Postgres: nothing to repair")
        elif self.ok:
            lines.append(f"the whole range now matches Postgres ({len(self.rounds)} round(s))")
        else:
            left = ", ".join(f"[{a.isoformat()}, {b.isoformat()})" for a, b in self.left)
            lines.append(f"{len(self.left)} bucket(s) still differ: {left}")
        return "\n".join(lines)


def repair(
    settings: Settings,
    start: datetime,
    end: datetime,
    types: Sequence[str],
    bucket: Bucket = "day",
    *,
    max_rounds: int = 3,
    timeout_s: float = 3600.0,
    say: Callable[[str], None] = log.info,
) -> RepairReport:
    """Verify ``[start, end)`` and mend the buckets that differ (see the module docstring).

    Returns the report; ``report.ok`` is true only when every bucket verified in the end.
    Raises :class:`GaveUpWaitingError` when a repair job is not written within ``timeout_s``.
    """
    report = RepairReport(start, end, tuple(types), bucket)
    first = verify(settings, start, end, types, bucket)
    report.buckets_checked = len(first.buckets)
    targets = [(*_clip(b.start, SPAN[bucket], start, end), b) for b in first.differing]
    say(f"{len(targets)} of {len(first.buckets)} {bucket} buckets differ")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    deadline = time.monotonic() + timeout_s
    while targets and len(report.rounds) < max_rounds:
        targets = _round(settings, report, targets, f"repair-{stamp}", deadline, say)
        if not targets:
            # Each repaired bucket matches now; a delete may still have uncovered an older
            # version of a row in another bucket: only the whole range tells.
            whole = verify(settings, start, end, types, bucket)
            targets = [(*_clip(b.start, SPAN[bucket], start, end), b) for b in whole.differing]
            say(f"whole range: {len(targets)} of {len(whole.buckets)} {bucket} buckets differ")
    report.left = [(lo, hi) for lo, hi, _ in targets]
    return report


Target = tuple[datetime, datetime, BucketResult]


def _round(
    settings: Settings,
    report: RepairReport,
    targets: list[Target],
    job_prefix: str,
    deadline: float,
    say: Callable[[str], None],
) -> list[Target]:
    """One round over ``targets`` (sorted): mend, wait, verify per hour; return what differs."""
    types = report.types
    number = len(report.rounds) + 1
    mends = []
    # One scan of the shards' score keys per round, not one per bucket.
    strays = stray_scores(settings, targets[0][0], targets[-1][1], types)
    for lo, hi, found in targets:
        mend = BucketMend(lo, hi, found)
        _delete_extra(settings, mend, types, [s for s in strays if lo <= s.created_at < hi])
        _rewrite(settings, mend, types, f"{job_prefix}-r{number}-{lo:%Y%m%dT%H%M}")
        say(f"round {number}: {mend.describe().splitlines()[1].strip()}")
        mends.append(mend)
    report.rounds.append(mends)
    for mend in mends:
        status = wait_for_job(settings, mend.job_id, max(1.0, deadline - time.monotonic()), say=say)
        problem = status.problem() if status is not None else None
        if status is not None and status.finished and not status.complete and problem:
            raise problem  # failed or cancelled
        if status is None or not status.complete:
            raise GaveUpWaitingError(
                f"repair job {mend.job_id} not fully written within --timeout: "
                "are the consumers running?"
            )
        mend.dead_lettered = status.dead_lettered
    left: list[Target] = []
    for mend in mends:
        again = verify(settings, mend.start, mend.end, types, "hour")
        mend.still_differing = [b.start for b in again.differing]
        left += [(*_clip(b.start, SPAN["hour"], mend.start, mend.end), b) for b in again.differing]
    return left


def _clip(
    bucket_start: datetime, span: timedelta, start: datetime, end: datetime
) -> tuple[datetime, datetime]:
    return max(bucket_start, start), min(bucket_start + span, end)


def _rewrite(settings: Settings, mend: BucketMend, types: Sequence[str], job_id: str) -> None:
    request = ReindexRequest(
        job_id=job_id,
        start=mend.start,
        end=mend.end,
        scorecard_types=tuple(types),
        batch_size=settings.batch_size,
        clean_up=True,
    )
    result = run_job(settings, request, JobOptions(show_progress=False))
    mend.job_id = job_id
    mend.published = result.published_scorecards
    mend.published_scores = result.published_scores


def _delete_extra(
    settings: Settings, mend: BucketMend, types: Sequence[str], strays: list[StrayScores]
) -> None:
    """Step 2a-b: delete what no job can overwrite (see the module docstring)."""
    count = len(settings.shards)
    held: dict[int, list[Key]] = {}
    params = {"start": time_param(mend.start), "end": time_param(mend.end), "types": list(types)}
    for shard in settings.shards:
        try:
            with shard_client(shard, database=settings.clickhouse_database) as client:
                rows = client.query(_CH_KEYS, parameters=params).result_rows
        except ClickHouseError as e:
            raise wrap_error(e, shard, "read keys for repair") from e
        held[shard.index] = [(str(r[0]), str(r[1]), str(r[2])) for r in rows]
    # Only now Postgres: what it has at this point includes everything the shards held before.
    in_source = _source_cards({k for keys in held.values() for k in keys}, settings)
    cards: dict[int, list[Key]] = defaultdict(list)  # scorecard rows to delete (in the bucket)
    scores: dict[int, list[Key]] = defaultdict(list)  # score rows to delete (all of the key)
    for index, keys in held.items():
        for key in keys:
            source = in_source.get(key)
            if shard_for(key[0], count) != index:
                mend.wrong_shard += 1
                cards[index].append(key)
                scores[index].append(key)
            elif source is None:
                mend.gone += 1
                cards[index].append(key)
                scores[index].append(key)
            elif not (mend.start <= source[0] < mend.end and source[1] in types):
                mend.elsewhere += 1
                mend.elsewhere_at.append(source[0])
                cards[index].append(key)
    for stray in strays:
        mend.stray_scores += stray.rows
        scores[stray.shard].append(stray.key)
    for shard in settings.shards:
        _delete(settings, shard.index, _DELETE_SCORES, scores.get(shard.index, []), mend, types)
        _delete(settings, shard.index, _DELETE_CARDS, cards.get(shard.index, []), mend, types)


def _source_cards(keys: set[Key], settings: Settings) -> dict[Key, tuple[datetime, str]]:
    """Which of ``keys`` Postgres has: key → (created_at, type)."""
    if not keys:
        return {}
    ordered = sorted(keys)
    params = {
        "c": [k[0] for k in ordered],
        "p": [k[1] for k in ordered],
        "s": [k[2] for k in ordered],
    }
    try:
        with connect(settings.director_dsn, what="the director Postgres") as conn:
            rows = conn.execute(_PG_KEYS, params).fetchall()
    except psycopg.Error as e:
        raise SourceUnavailableError(f"cannot read Postgres for repair: {first_line(e)}") from e
    return {(r[0], r[1], r[2]): (r[3].astimezone(UTC), r[4]) for r in rows}


def _delete(
    settings: Settings,
    index: int,
    statement: str,
    keys: list[Key],
    mend: BucketMend,
    types: Sequence[str],
) -> None:
    shard = settings.shards[index]
    if not keys:
        return
    unique = sorted(set(keys))
    try:
        with shard_client(shard, database=settings.clickhouse_database) as client:
            for at in range(0, len(unique), KEYS_PER_STATEMENT):
                params: dict[str, Any] = {
                    "keys": unique[at : at + KEYS_PER_STATEMENT],
                    "types": list(types),
                    "start": time_param(mend.start),
                    "end": time_param(mend.end),
                }
                client.command(statement, parameters=params, settings=_BIG_QUERY)
    except ClickHouseError as e:
        raise wrap_error(e, shard, "delete rows for repair") from e
    log.info(
        "shard %d: deleted rows of %d scorecards in [%s, %s)",
        index,
        len(unique),
        mend.start,
        mend.end,
    )
