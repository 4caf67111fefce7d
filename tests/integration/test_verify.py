"""``reindex verify`` passes after a job and names the bucket that a change broke."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from fix_pipeline import reindex, workers

from producer.job import JobOptions, run_job
from reindex_common.clickhouse import shard_client
from reindex_common.messages import ReindexRequest
from reindex_common.routing import shard_for
from reindex_common.schema import SCORE_COLUMNS, SCORECARD_COLUMNS
from reindex_common.seed import SeedPlan, seed
from reindex_common.settings import Settings

START = datetime(2026, 1, 1, tzinfo=UTC)
END = START + timedelta(days=10)
RANGE = ("--start", START.isoformat(), "--end", END.isoformat(), "--mode", "all")


def _job(settings: Settings, job_id: str, start: datetime = START, end: datetime = END) -> None:
    request = ReindexRequest(
        job_id=job_id,
        start=start,
        end=end,
        scorecard_types=("PROCESS", "CONVERSATION"),
        clean_up=True,
    )
    run_job(settings, request, JobOptions(show_progress=False))
    done = reindex(settings, "status", job_id, "--wait", "--timeout", "120")
    assert done.returncode == 0, done.stdout + done.stderr


def _verify(settings: Settings, *extra: str) -> tuple[int, str]:
    result = reindex(settings, "verify", *RANGE, *extra)
    return result.returncode, result.stdout + result.stderr


def _one_score(settings: Settings) -> tuple[int, tuple[object, ...], datetime]:
    """A score row of some scorecard: (its shard, the row, the scorecard's created_at)."""
    for shard in settings.shards:
        with shard_client(shard, database=settings.clickhouse_database) as client:
            rows = client.query(
                f"SELECT {', '.join(SCORE_COLUMNS)} FROM scorecard_scores FINAL "
                "ORDER BY customer_id, profile_id, scorecard_id, criterion_id LIMIT 1"
            ).result_rows
            if rows:
                row = rows[0]
                created = client.command(
                    "SELECT created_at FROM scorecards FINAL WHERE customer_id = {c:String} "
                    "AND profile_id = {p:String} AND scorecard_id = {s:String}",
                    parameters={"c": row[0], "p": row[1], "s": row[2]},
                )
                when = datetime.fromisoformat(str(created)).replace(tzinfo=UTC)
                return shard.index, row, when
    raise AssertionError("no score rows on any shard")


def test_verify_passes_then_names_the_broken_bucket(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    settings = pipeline_settings
    dsn = settings.director_dsn
    seed(dsn, dsn, SeedPlan(400, seed=9, start=START, days=10))
    with workers(settings, tmp_path, "w1"):
        _job(settings, "v1")
        code, out = _verify(settings)
        assert code == 0, out
        assert out.startswith("all 10 day buckets match: 400 scorecards")

        # 1. One score changed on its shard (a later insert of the same key wins under FINAL).
        index, row, created = _one_score(settings)
        bucket = created.replace(hour=0, minute=0, second=0, microsecond=0).isoformat()
        changed = list(row)
        changed[SCORE_COLUMNS.index("numeric_value")] = 123456.0
        with shard_client(settings.shards[index], database=settings.clickhouse_database) as c:
            c.insert("scorecard_scores", [changed], column_names=list(SCORE_COLUMNS))
        code, out = _verify(settings)
        assert code == 3
        assert "1 of 10 day buckets differ" in out
        assert bucket in out
        assert "DIFFERS" in out
        hourly = _verify(settings, "--bucket", "hour")[1]
        assert created.replace(minute=0, second=0, microsecond=0).isoformat() in hourly

        # Reindexing that day with clean-up repairs it.
        day = datetime.fromisoformat(bucket)
        _job(settings, "repair-1", day, day + timedelta(days=1))
        assert _verify(settings)[0] == 0

        # 2. One score row deleted.
        with shard_client(settings.shards[index], database=settings.clickhouse_database) as c:
            c.command(
                "DELETE FROM scorecard_scores WHERE customer_id = {c:String} AND "
                "profile_id = {p:String} AND scorecard_id = {s:String} AND "
                "criterion_id = {k:String}",
                parameters={"c": row[0], "p": row[1], "s": row[2], "k": row[3]},
            )
        code, out = _verify(settings)
        assert code == 3
        assert bucket in out
        _job(settings, "repair-2", day, day + timedelta(days=1))
        assert _verify(settings)[0] == 0

        # 3. One scorecard row written to the wrong shard as well.
        with shard_client(settings.shards[index], database=settings.clickhouse_database) as c:
            card = c.query(
                f"SELECT {', '.join(SCORECARD_COLUMNS)} FROM scorecards FINAL "
                "WHERE customer_id = {c:String} AND profile_id = {p:String} "
                "AND scorecard_id = {s:String}",
                parameters={"c": row[0], "p": row[1], "s": row[2]},
            ).result_rows
        other = 1 - shard_for(str(row[0]), 2)
        with shard_client(settings.shards[other], database=settings.clickhouse_database) as c:
            c.insert("scorecards", card, column_names=list(SCORECARD_COLUMNS))
        code, out = _verify(settings)
        assert code == 3
        line = next(x for x in out.splitlines() if x.startswith(bucket))
        assert line.split()[-1] == "1"  # the wrong-shard column
