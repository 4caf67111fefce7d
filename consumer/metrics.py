"""The worker's counters, and their Prometheus text exposition."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class Metrics:
    """Counters since the worker started; safe to update from the writer threads."""

    worker: str
    scorecards_written: int = 0
    scores_written: int = 0
    dlq_messages: int = 0
    write_retries: int = 0
    batches: int = 0
    batch_seconds_sum: float = 0.0
    batch_seconds_last: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def batch_done(self, scorecards: int, scores: int, rejected: int, seconds: float) -> None:
        with self._lock:
            self.batches += 1
            self.scorecards_written += scorecards
            self.scores_written += scores
            self.dlq_messages += rejected
            self.batch_seconds_sum += seconds
            self.batch_seconds_last = seconds

    def retried(self) -> None:
        with self._lock:
            self.write_retries += 1

    def exposition(self) -> str:
        """Prometheus text format (version 0.0.4)."""
        label = f'{{worker="{self.worker}"}}'
        rows = [
            (
                "reindex_scorecards_written_total",
                "counter",
                "Scorecards written to shards",
                self.scorecards_written,
            ),
            (
                "reindex_scores_written_total",
                "counter",
                "Score rows written to shards",
                self.scores_written,
            ),
            (
                "reindex_dlq_messages_total",
                "counter",
                "Messages sent to the DLQ",
                self.dlq_messages,
            ),
            (
                "reindex_write_retries_total",
                "counter",
                "Retried shard statements",
                self.write_retries,
            ),
            (
                "reindex_batch_seconds_sum",
                "counter",
                "Time spent writing batches",
                self.batch_seconds_sum,
            ),
            ("reindex_batch_seconds_count", "counter", "Batches written", self.batches),
            (
                "reindex_batch_seconds_last",
                "gauge",
                "Duration of the last batch",
                self.batch_seconds_last,
            ),
        ]
        lines = []
        for name, kind, help_text, value in rows:
            lines += [
                f"# HELP {name} {help_text}",
                f"# TYPE {name} {kind}",
                f"{name}{label} {value}",
            ]
        return "\n".join(lines) + "\n"
