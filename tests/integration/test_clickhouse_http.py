"""The dev stack's ClickHouse HTTP front over chdb, driven by a real clickhouse-connect client.

The server runs as a subprocess (as the dev stack runs it) with a temporary data directory.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
import zstandard
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
DB = "it_http"
N = 200_000
COLUMNS = ["id", "lc", "ns", "nf", "f", "u", "updated_at", "deleted_at"]
TABLE_DDL = """
    CREATE TABLE {name} (
        id String,
        lc LowCardinality(String),
        ns Nullable(String),
        nf Nullable(Float64),
        f Float64,
        u UInt8,
        updated_at DateTime64(6, 'UTC'),
        deleted_at Nullable(DateTime64(6, 'UTC'))
    ) ENGINE = ReplacingMergeTree(updated_at) ORDER BY id
"""
UTC = dt.UTC
BASE = dt.datetime(2024, 2, 29, 23, 59, 58, 999_999, tzinfo=UTC)
WORDS = ["plain", "ünïcödé 日本語 🚀", "it's", "back\\slash", 'dq"uote', "tab\there", "", "nl\nx"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``python -m devstack.clickhouse_http`` on a free port, with a password."""

    def __init__(self, data_dir: Path, log: Path, *extra_args: str) -> None:
        self.data_dir = data_dir
        self.log = log
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.password = secrets.token_urlsafe(16)
        self.extra_args = list(extra_args)

    @property
    def auth(self) -> dict[str, str]:
        token = base64.b64encode(f"default:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def start(self) -> None:
        self.port = _free_port()
        argv = [sys.executable, "-m", "devstack.clickhouse_http"]
        argv += ["--data-dir", str(self.data_dir), "--port", str(self.port), *self.extra_args]
        env = {**os.environ, "CLICKHOUSE_HTTP_PASSWORD": self.password}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if self.get("/ping") == b"Ok.\n":
                    return
            except OSError:
                time.sleep(0.1)
        pytest.fail(f"server did not answer /ping:\n{self.log.read_text()}")

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        code = self.proc.wait(timeout=60)
        self.proc = None
        return code

    def client(self, **kwargs: Any) -> Client:
        kwargs.setdefault("username", "default")
        kwargs.setdefault("password", self.password)
        return clickhouse_connect.get_client(host=HOST, port=self.port, **kwargs)

    def url(self, path: str = "/", **params: str) -> str:
        query = urllib.parse.urlencode(params)
        return f"http://{HOST}:{self.port}{path}" + (f"?{query}" if query else "")

    def get(self, path: str = "/", **params: str) -> bytes:
        request = urllib.request.Request(self.url(path, **params), headers=self.auth)  # noqa: S310
        with urllib.request.urlopen(request, timeout=30) as r:  # noqa: S310
            return bytes(r.read())

    def post(
        self, body: bytes | Iterator[bytes], headers: dict[str, str] | None = None, **params: str
    ) -> tuple[bytes, dict[str, str]]:
        request = urllib.request.Request(  # noqa: S310
            self.url("/", **params), data=body, headers=self.auth | (headers or {}), method="POST"
        )
        with urllib.request.urlopen(request, timeout=60) as r:  # noqa: S310
            return bytes(r.read()), dict(r.headers)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("clickhouse_http")
    srv = ServerProcess(root / "data", root / "server.log")
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.log.read_text()
    assert "clickhouse_http: stopped" in srv.log.read_text()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[Client]:
    with server.client() as admin:
        admin.command(f"CREATE DATABASE IF NOT EXISTS {DB}")
    c = server.client(database=DB)
    yield c
    c.close()


@pytest.fixture(scope="module")
def rows() -> list[tuple[Any, ...]]:
    out = []
    for i in range(N):
        out.append(
            (
                f"id-{i:07d}",
                WORDS[i % 3],
                None if i % 7 == 0 else f"{WORDS[i % len(WORDS)]} #{i}",
                None if i % 5 == 0 else i * 0.25 - 1e6,
                i / 3,
                i % 256,
                BASE + dt.timedelta(microseconds=i * 1_234_567),
                None if i % 3 == 0 else BASE - dt.timedelta(microseconds=i),
            )
        )
    return out


def _as_utc(row: Sequence[Any]) -> tuple[Any, ...]:
    # clickhouse-connect returns naive datetimes for UTC columns of a UTC server.
    return tuple(
        v.replace(tzinfo=UTC) if isinstance(v, dt.datetime) and v.tzinfo is None else v for v in row
    )


def _roundtrip(c: Client, table: str, rows: list[tuple[Any, ...]]) -> None:
    c.command(TABLE_DDL.format(name=table))
    # The client splits this insert into several Native blocks (and, compressed, several LZ4
    # frames): a front that decodes only the first frame or block loses rows.
    context = c.create_insert_context(table, column_names=COLUMNS, data=rows)
    assert context.block_row_count < N
    started = time.monotonic()
    summary = c.insert(table, rows, column_names=COLUMNS)
    print(f"insert of {N} rows into {table}: {time.monotonic() - started:.2f}s")
    assert summary.written_rows == N
    assert c.command(f"SELECT count() FROM {table}") == N
    got = c.query(f"SELECT {', '.join(COLUMNS)} FROM {table} ORDER BY id").result_rows
    assert len(got) == N
    mismatched = [
        (want, have) for want, have in zip(rows, got, strict=True) if _as_utc(have) != want
    ]
    assert mismatched == []


def test_insert_and_read_back_lz4(
    server: ServerProcess, client: Client, rows: list[tuple[Any, ...]]
) -> None:
    assert client.write_compression == "lz4"
    _roundtrip(client, "t_lz4", rows)


def test_insert_and_read_back_uncompressed(
    server: ServerProcess, client: Client, rows: list[tuple[Any, ...]]
) -> None:
    with server.client(database=DB, compress=False) as plain:
        assert plain.write_compression is None
        _roundtrip(plain, "t_plain", rows)


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_other_insert_compressions(
    server: ServerProcess, rows: list[tuple[Any, ...]], compression: str
) -> None:
    some = rows[:30_000]
    with server.client(database=DB, compress=compression) as c:
        assert c.write_compression == compression
        table = f"t_{compression}"
        c.command(TABLE_DDL.format(name=table))
        assert c.insert(table, some, column_names=COLUMNS).written_rows == len(some)
        got = c.query(f"SELECT {', '.join(COLUMNS)} FROM {table} ORDER BY id").result_rows
        assert [_as_utc(r) for r in got] == some


def test_engine_errors_carry_their_code(client: Client) -> None:
    with pytest.raises(DatabaseError) as syntax:
        client.query("SELEC 1")
    assert syntax.value.code == 62
    assert "Code: 62. DB::Exception" in str(syntax.value)
    assert "SYNTAX_ERROR" in str(syntax.value)
    with pytest.raises(DatabaseError) as unknown:
        client.command("SELECT * FROM no_such_table")
    assert unknown.value.code == 60
    assert "UNKNOWN_TABLE" in str(unknown.value)
    with pytest.raises(DatabaseError) as setting:
        client.query("SELECT 1", settings={"no_such_setting_at_all": 1})
    assert "no_such_setting_at_all" in str(setting.value)
    # The engine rejects a row early in a large body: the rest of the body is read and dropped,
    # so the client gets the engine's error (not a reset connection) and the connection lives on.
    client.command("CREATE TABLE t_err (a UInt64, s String) ENGINE = MergeTree ORDER BY a")
    bad = b"oops\tx\n" + b"".join(b"%d\tvalue\n" % i for i in range(500_000))
    with pytest.raises(DatabaseError) as parse:
        client.raw_insert("t_err", insert_block=bad, fmt="TabSeparated")
    assert parse.value.code == 27
    assert client.command("SELECT count() FROM t_err") == 0
    assert client.command("SELECT 1") == 1


def test_server_side_parameters(client: Client) -> None:
    assert client.query("SELECT {x:String}", parameters={"x": "it's"}).result_rows == [("it's",)]
    tricky = "tab\t nl\n quote' bs\\ 日本"
    got = client.query("SELECT {x:String}, {n:UInt32}", parameters={"x": tricky, "n": 7})
    assert got.result_rows == [(tricky, 7)]
    # Over 4 KiB of parameters: clickhouse-connect sends the query as multipart/form-data.
    ids = [f"id-{i:07d}" for i in range(2_000)]
    got = client.query("SELECT length({ids:Array(String)})", parameters={"ids": ids})
    assert got.result_rows == [(2_000,)]


def test_settings_apply_to_one_request_only(server: ServerProcess, client: Client) -> None:
    assert (
        client.command(
            "SELECT getSetting('max_execution_time')", settings={"max_execution_time": 17}
        )
        == 17
    )
    assert client.command("SELECT getSetting('max_execution_time')") == 0

    limited = {"max_result_rows": 10, "result_overflow_mode": "break", "max_block_size": 10}
    sql = "SELECT number FROM numbers(1000)"
    assert len(client.query(sql, settings=limited).result_rows) < 1000
    assert len(client.query(sql).result_rows) == 1000

    client.command("CREATE TABLE t_ro (a UInt8) ENGINE = MergeTree ORDER BY a")
    with pytest.raises(DatabaseError) as ro:
        client.command("INSERT INTO t_ro VALUES (1)", settings={"readonly": 1})
    assert ro.value.code == 164
    assert client.command("SELECT count() FROM t_ro", settings={"readonly": 1}) == 0
    client.command("INSERT INTO t_ro VALUES (2)")
    assert client.command("SELECT count() FROM t_ro") == 1

    client.command("CREATE TABLE t_dt (t DateTime64(6, 'UTC')) ENGINE = MergeTree ORDER BY t")
    iso = b"2024-01-02T03:04:05.123456Z\n"
    basic = {"date_time_input_format": "basic"}  # clickhouse-connect itself sends best_effort
    with pytest.raises(DatabaseError) as parse:
        client.raw_insert("t_dt", insert_block=iso, fmt="TabSeparated", settings=basic)
    assert parse.value.code == 27
    client.raw_insert("t_dt", insert_block=iso, fmt="TabSeparated")
    assert client.query("SELECT t FROM t_dt").result_rows == [
        (dt.datetime(2024, 1, 2, 3, 4, 5, 123456),)
    ]

    # The database of one request is not the next request's.
    with server.client() as default_db:
        assert client.command("SELECT currentDatabase()") == DB
        assert default_db.command("SELECT currentDatabase()") == "default"
        assert client.command("SELECT currentDatabase()") == DB


def test_lightweight_delete_and_final(client: Client) -> None:
    client.command(TABLE_DDL.format(name="t_final"))
    v1 = ("a", "x", "first", 1.0, 1.0, 1, BASE, None)
    v2 = ("a", "x", "second", 2.0, 2.0, 2, BASE + dt.timedelta(microseconds=1), None)
    other = ("b", "x", "b", 3.0, 3.0, 3, BASE, None)
    client.insert("t_final", [v1, other], column_names=COLUMNS)
    client.insert("t_final", [v2], column_names=COLUMNS)
    final = "SELECT id, ns FROM t_final FINAL ORDER BY id"
    assert client.query(final).result_rows == [("a", "second"), ("b", "b")]
    by_setting = client.query("SELECT id, ns FROM t_final ORDER BY id", settings={"final": 1})
    assert by_setting.result_rows == [("a", "second"), ("b", "b")]

    client.command("DELETE FROM t_final WHERE id = 'b'", settings={"lightweight_deletes_sync": 2})
    assert client.query(final).result_rows == [("a", "second")]
    client.command("ALTER TABLE t_final DELETE WHERE id = 'a'", settings={"mutations_sync": 2})
    assert client.command("SELECT count() FROM t_final") == 0


def test_insert_deduplication_token(client: Client) -> None:
    # Non-replicated MergeTree deduplicates only with a deduplication window.
    client.command(
        "CREATE TABLE t_dedup (k UInt32, v String) ENGINE = MergeTree ORDER BY k "
        "SETTINGS non_replicated_deduplication_window = 100"
    )
    client.command("CREATE TABLE t_nodedup (k UInt32, v String) ENGINE = MergeTree ORDER BY k")
    for table in ("t_dedup", "t_nodedup"):
        token = {"insert_deduplication_token": f"{table}-batch-1"}
        client.insert(table, [(1, "one")], column_names=["k", "v"], settings=token)
        client.insert(table, [(2, "two")], column_names=["k", "v"], settings=token)
    assert client.query("SELECT k, v FROM t_dedup ORDER BY k").result_rows == [(1, "one")]
    assert client.command("SELECT count() FROM t_nodedup") == 2

    # Without a token the window deduplicates identical blocks. Since 26.x `deduplicate_insert`
    # (default 'enable') supersedes insert_deduplicate, which alone no longer turns it off.
    three = [(3, "three")]
    client.insert("t_dedup", three, column_names=["k", "v"])
    client.insert("t_dedup", three, column_names=["k", "v"])
    assert client.command("SELECT count() FROM t_dedup WHERE k = 3") == 1
    client.insert("t_dedup", three, column_names=["k", "v"], settings={"insert_deduplicate": 0})
    assert client.command("SELECT count() FROM t_dedup WHERE k = 3") == 1
    off = {"deduplicate_insert": "backward_compatible_choice", "insert_deduplicate": 0}
    client.insert("t_dedup", three, column_names=["k", "v"], settings=off)
    assert client.command("SELECT count() FROM t_dedup WHERE k = 3") == 2
    client.insert(
        "t_dedup", three, column_names=["k", "v"], settings={"deduplicate_insert": "disable"}
    )
    assert client.command("SELECT count() FROM t_dedup WHERE k = 3") == 3
    client.insert("t_dedup", three, column_names=["k", "v"])  # the defaults are back
    assert client.command("SELECT count() FROM t_dedup WHERE k = 3") == 3


def test_curl_style_requests(server: ServerProcess, client: Client) -> None:
    client.command("CREATE TABLE t_curl (a UInt32, s String) ENGINE = MergeTree ORDER BY a")
    assert server.get("/ping") == b"Ok.\n"
    assert server.get("/") == b"Ok.\n"

    body, headers = server.post(f"INSERT INTO {DB}.t_curl FORMAT TabSeparated\n1\tx\n".encode())
    assert body == b""
    assert json.loads(headers["X-ClickHouse-Summary"])["written_rows"] == "1"
    server.post(b"2\ty\n", query="INSERT INTO t_curl FORMAT TabSeparated", database=DB)
    server.post(b"(3, 'z')", query="INSERT INTO t_curl VALUES", database=DB)

    # Chunked transfer encoding (an iterable body) with gzip, and a zstd body.
    data = gzip.compress(b"".join(f"{i}\tg\n".encode() for i in range(10, 1010)))
    chunks = iter([data[:100], data[100:]])
    server.post(
        chunks, {"Content-Encoding": "gzip"}, query="INSERT INTO t_curl FORMAT TSV", database=DB
    )
    frames = b"".join(zstandard.ZstdCompressor().compress(f"{i}\tz\n".encode()) for i in (5, 6))
    server.post(
        frames, {"Content-Encoding": "zstd"}, query="INSERT INTO t_curl FORMAT TSV", database=DB
    )

    body, headers = server.post(
        b"SELECT count(), sum(a) FROM t_curl", {"X-ClickHouse-Database": DB}
    )
    assert body == f"{1005}\t{6 + 11 + sum(range(10, 1010))}\n".encode()
    assert headers["X-ClickHouse-Format"] == "TabSeparated"
    assert headers["X-ClickHouse-Timezone"] == "UTC"
    assert headers["X-ClickHouse-Query-Id"]
    assert server.get(query="SELECT s FROM t_curl WHERE a = 3", database=DB) == b"z\n"
    got = server.get(
        query="SELECT a, s FROM t_curl WHERE a < 3 ORDER BY a FORMAT JSONEachRow", database=DB
    )
    assert got == b'{"a":1,"s":"x"}\n{"a":2,"s":"y"}\n'

    with pytest.raises(urllib.error.HTTPError) as error:
        server.post(b"SELECT * FROM missing_table", database=DB)
    assert error.value.code == 500
    assert error.value.headers["X-ClickHouse-Exception-Code"] == "60"
    message = error.value.read().decode()
    error.value.close()
    assert message.startswith("Code: 60. DB::Exception: ")
    assert "(UNKNOWN_TABLE)" in message

    with pytest.raises(urllib.error.HTTPError) as error:  # GET is read-only, as on a server
        server.get(query="INSERT INTO t_curl VALUES (99, 'no')", database=DB)
    assert error.value.headers["X-ClickHouse-Exception-Code"] == "164"
    error.value.close()


def test_concurrent_clients(server: ServerProcess, client: Client) -> None:
    client.command("CREATE TABLE t_conc (w UInt8, i UInt32) ENGINE = MergeTree ORDER BY (w, i)")

    def work(worker: int) -> int:
        with server.client(database=DB) as c:
            for i in range(10):
                c.insert("t_conc", [(worker, i)], column_names=["w", "i"])
                c.query("SELECT count() FROM t_conc", settings={"max_threads": 1})
            count = c.command(f"SELECT count() FROM t_conc WHERE w = {worker}")
            assert isinstance(count, int)
            return count

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(work, range(4))) == [10, 10, 10, 10]


