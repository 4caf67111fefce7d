"""The shards parse the messages: the same rows, bit for bit, and the same DLQ as the Python path.

Each case is one batch of two messages (an ordinary one and the case) processed twice on the
real shards by :class:`BatchProcessor`: once with ``REINDEX_CONSUMER_SHARDS_PARSE`` (JSON for the
shards to parse, the Python path where a shard refuses) into one ClickHouse database, once with
the Python path only into another. Every row of both databases is then compared, floats by
their bits, and so are the messages each sent to the DLQ topic. A case that the shards must
write themselves (the messages our producer writes, and the odd values they can carry) is
checked to have gone that way, so that the comparison is not between two Python paths.
"""

from __future__ import annotations

import contextlib
import copy
import json
import struct
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fix_pipeline import (
    BOTH_TYPES,
    MONTH_END,
    MONTH_START,
    assert_correct_result,
    run_month_job,
    seed_month,
    wait_written,
    workers,
)

from consumer.batch import ParsedBatch, RawMessage
from consumer.metrics import Metrics
from consumer.processor import BatchProcessor
from reindex_common.clickhouse import init_target_schema, shard_client
from reindex_common.kafka import ensure_topics, read_topic, reindexer_topics
from reindex_common.messages import scorecard_key
from reindex_common.schema import SCORE_COLUMNS, SCORECARD_COLUMNS
from reindex_common.settings import Settings


def _message(scorecard_id: str, customer: str = "cust-a") -> dict[str, Any]:
    return {
        "schema_version": 1,
        "job_id": "job-json",
        "clean_up": False,
        "reindexed_at": "2026-12-03T10:00:00.123456Z",
        "scorecard": {
            "customer_id": customer,
            "profile_id": "prof",
            "scorecard_id": scorecard_id,
            "template_id": "tpl",
            "template_revision": "3",
            "scorecard_type": "PROCESS",
            "template_title": "Quality review",
            "conversation_id": None,
            "agent_user_id": "agent-1",
            "creator_user_id": "user-1",
            "score": 0.75,
            "submitted_at": "2026-01-02T03:04:05.123456+00:00",
            "created_at": "2026-01-02T03:04:05.1+00:00",
            "updated_at": "2026-01-02T03:04:06+00:00",
        },
        "scores": [
            {
                "criterion_id": f"crit-{i}",
                "numeric_value": 0.1 * i,
                "not_applicable": i == 2,
                "comment": None if i % 2 else "fine",
                "created_at": "2026-01-02T03:04:05.000001+00:00",
                "updated_at": "2026-01-02T03:04:05.999999Z",
            }
            for i in range(3)
        ],
    }


Edit = Callable[[dict[str, Any]], Any]


def _card(**values: Any) -> Edit:
    return lambda m: m["scorecard"].update(values)


def _first_score(**values: Any) -> Edit:
    return lambda m: m["scores"][0].update(values)


