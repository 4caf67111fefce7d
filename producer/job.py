"""One reindex job: page the selection out of Postgres and publish it, resumably.

For each page, in order:

1. read up to ``batch_size`` scorecards after the job's cursor, and all their scores in one query
   (a reader thread fetches the next page while this one is published);
2. publish one message per scorecard to the scorecards topic (key: the scorecard, so that all
   messages of one scorecard land on one partition);
3. once the broker has acknowledged every message of the page (``acks=all``) — and of every page
   before it — record the page's checkpoint (cursor, counts, highest offset per partition) in the
   jobs topic. At most ``MAX_PAGES_IN_FLIGHT`` pages wait for their acknowledgements.

A crash republishes on resume the pages after the last recorded checkpoint — at most
``MAX_PAGES_IN_FLIGHT`` + 1 of them; the consumer's writes are idempotent, so that costs time,
not correctness.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from producer.encode import page_messages
from producer.source import Page, ScorecardSource, Selection, prefetched
from reindex_common.cancel import CancelWatch, clear_cancel
from reindex_common.errors import BadInputError, ReindexError
from reindex_common.jobs import JobCheckpoint, read_checkpoint, write_checkpoint
from reindex_common.kafka import MAX_RUNS, ReliableProducer, ensure_topics, reindexer_topics
from reindex_common.lag import LagGate
from reindex_common.messages import ReindexRequest
from reindex_common.offset_runs import to_runs_merged
from reindex_common.progress import ProgressView
from reindex_common.settings import Settings
from reindex_common.size_limit import check_message_size, scorecard_name

log = logging.getLogger("reindex.producer")

# Pages published but not yet acknowledged, at most: bounds what a crash republishes.
MAX_PAGES_IN_FLIGHT = 4


class JobInterrupted(ReindexError):
    """Raised by an ``on_page`` hook to stop a job at a page boundary; a rerun resumes it."""


class JobCancelled(JobInterrupted):
    """The job was cancelled (``reindex jobs cancel``) and stopped at a page boundary; its state
    is recorded ``cancelled``. A rerun resumes it."""


@dataclass(frozen=True)
class JobOptions:
    restart: bool = False  # run a finished (or half-done) job again from the start
    dry_run: bool = False  # count and report, publish nothing
    max_rate: float | None = None  # scorecards per second, to spare a production database
    show_progress: bool = True  # a progress bar on a terminal (log lines when False or no TTY)
    # Called with the checkpoint after the count and after every recorded page; may raise
    # JobInterrupted. The request service keeps its consumer group membership alive here.
    on_page: Callable[[JobCheckpoint], None] | None = None
    # Record state "failed" when the job fails. The request service retries a failing job and
    # records the failure itself once it gives up, so that a retry never looks failed.
    record_failure: bool = True


def _same_request(a: ReindexRequest, b: ReindexRequest) -> bool:
    keep = {"start", "end", "scorecard_types", "clean_up"}
    return a.model_dump(include=keep) == b.model_dump(include=keep)


class _RateLimit:
    def __init__(self, per_second: float | None) -> None:
        self._per_second = per_second
        self._began = time.monotonic()
        self._count = 0

    def after(self, count: int) -> None:
        if not self._per_second:
            return
        self._count += count
        ahead = self._count / self._per_second - (time.monotonic() - self._began)
        if ahead > 0:
            time.sleep(ahead)


def run_job(
    settings: Settings,
    request: ReindexRequest,
    options: JobOptions = JobOptions(),
) -> JobCheckpoint:
    """Run (or resume) ``request``'s job to the end; return its final checkpoint."""
    # First: the producer gets its producer id while the topics and the checkpoint are read.
    producer = ReliableProducer(
        settings,
        client_id=f"reindex-producer-{request.job_id}",
        runs_of=settings.scorecards_topic,
    )
    try:
        return _run_job(settings, request, options, producer)
    finally:
        producer.flush(10)


def _run_job(
    settings: Settings,
    request: ReindexRequest,
    options: JobOptions,
    producer: ReliableProducer,
) -> JobCheckpoint:
    ensure_topics(settings, reindexer_topics(settings))
    previous = read_checkpoint(settings, request.job_id)
    if previous is not None and not options.restart:
        if not _same_request(previous.request, request):
            raise BadInputError(
                f"job {request.job_id} already exists with another range or types; "
                "choose another --job-id, or pass --restart to replace it"
            )
        if previous.state == "done":
            log.info(
                "job %s is already done; nothing to publish (--restart runs it again)",
                request.job_id,
            )
            return previous
    job = _JobRun(settings, request, options, producer, previous)
    if not options.dry_run:
        job.cancel_watch = CancelWatch(settings, request.job_id)
    try:
        return job.run()
    except JobCancelled:
        job.record_cancelled()
        raise
    except JobInterrupted:
        log.info(
            "job %s stopped after %s published scorecards; rerun it to resume",
            request.job_id,
            f"{job.checkpoint.published_scorecards:,}",
        )
        raise
    except ReindexError as e:
        if options.record_failure:
            job.record_failure(e)
        raise
    finally:
        if job.cancel_watch is not None:
            job.cancel_watch.close()