def test_data_survives_restart(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "data", tmp_path / "server.log")
    srv.start()
    try:
        with srv.client() as c:
            c.command(TABLE_DDL.format(name="default.t_keep"))
            rows = [(f"k{i}", "x", None, None, float(i), 1, BASE, None) for i in range(1000)]
            c.insert("t_keep", rows, column_names=COLUMNS)
            c.command("DELETE FROM t_keep WHERE f >= 900")
    finally:
        assert srv.stop() == 0, srv.log.read_text()
    srv.start()
    try:
        with srv.client() as c:
            assert c.query("SELECT count(), sum(f) FROM t_keep").result_rows == [
                (900, float(sum(range(900))))
            ]
    finally:
        assert srv.stop() == 0, srv.log.read_text()


# --- what the front refuses (the dev stack runs on developers' machines) ----------------------


def _refused(call: Any) -> tuple[int, str]:
    """The HTTP status and body of a request that must fail."""
    with pytest.raises(urllib.error.HTTPError) as error:
        call()
    text = error.value.read().decode()
    error.value.close()
    return error.value.code, text


def test_every_request_needs_the_password(server: ServerProcess) -> None:
    # clickhouse-connect's own ways: basic auth, and X-ClickHouse-User/Key headers.
    with server.client() as c:
        assert c.command("SELECT 1") == 1
    for wrong in ("", "not-the-password"):
        with pytest.raises(DatabaseError) as refused:
            server.client(password=wrong)
        assert refused.value.code == 516
    headers = {"X-ClickHouse-User": "default", "X-ClickHouse-Key": server.password}
    request = urllib.request.Request(server.url("/", query="SELECT 2"), headers=headers)  # noqa: S310
    with urllib.request.urlopen(request, timeout=30) as r:  # noqa: S310
        assert r.read() == b"2\n"
    # curl's ways: URL parameters, user:password in the URL (basic auth).
    url = server.url("/", query="SELECT 3", user="default", password=server.password)
    with urllib.request.urlopen(url, timeout=30) as r:  # noqa: S310
        assert r.read() == b"3\n"

    status, text = _refused(lambda: urllib.request.urlopen(server.url("/", query="SELECT 1")))  # noqa: S310
    assert status == 403
    assert "Code: 516" in text
    bad = server.url("/", query="SELECT 1", user="default", password="guess")  # noqa: S106
    assert _refused(lambda: urllib.request.urlopen(bad))[0] == 403  # noqa: S310
    other = server.url("/", query="SELECT 1", user="admin", password=server.password)
    assert _refused(lambda: urllib.request.urlopen(other))[0] == 403  # noqa: S310
    # /ping needs none, as on a server (the stack waits on it), and tells nothing.
    with urllib.request.urlopen(server.url("/ping"), timeout=30) as r:  # noqa: S310
        assert r.read() == b"Ok.\n"


