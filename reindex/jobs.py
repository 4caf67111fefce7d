"""``reindex jobs``: the jobs of the jobs topic, newest first, with their accounting.

Three reads, in this order (as in ``reindex status``): the latest checkpoint of every job (records
whose key holds a ``/`` are not jobs and are skipped), the consumer group's committed offsets on
the scorecards topic (once, for all jobs), then the whole written topic, folded per job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reindex.status import JobStatus, lagging
from reindex_common.jobs import read_checkpoints
from reindex_common.kafka import TopicTail
from reindex_common.settings import Settings
from reindex_common.written import (
    JobTallies,
    group_offsets_reader,
    read_committed,
)

# Without --all, the listing shows this many of the newest jobs.
RECENT = 20
REASON_CHARS = 60


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _moment(value: datetime) -> str:
    if (value.hour, value.minute, value.second, value.microsecond) == (0, 0, 0, 0):
        return value.strftime("%Y-%m-%d")
    return value.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class JobListing:
    jobs: list[JobStatus]  # newest first
    total: int

    @property
    def hidden(self) -> int:
        return self.total - len(self.jobs)

    def document(self) -> dict[str, Any]:
        return {"jobs": [j.document() for j in self.jobs], "total": self.total}

    def table(self) -> str:
        if not self.jobs:
            return "no jobs"
        header = (
            "JOB",
            "STATE",
            "RANGE",
            "TYPES",
            "CLEAN-UP",
            "PUBLISHED",
            "WRITTEN",
            "DEAD-LETTERED",
            "STARTED (UTC)",
            "UPDATED (UTC)",
            "REASON",
        )
        rows = [header]
        for job in self.jobs:
            cp = job.checkpoint
            req = cp.request
            reason = (cp.error or "").replace("\n", " ")
            if len(reason) > REASON_CHARS:
                reason = reason[: REASON_CHARS - 1] + "…"
            rows.append(
                (
                    cp.job_id,
                    cp.state,
                    f"{_moment(req.start)}..{_moment(req.end)}",
                    ",".join(req.scorecard_types),
                    "yes" if req.clean_up else "no",
                    f"{cp.published_scorecards:,}",
                    f"{job.written.scorecards:,}",
                    f"{job.dead_lettered:,}",
                    "-" if cp.state == "requested" else _when(cp.started_at),
                    _when(cp.updated_at),
                    reason or "-",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        numeric = {5, 6, 7}
        return "\n".join(
            "  ".join(
                cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
                for i, cell in enumerate(row)
            ).rstrip()
            for row in rows
        )


def list_jobs(settings: Settings, *, show_all: bool = False, recent: int = RECENT) -> JobListing:
    """The jobs, newest (latest started or requested) first; the ``recent`` newest unless
    ``show_all``."""
    checkpoints = sorted(
        read_checkpoints(settings).values(),
        key=lambda cp: (cp.started_at, cp.updated_at),
        reverse=True,
    )
    shown = checkpoints if show_all else checkpoints[:recent]
    partitions = sorted({p for cp in shown for p in cp.max_offsets})
    consumer = group_offsets_reader(settings)
    try:
        committed = read_committed(consumer, settings.scorecards_topic, partitions)
    finally:
        consumer.close()
    tallies = JobTallies()
    wanted = {cp.job_id.encode() for cp in shown}
    with TopicTail(settings, settings.written_topic) as tail:
        tallies.add((k, v) for k, v in tail.read_new() if k in wanted)
    return JobListing(
        [
            JobStatus(
                cp,
                tallies.summary(cp.job_id, cp.started_at),
                lagging(cp, committed, tallies.tally(cp.job_id)),
            )
            for cp in shown
        ],
        len(checkpoints),
    )