def run_and_report(settings: Settings, request: ReindexRequest, options: JobOptions) -> str:
    """Run the job (see :func:`run_job`) and return the one-line summary for the operator."""
    began_at = datetime.now(UTC)
    began = time.monotonic()
    result = run_job(settings, request, options)
    if options.dry_run:
        return (
            f"job {request.job_id}: dry run, {result.selected or 0:,} scorecards would be published"
        )
    totals = f"{result.published_scorecards:,} scorecards with {result.published_scores:,} scores"
    if result.updated_at < began_at:
        return (
            f"job {result.job_id}: already done ({totals} published earlier); "
            "nothing published now (--restart runs it again)"
        )
    return (
        f"job {result.job_id}: published {totals} in {time.monotonic() - began:.1f} s "
        f"({result.state})"
    )


def run_and_summarize(
    settings: Settings, request: ReindexRequest, options: JobOptions
) -> dict[str, object]:
    """Run the job (see :func:`run_job`) and return the summary of ``produce -o json``."""
    began_at = datetime.now(UTC)
    began = time.monotonic()
    result = run_job(settings, request, options)
    return {
        "job_id": result.job_id,
        "state": result.state,
        "dry_run": options.dry_run,
        "already_done": not options.dry_run and result.updated_at < began_at,
        "selected": result.selected,
        "published_scorecards": result.published_scorecards,
        "published_scores": result.published_scores,
        "pages": result.pages,
        "seconds": round(time.monotonic() - began, 3),
        "request": result.request.model_dump(mode="json"),
        "started_at": result.started_at.isoformat(),
        "finished_at": None if result.finished_at is None else result.finished_at.isoformat(),
    }


