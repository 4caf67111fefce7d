"""``reindex serve``'s metrics, in Prometheus conventions (see :mod:`reindex_common.prometheus`).

* ``reindex_serve_jobs_started_total``: requests whose job was started (or resumed);
* ``reindex_serve_jobs_completed_total``: jobs run to the end (including ones found done);
* ``reindex_serve_jobs_failed_total``: failed attempts (each is retried with backoff);
* ``reindex_serve_requests_rejected_total``: invalid requests sent to the DLQ;
* ``reindex_serve_scorecards_published_total``, ``reindex_serve_scores_published_total``: what
  this process published, counted at each checkpoint;
* ``reindex_serve_job_duration_seconds``: a histogram of completed jobs' run times.

Served at ``/metrics`` on ``REINDEX_METRICS_BIND:REINDEX_METRICS_PORT`` when the port is set.
"""

from __future__ import annotations

import time

from reindex_common.jobs import JobCheckpoint
from reindex_common.prometheus import Registry


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = Registry()
        self.jobs_started = self.registry.counter(
            "reindex_serve_jobs_started_total", "Jobs started or resumed for a request"
        )
        self.jobs_completed = self.registry.counter(
            "reindex_serve_jobs_completed_total", "Jobs run to the end"
        )
        self.jobs_failed = self.registry.counter(
            "reindex_serve_jobs_failed_total", "Failed job attempts (retried with backoff)"
        )
        self.requests_rejected = self.registry.counter(
            "reindex_serve_requests_rejected_total", "Invalid requests sent to the DLQ"
        )
        self.scorecards_published = self.registry.counter(
            "reindex_serve_scorecards_published_total", "Scorecards published by this process"
        )
        self.scores_published = self.registry.counter(
            "reindex_serve_scores_published_total", "Score rows published by this process"
        )
        self.job_seconds = self.registry.histogram(
            "reindex_serve_job_duration_seconds", "Run time of completed jobs"
        )
        self._last: JobCheckpoint | None = None
        self._began = 0.0

    def job_started(self) -> None:
        self.jobs_started.inc()
        self._last = None
        self._began = time.monotonic()

    def checkpoint(self, checkpoint: JobCheckpoint) -> None:
        """Count what was published since the job's previous checkpoint seen here."""
        last, self._last = self._last, checkpoint
        if last is None or last.job_id != checkpoint.job_id:
            return  # the job's starting point (a resumed job published the rest earlier)
        cards = checkpoint.published_scorecards - last.published_scorecards
        scores = checkpoint.published_scores - last.published_scores
        if cards > 0:
            self.scorecards_published.inc(cards)
        if scores > 0:
            self.scores_published.inc(scores)

    def job_completed(self, final: JobCheckpoint) -> None:
        if self._last is not None:
            self.checkpoint(final)
        self._last = None
        self.jobs_completed.inc()
        self.job_seconds.observe(time.monotonic() - self._began)

    def job_failed(self) -> None:
        self.jobs_failed.inc()
        self._last = None

    def request_rejected(self) -> None:
        self.requests_rejected.inc()

    def exposition(self) -> str:
        return self.registry.exposition()
