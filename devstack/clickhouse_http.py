"""A ClickHouse HTTP-interface server over chdb: one process per shard, for the dev stack only.

Production talks to real ClickHouse servers. On a machine without Docker this module stands in
for one of them: it serves the part of ClickHouse's HTTP interface that clickhouse-connect and
curl use, in front of chdb (the real ClickHouse engine, in-process) with its own data directory::

    python -m devstack.clickhouse_http --data-dir DIR --port PORT [--host 127.0.0.1]

It forwards SQL to the engine and returns the engine's bytes. Results are never parsed, rewritten
or invented; errors are the engine's, with their codes.

**Not for production, and guarded because it runs on developers' machines** (the engine can read
and write any file the user can, fetch URLs and run programs):

* it listens on loopback only; another address needs ``--allow-non-loopback``, and on loopback a
  request whose ``Host`` is not a loopback name is refused (DNS rebinding);
* every request but ``/ping`` needs the password from the ``CLICKHOUSE_HTTP_PASSWORD``
  environment variable (the dev stack sets a random one per stack) for ``--user`` (``default``),
  sent as clickhouse-connect and curl send it: HTTP basic auth, ``X-ClickHouse-User`` /
  ``X-ClickHouse-Key``, or the ``user`` / ``password`` URL parameters;
* a request carrying a browser's ``Origin`` or ``Sec-Fetch-*`` header is refused;
* SQL that could reach files, URLs, other servers or programs is refused before the engine sees
  it (:mod:`devstack.sql_guard`), and ``VALUES`` data cannot run expressions;
* request bodies (raw and decompressed) are bounded by ``--max-body-bytes``, query text by
  ``--max-query-bytes`` and results by ``--max-result-bytes``.

The only SQL it looks at besides is the head of an INSERT, to split the statement from the data
that follows it in the body (as the server does), and the ``input()`` call of an INSERT ... SELECT.

What it implements:

* the query from the ``query`` URL parameter, the body, or both (URL query, a newline, then the
  body), including multipart/form-data bodies (clickhouse-connect sends large bind parameters so);
* ``INSERT ... SELECT ... FROM input('structure') FORMAT name`` with its data after the statement:
  chdb's streaming insert takes no SELECT, so the data is spooled to a file in the engine's
  directory and ``input(...)`` runs as ``file(spool, name, 'structure')`` (the statement is
  checked by the guard first; this ``file`` is the front's own);
* INSERT data streamed into the engine block after block (``send_insert``), whatever the number of
  Native blocks, with ``Transfer-Encoding: chunked`` and ``Content-Encoding`` lz4 (concatenated
  LZ4 frames, as clickhouse-connect sends), zstd, gzip and deflate; responses are uncompressed;
* ``database`` / ``X-ClickHouse-Database``, ``param_NAME`` bind values, and ClickHouse settings as
  URL parameters, applied to that one request only;
* ``default_format`` / ``X-ClickHouse-Format``, the ``X-ClickHouse-*`` response headers, and errors
  as HTTP 500 with ``X-ClickHouse-Exception-Code`` and ClickHouse's error text;
* ``GET /ping`` and ``GET /``; a query sent with GET runs with readonly=2, as on a server.

Not implemented: sessions (``session_id`` is ignored; there is one engine session), external
data, ``compress=1`` / ``decompress=1`` (ClickHouse's own block compression), brotli bodies,
compressed or streamed responses (results are buffered; clients accept them uncompressed),
progress headers.

chdb allows one session per process and a data directory belongs to one process, so every
request runs against the single session under one lock: requests are served by threads but run
in the engine one at a time. That is enough for a dev stack, and it is also what keeps the
session's state (current database, settings) from leaking from one request into another.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import email.parser
import email.policy
import enum
import hmac
import io
import ipaddress
import itertools
import json
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import lz4.frame
import zstandard

from devstack import PASSWORD_ENV, sql_guard

# Error codes and names as ClickHouse numbers them (src/Common/ErrorCodes.cpp), for the errors
# this front raises itself, before the engine is reached.
SYNTAX_ERROR = (62, "SYNTAX_ERROR")
BAD_ARGUMENTS = (36, "BAD_ARGUMENTS")
NOT_IMPLEMENTED = (48, "NOT_IMPLEMENTED")
UNKNOWN_FORMAT = (73, "UNKNOWN_FORMAT")
UNKNOWN_SETTING = (115, "UNKNOWN_SETTING")
ABORTED = (236, "ABORTED")
CANNOT_DECOMPRESS = (271, "CANNOT_DECOMPRESS")
STD_EXCEPTION = (1001, "STD_EXCEPTION")
TOO_MANY_BYTES = (307, "TOO_MANY_BYTES")
TOO_MANY_ROWS_OR_BYTES = (396, "TOO_MANY_ROWS_OR_BYTES")
ACCESS_DENIED = (497, "ACCESS_DENIED")
AUTHENTICATION_FAILED = (516, "AUTHENTICATION_FAILED")

DEFAULT_MAX_BODY_BYTES = 1 << 30  # an INSERT's data, raw and decompressed
DEFAULT_MAX_QUERY_BYTES = 16 << 20  # the text of a query (with multipart bind parameters)
DEFAULT_MAX_RESULT_BYTES = 1 << 30
# Forced on every INSERT: VALUES data must not run expressions such as file(...).
INSERT_SETTINGS = (
    ("input_format_values_interpret_expressions", "0"),
    ("input_format_values_deduce_templates_of_expressions", "0"),
)

# URL parameters that belong to the HTTP interface or the client, not to the query's settings.
# ``readonly`` is a setting but is scoped differently (see Engine._with_readonly).
HTTP_PARAMS = frozenset(
    [
        "query",
        "database",
        "default_format",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "user",
        "password",
        "quota_key",
        "role",
        "buffer_size",
        "wait_end_of_query",
        "enable_http_compression",
        "send_progress_in_http_headers",
        "client_protocol_version",
        "cancel_http_readonly_queries_on_client_close",
        "stacktrace",
        "add_http_cors_header",
        "readonly",
    ]
)

# Format names that chdb turns into Python objects rather than bytes; no server knows them.
PYTHON_ONLY_FORMATS = frozenset({"dataframe", "arrowtable", "datastore", "debug"})

# Statements whose first word marks them as producing a result, for which a real server reports
# X-ClickHouse-Format (clickhouse-connect's command() returns "" rather than a summary then).
RESULT_STATEMENTS = frozenset(
    {b"SELECT", b"WITH", b"SHOW", b"DESC", b"DESCRIBE", b"EXISTS", b"EXPLAIN", b"CHECK", b"("}
)

MAX_INSERT_HEAD = 256 * 1024  # ClickHouse's default max_query_size
READ_SIZE = 1 << 20
DRAIN_LIMIT = 1 << 30  # an erroneous request's body is read and dropped up to this size

_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ENGINE_CODE = re.compile(r"Code: (\d+)\. ")
_TRAILING_FORMAT = re.compile(
    rb"\bFORMAT\s+([A-Za-z0-9_]+)\s*(?:\bSETTINGS\b[^;]*)?;?\s*\Z", re.IGNORECASE
)
# input('structure'): the one table function whose data is the request's body.
_INPUT_CALL = re.compile(r"\binput\s*\(\s*('(?:[^'\\]|\\.|'')*')\s*\)", re.IGNORECASE)
_VERSION_TRAILER = re.compile(r"\(version [^()]*(?:\([^()]*\))?\)\s*\Z")
_WORD_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$")
_SPACE = frozenset(b" \t\r\n\f\v")


class ClickHouseError(Exception):
    """An error in ClickHouse's form: a code and ``Code: N. DB::Exception: ... (NAME)``."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text

    @classmethod
    def of(cls, error: tuple[int, str], message: str) -> ClickHouseError:
        code, name = error
        return cls(code, f"Code: {code}. DB::Exception: {message}. ({name})")

    @classmethod
    def from_engine(cls, exc: BaseException) -> ClickHouseError:
        # chdb's Python layer may prefix the engine's text ("Streaming insert finish failed: ").
        text = str(exc)
        match = _ENGINE_CODE.search(text)
        if match is None:
            return cls.of(STD_EXCEPTION, text)
        return cls(int(match.group(1)), text[match.start() :].strip())


