"""Machine-readable output (SPEC §7): ``-o json`` / ``--output json``.

A command that takes :func:`output_option` gets an ``output`` argument, ``"text"`` or ``"json"``.
In JSON mode it prints exactly one JSON document on stdout with :func:`emit_json` and everything
else (progress, waiting lines, logs) on stderr — :func:`say` picks the stream — so that
``reindex verify -o json | jq`` always parses.

Values are converted for JSON: datetimes as ISO 8601 strings, pydantic models with their JSON
dump, dataclasses as objects, tuples and sets as arrays.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any, Literal, TypeVar

import click
from pydantic import BaseModel

F = TypeVar("F", bound=Callable[..., Any])
OutputFormat = Literal["text", "json"]


def output_option(command: F) -> F:
    """Add ``-o/--output [text|json]`` (passed to the command as ``output``)."""
    return click.option(
        "-o",
        "--output",
        "output",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="json: one JSON document on stdout, nothing else there (logs stay on stderr).",
    )(command)


def to_jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (see the module docstring); floats NaN/±inf become null."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def emit_json(document: Any) -> None:
    """Print ``document`` as one JSON document on stdout (indented, one trailing newline)."""
    click.echo(json.dumps(to_jsonable(document), indent=2, ensure_ascii=False, allow_nan=False))


def say(output: str) -> Callable[[str], None]:
    """Where a command's human lines go: stdout for text, stderr when stdout carries JSON."""
    err = output == "json"
    return lambda line: click.echo(line, err=err)
