"""``reindex demo`` on its own stack: a verified report, exit 0, and nothing left running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fix_services import Services, free_port_run

from devstack import stack


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(f"{entry.name}: {cmdline}")
    return found


def test_demo_reaches_a_verified_report_and_leaves_nothing_running(
    services: Services, tmp_path: Path
) -> None:
    root = tmp_path / "demo-stack"
    kafka_port, ch_port = stack.free_port(), free_port_run(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("REINDEX_")}
    env |= {"REINDEX_DEVSTACK_DIR": str(root), "REINDEX_PG_DSN": services.pg_dsn}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "reindex",
            "demo",
            "--scorecards",
            "600",
            "--kafka-port",
            str(kafka_port),
            "--clickhouse-port",
            str(ch_port),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "day buckets match: 600 scorecards" in out
    assert "verification   passed" in out
    assert "published      600 scorecards" in out
    assert "stopped the stack" in out
    assert not (root / "stack.json").exists()
    assert _processes_mentioning(str(root)) == []
    assert _processes_mentioning(f"127.0.0.1:{kafka_port}") == []