def _drop(path: str) -> Edit:
    def edit(m: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = m
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[last]

    return edit


# Cases the shards must write themselves: name -> edit of the message.
SHARDS_WRITE: dict[str, Edit] = {
    "as produced": lambda m: None,
    "unicode and escapes": _card(
        template_title='Ünïcødé 😀 漢字 "quoted" back\\slash\nnew line\ttab \u2028',
        conversation_id="conv-\u00e9",
    ),
    "nul character": _first_score(comment="a\u0000b"),
    "floats": lambda m: (
        m["scorecard"].update(score=1e308),
        m["scores"][0].update(numeric_value=-1e-300),
        m["scores"][1].update(numeric_value=5e-324),
        m["scores"][2].update(numeric_value=-0.0),
    ),
    "integers as floats": _first_score(numeric_value=3),
    "time bounds": lambda m: (
        m["scorecard"].update(created_at="0001-01-01T00:00:00Z"),
        m["scorecard"].update(updated_at="9999-12-31T23:59:59.999999Z"),
        m["scores"][0].update(created_at="1850-06-01T12:00:00.000001+00:00"),
        m["scores"][0].update(updated_at="2500-02-28T00:00:00+00:00"),
    ),
    "leap day": _card(submitted_at="2024-02-29T23:59:59.5Z"),
    "nulls": lambda m: (
        m["scorecard"].update(
            submitted_at=None, score=None, agent_user_id=None, creator_user_id=None
        ),
        m["scores"][0].update(numeric_value=None, comment=None),
    ),
    "no scores": lambda m: m.update(scores=[]),
    "clean-up": lambda m: m.update(clean_up=True),
    "no schema_version": _drop("schema_version"),
    "conversation type": _card(scorecard_type="CONVERSATION", conversation_id="c-1"),
    "key order": lambda m: m["scorecard"].update(dict(reversed(list(m["scorecard"].items())))),
}

# Cases a shard refuses, or the worker keeps from the shards: the Python path decides.
PYTHON_DECIDES: dict[str, Edit] = {
    "another offset": _card(updated_at="2026-01-02T05:04:06.25+02:00"),
    "no zone": _card(created_at="2026-01-02T03:04:05"),
    "nanoseconds": _first_score(updated_at="2026-01-02T03:04:05.1234567Z"),
    "day 30 of February": _card(created_at="2026-02-30T00:00:00Z"),
    "hour 24": _first_score(created_at="2026-01-02T24:00:00Z"),
    "year 0": _card(created_at="0000-01-01T00:00:00Z"),
    "minute 60": _card(updated_at="2026-01-01T00:60:00Z"),
    "second 60": _first_score(updated_at="2026-06-30T23:59:60Z"),
    "month 13": _card(created_at="2026-13-01T00:00:00Z"),
    "month 0": _card(created_at="2026-00-10T00:00:00Z"),
    "day 0": _card(created_at="2026-01-00T00:00:00Z"),
    "day 31 of April": _card(created_at="2026-04-31T00:00:00Z"),
    "29 February 2025": _card(created_at="2025-02-29T00:00:00Z"),
    "five-digit year": _card(created_at="12026-01-01T00:00:00Z"),
    "space for T": _card(created_at="2026-01-01 00:00:00Z"),
    "lower-case z": _card(created_at="2026-01-01T00:00:00z"),
    "-00:00": _card(created_at="2026-01-01T00:00:00-00:00"),
    "no seconds": _card(created_at="2026-01-01T00:00Z"),
    "date only": _card(created_at="2026-01-01"),
    "empty fraction": _card(created_at="2026-01-01T00:00:00.Z"),
    "missing score field": _drop("scores.0.comment"),
    "missing scorecard field": _drop("scorecard.template_title"),
    "unknown score field": _first_score(extra=1),
    "unknown top-level field": lambda m: m.update(extra=1),
    "unknown type": _card(scorecard_type="OTHER"),
    "null where not nullable": _card(template_id=None),
    "number for a string": _first_score(criterion_id=7),
    "bool for a string": _card(template_revision=True),
    "bool for a float": _first_score(numeric_value=True),
    "two for a bool": _first_score(not_applicable=2),
    "string for a bool": _first_score(not_applicable="true"),
    "schema version 2": lambda m: m.update(schema_version=2),
    "scores not a list": lambda m: m.update(scores={}),
    "scorecard missing": _drop("scorecard"),
    "job id a number": lambda m: m.update(job_id=5),
}

# Cases where either way may write: only the outcome must be the same.
EITHER: dict[str, Edit] = {
    "string for a float": _first_score(numeric_value="1.5"),
    "string nan for a float": _first_score(numeric_value="nan"),
    "string Infinity for a float": _first_score(numeric_value="-Infinity"),
    "string inf for a float": _first_score(numeric_value="inf"),
    "string with spaces for a float": _first_score(numeric_value=" 1.5 "),
    "string with underscores for a float": _first_score(numeric_value="1_000"),
    "string exponent for a float": _first_score(numeric_value="1e5"),
    "string hex for a float": _first_score(numeric_value="0x10"),
    "string suffix for a float": _first_score(numeric_value="1.5x"),
    "empty string for a float": _first_score(numeric_value=""),
    "number for a bool": _first_score(not_applicable=1),
    "zero for a bool": _first_score(not_applicable=0),
    "float for a bool": _first_score(not_applicable=1.0),
    "huge integer for a float": _first_score(numeric_value=10**30),
}

# Byte-level cases (not a dict to edit): name -> bytes from the ordinary message's JSON.
RAW_CASES: dict[str, Callable[[bytes], bytes]] = {
    "NaN and Infinity constants": lambda b: b.replace(b'"score":0.75', b'"score":NaN').replace(
        b'"numeric_value":0.0', b'"numeric_value":-Infinity'
    ),
    "trailing garbage": lambda b: b + b" trailing",
    "two objects": lambda b: b + b + b,
    "leading zero": lambda b: b.replace(b'"score":0.75', b'"score":00.75'),
    "raw control character": lambda b: b.replace(b'"fine"', b'"fi\tne"'),
    "invalid UTF-8": lambda b: b.replace(b'"fine"', b'"fi\xffne"'),
    "lone surrogate": lambda b: b.replace(b'"fine"', b'"\\ud800"'),
    "duplicate key": lambda b: b.replace(
        b'"template_id":"tpl"', b'"template_id":"a","template_id":"b"'
    ),
    "indented": lambda b: json.dumps(json.loads(b), indent=2).encode(),
    "empty": lambda b: b"",
}


def _cases() -> Iterator[tuple[str, bool, Callable[[str], bytes]]]:
    """(name, whether the shards must write it, scorecard id -> the case's bytes)."""

    def edited(edit: Edit) -> Callable[[str], bytes]:
        def make(scorecard_id: str) -> bytes:
            message = copy.deepcopy(_message(scorecard_id))
            edit(message)
            return json.dumps(message, allow_nan=True).encode()

        return make

    def raw(change: Callable[[bytes], bytes]) -> Callable[[str], bytes]:
        return lambda scorecard_id: change(
            json.dumps(_message(scorecard_id), separators=(",", ":")).encode()
        )

    for name, edit in SHARDS_WRITE.items():
        yield name, True, edited(edit)
    for name, edit in PYTHON_DECIDES.items():
        yield name, False, edited(edit)
    for name, edit in EITHER.items():
        yield name, False, edited(edit)
    for name, change in RAW_CASES.items():
        yield name, name == "indented", raw(change)


def _bits(value: Any) -> Any:
    return struct.pack("<d", value).hex() if isinstance(value, float) else value


def _rows(settings: Settings) -> list[list[tuple[Any, ...]]]:
    out = []
    for shard in settings.shards:
        with shard_client(shard, database=settings.clickhouse_database) as client:
            for table, columns in (
                ("scorecards", SCORECARD_COLUMNS),
                ("scorecard_scores", SCORE_COLUMNS),
            ):
                rows = client.query(
                    f"SELECT {', '.join(columns)} FROM {table} FINAL ORDER BY ALL"
                ).result_rows
                out.append([tuple(_bits(v) for v in row) for row in rows])
    return out


def _raw(
    offset: int, scorecard_id: str, value: bytes, *, customer: str = "cust-a", partition: int = 0
) -> RawMessage:
    key = scorecard_key(customer, "prof", scorecard_id)
    return RawMessage("scorecards", partition, offset, key, value)


@contextlib.contextmanager
def _processor(settings: Settings, worker: str) -> Iterator[BatchProcessor]:
    processor = BatchProcessor(settings, worker, Metrics(worker))
    try:
        yield processor
    finally:
        processor.close()


def _as_json(parsed: ParsedBatch) -> bool:
    """Whether every shard of the batch was (or is to be) written from the messages' JSON."""
    return all(b.json_rows is not None for b in parsed.shards.values())


@pytest.fixture
def two_databases(make_settings: Callable[..., Settings]) -> Iterator[tuple[Settings, Settings]]:
    run = uuid.uuid4().hex[:8]
    shards_parse = make_settings(
        clickhouse_database=f"reindex_json_{run}", consumer_shards_parse=True
    )
    python_only = shards_parse.replace(
        clickhouse_database=f"reindex_py_{run}", consumer_shards_parse=False
    )
    for settings in (shards_parse, python_only):
        init_target_schema(settings.shards, settings.clickhouse_database)
    ensure_topics(shards_parse, reindexer_topics(shards_parse))
    yield shards_parse, python_only
    for settings in (shards_parse, python_only):
        for shard in settings.shards:
            with contextlib.suppress(Exception), shard_client(shard) as client:
                client.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse_database}`")


def test_the_shards_write_what_the_python_path_writes(
    two_databases: tuple[Settings, Settings],
) -> None:
    shards_parse, python_only = two_databases
    cases = list(_cases())
    json_way: dict[str, bool] = {}
    for settings, worker in ((shards_parse, "json"), (python_only, "python")):
        with _processor(settings, worker) as processor:
            for number, (name, _, make) in enumerate(cases):
                ok, case = f"ok-{number:02d}", f"case-{number:02d}"
                raws = [
                    _raw(2 * number, ok, json.dumps(_message(ok)).encode()),
                    _raw(2 * number + 1, case, make(case)),
                ]
                report = processor.write(len(raws), processor.parse(raws), 0.0)
                if worker == "json":
                    json_way[name] = _as_json(report.parsed)

    must = {name for name, shards_write, _ in cases if shards_write}
    assert {name for name in must if not json_way[name]} == set(), "fell back to Python"
    assert json_way["as produced"]
    assert not any(json_way[name] for name in PYTHON_DECIDES), "a shard wrote a refused case"

    assert _rows(shards_parse) == _rows(python_only)
    scorecards = sum(len(rows) for rows in _rows(shards_parse)[0::2])
    assert scorecards >= len(cases) + len(must)  # the ordinary ones and the cases written

    dead: dict[str, list[tuple[int, str]]] = {"json": [], "python": []}
    for value in read_topic(shards_parse, shards_parse.dlq_topic):
        envelope = json.loads(value)
        dead[envelope["service"].removeprefix("consumer:")].append(
            (envelope["source_offset"], envelope["original_value_base64"])
        )
    assert sorted(dead["json"]) == sorted(dead["python"])
    assert len(dead["python"]) >= 20  # most of the refused cases are invalid messages


def test_a_message_refused_by_the_shard_sends_exactly_it_to_the_dlq(
    two_databases: tuple[Settings, Settings],
) -> None:
    """One bad message among 200: the other 199 are written, it alone reaches the DLQ."""
    settings, _ = two_databases
    raws = []
    for offset in range(200):
        scorecard_id = f"sc-{offset:03d}"
        message = _message(scorecard_id, customer=f"cust-{offset % 7}")
        if offset == 137:
            message["scores"][1]["updated_at"] = "2026-02-30T00:00:00Z"
        value = json.dumps(message).encode()
        raws.append(
            _raw(offset, scorecard_id, value, customer=f"cust-{offset % 7}", partition=offset % 3)
        )
    with _processor(settings, "one-bad") as processor:
        parsed = processor.parse(raws)
        assert _as_json(parsed)
        report = processor.write(len(raws), parsed, 0.0)

    assert [r.raw.offset for r in report.parsed.rejected] == [137]
    assert "updated_at" in report.parsed.rejected[0].reason
    assert report.parsed.job_counts == {"job-json": (199, 199 * 3)}
    written = {row[2] for rows in _rows(settings)[0::2] for row in rows}
    assert written == {f"sc-{o:03d}" for o in range(200) if o != 137}
    envelopes = [json.loads(v) for v in read_topic(settings, settings.dlq_topic)]
    assert [(e["source_partition"], e["source_offset"]) for e in envelopes] == [(137 % 3, 137)]


def test_times_are_written_exactly(two_databases: tuple[Settings, Settings]) -> None:
    """Microseconds, the type's ends and the epoch's neighbourhood, read back as ticks."""
    settings, _ = two_databases
    times = {
        "0001-01-01T00:00:00Z": -62135596800000000,
        "1969-12-31T23:59:59.999999Z": -1,
        "1970-01-01T00:00:00Z": 0,
        "2026-01-02T03:04:05.000001+00:00": 1767323045000001,
        "9999-12-31T23:59:59.999999Z": 253402300799999999,
    }
    raws = []
    for offset, text in enumerate(times):
        message = _message(f"t-{offset}")
        message["scorecard"]["created_at"] = text
        raws.append(_raw(offset, f"t-{offset}", json.dumps(message).encode()))
    with _processor(settings, "times") as processor:
        report = processor.write(len(raws), processor.parse(raws), 0.0)
    assert _as_json(report.parsed)
    ticks = {}
    for shard in settings.shards:
        with shard_client(shard, database=settings.clickhouse_database) as client:
            for sid, tick in client.query(
                "SELECT scorecard_id, toUnixTimestamp64Micro(created_at) FROM scorecards"
            ).result_rows:
                ticks[sid] = tick
    assert ticks == {f"t-{i}": tick for i, tick in enumerate(times.values())}


def test_a_clean_up_job_through_workers_whose_shards_parse(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    """The whole pipeline with REINDEX_CONSUMER_SHARDS_PARSE: Postgres's rows exactly, then a
    clean-up job after Postgres dropped scores removes them; no batch fell back."""
    settings = pipeline_settings.replace(consumer_shards_parse=True)
    seed_month(settings, 1200)
    run_month_job(settings, "json-1")
    with workers(settings, tmp_path, "j1", "j2") as started:
        wait_written(settings, "json-1")
        assert_correct_result(settings, settings.director_dsn, MONTH_START, MONTH_END, BOTH_TYPES)
        with psycopg.connect(settings.director_dsn, autocommit=True) as conn:
            dropped = conn.execute(
                "DELETE FROM historic.scorecard_scores WHERE criterion_id LIKE '%1'"
            ).rowcount
        assert dropped > 0
        run_month_job(settings, "json-2", clean_up=True)
        wait_written(settings, "json-2")
        assert_correct_result(settings, settings.director_dsn, MONTH_START, MONTH_END, BOTH_TYPES)
        for worker in started:
            assert worker.stop() == 0
            assert "refused" not in worker.output()
            assert " scores as JSON" in worker.output()  # the shards parsed the batches
