"""Benchmark the reindexer against the original design and the engine's own copy.

    python -m bench [--scorecards 50000] [--mean-scores 10] [--runs baseline,producer,...]

It starts its own embedded stack (free ports, ``.devstack-bench/``), seeds one dataset into the
Postgres database ``reindex_bench_<pid>`` (dropped at the end), and measures, on that data and
that stack, one after the other: the original design's algorithm (``baseline``), the producer
alone (``producer``), one consumer worker draining the topic the producer filled
(``consumers1``), the whole pipeline with one and with two workers (``pipeline1``,
``pipeline2``), and ClickHouse copying straight from Postgres (``engine``); the consumer runs
also with the shards parsing the messages (``consumers1-json``, ``pipeline2-json`` …). Each run
writes into a fresh ClickHouse database. It prints scorecards/s, score rows/s and each process's
peak memory, CPU per scorecard, then the ratios the targets are stated in.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from bench import cpu
from bench.baseline import run_baseline
from bench.engine import run_engine_copy
from bench.timeline import describe, job_timeline
from devstack import stack
from devstack.workers import has_joined, start_reindex
from reindex.status import wait_for_job
from reindex_common.clickhouse import init_target_schema, shard_client
from reindex_common.errors import ReindexError
from reindex_common.pg import init_source_schema
from reindex_common.seed import SeedPlan, seed
from reindex_common.selection import SELECTION
from reindex_common.settings import Settings, load_settings

TYPES = ["PROCESS", "CONVERSATION"]
RUNS = ("baseline", "producer", "consumers1", "pipeline1", "pipeline2", "engine")
# Each consumer run also exists as "<run>-json": the shards parse the messages' JSON
# (REINDEX_CONSUMER_SHARDS_PARSE=true), for a side-by-side comparison.
JSON = "-json"


@dataclass
class Result:
    name: str
    seconds: float
    scorecards: int
    scores: int
    peak_mb: dict[str, float] = field(default_factory=dict)
    note: str = ""
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds per component
    timeline: list[tuple[str, float]] = field(default_factory=list)  # pipeline runs

    @property
    def cards_per_s(self) -> float:
        return self.scorecards / self.seconds

    @property
    def scores_per_s(self) -> float:
        return self.scores / self.seconds


def _peak_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Proc:
    """A ``reindex`` subprocess: its peak memory sampled while it runs, its CPU when reaped."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log = logs / f"{name}.log"
        self.popen = start_reindex(args, env, self.log)
        self.peak = 0.0
        self.cpu_s = 0.0  # user + system seconds, known once reaped
        self._reaped = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._reaped.is_set():
            self.peak = max(self.peak, _peak_mb(self.popen.pid))
            self._reaped.wait(0.2)

    def poll(self) -> int | None:
        """The exit code once it has exited; reaps it with wait4 to read its CPU."""
        if self.popen.returncode is not None:
            return self.popen.returncode
        pid, status, usage = os.wait4(self.popen.pid, os.WNOHANG)
        if pid == 0:
            return None
        self.popen.returncode = os.waitstatus_to_exitcode(status)
        self.cpu_s = usage.ru_utime + usage.ru_stime
        self._reaped.set()
        return self.popen.returncode

    def cpu_so_far(self) -> float:
        return cpu.process_cpu_s(self.popen.pid)

    def wait(self, timeout: float = 3600) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} still running after {timeout:.0f} s")
            time.sleep(0.05)
        self._sampler.join()
        return code

    def stop(self) -> None:
        self.peak = max(self.peak, _peak_mb(self.popen.pid))
        if self.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            self.wait(60)
        except TimeoutError:
            self.popen.kill()
            self.wait(60)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class Bench:
    def __init__(
        self,
        base: Settings,
        logs: Path,
        start: datetime,
        end: datetime,
        services: cpu.ServiceMeter | None = None,
    ) -> None:
        self.base = base
        self.services = services or cpu.ServiceMeter.none()
        self.logs = logs
        self.start, self.end = start, end
        self.counter = 0
        self.cards, self.scores = self._selected()  # the data does not change between runs

    def fresh(self, name: str) -> Settings:
        """Settings with a fresh ClickHouse database and topic prefix for one run."""
        self.counter += 1
        database = f"bench_{name}"
        for shard in self.base.shards:
            with shard_client(shard) as client:
                client.command(f"DROP DATABASE IF EXISTS `{database}`")
        init_target_schema(self.base.shards, database)
        return self.base.replace(
            clickhouse_database=database, topic_prefix=f"bench{self.counter}-{os.getpid()}-"
        )

    def env(self, settings: Settings) -> dict[str, str]:
        return settings.child_env()

    def produce_args(self, job_id: str) -> list[str]:
        return [
            "produce",
            "--start",
            self.start.isoformat(),
            "--end",
            self.end.isoformat(),
            "--mode",
            "all",
            "--job-id",
            job_id,
        ]

    def wait_complete(self, settings: Settings, job_id: str, procs: list[Proc]) -> None:
        """Wait as ``reindex status JOB --wait`` does (same polls, same rule)."""

        def check() -> None:
            for p in procs:
                if p.poll() not in (None, 0):
                    raise ReindexError(f"{p.name} exited: {p.output()[-500:]}")

        status = wait_for_job(settings, job_id, 3600, say=lambda _: None, check=check)
        if status is None or not status.complete:
            raise ReindexError(f"job {job_id} did not complete: {status and status.state}")

    def start_workers(self, settings: Settings, count: int, tag: str) -> list[Proc]:
        workers = [
            Proc(
                f"{tag}-worker{i + 1}",
                ["consume", "--worker-id", f"{tag}-w{i + 1}"],
                self.env(settings),
                self.logs,
            )
            for i in range(count)
        ]
        deadline = time.monotonic() + 120
        while not all(has_joined(w.log) for w in workers):
            if time.monotonic() > deadline:
                raise ReindexError(f"workers did not join: {workers[0].output()[-500:]}")
            time.sleep(0.2)
        return workers

    def _selected(self) -> tuple[int, int]:
        """Scorecards and scores in the selection (SPEC §2, both types)."""
        with psycopg.connect(self.base.director_dsn) as conn:
            row = conn.execute(
                f"SELECT count(*), coalesce(sum((SELECT count(*) FROM historic.scorecard_scores h "
                f"WHERE (h.customer_id, h.profile_id, h.scorecard_id) "
                f"= (s.customer_id, s.profile_id, s.scorecard_id))), 0) {SELECTION}",
                {"start": self.start, "end": self.end, "types": TYPES},
            ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    # --- the runs ------------------------------------------------------------------------------

    def baseline(self) -> Result:
        settings = self.fresh("baseline")
        began = time.monotonic()
        cards, scores = run_baseline(settings, self.start, self.end, TYPES)
        return Result(
            "baseline (original design)",
            time.monotonic() - began,
            cards,
            scores,
            {"baseline": _peak_mb(os.getpid())},
        )

    def producer(self) -> Result:
        settings = self.fresh("producer")
        self._producer_settings = settings
        cards, scores = self.cards, self.scores
        began = time.monotonic()
        services = self.services.snapshot()
        p = Proc("producer", self.produce_args("bench-producer"), self.env(settings), self.logs)
        if p.wait() != 0:
            raise ReindexError(f"producer failed: {p.output()[-500:]}")
        spent = {"producer": p.cpu_s} | self.services.spent(services, self.services.snapshot())
        return Result(
            "producer alone",
            time.monotonic() - began,
            cards,
            scores,
            {"producer": p.peak},
            cpu_s=spent,
        )

    def consumers(self, count: int, json: bool = False) -> Result:
        settings = getattr(self, "_producer_settings", None)
        if settings is None:
            self.producer()
            settings = self._producer_settings
        if getattr(self, "_drained", False):
            # A job's written records say it is complete, whichever group wrote them: a second
            # drain needs a topic filled by a job of its own.
            self.producer()
            settings = self._producer_settings
        settings = settings.replace(consumer_shards_parse=json)
        self._drained = True
        cards, scores = self.cards, self.scores
        began = time.monotonic()
        workers = self.start_workers(settings, count, f"drain{count}")
        joined = time.monotonic() - began
        # The workers' start-up and group join are not part of draining: count from here.
        workers_before = sum(w.cpu_so_far() for w in workers)
        services = self.services.snapshot()
        self.wait_complete(settings, "bench-producer", workers)
        seconds = time.monotonic() - began - joined
        services = self.services.spent(services, self.services.snapshot())
        for w in workers:
            w.stop()
        spent = {"workers": sum(w.cpu_s for w in workers) - workers_before} | services
        return Result(
            f"{count} consumer(s) draining a filled topic" + (" (shards parse)" if json else ""),
            seconds,
            cards,
            scores,
            {w.name: w.peak for w in workers},
            note=f"after a group join of {joined:.1f} s",
            cpu_s=spent,
        )

    def pipeline(self, count: int, json: bool = False) -> Result:
        settings = self.fresh(f"pipeline{count}{'_json' if json else ''}")
        settings = settings.replace(consumer_shards_parse=json)
        cards, scores = self.cards, self.scores
        workers = self.start_workers(settings, count, f"pipe{count}")
        workers_before = sum(w.cpu_so_far() for w in workers)
        services = self.services.snapshot()
        began, began_wall = time.monotonic(), time.time()
        job = f"bench-pipeline{count}"
        p = Proc(f"pipe{count}-producer", self.produce_args(job), self.env(settings), self.logs)
        self.wait_complete(settings, job, [p, *workers])
        seconds = time.monotonic() - began
        complete_wall = time.time()
        services = self.services.spent(services, self.services.snapshot())
        p.wait()
        for w in workers:
            w.stop()
        peaks = {p.name: p.peak} | {w.name: w.peak for w in workers}
        spent = {
            "producer": p.cpu_s,
            "workers": sum(w.cpu_s for w in workers) - workers_before,
        } | services
        steps = job_timeline(began_wall, complete_wall, p.log, [w.log for w in workers])
        return Result(
            f"pipeline, {count} worker(s)" + (" (shards parse)" if json else ""),
            seconds,
            cards,
            scores,
            peaks,
            cpu_s=spent,
            timeline=steps,
        )

    def engine(self) -> Result:
        settings = self.fresh("engine")
        copy = run_engine_copy(settings, self.start, self.end, TYPES)
        if (copy.scorecards, copy.scores) != (self.cards, self.scores):
            raise ReindexError(
                f"the engine copied {copy.scorecards} scorecards and {copy.scores} scores; "
                f"the selection has {self.cards} and {self.scores}"
            )
        return Result("engine limit (chdb reads Postgres)", copy.seconds, self.cards, self.scores)


def _report(results: dict[str, Result], say: Callable[[str], None]) -> None:
    say("")
    say("| run | seconds | scorecards/s | score rows/s | peak memory (MB) |")
    say("|---|---:|---:|---:|---|")
    for r in results.values():
        peaks = ", ".join(f"{k} {v:.0f}" for k, v in r.peak_mb.items()) or "(in the shards)"
        note = f" ({r.note})" if r.note else ""
        say(
            f"| {r.name}{note} | {r.seconds:.1f} | {r.cards_per_s:,.0f} | "
            f"{r.scores_per_s:,.0f} | {peaks} |"
        )
    _report_cpu(results, say)
    for r in results.values():
        if r.timeline:
            say(f"\ntime line of the job, {r.name} (seconds since `reindex produce` started):")
            say(describe(r.timeline))
    base, limit = results.get("baseline"), results.get("engine")
    for key in ("pipeline1", "pipeline2", "pipeline1-json", "pipeline2-json"):
        run = results.get(key)
        if run is None:
            continue
        if base:
            say(f"{run.name} / baseline: {run.cards_per_s / base.cards_per_s:.1f}x")
        if limit:
            say(f"{run.name} / engine limit: {100 * run.cards_per_s / limit.cards_per_s:.1f}%")


CPU_COMPONENTS = ("producer", "workers", "broker", "postgres", "shards")


def _report_cpu(results: dict[str, Result], say: Callable[[str], None]) -> None:
    measured = [r for r in results.values() if r.cpu_s]
    if not measured:
        return
    say("")
    say("CPU per scorecard (µs; user + system, every process of the pipeline, from /proc):")
    say("")
    say("| run | " + " | ".join(CPU_COMPONENTS) + " | total |")
    say("|---|" + "---:|" * (len(CPU_COMPONENTS) + 1))
    for r in measured:
        per_card = cpu.per_scorecard_us(r.cpu_s, r.scorecards)
        cells = [f"{per_card[c]:,.0f}" if c in per_card else "" for c in CPU_COMPONENTS]
        say(f"| {r.name} | " + " | ".join(cells) + f" | {sum(per_card.values()):,.0f} |")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--scorecards", type=int, default=50_000)
    parser.add_argument("--mean-scores", type=int, default=10)
    parser.add_argument(
        "--runs",
        default=",".join(RUNS),
        help=f"comma-separated: {RUNS}, and consumers1, pipeline1, pipeline2 with {JSON}",
    )
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    args = parser.parse_args()
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]

    root = Path(".devstack-bench")
    base = load_settings()
    say = print
    state = stack.up(
        stack.StackConfig(
            root=root,
            shards=2,
            kafka_port=stack.free_port(),
            clickhouse_port=stack.free_port_run(2),
            pg_dsn=base.director_dsn,
        )
    )
    logs = root / "bench-logs"
    logs.mkdir(parents=True, exist_ok=True)
    # Postgres is shared by every checkout on the machine: one source database per run.
    source_db = f"reindex_bench_{os.getpid()}"
    try:
        with psycopg.connect(state.pg_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{source_db}" WITH (FORCE)'.encode())
            conn.execute(f'CREATE DATABASE "{source_db}"'.encode())
        dsn = state.pg_dsn.rsplit("/", 1)[0] + f"/{source_db}"
        settings = base.replace(
            pg_dsn=dsn,
            historic_pg_dsn=None,
            kafka_bootstrap=state.kafka_bootstrap,
            clickhouse_shards=",".join(state.shard_urls),
        )
        init_source_schema(dsn, dsn)
        plan = SeedPlan(args.scorecards, seed=7, mean_scores=args.mean_scores)
        began = time.monotonic()
        seed(dsn, dsn, plan)
        meter = cpu.ServiceMeter(
            broker=state.kafka.pid,
            shards=[shard.pid for shard in state.shards],
            postmaster=cpu.postmaster_pid(dsn),
        )
        bench = Bench(settings, logs, plan.start, plan.end, meter)
        cards, scores = bench.cards, bench.scores
        say(
            f"dataset: {cards:,} scorecards, {scores:,} scores "
            f"(seeded in {time.monotonic() - began:.1f} s); {os.cpu_count()} cores"
        )
        results: dict[str, Result] = {}
        steps: dict[str, Callable[[], Result]] = {
            "baseline": bench.baseline,
            "producer": bench.producer,
            "consumers1": lambda: bench.consumers(1),
            "pipeline1": lambda: bench.pipeline(1),
            "pipeline2": lambda: bench.pipeline(2),
            "engine": bench.engine,
            "consumers1-json": lambda: bench.consumers(1, json=True),
            "pipeline1-json": lambda: bench.pipeline(1, json=True),
            "pipeline2-json": lambda: bench.pipeline(2, json=True),
        }
        for name in runs:
            if name not in steps:
                parser.error(f"unknown run {name!r}")
            result = steps[name]()
            results[name] = result
            say(
                f"{result.name}: {result.seconds:.1f} s, {result.cards_per_s:,.0f} scorecards/s, "
                f"{result.scores_per_s:,.0f} score rows/s"
            )
        _report(results, say)
        say(
            f"\ncommand: python -m bench --scorecards {args.scorecards} --runs {','.join(runs)}"
            f"  ({datetime.now(UTC):%Y-%m-%d})"
        )
    finally:
        if not args.keep:
            stack.down(root)
            with psycopg.connect(state.pg_dsn, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{source_db}" WITH (FORCE)'.encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