@pytest.mark.parametrize(
    "header",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"},
        {"Host": "evil.example:8123"},  # DNS rebinding: a browser on a name that resolves here
    ],
)
def test_browser_requests_are_refused(server: ServerProcess, header: dict[str, str]) -> None:
    # Even with the password: a web page must not be able to use the front.
    status, text = _refused(lambda: server.post(b"SELECT 1", header))
    assert status == 403
    assert "Code: 497" in text


GUARDED = [
    "SELECT * FROM file('{marker}', 'LineAsString')",
    "SELECT file('{marker}')",
    "INSERT INTO FUNCTION file('{target}', 'TSV', 'a String') VALUES ('owned')",
    "SELECT 1 INTO OUTFILE '{target}'",
    "INSERT INTO t_guard FROM INFILE '{marker}' FORMAT LineAsString",
    "SELECT * FROM url('http://127.0.0.1:1/x', CSV, 'a String')",
    "SELECT * FROM s3('http://127.0.0.1:1/b/k', CSV, 'a String')",
    "SELECT * FROM remote('127.0.0.1:1', system.one)",
    "SELECT * FROM remoteSecure('127.0.0.1:1', system.one)",
    "SELECT * FROM cluster('default', system.one)",
    "SELECT * FROM executable('cat {marker}', TSV, 'a String')",
    "SELECT * FROM mysql('127.0.0.1:1', 'd', 't', 'u', 'p')",
    "SELECT * FROM postgresql('127.0.0.1:5432', 'postgres', 'pg_class', 'postgres', '')",
    "SELECT * FROM jdbc('jdbc:x', 't')",
    "SELECT * FROM odbc('DSN=x', 't')",
    "SELECT * FROM hdfs('hdfs://127.0.0.1:1/x', CSV, 'a String')",
    "SYSTEM FLUSH LOGS",
    "CREATE DICTIONARY d_guard (k UInt64, v String) PRIMARY KEY k "
    "SOURCE(FILE(path '{marker}' format 'TSV')) LAYOUT(FLAT()) LIFETIME(0)",
    "CREATE TABLE t_url (a String) ENGINE = URL('http://127.0.0.1:1/', CSV)",
    "CREATE TABLE t_file (a String) ENGINE = File(TSV)",
    "CREATE DATABASE d_fs ENGINE = Filesystem('/')",
    "sElEcT * fRoM FiLe /* hidden */ ('{marker}', 'LineAsString')",
    "SELECT * FROM `\\x66ile`('{marker}', 'LineAsString')",
    "SELECT 1; SELECT * FROM file('{marker}', 'LineAsString')",
    "SELECT $$'$$, file('{marker}') --'",
]


