"""Postgres access: connections that fail with one readable line, and the source schema."""

from __future__ import annotations

import psycopg

from reindex_common.errors import SourceUnavailableError
from reindex_common.schema import DIRECTOR_DDL, HISTORIC_DDL, statements
from reindex_common.settings import mask_url


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def connect(dsn: str, *, what: str = "Postgres", autocommit: bool = False) -> psycopg.Connection:
    """Open a connection, or raise :class:`SourceUnavailableError` naming the (masked) DSN."""
    try:
        return psycopg.connect(dsn, connect_timeout=10, autocommit=autocommit)
    except psycopg.Error as e:
        raise SourceUnavailableError(
            f"cannot connect to {what} at {mask_url(dsn)}: {first_line(e)}"
        ) from e


def init_source_schema(director_dsn: str, historic_dsn: str) -> None:
    """Create the SPEC §2 source tables (idempotent), each schema in its own database."""
    for dsn, ddl in ((director_dsn, DIRECTOR_DDL), (historic_dsn, HISTORIC_DDL)):
        with connect(dsn, autocommit=True) as conn:
            try:
                for stmt in statements(ddl):
                    conn.execute(stmt.encode())
            except psycopg.Error as e:
                raise SourceUnavailableError(
                    f"cannot create the source schema: {first_line(e)}"
                ) from e