class _JobRun:
    """The state of one run of a job; ``checkpoint`` is always the last one recorded."""

    def __init__(
        self,
        settings: Settings,
        request: ReindexRequest,
        options: JobOptions,
        producer: ReliableProducer,
        previous: JobCheckpoint | None,
    ) -> None:
        self.settings = settings
        self.request = request
        self.options = options
        self.producer = producer
        self.cancel_watch: CancelWatch | None = None
        if previous is None or options.restart:
            self.checkpoint = JobCheckpoint(
                job_id=request.job_id,
                request=request,
                state="running",
                started_at=datetime.now(UTC),
                published_runs={},
            )
        else:
            self.checkpoint = previous.model_copy(update={"state": "running", "error": None})
            log.info(
                "resuming job %s after %s published scorecards",
                request.job_id,
                f"{previous.published_scorecards:,}",
            )
        # What earlier runs published: this run's offsets are added to them.
        self._earlier_runs = self.checkpoint.published_runs

    def _record(self, *, wait: bool = True, **changes: object) -> None:
        self.checkpoint = self.checkpoint.model_copy(
            update={**changes, "updated_at": datetime.now(UTC)}
        )
        write_checkpoint(self.producer, self.settings, self.checkpoint, wait=wait)

    def run(self) -> JobCheckpoint:
        request = self.request
        selection = Selection(request.start, request.end, request.scorecard_types)
        with ScorecardSource(self.settings.director_dsn, self.settings.historic_dsn) as source:
            selected = source.count(selection)
            log.info(
                "job %s: %s scorecards match [%s, %s) types %s%s",
                request.job_id,
                f"{selected:,}",
                request.start.isoformat(),
                request.end.isoformat(),
                ",".join(request.scorecard_types),
                " (dry run: nothing is published)" if self.options.dry_run else "",
            )
            if self.options.dry_run:
                return self.checkpoint.model_copy(update={"selected": selected})
            # Not waited for: an idempotent producer's first delivery waits for its producer id
            # (~0.5-1 s), which now overlaps the first pages' reads. The broker was reachable
            # (ensure_topics), and the page checkpoints that follow are delivered in order.
            self._record(wait=False, selected=self.checkpoint.selected or selected)
            self._after_page()
            self._publish_pages(source, selection)
        return self.checkpoint

    def _publish_pages(self, source: ScorecardSource, selection: Selection) -> None:
        topic = self.settings.scorecards_topic
        request = self.request
        limit = _RateLimit(self.options.max_rate)
        limit_bytes = self.settings.max_message_bytes
        total = max(self.checkpoint.selected or 0, self.checkpoint.published_scorecards)
        began = time.monotonic()
        progress_view = ProgressView(
            f"publishing {request.job_id}", total, bar=self.options.show_progress
        )
        in_flight: deque[tuple[int, Page]] = deque()
        pages = source.pages(selection, self.checkpoint.cursor, request.batch_size)
        with progress_view as progress, LagGate(self.settings, topic) as gate:
            progress.advance(0, start_at=self.checkpoint.published_scorecards)
            try:
                for number, page in enumerate(prefetched(pages), start=1):
                    for key, value in page_messages(
                        page,
                        job_id=request.job_id,
                        clean_up=request.clean_up,
                        reindexed_at=self.checkpoint.started_at,  # same bytes if republished
                    ):
                        check_message_size(limit_bytes, scorecard_name(key), key, value)
                        self.producer.send(topic, value, key=key, tag=number)
                    in_flight.append((number, page))
                    self._checkpoint_delivered(in_flight, MAX_PAGES_IN_FLIGHT)
                    progress.advance(page.size)
                    limit.after(page.size)
                    gate.wait(  # back-pressure (--max-lag): record what is out, then wait
                        lambda: self.producer.offsets_of(topic),
                        show=progress.note,
                        before=lambda: self._checkpoint_delivered(in_flight, 0),
                        between=self._after_page,
                    )
                    self._after_page()
            except JobInterrupted:
                self._checkpoint_delivered(in_flight, 0)  # record what was published, then stop
                raise
            self._checkpoint_delivered(in_flight, 0)
        self._record(state="done", finished_at=datetime.now(UTC))
        log.info(
            "job %s done: %s scorecards and %s scores published in %.1f s",
            request.job_id,
            f"{self.checkpoint.published_scorecards:,}",
            f"{self.checkpoint.published_scores:,}",
            time.monotonic() - began,
        )

    def _checkpoint_delivered(self, in_flight: deque[tuple[int, Page]], keep: int) -> None:
        """Record a checkpoint for every page, in order, whose messages were all delivered.

        Waits until at most ``keep`` pages are still undelivered. The broker acknowledges while
        the next pages are read and sent, instead of one round trip per page.
        """
        topic = self.settings.scorecards_topic
        self.producer.poll(0)
        while in_flight:
            number, page = in_flight[0]
            if self.producer.undelivered(number):
                if len(in_flight) <= keep:
                    return
                self.producer.poll(0.01)
                continue
            in_flight.popleft()
            self.producer.forget(number)
            offsets = dict(self.checkpoint.max_offsets)
            for partition, offset in self.producer.offsets_of(topic).items():
                offsets[partition] = max(offset, offsets.get(partition, -1))
            self._record(
                wait=False,
                cursor=page.cursor,
                published_scorecards=self.checkpoint.published_scorecards + page.size,
                published_scores=self.checkpoint.published_scores + page.score_count,
                pages=self.checkpoint.pages + 1,
                max_offsets=offsets,
                published_runs=self._published_runs(),
            )

    def _published_runs(self) -> dict[int, list[tuple[int, int]]] | None:
        """Every offset the job published at, earlier runs included; None when not known."""
        earlier, now = self._earlier_runs, self.producer.delivered_runs()
        if earlier is None or now is None:
            return None
        partitions = earlier.keys() | now.keys()
        runs = {p: to_runs_merged([*earlier.get(p, ()), *now.get(p, ())]) for p in partitions}
        return runs if sum(map(len, runs.values())) <= MAX_RUNS else None

    def _after_page(self) -> None:
        if self.cancel_watch is not None and self.cancel_watch.cancelled:
            raise JobCancelled(
                f"job {self.request.job_id} cancelled after "
                f"{self.checkpoint.published_scorecards:,} published scorecards "
                "(reindex jobs cancel); rerun it to resume"
            )
        if self.options.on_page is not None:
            self.options.on_page(self.checkpoint)

    def record_cancelled(self) -> None:
        """Record state ``cancelled``, then delete the cancel marker (see reindex_common/cancel)."""
        self._record(state="cancelled", error="cancelled (reindex jobs cancel)")
        clear_cancel(self.producer, self.settings, self.request.job_id)
        log.info("job %s cancelled", self.request.job_id)

    def record_failure(self, error: Exception) -> None:
        """Best effort: mark the job failed so that `status` says why (a rerun resumes it)."""
        try:
            self._record(state="failed", error=str(error))
        except ReindexError:
            log.warning("could not record the failure of job %s", self.checkpoint.job_id)
