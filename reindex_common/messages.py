"""The messages of SPEC §4: pydantic models with a schema version, parsed once at the edge.

Scorecard messages carry times with their zone (``AwareDatetime``: checked by pydantic's Rust
core, with no Python callback per timestamp — a batch holds tens of thousands). Every model
rejects unknown fields so that a typo in a hand-written request (``cleanup`` for ``clean_up``) is
reported instead of silently ignored. Floats keep ``NaN`` and ``±Infinity``
(Postgres ``double precision`` can hold them), written as the JSON constants that Python's and
pydantic's parsers read back.
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal, NotRequired

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from reindex_common import datetime64
from reindex_common.errors import BadInputError
from reindex_common.settings import ScorecardType

SCHEMA_VERSION: Literal[1] = 1

# Job ids (SPEC §7): letters, digits and ``._:-``, 1 to 200 characters. Nothing else, so that a
# job id can never forge a log line or a terminal escape.
JOB_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,200}$"


def as_utc(value: datetime) -> datetime:
    """A time without a zone is UTC (SPEC §5); every other time is converted to UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    if value.tzinfo is UTC:
        return value
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]

# A scorecard message's time: with its zone, and one that DateTime64(6, 'UTC') holds exactly
# (reindex_common/datetime64.py). The bounds are checked by pydantic's Rust core with the offset
# applied, still without a Python callback per timestamp; a time outside them is refused, never
# clamped, and the consumer dead-letters its scorecard with the column and the value.
ExactTime = Annotated[AwareDatetime, Field(ge=datetime64.MIN, le=datetime64.MAX)]


def parse_time(text: str) -> datetime:
    """Parse an ISO 8601 time for the CLI (``Z`` allowed, no zone means UTC)."""
    try:
        return as_utc(datetime.fromisoformat(text.strip()))
    except ValueError:
        raise BadInputError(f"not an ISO 8601 time: {text!r}") from None


def new_job_id() -> str:
    return f"job-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")