# --- the engine ----------------------------------------------------------------------------


@dataclass
class QueryContext:
    """What a request asks of the engine besides the SQL itself."""

    database: str = "default"
    settings: list[tuple[str, str]] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)
    readonly: int = 0


@dataclass
class Outcome:
    """The engine's answer: the result bytes and the counters for X-ClickHouse-Summary."""

    body: bytes = b""
    read_rows: int = 0
    read_bytes: int = 0
    written_rows: int = 0
    written_bytes: int = 0
    result_rows: int = 0
    result_bytes: int = 0
    elapsed_ns: int = 0

    def summary(self) -> str:
        # A real server sends every counter as a string.
        return json.dumps(
            {
                "read_rows": str(self.read_rows),
                "read_bytes": str(self.read_bytes),
                "written_rows": str(self.written_rows),
                "written_bytes": str(self.written_bytes),
                "total_rows_to_read": "0",
                "result_rows": str(self.result_rows),
                "result_bytes": str(self.result_bytes),
                "elapsed_ns": str(self.elapsed_ns),
            },
            separators=(",", ":"),
        )


def quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _open_session(data_dir: str) -> Any:
    # Imported here, not at the top: the engine reads TZ when it loads, and main() sets TZ.
    import chdb.session  # noqa: PLC0415

    return chdb.session.Session(path=data_dir)  # type: ignore[no-untyped-call]