@pytest.mark.parametrize("template", GUARDED)
def test_sql_reaching_outside_is_refused(
    server: ServerProcess, client: Client, template: str, tmp_path: Path
) -> None:
    marker = tmp_path / "secret.txt"
    marker.write_text("a secret the front must not show\n")
    target = tmp_path / "owned.txt"
    client.command("CREATE TABLE IF NOT EXISTS t_guard (a String) ENGINE = MergeTree ORDER BY a")
    sql = template.format(marker=marker, target=target)
    with pytest.raises(DatabaseError) as refused:
        client.query(sql)
    assert refused.value.code == 497, str(refused.value)
    assert "refused by the dev stack" in str(refused.value)
    assert "a secret" not in str(refused.value)
    assert not target.exists()
    assert client.command("SELECT count() FROM t_guard") == 0
    # The same through curl's ways: the query in the URL, or in the body.
    status, text = _refused(lambda: server.get(query=sql, database=DB))
    assert (status, text[:9]) == (500, "Code: 497")
    status, text = _refused(lambda: server.post(sql.encode(), database=DB))
    assert (status, text[:9]) == (500, "Code: 497")
    assert not target.exists()


def test_values_data_cannot_run_expressions(server: ServerProcess, client: Client) -> None:
    # INSERT ... VALUES data is not checked as SQL: the engine must not evaluate it.
    client.command("CREATE TABLE IF NOT EXISTS t_values (a String) ENGINE = Memory")
    status, text = _refused(
        lambda: server.post(
            b"(file('/etc/hostname'))", query="INSERT INTO t_values VALUES", database=DB
        )
    )
    assert (status, text[:9]) == (500, "Code: 344")  # SUPPORT_IS_DISABLED
    server.post(b"('literal')", query="INSERT INTO t_values VALUES", database=DB)
    assert client.query("SELECT a FROM t_values").result_rows == [("literal",)]
    # ... nor may a request turn that back on, or point the engine at schema files.
    for name in ("input_format_values_interpret_expressions", "format_schema"):
        with pytest.raises(DatabaseError) as refused:
            client.command("SELECT 1", settings={name: "1"})
        assert refused.value.code == 497


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("clickhouse_http_small")
    limits = ["--max-body-bytes", "100000", "--max-query-bytes", "20000"]
    srv = ServerProcess(root / "data", root / "server.log", *limits, "--max-result-bytes", "300000")
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.log.read_text()


