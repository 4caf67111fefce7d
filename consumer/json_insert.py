"""The SQL that lets a shard parse scorecard messages itself (SPEC §3 rows from SPEC §4 JSON).

A batch for one shard goes to ClickHouse as the messages' own bytes, one JSON object after
another, under ``INSERT … SELECT … FROM input(…) FORMAT JSONEachRow``: one statement per table,
the scores through ``ARRAY JOIN``. Python neither validates the messages nor builds columns.

The shard parses strictly, so that it writes exactly what the Python path
(:mod:`consumer.batch`, pydantic) would write, or refuses the whole batch:

* nested objects must carry every field and no other (named tuples, no defaults, no unknown
  keys), ``null`` only where the column is Nullable, no number read as a string or a bool as a
  number; the top level is checked by the worker before sending (:func:`consumer.batch.build`);
* a time must be ISO 8601 in UTC (``Z`` or ``+00:00``) with every field in its range and at most
  six fractional digits, and a date that exists (no day 30 of February, no hour 24);
  anything else — another offset, nanoseconds — is refused here and decided by the Python path;
* ``scorecard_type`` must be one of SPEC §2's two types.

A refusal is a ``FUNCTION_THROW_IF_VALUE_IS_NON_ZERO`` or a parse error, before any row is
written: the whole input is one block (the block-size settings below), and the check runs on it
before the insert sees a row. The worker then falls back to the Python path for that batch.
"""

from __future__ import annotations

from reindex_common.schema import SCORE_COLUMNS, SCORECARD_COLUMNS

# The message as JSONEachRow reads it (SPEC §4). The worker has already checked the top level
# (its keys, schema_version, and the types of the fields it routes and counts by).
_SCORECARD = (
    "customer_id String, profile_id String, scorecard_id String, template_id String, "
    "template_revision String, scorecard_type String, template_title String, "
    "conversation_id Nullable(String), agent_user_id Nullable(String), "
    "creator_user_id Nullable(String), score Nullable(Float64), submitted_at Nullable(String), "
    "created_at String, updated_at String"
)
_SCORE = (
    "criterion_id String, numeric_value Nullable(Float64), not_applicable Bool, "
    "comment Nullable(String), created_at String, updated_at String"
)
STRUCTURE = (
    "schema_version UInt8, job_id String, clean_up Bool, reindexed_at String, "
    f"scorecard Tuple({_SCORECARD}), scores Array(Tuple({_SCORE}))"
)

# Strict JSON reading, and the whole input in one block (so that a refusal writes nothing).
_ONE_BLOCK = 1 << 40
SETTINGS: dict[str, str | int] = {
    "input_format_null_as_default": 0,
    "input_format_skip_unknown_fields": 0,
    "input_format_json_read_numbers_as_strings": 0,
    "input_format_json_read_bools_as_strings": 0,
    "input_format_json_read_bools_as_numbers": 0,
    "input_format_json_read_objects_as_strings": 0,
    "input_format_json_read_arrays_as_strings": 0,
    "input_format_json_named_tuples_as_objects": 1,
    "input_format_json_ignore_unknown_keys_in_named_tuple": 0,
    "input_format_json_defaults_for_missing_elements_in_named_tuple": 0,
    "input_format_json_empty_as_default": 0,
    "input_format_allow_errors_num": 0,
    "input_format_allow_errors_ratio": 0,
    "input_format_parallel_parsing": 0,
    "max_insert_block_size": _ONE_BLOCK,
    "min_insert_block_size_rows": _ONE_BLOCK,
    "min_insert_block_size_bytes": _ONE_BLOCK,
    "max_block_size": _ONE_BLOCK,
}

# A UTC time as ISO 8601 with every field in its range (year 0001 to 9999, which
# DateTime64(6, 'UTC') holds), at most six fractional digits, ``Z`` or ``+00:00``. The engine's
# parser would wrap an hour 24 or a minute 60 into the next day or hour: the pattern refuses
# them; what it cannot tell (day 30 of February) the parser refuses, giving NULL.
_TIME_TEXT = (
    r"^(000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})-(0[1-9]|1[0-2])-"
    r"(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,6})?"
    r"(Z|\\+00:00)$"
)


def _time(text: str) -> str:
    """The DateTime64(6, 'UTC') of a time's text (NULL if the engine cannot read it)."""
    return f"parseDateTime64BestEffortOrNull({text}, 6, 'UTC')"


def _exact(text: str) -> str:
    """True when ``text`` is a UTC time that DateTime64(6, 'UTC') holds exactly as written."""
    return f"(match({text}, '{_TIME_TEXT}') AND isNotNull({_time(text)}))"


# ignore() reads its arguments: without it the engine would not read the fields a statement
# does not write, and so would not parse them strictly — it would even take them for unknown.
_READ_ALL = "ignore(schema_version, job_id, clean_up, reindexed_at, scorecard, scores) = 0"
_VALID = " AND ".join(
    (
        _READ_ALL,  # schema_version: the worker checked it (absent, the column reads 0)
        "scorecard.scorecard_type IN ('PROCESS', 'CONVERSATION')",
        _exact("reindexed_at"),
        _exact("scorecard.created_at"),
        _exact("scorecard.updated_at"),
        f"(scorecard.submitted_at IS NULL OR {_exact('assumeNotNull(scorecard.submitted_at)')})",
        f"arrayAll(x -> {_exact('x.created_at')} AND {_exact('x.updated_at')}, scores)",
    )
)
_CHECK = (
    f"throwIf(NOT ({_VALID}), "
    "'reindex: a message the shard cannot write exactly (type or time); the worker decides')"
)

_SCORECARD_VALUES = (
    "scorecard.customer_id, scorecard.profile_id, scorecard.scorecard_id, scorecard.template_id, "
    "scorecard.template_revision, scorecard.scorecard_type, scorecard.template_title, "
    "scorecard.conversation_id, scorecard.agent_user_id, scorecard.creator_user_id, "
    "scorecard.score, "
    f"if(scorecard.submitted_at IS NULL, NULL, "
    f"{_time('assumeNotNull(scorecard.submitted_at)')}), "
    f"assumeNotNull({_time('scorecard.created_at')}), "
    f"assumeNotNull({_time('scorecard.updated_at')}), "
    f"job_id, assumeNotNull({_time('reindexed_at')})"
)
_SCORE_VALUES = (
    "scorecard.customer_id, scorecard.profile_id, scorecard.scorecard_id, s.criterion_id, "
    "scorecard.scorecard_type, scorecard.scorecard_type = 'PROCESS', scorecard.conversation_id, "
    "scorecard.agent_user_id, s.numeric_value, s.not_applicable, s.comment, "
    f"assumeNotNull({_time('s.created_at')}), assumeNotNull({_time('s.updated_at')}), "
    f"job_id, assumeNotNull({_time('reindexed_at')})"
)


def _statement(table: str, columns: tuple[str, ...], values: str, rest: str) -> str:
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {values} "
        f"FROM input('{STRUCTURE}') {rest} FORMAT JSONEachRow"
    )


# The scorecards statement checks every message; the scores statement runs only after it
# succeeded, on the same bytes with the same settings, so it needs no check of its own.
SCORECARDS_SQL = _statement(
    "scorecards", SCORECARD_COLUMNS, _SCORECARD_VALUES, f"WHERE {_CHECK} = 0"
)
SCORES_SQL = _statement(
    "scorecard_scores", SCORE_COLUMNS, _SCORE_VALUES, f"ARRAY JOIN scores AS s WHERE {_READ_ALL}"
)