class Engine:
    """The chdb session of this process, used by one request at a time."""

    def __init__(self, data_dir: str) -> None:
        os.makedirs(data_dir, exist_ok=True)
        self._spool_dir = os.path.join(data_dir, "input-spool")  # INSERT ... FROM input()
        self._session = _open_session(data_dir)
        self._lock = threading.Lock()
        self._closing = False
        self._closed = False
        first = self._session.query("SELECT version(), timezone()", "TabSeparated")
        self.version, self.timezone = bytes(first.bytes()).decode().rstrip("\n").split("\t")

    def close(self) -> None:
        """Close the session once the request in the engine (if any) is done."""
        self._closing = True  # a streaming insert stops at its next chunk
        with self._lock:
            if not self._closed:
                self._closed = True
                self._session.close()

    @contextlib.contextmanager
    def _scoped(self, ctx: QueryContext) -> Iterator[None]:
        """Hold the engine with the request's database and settings, and undo them after.

        chdb has no per-query settings argument, and a SETTINGS clause does not fit every
        statement (on CREATE TABLE it would set the table's settings), so settings are SET on
        the session and reset to their defaults afterwards, under the lock. The current database
        is set for every request, so a ``USE`` sent by a client does not outlive its request.
        """
        with self._lock:
            if self._closed or self._closing:
                raise ClickHouseError.of(ABORTED, "the server is shutting down")
            applied: list[str] = []
            try:
                self._run(f"USE {quote_identifier(ctx.database)}")
                for name, value in ctx.settings:
                    if not _SETTING_NAME.match(name):
                        raise ClickHouseError.of(UNKNOWN_SETTING, f"Unknown setting '{name}'")
                    self._run(f"SET {name} = {quote_string(value)}")
                    applied.append(name)
                yield
            finally:
                for name in applied:
                    with contextlib.suppress(ClickHouseError):
                        self._run(f"SET {name} = DEFAULT")

    def _run(self, sql: str) -> None:
        try:
            self._session.query(sql, "TabSeparated")
        except RuntimeError as e:
            raise ClickHouseError.from_engine(e) from None

    @staticmethod
    def _with_readonly(sql: bytes, level: int) -> bytes:
        # ``SET readonly`` can never be undone in a session (the engine refuses to lower it), so
        # readonly is scoped to the statement by a SETTINGS clause at its end, which read
        # statements accept; one that does not accept it fails to parse, so it fails closed.
        if level <= 0:
            return sql
        return sql.rstrip(b" \t\r\n\f\v;") + b"\nSETTINGS readonly=%d" % level

    def query(self, sql: bytes, fmt: str, ctx: QueryContext) -> Outcome:
        """Run one statement; its result in ``fmt`` unless the statement names a FORMAT."""
        if fmt.lower() in PYTHON_ONLY_FORMATS:
            raise ClickHouseError.of(UNKNOWN_FORMAT, f"Unknown format {fmt}")
        sql = self._with_readonly(sql, ctx.readonly)
        with self._scoped(ctx):
            try:
                res = self._session.query(sql, fmt, params=ctx.params)
            except RuntimeError as e:
                raise ClickHouseError.from_engine(e) from None
            body = bytes(res.bytes())
            return Outcome(
                body=body,
                read_rows=res.storage_rows_read(),
                read_bytes=res.storage_bytes_read(),
                written_rows=res.rows_written(),
                written_bytes=res.bytes_written(),
                result_rows=res.rows_read(),
                result_bytes=len(body),
                elapsed_ns=int(res.elapsed() * 1e9),
            )

    def insert(self, head: bytes, fmt: str, data: Iterator[bytes], ctx: QueryContext) -> Outcome:
        """Stream ``data`` (in input format ``fmt``) into ``head`` (an INSERT without FORMAT)."""
        head = self._with_readonly(head.rstrip(), ctx.readonly)
        with self._scoped(ctx):
            try:
                # Leaving the with-block without finish() cancels the insert.
                with self._session.send_insert(head, fmt) as inserter:
                    for chunk in data:
                        if self._closing:
                            raise ClickHouseError.of(ABORTED, "the server is shutting down")
                        if chunk:
                            inserter.append(chunk)
                    res = inserter.finish()
            except RuntimeError as e:
                raise ClickHouseError.from_engine(e) from None
            return Outcome(
                written_rows=res.rows_written,
                written_bytes=res.bytes_written,
                elapsed_ns=int(res.elapsed * 1e9),
            )

    def insert_select(
        self,
        head: bytes,
        tokens: list[sql_guard.Token],
        fmt: str,
        data: Iterator[bytes],
        ctx: QueryContext,
    ) -> Outcome:
        """Run ``INSERT ... SELECT ... FROM input('structure')`` over ``data`` (in ``fmt``).

        chdb's streaming insert takes no ``SELECT``, so the data is spooled to a file in this
        engine's directory and ``input('structure')`` becomes ``file(spool, fmt, 'structure')``
        (the statement was checked before the rewrite; ``file`` is the front's, not the
        client's). The result is the server's: the rows the SELECT gives, with its errors.
        ``tokens`` are the statement's, as the guard read them.
        """
        sql = head.decode("utf-8", errors="strict").rstrip()
        calls = list(_INPUT_CALL.finditer(sql))
        called = sum(
            1
            for t, after in itertools.pairwise(tokens)
            if t.kind == "word" and t.text.lower() == "input" and after.text == "("
        )
        if len(calls) != 1 or called != 1:
            raise ClickHouseError.of(
                NOT_IMPLEMENTED,
                "the dev stack takes INSERT ... SELECT with data only from one "
                "input('structure') call",
            )
        os.makedirs(self._spool_dir, exist_ok=True)
        fd, path = tempfile.mkstemp(dir=self._spool_dir, suffix=".input")
        try:
            with os.fdopen(fd, "wb") as spool:
                for chunk in data:
                    if self._closing:
                        raise ClickHouseError.of(ABORTED, "the server is shutting down")
                    spool.write(chunk)
            call = calls[0]
            source = f"file({quote_string(path)}, {quote_string(fmt)}, {call.group(1)})"
            rewritten = sql[: call.start()] + source + sql[call.end() :]
            return self.query(rewritten.encode(), "TabSeparated", ctx)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)


