"""The worker's metrics, in Prometheus conventions (see :mod:`reindex_common.prometheus`).

* ``reindex_scorecards_written_total{worker,shard}``, ``reindex_scores_written_total{worker,shard}``
* ``reindex_dlq_messages_total{worker}``, ``reindex_write_retries_total{worker}``
* ``reindex_batch_duration_seconds{worker}``: a histogram of batch times (parse and write)
"""

from __future__ import annotations

from consumer.batch import ParsedBatch
from reindex_common.prometheus import Registry


class Metrics:
    """The counters of one worker since it started; safe to update from the writer threads."""

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self.registry = Registry()
        self.scorecards_written = self.registry.counter(
            "reindex_scorecards_written_total", "Scorecards written to shards", ["worker", "shard"]
        )
        self.scores_written = self.registry.counter(
            "reindex_scores_written_total", "Score rows written to shards", ["worker", "shard"]
        )
        self.dlq_messages = self.registry.counter(
            "reindex_dlq_messages_total", "Messages sent to the DLQ", ["worker"]
        )
        self.write_retries = self.registry.counter(
            "reindex_write_retries_total", "Retried shard statements", ["worker"]
        )
        self.batch_seconds = self.registry.histogram(
            "reindex_batch_duration_seconds",
            "Time to parse and write a batch, until it may be committed",
            ["worker"],
        )
        # Exposed at zero from the start, so that rate() sees the first increase.
        self.dlq_messages.inc(0, worker)
        self.write_retries.inc(0, worker)

    def batch_done(self, batch: ParsedBatch, seconds: float) -> None:
        for shard in batch.shards.values():
            self.scorecards_written.inc(shard.scorecard_count, self.worker, str(shard.shard))
            self.scores_written.inc(shard.score_count, self.worker, str(shard.shard))
        self.dlq_messages.inc(len(batch.rejected), self.worker)
        self.batch_seconds.observe(seconds, self.worker)

    def retried(self) -> None:
        self.write_retries.inc(1, self.worker)

    def exposition(self) -> str:
        """Prometheus text format (version 0.0.4)."""
        return self.registry.exposition()
