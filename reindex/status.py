"""``reindex status``: how far a job is, from its checkpoints and the workers' records.

A job's state is its latest checkpoint in the jobs topic: ``requested`` (``reindex request``
recorded it; no producer started it), ``running``, ``done`` (all published), ``failed`` (with
the reason) or ``cancelled``. It is *complete* when it is done and, on every partition it published
to, the consumer group's committed offset is past the job's last message there (workers commit
only after a message was written or dead-lettered, and after the batch's written record is
durable), or the written records read so far name every offset the job published there as
written or dead-lettered (``reindex_common/written.py``). A watcher usually sees the second first:
the last batch's record is published right after its writes, its commit follows within the
commit interval. Either way a complete job's written and dead-lettered counts are final,
provided they are read after the committed offsets, which :class:`JobWatcher` does.

The outcome, as exit codes (SPEC §7): complete with nothing dead-lettered is clean (0); complete
with dead letters is not clean (3, :class:`NotCleanError`, naming the first few scorecards);
failed or cancelled is an error (1); ``--wait`` past its timeout gives up (4).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reindex_common.errors import BadInputError, GaveUpWaitingError, NotCleanError, ReindexError
from reindex_common.jobs import JobCheckpoint
from reindex_common.kafka import TopicTail
from reindex_common.messages import JOB_ID_PATTERN
from reindex_common.settings import Settings
from reindex_common.written import (
    DeadLetter,
    WrittenSummary,
    WrittenTally,
    group_offsets_reader,
    read_committed,
)

# States after which nothing more happens to a job unless someone requests it again.
ENDED_BADLY = ("failed", "cancelled")
# Dead letters named in the one-line outcome; ``status`` lists up to FIRST_DEAD_LETTERS.
KEYS_IN_OUTCOME = 5


def check_job_id(job_id: str) -> None:
    if not re.match(JOB_ID_PATTERN, job_id):
        raise BadInputError(
            f"not a job id: {job_id[:60]!r} (letters, digits and ._:- only, 1 to 200 characters)"
        )


def dead_letter_name(dead: DeadLetter) -> str:
    return dead.scorecard or f"partition {dead.partition} offset {dead.offset}"


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}" + ("" if count == 1 else "s")


@dataclass(frozen=True)
class JobStatus:
    checkpoint: JobCheckpoint
    written: WrittenSummary
    lagging_partitions: list[int]

    @property
    def state(self) -> str:
        return self.checkpoint.state

    @property
    def complete(self) -> bool:
        """Done, and every published scorecard written or dead-lettered."""
        return self.checkpoint.state == "done" and not self.lagging_partitions

    @property
    def finished(self) -> bool:
        """Nothing more will happen to the job: complete, failed or cancelled."""
        return self.complete or self.checkpoint.state in ENDED_BADLY

    @property
    def dead_lettered(self) -> int:
        return self.written.dead_lettered

    def problem(self) -> ReindexError | None:
        """What the outcome says is wrong, as the error to exit with; None when nothing is."""
        cp = self.checkpoint
        if cp.state == "failed":
            return ReindexError(f"job {cp.job_id} failed: {cp.error or 'no reason recorded'}")
        if cp.state == "cancelled":
            return ReindexError(
                f"job {cp.job_id} was cancelled" + (f": {cp.error}" if cp.error else "")
            )
        if self.complete and self.dead_lettered:
            names = [dead_letter_name(d) for d in self.written.first_dead_letters]
            shown = ", ".join(names[:KEYS_IN_OUTCOME])
            more = ", …" if self.dead_lettered > KEYS_IN_OUTCOME else ""
            return NotCleanError(
                f"job {cp.job_id} complete, {_plural(self.dead_lettered, 'scorecard')} "
                f"dead-lettered: {shown}{more} (reindex dlq list --job {cp.job_id})"
            )
        return None

    def headline(self) -> str:
        if not self.complete:
            return self.checkpoint.state
        if self.dead_lettered:
            return f"complete, {_plural(self.dead_lettered, 'scorecard')} dead-lettered"
        return "complete"

    def describe(self) -> str:
        cp = self.checkpoint
        req = cp.request
        selected = "?" if cp.selected is None else f"{cp.selected:,}"
        workers = ", ".join(f"{w} {n:,}" for w, n in sorted(self.written.workers.items()))
        lines = [
            f"job {cp.job_id}: {self.headline()}",
            f"  selection  {selected} scorecards, created_at in [{req.start.isoformat()}, "
            f"{req.end.isoformat()}), {','.join(req.scorecard_types)}"
            + (", clean-up" if req.clean_up else ""),
            f"  published  {cp.published_scorecards:,} scorecards with "
            f"{cp.published_scores:,} scores ({cp.pages} pages)",
            f"  written    {self.written.scorecards:,} scorecards"
            + (f" ({workers})" if workers else ""),
            f"  dead-lettered {_plural(self.dead_lettered, 'scorecard')} with "
            f"{_plural(self.written.dead_lettered_scores, 'score')}",
        ]
        for dead in self.written.first_dead_letters:
            lines.append(
                f"    {dead_letter_name(dead)} (partition {dead.partition} offset {dead.offset}):"
                f" {dead.reason}"
            )
        if self.dead_lettered > len(self.written.first_dead_letters):
            lines.append(f"    … all of them: reindex dlq list --job {cp.job_id}")
        if cp.error:
            lines.append(f"  error      {cp.error}")
        if cp.state == "done" and self.lagging_partitions:
            lines.append(f"  waiting    for partitions {self.lagging_partitions} to be written")
        return "\n".join(lines)

    def document(self) -> dict[str, Any]:
        """The status as one JSON-ready document (``-o json``; ``reindex jobs -o json``)."""
        cp = self.checkpoint
        req = cp.request
        return {
            "job_id": cp.job_id,
            "state": cp.state,
            "complete": self.complete,
            "clean": self.complete and not self.dead_lettered,
            "request": {
                "start": req.start.isoformat(),
                "end": req.end.isoformat(),
                "scorecard_types": list(req.scorecard_types),
                "clean_up": req.clean_up,
                "batch_size": req.batch_size,
            },
            "selected": cp.selected,
            "published": {
                "scorecards": cp.published_scorecards,
                "scores": cp.published_scores,
                "pages": cp.pages,
            },
            "written": {
                "scorecards": self.written.scorecards,
                "scores": self.written.scores,
                "per_shard": {str(k): v for k, v in sorted(self.written.per_shard.items())},
                "workers": dict(sorted(self.written.workers.items())),
            },
            "dead_lettered": {
                "scorecards": self.dead_lettered,
                "scores": self.written.dead_lettered_scores,
                "first": [d.model_dump(mode="json") for d in self.written.first_dead_letters],
            },
            "waiting_for_partitions": self.lagging_partitions,
            "error": cp.error,
            "started_at": None if cp.state == "requested" else cp.started_at.isoformat(),
            "updated_at": cp.updated_at.isoformat(),
            "finished_at": None if cp.finished_at is None else cp.finished_at.isoformat(),
        }


def lagging(
    checkpoint: JobCheckpoint, committed: dict[int, int], tally: WrittenTally | None = None
) -> list[int]:
    """The partitions where the job is not yet known to be handled: the group has not committed
    past the job's last message there, and (with ``tally``, when the checkpoint knows the job's
    offsets) the written records read so far do not name every one of them as written or
    dead-lettered."""
    behind = [p for p, last in checkpoint.max_offsets.items() if committed.get(p, -1) <= last]
    published = checkpoint.published_runs
    if not behind or tally is None or published is None:
        return sorted(behind)
    unhandled = set(tally.unhandled({p: published.get(p, []) for p in behind}))
    return sorted(p for p in behind if p in unhandled)


class JobWatcher:
    """Follows one job: each :meth:`poll` reads only what was added to the jobs and written
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

    def poll(self) -> JobStatus | None:
        """The job's status now; None while the jobs topic has no record of it."""
        for key, value in self._jobs.read_new():
            if key == self._key:
                self._checkpoint = JobCheckpoint.model_validate_json(value)
        checkpoint = self._checkpoint
        if checkpoint is None:
            return None
        # Committed offsets first, written records second: a commit seen here comes after its
        # batch's record was durable, so the counts read next include that record.
        committed = read_committed(
            self._offsets, self._settings.scorecards_topic, checkpoint.max_offsets
        )
        self._tally.add(self._written.read_new())
        summary = self._tally.summary(run=checkpoint.started_at)
        return JobStatus(checkpoint, summary, lagging(checkpoint, committed, self._tally))

    def status(self) -> JobStatus:
        """The job's status now; :class:`ReindexError` while the job has no checkpoint."""
        found = self.poll()
        if found is None:
            raise ReindexError(f"no job {self._job_id!r} in {self._settings.jobs_topic}")
        return found