# --- reading the request body --------------------------------------------------------------


class Body:
    """A request body as raw chunks, per Content-Length or chunked transfer encoding.

    Its position is kept here rather than in a generator, so that after a reader stops early
    (an engine error mid-insert) the rest can still be drained and the connection reused.
    """

    def __init__(self, rfile: io.BufferedIOBase, headers: Message) -> None:
        self._rfile = rfile
        self._chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        try:
            length = 0 if self._chunked else int(headers.get("Content-Length") or 0)
        except ValueError:
            raise ClickHouseError.of(BAD_ARGUMENTS, "invalid Content-Length") from None
        self._left = max(length, 0)  # bytes left in the body, or in the current chunk
        self.done = not self._chunked and self._left == 0

    def chunks(self) -> Iterator[bytes]:
        """The raw chunks not read yet."""
        while not self.done:
            if self._left == 0:  # chunked, at the start of a chunk
                self._left = self._chunk_size()
                if self._left == 0:
                    while self._rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    self.done = True
                    return
            data = self._rfile.read(min(self._left, READ_SIZE))
            if not data:
                raise ConnectionError("client closed the connection mid-body")
            self._left -= len(data)
            if self._left == 0:
                if self._chunked:
                    self._rfile.readline(65537)  # the CRLF after the chunk's data
                else:
                    self.done = True
            yield data

    def _chunk_size(self) -> int:
        line = self._rfile.readline(65537)
        if not line:
            raise ConnectionError("client closed the connection mid-body")
        try:
            return int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ClickHouseError.of(BAD_ARGUMENTS, "malformed chunked encoding") from None

    def drain(self) -> bool:
        """Read and drop what is left, so the connection can be reused; False if it can't."""
        dropped = 0
        try:
            for chunk in self.chunks():
                dropped += len(chunk)
                if dropped > DRAIN_LIMIT:
                    return False
        except (OSError, ClickHouseError):
            return False
        return True


def bounded(chunks: Iterator[bytes], limit: int, what: str) -> Iterator[bytes]:
    """``chunks``, failing with TOO_MANY_BYTES once more than ``limit`` bytes went by."""
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise ClickHouseError.of(
                TOO_MANY_BYTES, f"{what} is larger than the dev stack's limit of {limit} bytes"
            )
        yield chunk


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes) -> bytes: ...


def _lz4() -> _Decompressor:
    decompressor: _Decompressor = lz4.frame.LZ4FrameDecompressor()
    return decompressor


def _zstd() -> _Decompressor:
    decompressor: _Decompressor = zstandard.ZstdDecompressor().decompressobj()
    return decompressor


DECOMPRESSORS: dict[str, Callable[[], _Decompressor]] = {
    "lz4": _lz4,
    "zstd": _zstd,
    "gzip": lambda: zlib.decompressobj(wbits=31),
    "x-gzip": lambda: zlib.decompressobj(wbits=31),
    "deflate": lambda: zlib.decompressobj(wbits=15),
}


def decode_body(chunks: Iterator[bytes], encoding: str) -> Iterator[bytes]:
    """Decompress a body per its Content-Encoding, across concatenated frames.

    clickhouse-connect compresses each insert block into its own LZ4 (or zstd) frame, so a body
    is a series of frames: a decoder that stops after the first frame keeps the first block only.
    """
    encoding = encoding.strip().lower()
    if encoding in ("", "identity", "none"):
        yield from chunks
        return
    factory = DECOMPRESSORS.get(encoding)
    if factory is None:
        raise ClickHouseError.of(NOT_IMPLEMENTED, f"Unsupported Content-Encoding: {encoding}")
    try:
        decompressor = factory()
    except ImportError as e:
        raise ClickHouseError.of(NOT_IMPLEMENTED, f"{encoding} is not installed: {e}") from None
    in_frame = False
    for chunk in chunks:
        data = chunk
        while data:
            in_frame = True
            try:
                out = decompressor.decompress(data)
            except Exception as e:  # each library has its own error class
                raise ClickHouseError.of(
                    CANNOT_DECOMPRESS, f"cannot decode {encoding} body: {e}"
                ) from None
            if out:
                yield out
            if decompressor.eof:
                data = decompressor.unused_data
                decompressor = factory()
                in_frame = False
            else:
                data = b""
    if in_frame:
        raise ClickHouseError.of(CANNOT_DECOMPRESS, f"truncated {encoding} body")


