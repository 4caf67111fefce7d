"""Cancelling a job (``reindex jobs cancel JOB``): a marker in the jobs topic, watched by producers.

The marker is a record with key ``cancel/<job id>`` in the jobs topic (job ids cannot hold
``/``, so readers of checkpoints skip it). In order:

1. ``reindex jobs cancel`` writes the marker (refused for a job that is done, failed or cancelled
   already); a job that no producer runs yet is cancelled when one picks it up;
2. the producer running the job (``produce`` or ``serve``) watches the topic in a thread
   (:class:`CancelWatch`) and, at the next page boundary, stops as it does on SIGTERM: what was
   published is checkpointed, and is written by the workers as usual;
3. it records the job's state ``cancelled`` and then deletes the marker (a tombstone), so that
   running the job again later resumes it instead of stopping at once.

A crash between 3's two writes leaves the marker: the rerun is cancelled again, and clears it.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from datetime import UTC, datetime

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka import KafkaError as ConfluentKafkaError

from reindex_common.errors import BadInputError, KafkaError
from reindex_common.jobs import read_checkpoint
from reindex_common.kafka import (
    ReliableProducer,
    consumer_size_config,
    ensure_topics,
    reindexer_topics,
)
from reindex_common.settings import Settings

log = logging.getLogger("reindex.cancel")

CANCEL_PREFIX = "cancel/"
FINAL_STATES = ("done", "failed", "cancelled")


def cancel_key(job_id: str) -> bytes:
    """The jobs-topic key of ``job_id``'s cancel marker."""
    return f"{CANCEL_PREFIX}{job_id}".encode()


def request_cancel(settings: Settings, job_id: str) -> str:
    """Write the cancel marker of ``job_id``; returns a line for the operator.

    Raises :class:`BadInputError` when the job has ended already (nothing to cancel).
    """
    ensure_topics(settings, reindexer_topics(settings))
    checkpoint = read_checkpoint(settings, job_id)
    if checkpoint is not None and checkpoint.state in FINAL_STATES:
        raise BadInputError(f"job {job_id} is {checkpoint.state} already: nothing to cancel")
    marker = {"job_id": job_id, "requested_at": datetime.now(UTC).isoformat()}
    producer = ReliableProducer(settings, client_id="reindex-cancel")
    producer.send(settings.jobs_topic, json.dumps(marker).encode(), key=cancel_key(job_id))
    producer.flush(30)
    if checkpoint is None:
        return (
            f"job {job_id}: cancel requested; no producer has started it yet, it is cancelled "
            "when one picks it up"
        )
    return (
        f"job {job_id}: cancel requested; its producer stops at the next page "
        f"({checkpoint.published_scorecards:,} scorecards published so far)"
    )


def clear_cancel(producer: ReliableProducer, settings: Settings, job_id: str) -> None:
    """Delete ``job_id``'s cancel marker (a tombstone); returns once the broker has it."""
    producer.send(settings.jobs_topic, None, key=cancel_key(job_id))
    producer.flush(30)


class CancelWatch:
    """Follows the jobs topic in a thread; :attr:`cancelled` once ``job_id`` has a marker.

    The topic is read from its beginning, and nothing counts until the first read reached its
    end: a marker deleted since (a tombstone further on) must not cancel the job.
    """

    def __init__(self, settings: Settings, job_id: str, poll_s: float = 0.2) -> None:
        self._job_id = job_id
        self._key = cancel_key(job_id)
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._marked = False
        self._caught_up = False
        try:
            self._consumer = Consumer(
                {
                    **settings.kafka_client_config(),
                    **consumer_size_config(settings),
                    "group.id": f"reindex-cancel-watch-{uuid.uuid4().hex[:8]}",  # assigned by hand
                    "enable.auto.commit": False,
                    "enable.partition.eof": True,
                }
            )
            topic = settings.jobs_topic
            metadata = self._consumer.list_topics(topic, timeout=30)
            found = metadata.topics.get(topic)
            partitions = [] if found is None or found.error is not None else list(found.partitions)
            self._pending = set(partitions)
            self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        except KafkaException as e:
            raise KafkaError(f"cannot watch {settings.jobs_topic}: {e.args[0].str()}") from e
        if not self._pending:
            self._caught_up = True
        self._thread = threading.Thread(target=self._run, name="cancel-watch", daemon=True)
        self._thread.start()

    @property
    def cancelled(self) -> bool:
        return self._caught_up and self._marked

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                msg = self._consumer.poll(self._poll_s)
                if msg is None:
                    continue
                error = msg.error()
                if error is not None:
                    if error.code() == ConfluentKafkaError._PARTITION_EOF:
                        self._pending.discard(msg.partition() or 0)
                        if not self._pending:
                            self._caught_up = True
                    else:
                        log.warning("watching for a cancel: %s", error.str())
                    continue
                if msg.key() == self._key:
                    self._marked = bool(msg.value())
                    if self._marked and self._caught_up:
                        log.info("cancel requested for job %s", self._job_id)
        except KafkaException as e:  # the job goes on; only its cancel is not seen
            log.warning("stopped watching for a cancel: %s", e.args[0].str())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()

    def __enter__(self) -> CancelWatch:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