def job_status(settings: Settings, job_id: str) -> JobStatus:
    with JobWatcher(settings, job_id) as watcher:
        return watcher.status()


# Between two polls of ``wait_for_job``. A poll reads only what was added to the jobs and written
# topics since the last one and asks for the committed offsets once; the watcher's readers fetch
# in the background anyway (``fetch.wait.max.ms`` 10), so polling often adds little to the
# broker's load, and a job is seen complete this soon after its last batch's record.
POLL_S = 0.1


def wait_for_job(
    settings: Settings,
    job_id: str,
    timeout_s: float,
    *,
    say: Callable[[str], None],
    poll_s: float = POLL_S,
    report_every_s: float = 10.0,
    check: Callable[[], None] | None = None,
) -> JobStatus | None:
    """Poll until the job is finished (complete, failed or cancelled) or ``timeout_s`` passed;
    return the last status (None if the job never appeared). A job not recorded yet (its
    request not taken by ``serve`` yet) is waited for like one that runs. ``check`` runs before
    every poll and may raise to stop waiting (the benchmark: a process it started died)."""
    deadline = time.monotonic() + timeout_s
    last_report = 0.0
    with JobWatcher(settings, job_id) as watcher:
        while True:
            if check is not None:
                check()
            status = watcher.poll()
            now = time.monotonic()
            if (status is not None and status.finished) or now >= deadline:
                return status
            if now - last_report >= report_every_s:
                last_report = now
                if status is None:
                    say(f"job {job_id}: not recorded yet, waiting for it to appear")
                else:
                    cp = status.checkpoint
                    say(
                        f"job {job_id}: {cp.state}, published {cp.published_scorecards:,}, "
                        f"written {status.written.scorecards:,}, "
                        f"dead-lettered {status.dead_lettered:,}"
                    )
            time.sleep(min(poll_s, max(0.0, deadline - now)))


def raise_for_outcome(
    status: JobStatus | None, job_id: str, *, waited_s: float | None = None
) -> None:
    """Raise what the exit code says (SPEC §7); return when the job is clean, or, without a
    wait (``waited_s`` None), when it is still on its way."""
    if status is None:
        if waited_s is not None:
            raise GaveUpWaitingError(f"no job {job_id!r} appeared within {waited_s:.0f} s")
        raise ReindexError(f"no job {job_id!r}")
    problem = status.problem()
    if problem is not None:
        raise problem
    if waited_s is not None and not status.complete:
        raise GaveUpWaitingError(
            f"job {job_id} not fully written after {waited_s:.0f} s ({status.state}, "
            f"published {status.checkpoint.published_scorecards:,}, "
            f"written {status.written.scorecards:,}, dead-lettered {status.dead_lettered:,})"
        )
