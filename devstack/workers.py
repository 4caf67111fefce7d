"""Starting ``reindex`` processes, consumer workers above all: the one way the demo, the
benchmark and the test fixtures do it.

A worker is ``python -m reindex consume --worker-id ID`` with the settings in its environment
(:meth:`Settings.child_env`), its output in a log file, and no standard input. It has joined the
group once its log says it was assigned partitions.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

JOINED_MARK = "assigned partitions"


def start_reindex(
    args: Sequence[str], env: Mapping[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """``python -m reindex ARGS``, stdout and stderr to ``log``."""
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "reindex", *args],
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def start_worker(worker_id: str, env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """One consumer worker of the group the settings in ``env`` name."""
    return start_reindex(["consume", "--worker-id", worker_id], env, log)


def has_joined(log: Path) -> bool:
    """Whether the worker writing ``log`` has been assigned its partitions."""
    try:
        return JOINED_MARK in log.read_text(errors="replace")
    except FileNotFoundError:
        return False
