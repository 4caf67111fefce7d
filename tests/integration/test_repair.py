"""``reindex repair`` mends four kinds of damage at once; ``verify`` sees stray score rows."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fix_pipeline import _utc, expected_rows, reindex, shard_rows, workers

from producer.job import JobOptions, run_job
from reindex_common.clickhouse import shard_client
from reindex_common.messages import ReindexRequest
from reindex_common.routing import shard_for
from reindex_common.schema import SCORE_COLUMNS, SCORECARD_COLUMNS
from reindex_common.seed import SeedPlan, seed
from reindex_common.settings import Settings

START = datetime(2026, 1, 1, tzinfo=UTC)
END = START + timedelta(days=3)  # the repaired range
ALL_END = START + timedelta(days=4)  # what the first job wrote: one day more than the range
RANGE = ("--start", START.isoformat(), "--end", END.isoformat(), "--mode", "process")
CARD_COLS = ", ".join(SCORECARD_COLUMNS)
SCORE_COLS = ", ".join(SCORE_COLUMNS)
KEY = "customer_id = {c:String} AND profile_id = {p:String} AND scorecard_id = {s:String}"


def _write_all(settings: Settings) -> None:
    request = ReindexRequest(
        job_id="all",
        start=START,
        end=ALL_END,
        scorecard_types=("PROCESS", "CONVERSATION"),
        clean_up=True,
    )
    run_job(settings, request, JobOptions(show_progress=False))
    done = reindex(settings, "status", "all", "--wait", "--timeout", "300")
    assert done.returncode == 0, done.stdout + done.stderr


def _cards(settings: Settings, index: int, where: str, **params: Any) -> list[list[Any]]:
    """Scorecard rows (all columns, FINAL) of shard ``index`` matching ``where``, by key."""
    with shard_client(settings.shards[index], database=settings.clickhouse_database) as c:
        rows = c.query(
            f"SELECT {CARD_COLS} FROM scorecards FINAL WHERE {where} "
            "ORDER BY customer_id, profile_id, scorecard_id",
            parameters=params,
        ).result_rows
    return [list(r) for r in rows]


def _scores_of(settings: Settings, index: int, card: list[Any]) -> list[list[Any]]:
    with shard_client(settings.shards[index], database=settings.clickhouse_database) as c:
        rows = c.query(
            f"SELECT {SCORE_COLS} FROM scorecard_scores FINAL WHERE {KEY} ORDER BY criterion_id",
            parameters={"c": card[0], "p": card[1], "s": card[2]},
        ).result_rows
    return [list(r) for r in rows]


def _insert(settings: Settings, index: int, table: str, rows: list[list[Any]]) -> None:
    columns = SCORECARD_COLUMNS if table == "scorecards" else SCORE_COLUMNS
    with shard_client(settings.shards[index], database=settings.clickhouse_database) as c:
        c.insert(table, rows, column_names=list(columns))


def _in_range(kind: str, start: datetime = START, end: datetime = END) -> str:
    return (
        f"scorecard_type = '{kind}' AND created_at >= '{start:%Y-%m-%d %H:%M:%S}' "
        f"AND created_at < '{end:%Y-%m-%d %H:%M:%S}'"
    )


def _with_scores(settings: Settings, index: int, where: str) -> list[list[Any]]:
    """Scorecard rows of shard ``index`` matching ``where`` that have at least two scores."""
    return [c for c in _cards(settings, index, where) if len(_scores_of(settings, index, c)) >= 2]


_DID = re.compile(
    r"deleted (?P<gone>\d+) scorecards Postgres does not have, (?P<elsewhere>\d+) scorecard rows "
    r"Postgres has elsewhere, (?P<wrong_cards>\d+) scorecard rows and (?P<wrong_scores>\d+) "
    r"score rows on the wrong shard"
)


def _did(out: str) -> dict[str, int]:
    """What repair says it deleted, summed over its buckets."""
    total: dict[str, int] = {}
    for match in _DID.finditer(out):
        for name, value in match.groupdict().items():
            total[name] = total.get(name, 0) + int(value)
    return total


def _card_tuple(row: list[Any]) -> tuple[Any, ...]:
    return tuple(map(_utc, row[: len(SCORECARD_COLUMNS) - 2]))


def test_repair_mends_four_kinds_of_damage_and_nothing_else(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    settings = pipeline_settings
    dsn = settings.director_dsn
    seed(dsn, dsn, SeedPlan(240, seed=12, start=START, days=4))
    with workers(settings, tmp_path, "w1"):
        _write_all(settings)
        assert reindex(settings, "verify", *RANGE).returncode == 0

        process = _with_scores(settings, 0, _in_range("PROCESS"))
        assert len(process) >= 5, "too few PROCESS scorecards with scores on shard 0"
        # 1. A lost score row.
        lost = process[0]
        lost_score = _scores_of(settings, 0, lost)[0]
        with shard_client(settings.shards[0], database=settings.clickhouse_database) as c:
            c.command(
                f"DELETE FROM scorecard_scores WHERE {KEY} AND criterion_id = {{k:String}}",
                parameters={"c": lost[0], "p": lost[1], "s": lost[2], "k": lost_score[3]},
            )
        # 2. A newer, wrong version of a scorecard (it wins under FINAL).
        newer = list(process[1])
        newer[SCORECARD_COLUMNS.index("score")] = 987654.0
        newer[SCORECARD_COLUMNS.index("updated_at")] += timedelta(days=30)
        _insert(settings, 0, "scorecards", [newer])
        # 3. A scorecard and its scores that Postgres does not have (on the right shard).
        ghost = list(process[2])
        ghost[2] = "ghost-scorecard"
        ghost_scores = [
            [*s[:2], "ghost-scorecard", *s[3:]] for s in _scores_of(settings, 0, process[2])
        ]
        _insert(settings, 0, "scorecards", [ghost])
        _insert(settings, 0, "scorecard_scores", ghost_scores)
        # 4. A scorecard copied, with its scores, onto the wrong shard.
        copied = process[3]
        assert shard_for(str(copied[0]), 2) == 0
        _insert(settings, 1, "scorecards", [copied])
        _insert(settings, 1, "scorecard_scores", _scores_of(settings, 0, copied))

        # ... and a score row of another scorecard alone on the wrong shard (no scorecard row).
        _insert(settings, 1, "scorecard_scores", _scores_of(settings, 0, process[4])[:1])

        # 5. A newer scorecard row in the range whose scorecard Postgres has outside it: repair
        # deletes that row, and the row of the right version, outside the range, shows again.
        later = _cards(settings, 0, _in_range("PROCESS", END, ALL_END))
        moved = list(later[1])
        moved[SCORECARD_COLUMNS.index("created_at")] = process[0][
            SCORECARD_COLUMNS.index("created_at")
        ]
        moved[SCORECARD_COLUMNS.index("updated_at")] += timedelta(days=30)
        _insert(settings, 0, "scorecards", [moved])

        # Damage repair must not mend: outside the range, and of another type inside it.
        outside = list(later[0])
        outside[SCORECARD_COLUMNS.index("score")] = -1.0
        outside[SCORECARD_COLUMNS.index("updated_at")] += timedelta(days=30)
        _insert(settings, 0, "scorecards", [outside])
        other_type = list(_cards(settings, 0, _in_range("CONVERSATION"))[0])
        other_type[SCORECARD_COLUMNS.index("score")] = -2.0
        other_type[SCORECARD_COLUMNS.index("updated_at")] += timedelta(days=30)
        _insert(settings, 0, "scorecards", [other_type])

        before = reindex(settings, "verify", *RANGE)
        assert before.returncode != 0, before.stdout

        result = reindex(settings, "repair", *RANGE, "--timeout", "300", timeout=600)
        out = result.stdout
        assert result.returncode == 0, out + result.stderr
        assert "the whole range now matches Postgres" in out
        did = _did(out)
        assert did == {"gone": 1, "elsewhere": 1, "wrong_cards": 1, "wrong_scores": 1}, out
        moved_at = later[1][SCORECARD_COLUMNS.index("created_at")]
        assert "Postgres has those 1 scorecards at other times" in out
        assert f"{moved_at:%Y-%m-%dT%H:%M:%S}Z): verify there too" in out
        assert reindex(settings, "verify", *RANGE).returncode == 0

    # Every row equals Postgres (FINAL), except the two rows repair had to leave alone.
    cards, scores = expected_rows(dsn, START, ALL_END, ("PROCESS", "CONVERSATION"))
    untouched = {_card_tuple(outside), _card_tuple(other_type)}
    replaced = {c for c in cards if c[:3] in {u[:3] for u in untouched}}
    assert len(replaced) == 2
    cards = (cards - replaced) | untouched
    # The moved scorecard's right row lies outside the range: repair left it alone, and it shows
    # again unless a merge had already replaced it with the newer, wrong row that repair deleted.
    moved_key = tuple(moved[:3])
    moved_want = {c for c in cards if c[:3] == moved_key}
    for index, (got_cards, got_scores) in enumerate(shard_rows(settings)):
        moved_got = {c for c in got_cards if c[:3] == moved_key}
        if index == 0:
            assert moved_got in (set(), moved_want), moved_got
        else:
            assert not moved_got, moved_got
        want_cards = {c for c in cards if shard_for(c[0], 2) == index and c[:3] != moved_key}
        want_scores = {s for s in scores if shard_for(s[0], 2) == index}
        got = sorted(c for c in got_cards if c[:3] != moved_key)
        assert got == sorted(want_cards), f"shard {index}: scorecards differ"
        assert sorted(got_scores) == sorted(want_scores), f"shard {index}: scores differ"


def test_repair_gives_up_waiting_without_consumers(pipeline_settings: Settings) -> None:
    settings = pipeline_settings
    dsn = settings.director_dsn
    seed(dsn, dsn, SeedPlan(20, seed=14, start=START, days=3))
    result = reindex(settings, "repair", *RANGE, "--timeout", "3")
    assert result.returncode == 4, result.stdout + result.stderr
    assert "not fully written within --timeout" in result.stderr.splitlines()[-1]


def test_repair_deletes_a_bucket_postgres_no_longer_has_and_keeps_other_rows(
    pipeline_settings: Settings,
) -> None:
    """Postgres holds nothing in the range: the repair job publishes nothing (no consumer is
    needed), and repair deletes the orphan rows but not a row outside the range."""
    settings = pipeline_settings
    index = shard_for("acme-corp", 2)
    inside = START + timedelta(hours=5, microseconds=7)
    later = END + timedelta(hours=1)
    card = dict.fromkeys(SCORECARD_COLUMNS, None) | {
        "customer_id": "acme-corp",
        "profile_id": "p",
        "scorecard_id": "orphan",
        "template_id": "t",
        "template_revision": "1",
        "scorecard_type": "PROCESS",
        "template_title": "T",
        "created_at": inside,
        "updated_at": inside,
        "reindex_job_id": "old",
        "reindexed_at": inside,
    }
    kept = card | {"scorecard_id": "outside", "created_at": later, "updated_at": later}
    scores = [
        dict.fromkeys(SCORE_COLUMNS, None)
        | {k: card[k] for k in ("customer_id", "profile_id", "reindex_job_id", "reindexed_at")}
        | {
            "scorecard_id": c["scorecard_id"],
            "criterion_id": "q1",
            "scorecard_type": "PROCESS",
            "is_process_scorecard": 1,
            "not_applicable": 0,
            "created_at": inside,
            "updated_at": inside,
        }
        for c in (card, kept)
    ]
    _insert(settings, index, "scorecards", [list(r.values()) for r in (card, kept)])
    _insert(settings, index, "scorecard_scores", [list(r.values()) for r in scores])
    assert reindex(settings, "verify", *RANGE).returncode != 0

    result = reindex(settings, "repair", *RANGE, "--timeout", "60")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _did(result.stdout)["gone"] == 1, result.stdout
    assert "rewrote 0 scorecards" in result.stdout
    with shard_client(settings.shards[index], database=settings.clickhouse_database) as c:
        left = c.query("SELECT scorecard_id FROM scorecards FINAL").result_rows
        left_scores = c.query("SELECT scorecard_id FROM scorecard_scores FINAL").result_rows
    assert left == [("outside",)]
    assert left_scores == [("outside",)]
    again = reindex(settings, "repair", *RANGE)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to repair" in again.stdout


def _three_versions(settings: Settings) -> tuple[int, list[tuple[datetime, datetime]]]:
    """Three versions of a scorecard Postgres does not have: the newest in day 1, an older one in
    day 2, the oldest past the range; merges are kept from folding them. Returns the shard and
    the (created_at, updated_at) of each version, oldest first."""
    index = shard_for("acme-corp", 2)
    with shard_client(settings.shards[index], database=settings.clickhouse_database) as c:
        # No merge may fold the versions together (a mutation, which DELETE is, still runs).
        c.command(
            "ALTER TABLE scorecards MODIFY SETTING max_bytes_to_merge_at_max_space_in_pool = 1, "
            "max_bytes_to_merge_at_min_space_in_pool = 1"
        )
    base = dict.fromkeys(SCORECARD_COLUMNS, None) | {
        "customer_id": "acme-corp",
        "profile_id": "p",
        "scorecard_id": "three-versions",
        "template_id": "t",
        "template_revision": "1",
        "scorecard_type": "PROCESS",
        "template_title": "T",
        "reindex_job_id": "old",
        "reindexed_at": START,
    }
    versions = [
        (END + timedelta(hours=1), START),  # (created_at, updated_at): past the range
        (START + timedelta(days=1, hours=2), START + timedelta(days=10)),  # day 2
        (START + timedelta(hours=2), START + timedelta(days=20)),  # day 1, the newest
    ]
    for created, updated in versions:  # one part each
        row = base | {"created_at": created, "updated_at": updated}
        _insert(settings, index, "scorecards", [list(row.values())])
    return index, versions


def test_repair_takes_a_second_round_for_an_older_version_a_delete_uncovers(
    pipeline_settings: Settings,
) -> None:
    """Deleting the newest of :func:`_three_versions` uncovers the one in day 2: the whole-range
    check finds it and a second round deletes it."""
    settings = pipeline_settings
    index, versions = _three_versions(settings)
    result = reindex(settings, "repair", *RANGE, "--timeout", "60")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "round 2: 1 bucket(s)" in out, out
    assert _did(out)["gone"] == 2, out
    with shard_client(settings.shards[index], database=settings.clickhouse_database) as c:
        left = c.query("SELECT created_at FROM scorecards FINAL").result_rows
    assert [_utc(r[0]) for r in left] == [versions[0][0]]  # the row past the range is untouched


def test_repair_exits_3_when_its_rounds_run_out(pipeline_settings: Settings) -> None:
    settings = pipeline_settings
    _three_versions(settings)
    result = reindex(settings, "repair", *RANGE, "--max-rounds", "1", "--timeout", "60")
    assert result.returncode == 3, result.stdout + result.stderr
    day2 = (START + timedelta(days=1)).isoformat()
    assert f"1 bucket(s) still differ: [{day2}, " in result.stdout, result.stdout
    assert result.stderr.splitlines()[-1] == (
        "reindex: error: 1 bucket(s) still differ after repair"
    ), result.stderr


def test_verify_sees_a_stray_score_row_on_the_wrong_shard(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    settings = pipeline_settings
    dsn = settings.director_dsn
    seed(dsn, dsn, SeedPlan(60, seed=13, start=START, days=3))
    with workers(settings, tmp_path, "w1"):
        _write_all(settings)
    ok = reindex(settings, "verify", *RANGE)
    assert ok.returncode == 0, ok.stdout + ok.stderr

    card = _with_scores(settings, 0, _in_range("PROCESS"))[0]
    stray = _scores_of(settings, 0, card)[0]
    _insert(settings, 1, "scorecard_scores", [stray])  # no scorecard row of it on shard 1
    day = card[SCORECARD_COLUMNS.index("created_at")].strftime("%Y-%m-%dT00:00:00+00:00")

    result = reindex(settings, "verify", *RANGE)
    assert result.returncode != 0, result.stdout
    line = next(x for x in result.stdout.splitlines() if x.startswith(day))
    assert line.split()[-1] == "1", line  # the wrong-shard column
    assert "ok" in line.split()[-3:-1], line  # the rows of the right shard still match