class ReindexRequest(_Message):
    """A request to reindex ``[start, end)``; only ``start`` and ``end`` are required."""

    schema_version: Literal[1] = SCHEMA_VERSION
    job_id: str = Field(default_factory=new_job_id, pattern=JOB_ID_PATTERN)
    start: UtcDatetime
    end: UtcDatetime
    scorecard_types: tuple[ScorecardType, ...] = ("PROCESS",)
    batch_size: int = Field(500, ge=1, le=100_000)
    clean_up: bool = False

    @field_validator("scorecard_types")
    @classmethod
    def _types_present(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one scorecard type is needed")
        return tuple(dict.fromkeys(value))

    @model_validator(mode="after")
    def _range_is_forward(self) -> ReindexRequest:
        if self.start >= self.end:
            raise ValueError(f"start ({self.start.isoformat()}) must be before end")
        return self


def scorecard_key(customer_id: str, profile_id: str, scorecard_id: str) -> bytes:
    """Kafka key of a scorecard's messages: all of them land on one partition."""
    return f"{customer_id}\x1f{profile_id}\x1f{scorecard_id}".encode()


class ScoreRecord(_Message):
    """One row of ``historic.scorecard_scores``, as Postgres has it."""

    criterion_id: str
    numeric_value: float | None
    not_applicable: bool
    comment: str | None
    created_at: ExactTime
    updated_at: ExactTime


class ScorecardRecord(_Message):
    """One row of ``director.scorecards`` with its template revision's type and title."""

    customer_id: str
    profile_id: str
    scorecard_id: str
    template_id: str
    template_revision: str
    scorecard_type: ScorecardType
    template_title: str
    conversation_id: str | None
    agent_user_id: str | None
    creator_user_id: str | None
    score: float | None
    submitted_at: ExactTime | None
    created_at: ExactTime
    updated_at: ExactTime


class ScorecardMessage(_Message):
    """One message of the scorecards topic: a scorecard with all its scores and its job."""

    schema_version: Literal[1] = SCHEMA_VERSION
    job_id: str
    clean_up: bool
    reindexed_at: ExactTime
    scorecard: ScorecardRecord
    scores: tuple[ScoreRecord, ...]

    def key(self) -> bytes:
        s = self.scorecard
        return scorecard_key(s.customer_id, s.profile_id, s.scorecard_id)


# --- The consumer's view of a scorecard message -------------------------------------------------
# The same fields, types and rules as ScorecardMessage, validated by the same pydantic core, but
# into plain dicts: a batch holds thousands of messages, and building ~12 model instances per
# message cost a third of the consumer's validation time. tests/unit/test_messages.py checks that
# the two accept and reject the same messages.

_WIRE_CONFIG = ConfigDict(extra="forbid")


class ScoreDict(TypedDict):
    __pydantic_config__ = _WIRE_CONFIG  # type: ignore[misc]
    criterion_id: str
    numeric_value: float | None
    not_applicable: bool
    comment: str | None
    created_at: ExactTime
    updated_at: ExactTime


class ScorecardDict(TypedDict):
    __pydantic_config__ = _WIRE_CONFIG  # type: ignore[misc]
    customer_id: str
    profile_id: str
    scorecard_id: str
    template_id: str
    template_revision: str
    scorecard_type: ScorecardType
    template_title: str
    conversation_id: str | None
    agent_user_id: str | None
    creator_user_id: str | None
    score: float | None
    submitted_at: ExactTime | None
    created_at: ExactTime
    updated_at: ExactTime


class ScorecardMessageDict(TypedDict):
    __pydantic_config__ = _WIRE_CONFIG  # type: ignore[misc]
    schema_version: NotRequired[Literal[1]]
    job_id: str
    clean_up: bool
    reindexed_at: ExactTime
    scorecard: ScorecardDict
    scores: list[ScoreDict]


_SCORECARD_MESSAGE = TypeAdapter(ScorecardMessageDict)


def parse_scorecard_message(raw: bytes) -> ScorecardMessageDict:
    """Validate one message as :class:`ScorecardMessage` would; raises ``ValidationError``."""
    return _SCORECARD_MESSAGE.validate_json(raw)


class DlqMessage(_Message):
    """What reaches the DLQ: the original bytes, the reason, and where they came from."""

    schema_version: Literal[1] = SCHEMA_VERSION
    reason: str
    source_topic: str
    source_partition: int | None = None
    source_offset: int | None = None
    original_key_base64: str | None = None
    original_value_base64: str = Field(description="the original bytes, exactly")
    original_value: str | None = Field(description="the original bytes as text, when UTF-8")
    failed_at: UtcDatetime = Field(default_factory=lambda: datetime.now(UTC))
    service: str
    # The job the message belonged to, when it could be read from it (``dlq list --job``).
    job_id: str | None = None
    # Bounded envelopes (REINDEX_MAX_MESSAGE_BYTES): the original's size, and whether only a
    # prefix of it is kept.
    original_size: int | None = None
    truncated: bool = False


def describe_validation_error(error: ValidationError) -> str:
    """One line naming every invalid field of a message, for logs and the DLQ."""
    parts = []
    for err in error.errors():
        where = ".".join(str(p) for p in err["loc"])
        got = err.get("input")
        shown = (
            f" (got {got!r})" if isinstance(got, str | int | float) and len(str(got)) < 60 else ""
        )
        text = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {text}{shown}" if where else f"{text}{shown}")
    return "; ".join(parts)


def parse_request(raw: bytes | str) -> ReindexRequest:
    """Parse a request message, raising :class:`BadInputError` with the reason when invalid."""
    try:
        return ReindexRequest.model_validate_json(raw)
    except ValidationError as e:
        raise BadInputError(f"invalid reindex request: {describe_validation_error(e)}") from None


def dump(message: _Message) -> bytes:
    return message.model_dump_json().encode()


def dlq_message(
    *,
    reason: str,
    service: str,
    topic: str,
    partition: int | None,
    offset: int | None,
    key: bytes | None,
    value: bytes | None,
) -> DlqMessage:
    """The DLQ envelope for a message that could not be processed, keeping its exact bytes."""
    raw = value or b""
    try:
        text: str | None = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return DlqMessage(
        reason=reason,
        service=service,
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        original_key_base64=None if key is None else base64.b64encode(key).decode(),
        original_value_base64=base64.b64encode(raw).decode(),
        original_value=text,
    )
