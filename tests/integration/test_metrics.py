"""``/metrics`` of a real consumer worker and of a real ``reindex serve``, scraped and parsed.

Both expositions are read by a strict parser and by prometheus_client's (``prom_text``): counters
end in ``_total``, batch and job times are histograms in seconds, rows written carry a ``shard``
label, and the counts equal what reached ClickHouse and Kafka.
"""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from fix_pipeline import run_month_job, seed_month, start_worker, wait_written
from fix_services import settings_env
from prom_text import parse, total
from test_producer import (
    MakeDb,
    MakeSettings,
    background,
    checkpoint_where,
    committed_offset,
    produce_raw,
    seeded,
    wait_for,
)

from devstack import stack
from producer.service import serve_group
from reindex_common.clickhouse import shard_client
from reindex_common.jobs import read_checkpoint
from reindex_common.settings import Settings


def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return str(r.read().decode())


def test_a_workers_metrics_count_rows_per_shard(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    settings = pipeline_settings
    seed_month(settings, 400)
    run_month_job(settings, "metrics")
    port = stack.free_port()
    worker = start_worker(settings, "w1", tmp_path, REINDEX_METRICS_PORT=str(port))
    try:
        wait_written(settings, "metrics")
        samples = parse(scrape(port))
        # Faust's own web views are not served on the metrics port.
        for path in ("/", "/router/", "/stats/"):
            with pytest.raises(urllib.error.HTTPError) as missing:
                scrape(port, path)
            assert missing.value.code == 404
            missing.value.close()
    finally:
        assert worker.stop() == 0, worker.output()

    written = samples["reindex_scorecards_written_total"]
    assert {dict(labels)["worker"] for labels in written} == {"w1"}
    for shard in settings.shards:
        with shard_client(shard, database=settings.clickhouse_database) as client:
            cards = client.command("SELECT count() FROM scorecards FINAL")
            scores = client.command("SELECT count() FROM scorecard_scores FINAL")
        label = str(shard.index)
        assert total(samples, "reindex_scorecards_written_total", shard=label) == cards
        assert total(samples, "reindex_scores_written_total", shard=label) == scores
    assert total(samples, "reindex_scorecards_written_total") == 400
    assert total(samples, "reindex_dlq_messages_total", worker="w1") == 0
    assert total(samples, "reindex_write_retries_total", worker="w1") == 0
    batches = total(samples, "reindex_batch_duration_seconds_count", worker="w1")
    assert batches >= 1
    assert total(samples, "reindex_batch_duration_seconds_sum", worker="w1") > 0


def test_serve_exposes_jobs_and_published_scorecards(
    make_settings: MakeSettings, make_source_db: MakeDb, tmp_path: Path
) -> None:
    settings, plan = seeded(make_settings, make_source_db, 300)
    request = {"job_id": "metered", "start": plan.start.isoformat(), "end": plan.end.isoformat()}
    produce_raw(settings, [(b"broken", b'{"start": '), (b"metered", json.dumps(request).encode())])
    port = stack.free_port()
    env = settings_env(settings) | {"REINDEX_METRICS_PORT": str(port)}
    log = tmp_path / "serve.log"
    with background(["serve"], env, log) as serve:
        wait_for("the job", checkpoint_where(settings, "metered", lambda cp: cp.state == "done"))
        group = serve_group(settings)
        wait_for("both requests committed", lambda: committed_offset(settings, group) == 2)
        samples = parse(scrape(port))
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0, log.read_text()
    done = read_checkpoint(settings, "metered")
    assert done is not None
    assert total(samples, "reindex_serve_jobs_started_total") == 1
    assert total(samples, "reindex_serve_jobs_completed_total") == 1
    assert total(samples, "reindex_serve_jobs_failed_total") == 0
    assert total(samples, "reindex_serve_requests_rejected_total") == 1
    assert total(samples, "reindex_serve_scorecards_published_total") == done.published_scorecards
    assert total(samples, "reindex_serve_scores_published_total") == done.published_scores
    assert done.published_scorecards > 0
    assert total(samples, "reindex_serve_job_duration_seconds_count") == 1
