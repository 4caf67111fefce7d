"""The ``reindex dlq`` commands (list, show, replay); the work is in :mod:`reindex.dlq`."""

from __future__ import annotations

from typing import Any

import click

from reindex import cli_types
from reindex.output import emit_json, output_option
from reindex_common.settings import load_settings


def dlq_filters(command: Any) -> Any:
    """Add --job, --reason and --since (the records of the DLQ to take)."""
    options = [
        click.option("--job", type=cli_types.JOB_ID, help="Only dead letters of this job."),
        click.option("--reason", help="Only dead letters whose reason contains this text."),
        click.option(
            "--since",
            help="Only dead letters from this time on: ISO 8601, or a duration ago (2h, 7d).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _dlq_filter(job: str | None, reason: str | None, since: str | None) -> Any:
    from reindex.dlq import DlqFilter  # noqa: PLC0415
    from reindex_common.timerange import parse_since  # noqa: PLC0415

    return DlqFilter(job, reason, None if since is None else parse_since(since))


@click.group()
def dlq() -> None:
    """The dead-letter topic: list, show and replay what could not be processed.

    \b
    Examples:
      reindex dlq list --since 24h
      reindex dlq show 0:42
      reindex dlq replay --job job-20260101 --dry-run
    """


@dlq.command("list")
@dlq_filters
@output_option
def dlq_list(job: str | None, reason: str | None, since: str | None, output: str) -> None:
    """The dead letters, oldest first: id (PARTITION:OFFSET), time, job, replayed, reason.

    \b
    Examples:
      reindex dlq list --job backfill-2026-03
      reindex dlq list --reason "outside what DateTime64" --since 2h -o json
    """
    from reindex.dlq import dead_letters, describe_list  # noqa: PLC0415

    settings = load_settings()
    letters = dead_letters(settings, _dlq_filter(job, reason, since))
    if output == "json":
        emit_json(
            {
                "topic": settings.dlq_topic,
                "count": len(letters),
                "dead_letters": [x.summary() for x in letters],
            }
        )
    else:
        click.echo(describe_list(letters))


@dlq.command("show")
@click.argument("record_id", metavar="PARTITION:OFFSET")
@output_option
def dlq_show(record_id: str, output: str) -> None:
    """One dead letter: the reason, where it came from, and the original bytes.

    \b
    Example:
      reindex dlq show 3:1187 -o json
    """
    from reindex.dlq import describe_one, find, parse_id  # noqa: PLC0415

    parse_id(record_id)  # bad input before any connection
    letter = find(load_settings(), record_id)
    if output == "json":
        emit_json(letter.document())
    else:
        click.echo(describe_one(letter))


@dlq.command("replay")
@dlq_filters
@click.option("--dry-run", is_flag=True, help="Say what would be replayed; publish nothing.")
@output_option
def dlq_replay(
    job: str | None, reason: str | None, since: str | None, dry_run: bool, output: str
) -> None:
    """Publish the original bytes again to the topic they came from (after a fix), once.

    Replayed records are remembered: a second replay skips them. A truncated original cannot be
    replayed and is named as such.

    \b
    Examples:
      reindex dlq replay --job backfill-2026-03 --dry-run
      reindex dlq replay --since 2026-03-01T00:00:00Z
    """
    from reindex.dlq import replay  # noqa: PLC0415

    result = replay(load_settings(), _dlq_filter(job, reason, since), dry_run=dry_run)
    if output == "json":
        emit_json(result.document())
    else:
        click.echo(result.describe())
