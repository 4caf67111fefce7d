"""CPU seconds per component of the pipeline, read from /proc (Linux).

A run's CPU is what each process spent between two snapshots: the reindexer's own processes
(producer, workers) are the benchmark's children and report their exact total when reaped
(``os.wait4``); the broker, the shards and Postgres run across runs, so theirs is the
difference of ``utime + stime`` around the run. Postgres backends come and go with
connections: the postmaster's live children are read directly, and the ones that exited are in
its ``cutime + cstime`` (a parent accumulates the CPU of the children it reaps).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psycopg

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; everything after its ')' is space-separated.
    return raw[raw.rindex(")") + 2 :].split()


def process_cpu_s(pid: int, *, with_reaped_children: bool = False) -> float:
    """utime + stime of ``pid`` (and of its reaped children), 0 when it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # After ')': state ppid ... utime is field 14 overall, i.e. index 11 here.
    ticks = int(fields[11]) + int(fields[12])
    if with_reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def postmaster_pid(dsn: str) -> int | None:
    """The local postmaster serving ``dsn``, or None when it is not on this machine."""
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
    except psycopg.Error:
        return None
    if row is None:
        return None
    fields = _stat_fields(int(row[0]))
    return int(fields[1]) if fields is not None else None


def postgres_cpu_s(postmaster: int) -> float:
    """Everything the server has spent: the postmaster, live backends, exited backends."""
    live = sum(process_cpu_s(child) for child in _children(postmaster))
    return process_cpu_s(postmaster, with_reaped_children=True) + live


@dataclass
class ServiceMeter:
    """CPU of the long-running services (broker, shards, Postgres) over one run."""

    broker: int
    shards: list[int]
    postmaster: int | None

    @classmethod
    def none(cls) -> ServiceMeter:
        """A meter of no service (the runs then report their own processes only)."""
        return cls(broker=0, shards=[], postmaster=None)

    def snapshot(self) -> dict[str, float]:
        if not self.broker:
            return {}
        cpu = {"broker": process_cpu_s(self.broker)}
        cpu["shards"] = sum(process_cpu_s(pid) for pid in self.shards)
        if self.postmaster is not None:
            cpu["postgres"] = postgres_cpu_s(self.postmaster)
        return cpu

    @staticmethod
    def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {name: after[name] - before[name] for name in before}


def per_scorecard_us(cpu_s: dict[str, float], scorecards: int) -> dict[str, float]:
    return {name: 1e6 * seconds / scorecards for name, seconds in cpu_s.items()}


def total(values: Iterable[float]) -> float:
    return sum(values)