def test_bodies_and_results_are_bounded(small_server: ServerProcess) -> None:
    srv = small_server
    with srv.client() as c:
        c.command("CREATE TABLE t_big (a UInt32, s String) ENGINE = MergeTree ORDER BY a")
        rows = [(i, "x" * 20) for i in range(100)]
        assert c.insert("t_big", rows, column_names=["a", "s"]).written_rows == 100

        big = b"".join(b"%d\t%s\n" % (i, b"y" * 100) for i in range(2_000))  # ~210 KB
        with pytest.raises(DatabaseError) as body:
            c.raw_insert("t_big", insert_block=big, fmt="TabSeparated")
        assert body.value.code == 307
        # A small compressed body that inflates past the limit (a "zip bomb").
        bomb = gzip.compress(b"1\tz\n" * 100_000)
        assert len(bomb) < 100_000
        status, text = _refused(
            lambda: srv.post(
                bomb, {"Content-Encoding": "gzip"}, query="INSERT INTO t_big FORMAT TSV"
            )
        )
        assert (status, text[:9]) == (500, "Code: 307")
        assert c.command("SELECT count() FROM t_big") == 100

        long_query = "SELECT 1 " + " " * 30_000
        status, text = _refused(lambda: srv.post(long_query.encode()))
        assert (status, text[:9]) == (500, "Code: 307")

        with pytest.raises(DatabaseError) as result:
            c.query("SELECT number, toString(number) FROM numbers(100000)")
        assert result.value.code == 396
        # ... also when the request lifts the engine's own limit.
        lifted_limit = {"max_result_bytes": 0}
        with pytest.raises(DatabaseError) as lifted:
            c.query("SELECT toString(number) FROM numbers(100000)", settings=lifted_limit)
        assert lifted.value.code == 396
        assert c.command("SELECT count() FROM t_big") == 100  # still serving


