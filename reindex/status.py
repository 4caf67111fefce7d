"""``reindex status``: how far a job is, from the producer's checkpoint and the workers' records.

``complete`` is exact: the producer finished the job, and on every partition the job published
to, the consumer group's committed offset is past the job's last message there (workers commit
only after writing). The written count is the number of distinct job messages the workers
recorded as written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from reindex_common.errors import ReindexError
from reindex_common.jobs import JobCheckpoint
from reindex_common.kafka import TopicTail
from reindex_common.settings import Settings
from reindex_common.written import (
    WrittenSummary,
    WrittenTally,
    group_offsets_reader,
    read_committed,
)


@dataclass(frozen=True)
class JobStatus:
    checkpoint: JobCheckpoint
    written: WrittenSummary
    lagging_partitions: list[int]

    @property
    def complete(self) -> bool:
        return self.checkpoint.state == "done" and not self.lagging_partitions

    def describe(self) -> str:
        cp = self.checkpoint
        req = cp.request
        state = "complete" if self.complete else cp.state
        selected = "?" if cp.selected is None else f"{cp.selected:,}"
        workers = ", ".join(f"{w} {n:,}" for w, n in sorted(self.written.workers.items()))
        lines = [
            f"job {cp.job_id}: {state}",
            f"  selection  {selected} scorecards, created_at in [{req.start.isoformat()}, "
            f"{req.end.isoformat()}), {','.join(req.scorecard_types)}"
            + (", clean-up" if req.clean_up else ""),
            f"  published  {cp.published_scorecards:,} scorecards with "
            f"{cp.published_scores:,} scores ({cp.pages} pages)",
            f"  written    {self.written.scorecards:,} scorecards"
            + (f" ({workers})" if workers else ""),
        ]
        if cp.error:
            lines.append(f"  error      {cp.error}")
        if cp.state == "done" and self.lagging_partitions:
            lines.append(
                f"  waiting    for partitions {self.lagging_partitions} to be written and committed"
            )
        return "\n".join(lines)


class JobWatcher:
    """Follows one job: each :meth:`status` reads only what was added to the jobs and written
    topics since the last call, and asks the group's committed offsets once."""

    def __init__(self, settings: Settings, job_id: str) -> None:
        self._settings = settings
        self._job_id = job_id
        self._key = job_id.encode()
        self._jobs = TopicTail(settings, settings.jobs_topic)
        self._written = TopicTail(settings, settings.written_topic)
        self._offsets = group_offsets_reader(settings)
        self._tally = WrittenTally(job_id)
        self._checkpoint: JobCheckpoint | None = None

    def __enter__(self) -> JobWatcher:
        return self

    def __exit__(self, *_: object) -> None:
        for client in (self._jobs, self._written, self._offsets):
            client.close()

    def status(self) -> JobStatus:
        """The job's status now; :class:`ReindexError` while the job has no checkpoint."""
        for key, value in self._jobs.read_new():
            if key == self._key:
                self._checkpoint = JobCheckpoint.model_validate_json(value)
        checkpoint = self._checkpoint
        if checkpoint is None:
            raise ReindexError(f"no job {self._job_id!r} in {self._settings.jobs_topic}")
        self._tally.add(self._written.read_new())
        committed = read_committed(
            self._offsets, self._settings.scorecards_topic, checkpoint.max_offsets
        )
        lagging = sorted(
            p for p, last in checkpoint.max_offsets.items() if committed.get(p, -1) <= last
        )
        return JobStatus(checkpoint, self._tally.summary(), lagging)


def job_status(settings: Settings, job_id: str) -> JobStatus:
    with JobWatcher(settings, job_id) as watcher:
        return watcher.status()


def wait_for_job(
    settings: Settings,
    job_id: str,
    timeout_s: float,
    *,
    say: Callable[[str], None],
    poll_s: float = 1.0,
    report_every_s: float = 10.0,
) -> JobStatus:
    """Poll until the job is complete or ``timeout_s`` passed; return the last status."""
    deadline = time.monotonic() + timeout_s
    last_report = 0.0
    with JobWatcher(settings, job_id) as watcher:
        while True:
            status = watcher.status()
            now = time.monotonic()
            if status.complete or now >= deadline:
                say(status.describe())
                return status
            if now - last_report >= report_every_s:
                last_report = now
                cp = status.checkpoint
                say(
                    f"job {job_id}: {cp.state}, published {cp.published_scorecards:,}, "
                    f"written {status.written.scorecards:,}"
                )
            time.sleep(min(poll_s, max(0.0, deadline - now)))
