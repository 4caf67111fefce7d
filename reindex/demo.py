"""``reindex demo``: the main job on the embedded default, from nothing to a verified report.

1. bring the embedded stack up (or reuse a running one) with two ClickHouse shards;
2. create the schemas in a database of the demo's own (``reindex_demo`` on the Postgres server,
   ``reindex_demo`` on the shards) and seed synthetic scorecards;
3. start two consumer workers (separate ``reindex consume`` processes) and run one job through
   the producer, showing published and written counts per shard as they grow;
4. wait until the job is fully written, stop the workers, verify the result against Postgres;
5. report time, throughput, rows per shard and the verification; stop what it started (unless
   ``keep``). It succeeds only when verification passed and nothing was dead-lettered (SPEC §7:
   a job complete with dead letters is not clean, exit 3).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from psycopg import sql
from psycopg.conninfo import make_conninfo
from rich.console import Console
from rich.live import Live
from rich.table import Table

from devstack import stack
from devstack.workers import has_joined, start_worker
from producer.job import JobOptions, run_job
from reindex.status import JobStatus, JobWatcher
from reindex.verify import verify
from reindex_common.clickhouse import init_target_schema, shard_client
from reindex_common.errors import BadInputError, ReindexError
from reindex_common.jobs import JobCheckpoint
from reindex_common.masking import mask_dsn
from reindex_common.messages import ReindexRequest
from reindex_common.pg import CREATED_MARK, connect, init_source_schema
from reindex_common.seed import SeedPlan, seed
from reindex_common.settings import Settings

DEMO_DATABASE = "reindex_demo"


@dataclass(frozen=True)
class DemoOptions:
    root: Path
    scorecards: int = 20_000
    seed: int = 42
    shards: int = 2
    keep: bool = False
    kafka_port: int = 9092
    clickhouse_port: int = 8123
    workers: int = 2
    yes: bool = False  # replace a ``reindex_demo`` database the demo did not create


# Tables of a demo database: the SPEC §2 source tables, nothing else.
_DEMO_TABLES = (
    "director.scorecard_template_revisions",
    "director.scorecards",
    "historic.scorecard_scores",
)


def _holds_only_demo_tables(server_dsn: str) -> bool:
    """Whether the existing demo database holds no table but the source tables: one that an
    earlier demo made before databases were marked, which it may replace."""
    with connect(make_conninfo(server_dsn, dbname=DEMO_DATABASE), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg\\_%%' "
            "AND n.nspname || '.' || c.relname <> ALL(%s)",
            (list(_DEMO_TABLES),),
        ).fetchone()
    return row is not None and row[0] == 0


def _demo_dsn(server_dsn: str, *, yes: bool = False) -> str:
    """The DSN of the demo's own database on the server ``server_dsn`` points at, new and empty.

    Only this database, which the demo created, is dropped: each run seeds exactly what it
    reports. The demo marks it with :data:`CREATED_MARK`; a ``reindex_demo`` database without
    the mark that holds anything but the demo's source tables is someone else's: left alone
    unless ``yes``.
    """
    with connect(server_dsn, autocommit=True, writable=True) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (DEMO_DATABASE,),
        ).fetchone()
        if (
            row is not None
            and row[0] != CREATED_MARK
            and not yes
            and not _holds_only_demo_tables(server_dsn)
        ):
            raise BadInputError(
                f"a database {DEMO_DATABASE!r} the demo did not create exists at "
                f"{mask_dsn(server_dsn)}: refusing to drop it (pass --yes to replace it)"
            )
        conn.execute(f'DROP DATABASE IF EXISTS "{DEMO_DATABASE}" WITH (FORCE)'.encode())
        conn.execute(f'CREATE DATABASE "{DEMO_DATABASE}"'.encode())
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(DEMO_DATABASE), sql.Literal(CREATED_MARK)
            )
        )
    return make_conninfo(server_dsn, dbname=DEMO_DATABASE)


def _rows_per_shard(settings: Settings) -> list[tuple[int, int]]:
    """(scorecards, scores) per shard, read with FINAL."""
    out = []
    for shard in settings.shards:
        with shard_client(shard, database=settings.clickhouse_database) as client:
            cards = client.command("SELECT count() FROM scorecards FINAL")
            scores = client.command("SELECT count() FROM scorecard_scores FINAL")
        out.append((int(str(cards)), int(str(scores))))
    return out


def _fresh_target(settings: Settings) -> None:
    """The demo's shard database, empty: each run shows a full job, not a repair."""
    for shard in settings.shards:
        with shard_client(shard) as client:
            client.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse_database}`")
    init_target_schema(settings.shards, settings.clickhouse_database)


class _Workers:
    """The demo's consumer workers: ``reindex consume`` processes with logs under the stack."""

    def __init__(self, settings: Settings, count: int, logs: Path) -> None:
        env = settings.child_env()
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs = [logs / f"demo-worker-{i + 1}.log" for i in range(count)]
        for i, log in enumerate(self.logs):
            self.processes.append(start_worker(f"demo-worker-{i + 1}", env, log))

    def wait_joined(self, timeout_s: float = 120) -> None:
        """Until every worker has its partitions (a group's first join takes a few seconds)."""
        deadline = time.monotonic() + timeout_s
        while not all(has_joined(log) for log in self.logs):
            self.check()
            if time.monotonic() > deadline:
                raise ReindexError(f"the consumer workers did not join in {timeout_s:.0f} s")
            time.sleep(0.2)

    def check(self) -> None:
        for process, log in zip(self.processes, self.logs, strict=True):
            if process.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-1:]
                raise ReindexError(f"a consumer worker exited: {' '.join(tail)} (log: {log})")

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _progress_table(status: JobStatus | None, per_shard: list[int], elapsed: float) -> Table:
    table = Table(title=f"reindex demo — {elapsed:.0f} s", title_justify="left")
    table.add_column("")
    table.add_column("scorecards", justify="right")
    table.add_column("scores", justify="right")
    table.add_column("rate /s", justify="right")
    if status is not None:
        cp = status.checkpoint
        rate = cp.published_scorecards / elapsed if elapsed else 0.0
        selected = f" of {cp.selected:,}" if cp.selected else ""
        table.add_row(
            "published",
            f"{cp.published_scorecards:,}{selected}",
            f"{cp.published_scores:,}",
            f"{rate:,.0f}",
        )
        rate = status.written.scorecards / elapsed if elapsed else 0.0
        table.add_row("written", f"{status.written.scorecards:,}", "", f"{rate:,.0f}")
    for i, cards in enumerate(per_shard):
        table.add_row(f"  written to shard {i}", f"{cards:,}", "", "")
    return table


def _run_job_and_watch(
    settings: Settings, request: ReindexRequest, workers: _Workers, say: Callable[[str], None]
) -> tuple[JobStatus, float]:
    """Run the producer in a thread; show progress until the job is fully written."""
    began = time.monotonic()
    result: dict[str, JobCheckpoint | BaseException] = {}

    def produce() -> None:
        try:
            result["checkpoint"] = run_job(settings, request, JobOptions(show_progress=False))
        except BaseException as e:  # re-raised in the main thread
            result["error"] = e

    thread = threading.Thread(target=produce, name="producer", daemon=True)
    thread.start()
    console = Console(stderr=True)
    status: JobStatus | None = None
    last_plain = 0.0
    watcher = JobWatcher(settings, request.job_id)
    with watcher, Live(console=console, auto_refresh=False, transient=False) as live:
        while True:
            time.sleep(0.5)
            workers.check()
            if "error" in result:
                error = result["error"]
                raise error if isinstance(error, BaseException) else RuntimeError(error)
            try:
                status = watcher.status()
            except ReindexError:
                status = None  # the job's first checkpoint is not there yet
            shards = status.written.per_shard if status else {}
            per_shard = [shards.get(i, 0) for i in range(len(settings.shards))]
            elapsed = time.monotonic() - began
            if console.is_terminal:
                live.update(_progress_table(status, per_shard, elapsed), refresh=True)
            elif elapsed - last_plain >= 5:
                last_plain = elapsed
                published = status.checkpoint.published_scorecards if status else 0
                written = status.written.scorecards if status else 0
                say(
                    f"  {elapsed:5.0f} s: published {published:,}, written {written:,}, "
                    f"per shard {per_shard}"
                )
            if status is not None and status.complete and not thread.is_alive():
                break
    assert status is not None  # the loop ends only on a complete status
    return status, time.monotonic() - began


def run_demo(options: DemoOptions, base: Settings, say: Callable[[str], None]) -> bool:
    """Run the demo; True when the job was written and verification passed."""
    began = time.monotonic()
    # The live view says what the job does; the components' INFO lines would scroll it away.
    for name in ("reindex.producer", "reindex.progress", "reindex_common"):
        logging.getLogger(name).setLevel(logging.WARNING)
    already = stack.StackState.load(options.root.resolve())
    started_here = already is None or not stack.is_running(already.kafka)
    say(
        f"1/5 starting the embedded stack: Kafka-protocol broker, {options.shards} ClickHouse "
        "shards…"
    )
    state = stack.up(
        stack.StackConfig(
            root=options.root,
            shards=options.shards,
            kafka_port=options.kafka_port,
            clickhouse_port=options.clickhouse_port,
            pg_dsn=base.director_dsn,
        ),
        say=say,
    )
    workers: _Workers | None = None
    try:
        dsn = _demo_dsn(state.pg_dsn, yes=options.yes)
        run_tag = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        settings = base.replace(
            pg_dsn=dsn,
            historic_pg_dsn=None,
            kafka_bootstrap=state.kafka_bootstrap,
            clickhouse_shards=",".join(state.shard_urls),
            clickhouse_database=DEMO_DATABASE,
            topic_prefix=f"demo-{run_tag}-",
        )
        say(
            "2/5 creating the schemas and seeding "
            f"{options.scorecards:,} synthetic scorecards (seed {options.seed})…"
        )
        init_source_schema(dsn, dsn)
        _fresh_target(settings)
        plan = SeedPlan(options.scorecards, options.seed)
        seed(dsn, dsn, plan)

        say(f"3/5 starting {options.workers} consumer workers and running the job…")
        workers = _Workers(settings, options.workers, Path(state.root) / "logs")
        workers.wait_joined()  # so that the job's time is the pipeline's, not the group join's
        request = ReindexRequest(
            job_id=f"demo-{run_tag}",
            start=plan.start,
            end=plan.end,
            scorecard_types=("PROCESS", "CONVERSATION"),
            batch_size=settings.batch_size,
            clean_up=True,
        )
        final, job_seconds = _run_job_and_watch(settings, request, workers, say)
        checkpoint = final.checkpoint
        workers.stop()
        workers = None

        say("4/5 verifying the shards against Postgres…")
        report = verify(settings, request.start, request.end, request.scorecard_types)
        say(report.describe())

        say("5/5 report")
        cards, scores = checkpoint.published_scorecards, checkpoint.published_scores
        say(f"  job            {request.job_id} ({', '.join(request.scorecard_types)}, clean-up)")
        say(f"  published      {cards:,} scorecards with {scores:,} scores")
        say(
            f"  dead-lettered  {final.dead_lettered:,} scorecards with "
            f"{final.written.dead_lettered_scores:,} scores"
        )
        say(f"  job time       {job_seconds:.1f} s, from the first query to fully written")
        say(
            f"  throughput     {cards / job_seconds:,.0f} scorecards/s, "
            f"{scores / job_seconds:,.0f} score rows/s"
        )
        for i, (c, s) in enumerate(_rows_per_shard(settings)):
            say(f"  shard {i}        {c:,} scorecards, {s:,} scores ({state.shard_addresses[i]})")
        say(f"  verification   {'passed' if report.ok else 'FAILED'}")
        say(f"  total time     {time.monotonic() - began:.1f} s")
        if options.keep:
            say(
                f'look at the data: eval "$(reindex devstack env)"; then e.g. '
                f'curl "${{REINDEX_CLICKHOUSE_SHARDS%%,*}}/?database={DEMO_DATABASE}" '
                "--data 'SELECT count() FROM scorecards FINAL'"
            )
        problem = final.problem()  # complete with dead letters: not clean (exit 3)
        if problem is not None:
            raise problem
        return report.ok
    finally:
        if workers is not None:
            workers.stop()
        if options.keep or not started_here:
            say(
                'the stack keeps running: eval "$(reindex devstack env)"; '
                "stop it with: reindex devstack down"
            )
        else:
            stack.down(options.root)
            say("stopped the stack")
