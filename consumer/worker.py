"""``reindex consume``: run one worker of the consumer group until it is stopped."""

from __future__ import annotations

import logging
import os
import socket

from consumer.app import ConsumerWorker, WorkerState, create_app
from reindex_common.errors import ReindexError
from reindex_common.kafka import ensure_topics, reindexer_topics
from reindex_common.prometheus import MetricsServer
from reindex_common.settings import Settings

log = logging.getLogger("reindex.consumer")


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def run_worker(settings: Settings, worker_id: str, loglevel: str = "info") -> None:
    """Run until SIGTERM/SIGINT; raise the :class:`ReindexError` that stopped it, if any."""
    ensure_topics(settings, reindexer_topics(settings))
    state = WorkerState(worker_id=worker_id)
    app, processor = create_app(settings, state)
    log.info(
        "worker %s joins group %s on %s (batches of %d, session timeout %.0f s)",
        worker_id,
        settings.group_id,
        settings.scorecards_topic,
        settings.consumer_batch_size,
        settings.consumer_session_timeout,
    )
    worker = ConsumerWorker(app, state, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    metrics_server = None
    if settings.metrics_port is not None:  # our own server: only /metrics, no Faust views
        render = processor.metrics.exposition
        try:
            metrics_server = MetricsServer(settings.metrics_bind, settings.metrics_port, render)
        except ReindexError:
            processor.close()
            raise
    try:
        worker.execute_from_commandline()
    except SystemExit:
        pass  # mode exits the process when the worker stops; we still have to clean up
    except Exception as e:  # mode re-raises whatever crashed the app (a Kafka client error)
        raise ReindexError(f"worker {worker_id} crashed: {type(e).__name__}: {e}") from e
    finally:
        if metrics_server is not None:
            metrics_server.stop()
        processor.close()
    if state.fatal is not None:
        raise state.fatal
