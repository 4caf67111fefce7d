"""The job options shared by ``reindex produce`` and ``reindex request`` (SPEC §5)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from reindex import cli_types
from reindex_common.errors import BadInputError
from reindex_common.messages import ReindexRequest, describe_validation_error
from reindex_common.settings import MODE_TYPES, Settings
from reindex_common.timerange import resolve_range

F = TypeVar("F", bound=Callable[..., Any])


def range_options(command: F) -> F:
    """Add --start, --end and --last (give --start and --end, or --last; see resolve_range)."""
    options = [
        click.option("--start", help="Start of the range (ISO 8601, inclusive)."),
        click.option("--end", help="End of the range (ISO 8601, exclusive)."),
        click.option(
            "--last",
            metavar="DURATION",
            help="Instead of --start/--end: the range ending now, e.g. 24h, 90m, 7d, 2w.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def selection_options(command: F) -> F:
    """Add --start, --end, --last, --types and --mode: which scorecards (SPEC §2)."""
    options = [
        range_options,
        click.option("--types", help="Scorecard types, comma-separated: PROCESS,CONVERSATION."),
        click.option(
            "--mode",
            type=click.Choice(["process", "conversation", "all"]),
            help="Shorthand for --types (default: REINDEX_MODE).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def job_options(command: F) -> F:
    """Add the selection options, --batch-size, --clean-up and --job-id."""
    options = [
        selection_options,
        click.option(
            "--batch-size",
            type=cli_types.BATCH_SIZE,
            help="Page size (default: REINDEX_BATCH_SIZE).",
        ),
        click.option(
            "--clean-up",
            is_flag=True,
            help="Delete what the shards hold for each scorecard before writing it.",
        ),
        click.option(
            "--job-id",
            type=cli_types.JOB_ID,
            help="Job id (generated when absent); rerun with it to resume.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def max_lag_option(command: F) -> F:
    """``--max-lag N``: back-pressure on the producer (overrides REINDEX_MAX_LAG)."""
    return click.option(
        "--max-lag",
        type=cli_types.MAX_LAG,
        metavar="N",
        help="Pause publishing while the consumer group is more than N messages behind on the "
        "scorecards topic; 0 turns it off (default: REINDEX_MAX_LAG, off).",
    )(command)


def build_request(
    settings: Settings,
    *,
    start: str | None,
    end: str | None,
    types: str | None,
    mode: str | None,
    batch_size: int | None,
    clean_up: bool,
    job_id: str | None,
    last: str | None = None,
) -> ReindexRequest:
    """The request the options describe, or :class:`BadInputError` naming what is wrong."""
    if types and mode:
        raise BadInputError("give --types or --mode, not both")
    if types:
        chosen = tuple(t.strip().upper() for t in types.split(",") if t.strip())
        unknown = [t for t in chosen if t not in ("PROCESS", "CONVERSATION")]
        if unknown or not chosen:
            raise BadInputError(
                f"unknown scorecard type {', '.join(unknown) or '(none)'}: "
                "use PROCESS and/or CONVERSATION"
            )
    else:
        chosen = MODE_TYPES[mode or settings.mode]
    size = settings.batch_size if batch_size is None else batch_size
    if size < 1:
        raise BadInputError(f"--batch-size must be at least 1 (got {size})")
    range_start, range_end = resolve_range(start, end, last)
    values: dict[str, Any] = {
        "start": range_start,
        "end": range_end,
        "scorecard_types": chosen,
        "batch_size": size,
        "clean_up": clean_up,
    }
    if job_id is not None:
        values["job_id"] = job_id
    try:
        return ReindexRequest(**values)
    except ValidationError as e:
        raise BadInputError(describe_validation_error(e)) from None
