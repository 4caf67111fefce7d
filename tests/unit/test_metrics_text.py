"""The metrics' text: Prometheus conventions, escaped labels, parseable by the reference parser."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prom_text import parse, total

from consumer.batch import build
from consumer.metrics import Metrics
from producer.metrics import ServeMetrics
from reindex_common.errors import ReindexError
from reindex_common.prometheus import Counter, MetricsServer, Registry, escape_label


def test_label_values_are_escaped() -> None:
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    worker = 'host "x"\\1\nforged_metric_total 1e9'
    metrics = Metrics(worker=worker)
    metrics.retried()
    text = metrics.exposition()
    samples = parse(text)  # one line per sample: the newline did not forge a line
    assert samples["reindex_write_retries_total"] == {(("worker", worker),): 1.0}
    assert "forged_metric_total" not in samples


def test_consumer_metrics_follow_the_conventions() -> None:
    metrics = Metrics(worker="w1")
    empty = parse(metrics.exposition())
    assert total(empty, "reindex_dlq_messages_total", worker="w1") == 0
    assert total(empty, "reindex_batch_duration_seconds_count", worker="w1") == 0

    metrics.batch_done(build([], 2), 0.3)
    metrics.batch_done(build([], 2), 7.0)
    metrics.retried()
    samples = parse(metrics.exposition())
    assert total(samples, "reindex_write_retries_total", worker="w1") == 1
    assert total(samples, "reindex_batch_duration_seconds_count", worker="w1") == 2
    assert total(samples, "reindex_batch_duration_seconds_sum", worker="w1") == pytest.approx(7.3)
    buckets = samples["reindex_batch_duration_seconds_bucket"]
    assert buckets[(("le", "0.5"), ("worker", "w1"))] == 1
    assert buckets[(("le", "10"), ("worker", "w1"))] == 2
    assert not any(name.endswith("_last") for name in samples)


def test_counters_must_end_in_total() -> None:
    with pytest.raises(ValueError, match="_total"):
        Counter("reindex_batches", "x")
    registry = Registry()
    counter = registry.counter("x_total", "help with a \\ and a\nnewline")
    counter.inc(2.5)
    parse(registry.exposition())


def test_serve_metrics_count_what_this_process_published() -> None:
    from reindex_common.jobs import JobCheckpoint  # noqa: PLC0415

    metrics = ServeMetrics()
    base = JobCheckpoint.model_construct(job_id="j", published_scorecards=100, published_scores=900)
    metrics.job_started()
    metrics.checkpoint(base)  # a resumed job: 100 were published by an earlier run
    page = {"published_scorecards": 150, "published_scores": 1400}
    metrics.checkpoint(base.model_copy(update=page))
    metrics.job_completed(
        base.model_copy(update={"published_scorecards": 170, "published_scores": 1600})
    )
    metrics.job_failed()
    metrics.request_rejected()
    samples = parse(metrics.exposition())
    assert total(samples, "reindex_serve_scorecards_published_total") == 70
    assert total(samples, "reindex_serve_scores_published_total") == 700
    assert total(samples, "reindex_serve_jobs_completed_total") == 1
    assert total(samples, "reindex_serve_jobs_failed_total") == 1
    assert total(samples, "reindex_serve_requests_rejected_total") == 1
    assert total(samples, "reindex_serve_job_duration_seconds_count") == 1


def test_the_server_serves_metrics_only() -> None:
    server = MetricsServer("127.0.0.1", 0, lambda: "x_total 1\n")
    try:
        url = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:  # noqa: S310
            assert r.read() == b"x_total 1\n"
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{url}/", timeout=10)  # noqa: S310
        assert missing.value.code == 404
        missing.value.close()
        with pytest.raises(ReindexError, match=r"cannot serve metrics on 127\.0\.0\.1:\d+"):
            MetricsServer("127.0.0.1", server.port, lambda: "")
    finally:
        server.stop()
