"""Postgres access: connections that fail with one readable line, and the source schema.

Connections are read-only unless the caller asks for a writable one: the reindexer only reads
its source (SPEC §2), and ``conn.read_only`` has no effect on autocommit connections, so the
server is told instead (``default_transaction_read_only``): a write through such a connection
fails in Postgres whatever the code does.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from reindex_common.errors import BadInputError, SourceUnavailableError
from reindex_common.masking import mask_dsn, redact
from reindex_common.schema import DIRECTOR_DDL, HISTORIC_DDL, statements

READ_ONLY_OPTION = "-c default_transaction_read_only=on"


def first_line(error: BaseException) -> str:
    """The first line of an error's text, with any known secret masked."""
    text = redact(str(error).strip())
    return text.splitlines()[0] if text else type(error).__name__


def read_only_conninfo(dsn: str) -> str:
    """``dsn`` with ``default_transaction_read_only`` on, keeping any ``options`` it has."""
    params = conninfo_to_dict(dsn)
    options = str(params.get("options") or "").strip()
    return make_conninfo(dsn, options=f"{options} {READ_ONLY_OPTION}".strip())


def connect(
    dsn: str, *, what: str = "Postgres", autocommit: bool = False, writable: bool = False
) -> psycopg.Connection:
    """Open a connection, or raise :class:`SourceUnavailableError` naming the (masked) DSN.

    Read-only on the server side unless ``writable`` (only the dev commands that create and seed
    their own databases write).
    """
    try:
        conninfo = dsn if writable else read_only_conninfo(dsn)
    except psycopg.Error as e:  # libpq's message would quote the string, secret and all
        raise SourceUnavailableError(
            f"cannot connect to {what}: {mask_dsn(dsn)} is not a libpq connection string"
        ) from e
    try:
        return psycopg.connect(conninfo, connect_timeout=10, autocommit=autocommit)
    except psycopg.Error as e:
        raise SourceUnavailableError(
            f"cannot connect to {what} at {mask_dsn(dsn)}: {first_line(e)}"
        ) from e


def keep_unloadable_timestamps(conn: psycopg.Connection) -> None:
    """Load a ``timestamptz`` Python cannot hold (``infinity``, past year 9999, BC) as its text.

    Such values exist in Postgres but never on the shards (the consumer dead-letters them), so a
    comparison must see them as values that differ, not stop on them.
    """
    oid = conn.adapters.types["timestamptz"].oid
    found = conn.adapters.get_loader(oid, psycopg.pq.Format.TEXT)
    if found is None:
        return
    base = found

    class Lenient(psycopg.adapt.Loader):
        def __init__(self, oid: int, context: Any = None) -> None:
            super().__init__(oid, context)
            self._inner = base(oid, context)  # psycopg's own (compiled) loader does the work

        def load(self, data: Any) -> Any:
            try:
                return self._inner.load(data)
            except psycopg.DataError:
                return bytes(data).decode("utf-8", "replace")

    conn.adapters.register_loader(oid, Lenient)


# The comment on the source schemas (and the demo's database) that the reindexer created itself:
# only there may ``seed`` and ``demo`` write without ``--yes``. Production source schemas are
# made by the application, so they never carry it.
CREATED_MARK = "created by reindex for synthetic data; reindex seed and demo may write here"


def _schema_comment(conn: psycopg.Connection, schema: str) -> tuple[bool, str | None]:
    """Whether ``schema`` exists, and its comment."""
    row = conn.execute(
        "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = %s",
        (schema,),
    ).fetchone()
    return (row is not None, row[0] if row else None)


def init_source_schema(director_dsn: str, historic_dsn: str) -> None:
    """Create the SPEC §2 source tables (idempotent), each schema in its own database.

    A schema created here is marked with :data:`CREATED_MARK` (one that existed is left alone).
    """
    for dsn, ddl, schema in (
        (director_dsn, DIRECTOR_DDL, "director"),
        (historic_dsn, HISTORIC_DDL, "historic"),
    ):
        with connect(dsn, autocommit=True, writable=True) as conn:
            try:
                existed, _ = _schema_comment(conn, schema)
                for stmt in statements(ddl):
                    conn.execute(stmt.encode())
                if not existed:
                    conn.execute(
                        sql.SQL("COMMENT ON SCHEMA {} IS {}").format(
                            sql.Identifier(schema), sql.Literal(CREATED_MARK)
                        )
                    )
            except psycopg.Error as e:
                raise SourceUnavailableError(
                    f"cannot create the source schema: {first_line(e)}"
                ) from e


def check_writable_source(director_dsn: str, historic_dsn: str, *, yes: bool) -> None:
    """Raise :class:`BadInputError` unless each source schema is absent or the reindexer's own
    (:data:`CREATED_MARK` on the schema or its database), or ``yes``: synthetic rows must never
    land in real data by mistake."""
    if yes:
        return
    for dsn, schema in ((director_dsn, "director"), (historic_dsn, "historic")):
        with connect(dsn, autocommit=True) as conn:
            try:
                existed, comment = _schema_comment(conn, schema)
                row = conn.execute(
                    "SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                    "WHERE datname = current_database()"
                ).fetchone()
            except psycopg.Error as e:
                raise SourceUnavailableError(
                    f"cannot inspect the source schema: {first_line(e)}"
                ) from e
        if existed and CREATED_MARK not in (comment, row[0] if row else None):
            raise BadInputError(
                f"the {schema} schema at {mask_dsn(dsn)} was not created by reindex: "
                "refusing to write synthetic rows into it (pass --yes to do it anyway)"
            )