def test_listens_on_loopback_only_unless_told(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "devstack.clickhouse_http"]
    argv += ["--data-dir", str(tmp_path / "d"), "--port", "0", "--host", "0.0.0.0"]  # noqa: S104
    env = {**os.environ, "CLICKHOUSE_HTTP_PASSWORD": "x"}
    refused = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "--allow-non-loopback" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "d").exists()  # refused before the engine started

    env.pop("CLICKHOUSE_HTTP_PASSWORD")
    no_password = subprocess.run(
        argv[:-2], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert no_password.returncode == 2
    assert "CLICKHOUSE_HTTP_PASSWORD" in no_password.stderr


def test_insert_select_from_input(server: ServerProcess, client: Client) -> None:
    """``INSERT … SELECT … FROM input('structure') FORMAT f`` with the data after the statement
    (in the body, or the statement in the URL), as a server takes it; errors are the engine's."""
    client.command("CREATE TABLE t_input (a UInt32, s String) ENGINE = MergeTree ORDER BY a")
    sql = (
        f"INSERT INTO {DB}.t_input SELECT n * 2, upper(w) "
        "FROM input('n UInt32, w String') WHERE n > 0 FORMAT JSONEachRow"
    )
    rows = b'{"n":0,"w":"w0"}\n{"n":1,"w":"w1"}\n{"n":2,"w":"w2"}\n'
    _, headers = server.post(sql.encode() + b"\n" + rows)
    assert json.loads(headers["X-ClickHouse-Summary"])["written_rows"] == "2"
    server.post(b'{"n":10,"w":"url"}\n', query=sql)
    found = client.query(f"SELECT a, s FROM {DB}.t_input ORDER BY a").result_rows
    assert found == [(2, "W1"), (4, "W2"), (20, "URL")]

    status, text = _refused(lambda: server.post(sql.encode() + b'\n{"n":"x","w":1}\n'))
    assert status == 500
    assert "Code: " in text
    status, text = _refused(
        lambda: server.post(f"INSERT INTO {DB}.t_input SELECT 1, 'a' FORMAT TSV\n1\n".encode())
    )
    assert status == 500
    assert "input('structure')" in text
    assert client.query(f"SELECT count() FROM {DB}.t_input").result_rows == [(3,)]
    # Nothing is left of the spooled data.
    assert not any((server.data_dir / "input-spool").iterdir())