def parse_form(content_type: str, body: bytes) -> dict[str, str]:
    """The fields of a multipart/form-data body (``query``, ``param_*``, settings)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        if part.get_filename() is not None:
            raise ClickHouseError.of(NOT_IMPLEMENTED, "external data is not supported")
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = payload.decode("utf-8")
    return fields


# --- splitting an INSERT's statement from its data ------------------------------------------


@dataclass
class InsertSplit:
    head_end: int  # the statement is buf[:head_end], without FORMAT
    fmt: str
    data_start: int
    select: bool = False  # INSERT ... SELECT ... FROM input(...) FORMAT name: data for input()


class _More(enum.Enum):
    NEED_MORE = "need more"


NEED_MORE = _More.NEED_MORE


def _skip_space(buf: bytes, pos: int) -> int:
    """Skip whitespace and comments; -1 inside an unterminated block comment."""
    n = len(buf)
    while pos < n:
        c = buf[pos]
        if c in _SPACE:
            pos += 1
        elif buf.startswith(b"--", pos) or c == ord("#"):
            end = buf.find(b"\n", pos)
            if end < 0:
                return n
            pos = end + 1
        elif buf.startswith(b"/*", pos):
            end = buf.find(b"*/", pos + 2)
            if end < 0:
                return -1
            pos = end + 2
        else:
            break
    return pos


def _quoted_end(buf: bytes, pos: int) -> int:
    """The position after the quoted string or identifier at ``pos``; -1 if unterminated."""
    quote = buf[pos]
    pos += 1
    n = len(buf)
    while pos < n:
        c = buf[pos]
        if c == ord("\\"):
            pos += 2
        elif c == quote:
            if pos + 1 < n and buf[pos + 1] == quote:  # a doubled quote
                pos += 2
            else:
                return pos + 1
        else:
            pos += 1
    return -1


def split_insert(buf: bytes, complete: bool) -> InsertSplit | _More | None:
    """Find where an INSERT's data starts, as the server's parser does.

    Returns an InsertSplit for ``INSERT ... FORMAT name`` (data after the newline that follows
    the name), ``INSERT ... VALUES`` (data after the keyword) or ``INSERT ... SELECT ... FORMAT
    name`` (data for the ``input()`` table function, ``select`` set), None if the text is not an
    INSERT carrying data (the whole text is then the query), or NEED_MORE if ``buf`` ends before
    that can be told and more of the body may follow (``complete`` is False).
    """
    more = None if complete else NEED_MORE
    n = len(buf)
    pos = 0
    depth = 0
    first = True
    select = False  # past the SELECT of an INSERT ... SELECT
    name_next = False  # the next word names a table or function, so it is no keyword
    while True:
        pos = _skip_space(buf, pos)
        if pos < 0 or pos >= n:
            return None if select and complete else more
        c = buf[pos]
        if c in _WORD_CHARS:
            end = pos
            while end < n and buf[end] in _WORD_CHARS:
                end += 1
            if end == n and not complete:
                return NEED_MORE
            word = buf[pos:end].upper()
            if first:
                if word != b"INSERT":
                    return None
                first = False
            elif depth == 0 and not name_next:
                if word == b"INFILE":
                    return None  # FROM INFILE: no data in the body
                if word in (b"SELECT", b"WITH"):
                    select = True  # data follows only if a FORMAT clause ends the statement
                elif word == b"VALUES" and not select:
                    return InsertSplit(pos, "Values", end)
                elif word == b"FORMAT":
                    split = _split_after_format(buf, pos, end, complete)
                    if isinstance(split, InsertSplit):
                        split.select = select
                    return split
            name_next = word in (b"INTO", b"TABLE", b"FUNCTION")
            pos = end
            continue
        if first:
            return None
        if c in b"'\"`":
            end = _quoted_end(buf, pos)
            if end < 0:
                return more
            pos = end
        else:
            depth += (c == ord("(")) - (c == ord(")"))
            pos += 1
        name_next = c == ord(".")


def _split_after_format(
    buf: bytes, kw_start: int, pos: int, complete: bool
) -> InsertSplit | _More | None:
    n = len(buf)
    while pos < n and buf[pos] in _SPACE:
        pos += 1
    start = pos
    while pos < n and buf[pos] in _WORD_CHARS:
        pos += 1
    if pos == n and not complete:
        return NEED_MORE
    if pos == start:
        return None  # no format name: let the engine report it
    fmt = buf[start:pos].decode("ascii")
    # Data starts after the newline if there is one, else after the whitespace.
    while pos < n and buf[pos] in b" \t\r\f\v":
        pos += 1
    if pos == n and not complete:
        return NEED_MORE
    if pos < n and buf[pos] == ord("\n"):
        pos += 1
    return InsertSplit(kw_start, fmt, pos)


def first_word(sql: bytes) -> bytes:
    pos = max(_skip_space(sql, 0), 0)
    end = pos
    while end < len(sql) and sql[end] in _WORD_CHARS:
        end += 1
    return sql[pos : max(end, pos + 1)].upper()


# --- HTTP ----------------------------------------------------------------------------------


def content_type(fmt: str) -> str:
    f = fmt.lower()
    if f.startswith(("tabseparated", "tsv")):
        return "text/tab-separated-values; charset=UTF-8"
    if f.startswith("csv"):
        return "text/csv; charset=UTF-8; header=absent"
    if f.startswith("json"):
        return "application/json; charset=UTF-8"
    if f in ("native", "rowbinary", "parquet", "arrow", "arrowstream", "orc", "avro"):
        return "application/octet-stream"
    return "text/plain; charset=UTF-8"


@dataclass
class Request:
    """A query request as the HTTP interface defines it."""

    query: str
    fmt: str
    query_id: str
    ctx: QueryContext


def build_request(
    params: dict[str, str], headers: Message, method: str, max_result_bytes: int = 0
) -> Request:
    for name in ("compress", "decompress"):
        if params.get(name, "0") not in ("", "0"):
            raise ClickHouseError.of(
                NOT_IMPLEMENTED, f"{name}=1 (ClickHouse's own block compression) is not supported"
            )
    database = params.get("database") or headers.get("X-ClickHouse-Database") or "default"
    ctx = QueryContext(database=database)
    if max_result_bytes > 0:  # the engine stops early; a request may lower it
        ctx.settings.append(("max_result_bytes", str(max_result_bytes)))
    for name, value in params.items():
        if name.startswith("param_"):
            ctx.params[name[len("param_") :]] = value
        elif name not in HTTP_PARAMS and not name.startswith("http_"):
            try:
                sql_guard.check_setting(name)
            except sql_guard.RefusedError as e:
                raise ClickHouseError.of(ACCESS_DENIED, str(e)) from None
            ctx.settings.append((name, value))
    readonly = params.get("readonly", "0") or "0"
    if not readonly.isdigit():
        raise ClickHouseError.of(BAD_ARGUMENTS, f"invalid readonly value {readonly!r}")
    ctx.readonly = int(readonly)
    if method == "GET" and ctx.readonly == 0:
        ctx.readonly = 2  # as a real server: GET requests are read-only
    fmt = headers.get("X-ClickHouse-Format") or params.get("default_format") or "TabSeparated"
    query_id = params.get("query_id") or str(uuid.uuid4())
    return Request(params.get("query", ""), fmt, query_id, ctx)


@dataclass(frozen=True)
class Guard:
    """Who may use the front, and how much a request may carry."""

    user: str
    password: str
    loopback_only: bool = True
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_query_bytes: int = DEFAULT_MAX_QUERY_BYTES
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    host = host.strip().strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_of(header: str) -> str:
    header = header.strip()
    if header.startswith("["):  # [::1]:8123
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def credentials(headers: Message, params: dict[str, str]) -> tuple[str, str] | None:
    """The user and password a request sends, the ways a ClickHouse server accepts them."""
    auth = headers.get("Authorization", "")
    if auth[:6].lower() == "basic ":
        try:
            user, _, password = base64.b64decode(auth[6:].strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user, password
    if "X-ClickHouse-User" in headers or "X-ClickHouse-Key" in headers:
        return headers.get("X-ClickHouse-User", "default"), headers.get("X-ClickHouse-Key", "")
    if "user" in params or "password" in params:
        return params.get("user", "default"), params.get("password", "")
    return None


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        engine: Engine,
        display_name: str,
        quiet: bool,
        guard: Guard,
    ) -> None:
        super().__init__(address, Handler)
        self.engine = engine
        self.display_name = display_name
        self.quiet = quiet
        self.guard = guard


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"  # keep-alive, which clickhouse-connect's pool expects
    timeout = 120  # bounds an idle keep-alive connection and a stalled upload
    server_version = "chdb-http"
    _what = ""

    def version_string(self) -> str:
        return self.server_version

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # one line per request is written by _handle

    def log_error(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"clickhouse_http: {format % args}\n")

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        started = time.monotonic()
        url = urlsplit(self.path)
        try:
            body = Body(self.rfile, self.headers)
        except ClickHouseError as e:
            self.close_connection = True  # where this request's body ends is unknown
            self._reply(400, e.text.encode() + b"\n", {"X-ClickHouse-Exception-Code": str(e.code)})
            return
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        refusal = self._refusal(params, url.path)
        if refusal is not None:
            status, error = refusal
            self.close_connection = True  # the body of a refused request is not read
            headers = {
                "Content-Type": "text/plain; charset=UTF-8",
                "X-ClickHouse-Exception-Code": str(error.code),
            }
            self._reply(status, error.text.encode() + b"\n", headers)
            self._log(started, status, error.code, 0, 0)
            return
        if url.path == "/ping" or (
            self.command == "GET" and url.path in ("", "/") and "query" not in params
        ):
            self._reply_plain(200, b"Ok.\n", body)
            return
        if url.path not in ("", "/"):
            self._reply_plain(404, b"There is no handle " + url.path.encode() + b"\n", body)
            return

        query_id = ""
        self._what = _snippet(params.get("query", "").encode())  # for the log line
        try:
            guard = self.server.guard
            ctype = self.headers.get("Content-Type", "")
            if ctype.lower().startswith("multipart/form-data"):
                form = b"".join(bounded(body.chunks(), guard.max_query_bytes, "the form"))
                params.update(parse_form(ctype, form))
            request = build_request(params, self.headers, self.command, guard.max_result_bytes)
            query_id = request.query_id
            encoding = self.headers.get("Content-Encoding", "")
            raw = bounded(body.chunks(), guard.max_body_bytes, "the request body")
            data = bounded(decode_body(raw, encoding), guard.max_body_bytes, "the decoded body")
            kind, outcome = self._execute(request, data)
        except ClickHouseError as e:
            self._reply_error(e, body, query_id)
            self._log(started, 500, e.code, 0, 0)
            return
        except OSError:
            self.close_connection = True  # the client went away; nobody to answer
            return
        except Exception as e:  # a bug here must still answer, not leave the client hanging
            traceback.print_exc()
            self._reply_error(ClickHouseError.of(STD_EXCEPTION, repr(e)), body, query_id)
            return

        headers = {
            "X-ClickHouse-Query-Id": request.query_id,
            "X-ClickHouse-Summary": outcome.summary(),
        }
        if kind is not None:
            headers["X-ClickHouse-Format"] = kind
            headers["Content-Type"] = content_type(kind)
        else:
            headers["Content-Type"] = "text/plain; charset=UTF-8"
        self._reply(200, outcome.body, headers)
        rows = outcome.written_rows if kind is None else outcome.result_rows
        size = outcome.written_bytes if kind is None else len(outcome.body)
        self._log(started, 200, 0, rows, size)

    def _refusal(self, params: dict[str, str], path: str) -> tuple[int, ClickHouseError] | None:
        """Why this request is refused before anything else is done, if it is."""
        guard = self.server.guard
        browser = any(h.lower().startswith("sec-fetch-") for h in self.headers)
        if browser or "Origin" in self.headers:
            return 403, ClickHouseError.of(
                ACCESS_DENIED, "requests from web browsers are refused by the dev stack"
            )
        if guard.loopback_only and not is_loopback(_host_of(self.headers.get("Host", ""))):
            return 403, ClickHouseError.of(
                ACCESS_DENIED, "the Host header must name a loopback address"
            )
        if path == "/ping":
            return None
        sent = credentials(self.headers, params)
        if sent is None or not (
            hmac.compare_digest(sent[0].encode(), guard.user.encode())
            & hmac.compare_digest(sent[1].encode(), guard.password.encode())
        ):
            return 403, ClickHouseError.of(
                AUTHENTICATION_FAILED,
                f"{sent[0] if sent else 'default'}: Authentication failed: password is "
                "incorrect, or there is no user with such name",
            )
        return None

    def _execute(self, request: Request, chunks: Iterator[bytes]) -> tuple[str | None, Outcome]:
        """Run the request; the result's format (None if it has no result) and the outcome."""
        buf = bytearray(request.query.encode() + b"\n" if request.query else b"")
        complete = False
        while True:
            split = split_insert(bytes(buf), complete)
            if split is not NEED_MORE:
                break
            if len(buf) > MAX_INSERT_HEAD:
                split = None  # no INSERT head ends this early: the text is all query
                break
            chunk = next(chunks, None)
            if chunk is None:
                complete = True
            else:
                buf += chunk
        engine = self.server.engine
        if isinstance(split, InsertSplit):
            head = bytes(buf[: split.head_end])
            rest = bytes(buf[split.data_start :])

            def data() -> Iterator[bytes]:
                yield rest
                yield from chunks

            self._what = _snippet(head)
            tokens = _guard(head)
            request.ctx.settings.extend(INSERT_SETTINGS)
            if split.select:
                return None, engine.insert_select(head, tokens, split.fmt, data(), request.ctx)
            return None, engine.insert(head, split.fmt, data(), request.ctx)
        limit = self.server.guard.max_query_bytes
        for chunk in itertools.chain([b""], chunks):
            buf += chunk
            if len(buf) > limit:
                raise ClickHouseError.of(
                    TOO_MANY_BYTES,
                    f"the query is larger than the dev stack's limit of {limit} bytes",
                )
        sql = bytes(buf)
        self._what = _snippet(sql)
        if not sql.strip():
            raise ClickHouseError.of(SYNTAX_ERROR, "Empty query")
        _guard(sql)
        outcome = engine.query(sql, request.fmt, request.ctx)
        limit = self.server.guard.max_result_bytes
        if limit > 0 and len(outcome.body) > limit:
            raise ClickHouseError.of(
                TOO_MANY_ROWS_OR_BYTES,
                f"the result ({len(outcome.body)} bytes) is larger than the dev stack's limit "
                f"of {limit} bytes",
            )
        kind = None
        if first_word(sql) in RESULT_STATEMENTS:
            named = _TRAILING_FORMAT.search(sql)
            kind = named.group(1).decode() if named else request.fmt
        return kind, outcome

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("X-ClickHouse-Server-Display-Name", self.server.display_name)
        self.send_header("X-ClickHouse-Timezone", self.server.engine.timezone)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _reply_plain(self, status: int, text: bytes, body: Body) -> None:
        if not body.drain():
            self.close_connection = True
        self._reply(status, text, {"Content-Type": "text/plain; charset=UTF-8"})

    def _reply_error(self, error: ClickHouseError, body: Body, query_id: str) -> None:
        # Read the rest of the body first, so the client is not cut off while still sending and
        # the connection stays usable; if that is not possible, close it after the answer. A
        # body over the limit is not read further.
        if error.code == TOO_MANY_BYTES[0] or not body.drain():
            self.close_connection = True
        text = error.text
        if not _VERSION_TRAILER.search(text):  # the engine's own text may carry one
            text += f" (version {self.server.engine.version} (chdb))"
        text += "\n"
        headers = {
            "Content-Type": "text/plain; charset=UTF-8",
            "X-ClickHouse-Exception-Code": str(error.code),
        }
        if query_id:
            headers["X-ClickHouse-Query-Id"] = query_id
        with contextlib.suppress(OSError):
            self._reply(500, text.encode(), headers)

    def _log(self, started: float, status: int, code: int, rows: int, size: int) -> None:
        if self.server.quiet:
            return
        ms = (time.monotonic() - started) * 1000
        line = f"{self.command} {status} code={code} rows={rows} bytes={size} {ms:.1f}ms"
        sys.stderr.write(f"{line} {self._what}\n")


