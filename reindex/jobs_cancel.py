"""``reindex jobs cancel JOB``: stop the producer running a job (reindex_common/cancel.py)."""

from __future__ import annotations

import re

import click

from reindex_common.errors import BadInputError
from reindex_common.messages import JOB_ID_PATTERN
from reindex_common.settings import load_settings


@click.command("cancel")
@click.argument("job_id")
def cancel(job_id: str) -> None:
    """Cancel JOB_ID: its producer (`produce` or `serve`) stops at the next page and records it
    `cancelled`; `serve` goes on with the next request. What was already published is still
    written. A job that no producer runs yet is cancelled when one picks it up; rerunning a
    cancelled job resumes it.

    \b
    Example:
      reindex jobs cancel backfill-2026-03
    """
    from reindex_common.cancel import request_cancel  # noqa: PLC0415

    if not re.match(JOB_ID_PATTERN, job_id):
        raise BadInputError(f"not a job id: {job_id!r} (letters, digits and ._:-, 1 to 200)")
    click.echo(request_cancel(load_settings(), job_id))