def _guard(sql: bytes) -> list[sql_guard.Token]:
    try:
        return sql_guard.check(sql.decode("utf-8", "replace"))
    except sql_guard.RefusedError as e:
        raise ClickHouseError.of(ACCESS_DENIED, f"refused by the dev stack: {e}") from None


def _snippet(sql: bytes) -> str:
    return " ".join(sql[:120].decode("utf-8", "replace").split())[:80]


# --- the process ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.clickhouse_http",
        description="A ClickHouse HTTP-interface server over chdb (dev stack only).",
    )
    parser.add_argument("--data-dir", required=True, help="the shard's chdb data directory")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address (the default)")
    parser.add_argument(
        "--allow-non-loopback",
        action="store_true",
        help="listen on a --host that is not loopback (other machines can then reach it)",
    )
    parser.add_argument("--user", default="default", help="the one user name accepted")
    parser.add_argument("--timezone", default="UTC", help="the engine's server timezone")
    parser.add_argument("--quiet", action="store_true", help="no line per request")
    for name, default in (
        ("--max-body-bytes", DEFAULT_MAX_BODY_BYTES),
        ("--max-query-bytes", DEFAULT_MAX_QUERY_BYTES),
        ("--max-result-bytes", DEFAULT_MAX_RESULT_BYTES),
    ):
        parser.add_argument(name, type=int, default=default, metavar="N")
    args = parser.parse_args(argv)

    password = os.environ.get(PASSWORD_ENV, "")
    if not password:
        parser.error(f"set {PASSWORD_ENV} (the dev stack sets a random password per stack)")
    if not is_loopback(args.host) and not args.allow_non_loopback:
        parser.error(
            f"--host {args.host} is not a loopback address; "
            "pass --allow-non-loopback to listen there anyway"
        )
    if min(args.max_body_bytes, args.max_query_bytes, args.max_result_bytes) < 1:
        parser.error("the --max-*-bytes limits must be at least 1")
    guard = Guard(
        user=args.user,
        password=password,
        loopback_only=not args.allow_non_loopback,
        max_body_bytes=args.max_body_bytes,
        max_query_bytes=args.max_query_bytes,
        max_result_bytes=args.max_result_bytes,
    )

    # The engine takes its server timezone from TZ when it starts; the project runs on UTC.
    os.environ["TZ"] = args.timezone
    time.tzset()
    try:
        engine = Engine(args.data_dir)
    except RuntimeError as e:  # e.g. another process has the directory
        sys.stderr.write(f"clickhouse_http: cannot open {args.data_dir} with chdb: {e}\n")
        return 1
    try:
        server = Server((args.host, args.port), engine, socket.gethostname(), args.quiet, guard)
    except OSError as e:
        engine.close()
        sys.stderr.write(f"clickhouse_http: cannot listen on {args.host}:{args.port}: {e}\n")
        return 1

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Installed after the engine started, so these handlers are the ones in force.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2})
    serving.start()
    host, port = server.server_address[:2]
    sys.stderr.write(
        f"clickhouse_http: ClickHouse {engine.version} (chdb) on http://{host!s}:{port} "
        f"data={os.path.abspath(args.data_dir)} pid={os.getpid()}\n"
    )
    sys.stderr.flush()
    while not stop.wait(1.0):
        pass
    server.shutdown()  # stop accepting; requests in flight finish in their threads
    serving.join()
    server.server_close()
    engine.close()  # waits for the request in the engine, then closes the session
    sys.stderr.write("clickhouse_http: stopped\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
