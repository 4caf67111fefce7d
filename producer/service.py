"""``reindex serve``: the long-running producer service.

It reads the requests topic as one consumer group (offsets committed by hand) and runs each
request's job. For every request message, in order:

1. pause the assignment, so that no other request is fetched while this one is handled;
2. parse it; an invalid request goes to the DLQ with its reason (step 4 follows);
3. run (or resume) its job; between pages, ``poll(0)`` keeps the group membership alive;
4. commit the request's offset, synchronously, and resume the assignment.

Nothing is committed before its job is fully published, or its DLQ envelope acknowledged. No
request can stop the service: one that cannot be parsed (bad JSON, unknown fields, times out of
range, a body over ``MAX_REQUEST_BYTES``) goes to the DLQ with the reason. A job that fails is
retried with backoff, up to ``ServeOptions.max_attempts`` runs; then it is recorded ``failed``
with the reason in the jobs topic (only then: a job being retried still shows ``running``), its
request goes to the DLQ and is committed, and the service goes on with the next one. A service
stopped (SIGTERM, Ctrl-C: at the next page boundary) or killed mid-job gets the same
request again on restart, and the job resumes after its last checkpoint. A request without a
``job_id`` gets one derived from its position in the topic and its bytes, so that its job too
resumes instead of starting over. A request seen again after its job finished (a commit lost to a
crash or a rebalance) finds the job done and publishes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from producer.job import JobCancelled, JobInterrupted, JobOptions, run_job
from producer.job_end import record_job_end
from producer.metrics import ServeMetrics
from reindex_common.errors import BadInputError, KafkaError, ReindexError
from reindex_common.jobs import JobCheckpoint
from reindex_common.kafka import (
    ReliableProducer,
    consumer_size_config,
    ensure_topics,
    reindexer_topics,
)
from reindex_common.messages import ReindexRequest, dlq_message, dump, parse_request
from reindex_common.prometheus import MetricsServer
from reindex_common.settings import Settings
from reindex_common.size_limit import bound_envelope

log = logging.getLogger("reindex.serve")

# Short, so that a killed service's partition moves on quickly (Tansu also makes a group's first
# join wait half of it); heartbeats come from librdkafka's own thread, so jobs do not count.
SESSION_TIMEOUT_MS = 6_000
# What counts between two polls is one page of a job (plus the count query before the first).
MAX_POLL_INTERVAL_MS = 30 * 60 * 1000
# A request is a few hundred bytes; anything much larger is not one, and is not parsed.
MAX_REQUEST_BYTES = 64 * 1024


def serve_group(settings: Settings) -> str:
    """The consumer group of the request service."""
    return settings.topic("scorecard-reindex-serve")


@dataclass(frozen=True)
class ServeOptions:
    max_rate: float | None = None  # scorecards per second, for every job
    backoff_s: float = 1.0  # first wait before retrying a failed job; doubles up to the maximum
    max_backoff_s: float = 60.0
    poll_s: float = 1.0  # how long an idle poll waits (and so how soon a stop is noticed)
    max_attempts: int = 8  # runs of a failing job before it is recorded failed and skipped


def derived_job_id(message: Message) -> str:
    """A job id for a request that has none: the same every time this message is read."""
    digest = hashlib.sha256(message.value() or b"").hexdigest()[:8]
    return f"request-{message.partition()}-{message.offset()}-{digest}"


def _where(message: Message) -> str:
    return f"{message.topic()}[{message.partition()}]@{message.offset()}"


class RequestService:
    """Runs the jobs of the requests topic, one at a time, until :meth:`stop` is called."""

    def __init__(self, settings: Settings, options: ServeOptions = ServeOptions()) -> None:
        self.settings = settings
        self.options = options
        self._stopping = threading.Event()
        self.metrics = ServeMetrics()

    def stop(self) -> None:
        """Stop at the next page boundary (safe from a signal handler or another thread)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self) -> None:
        """Serve until stopped; raise :class:`KafkaError` when Kafka cannot be used at all."""
        ensure_topics(self.settings, reindexer_topics(self.settings))
        try:
            consumer = Consumer(
                {
                    **self.settings.kafka_client_config(),
                    "group.id": serve_group(self.settings),
                    "client.id": "reindex-serve",
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",  # requests sent before the first start
                    "session.timeout.ms": SESSION_TIMEOUT_MS,
                    "heartbeat.interval.ms": SESSION_TIMEOUT_MS // 4,
                    "max.poll.interval.ms": MAX_POLL_INTERVAL_MS,
                    **consumer_size_config(self.settings),
                }
            )
            consumer.subscribe([self.settings.requests_topic])
        except KafkaException as e:
            raise KafkaError(f"cannot consume requests: {e.args[0].str()}") from e
        log.info(
            "serving requests from %s as group %s",
            self.settings.requests_topic,
            serve_group(self.settings),
        )
        try:
            while not self.stopping:
                message = consumer.poll(self.options.poll_s)
                if message is None:
                    continue
                error = message.error()
                if error is not None:
                    if error.fatal():
                        raise KafkaError(f"cannot consume requests: {error.str()}")
                    log.warning("consuming requests: %s", error.str())
                    continue
                try:
                    self._handle(consumer, message)
                except Exception as e:  # a bug: the request must not stop the service either
                    log.exception("request %s: unexpected error", _where(message))
                    reason = f"unexpected error: {type(e).__name__}: {e}"
                    if self._reject(consumer, message, reason):
                        self._commit(consumer, message)
        finally:
            log.info("stopping: leaving group %s", serve_group(self.settings))
            consumer.close()

    # --- one request ---------------------------------------------------------------------------

    def _handle(self, consumer: Consumer, message: Message) -> None:
        with self._paused(consumer):
            raw = message.value() or b""
            try:
                if len(raw) > MAX_REQUEST_BYTES:
                    raise BadInputError(
                        f"request of {len(raw):,} bytes is over the {MAX_REQUEST_BYTES:,} bytes "
                        "a request may have; not parsed"
                    )
                request = parse_request(raw)
            except BadInputError as e:
                done = self._reject(consumer, message, str(e))
            except Exception as e:  # whatever the parser did not foresee is bad input too
                reason = f"invalid reindex request: {type(e).__name__}: {e}"
                done = self._reject(consumer, message, reason)
            else:
                if "job_id" not in request.model_fields_set:
                    request = request.model_copy(update={"job_id": derived_job_id(message)})
                log.info(
                    "request %s: job %s, [%s, %s) types %s, batch size %d%s",
                    _where(message),
                    request.job_id,
                    request.start.isoformat(),
                    request.end.isoformat(),
                    ",".join(request.scorecard_types),
                    request.batch_size,
                    ", clean-up" if request.clean_up else "",
                )
                done = self._run(consumer, message, request)
            if done:
                self._commit(consumer, message)

    def _run(self, consumer: Consumer, message: Message, request: ReindexRequest) -> bool:
        """Run the job until it is done or given up (True: commit), or the service stops (False)."""
        options = JobOptions(
            max_rate=self.options.max_rate,
            show_progress=False,
            on_page=lambda cp: self._on_page(consumer, cp),
            record_failure=False,  # recorded below, once retrying is over
        )
        delay = self.options.backoff_s
        attempt = 0
        self.metrics.job_started()
        while not self.stopping:
            attempt += 1
            try:
                final = run_job(self.settings, request, options)  # it logs the job's end
            except JobCancelled as e:  # recorded by the job; the queue moves on
                log.warning("%s; going on with the next request", e)
                return True
            except JobInterrupted:
                return False
            except BadInputError as e:  # e.g. the job id exists with another range
                return self._reject(consumer, message, str(e), request.job_id)
            except Exception as e:
                reason = str(e) if isinstance(e, ReindexError) else f"{type(e).__name__}: {e}"
                if attempt >= self.options.max_attempts:
                    return self._give_up(consumer, message, request, attempt, reason)
                log.error(
                    "job %s failed (attempt %d of %d), retrying in %.0f s: %s",
                    request.job_id,
                    attempt,
                    self.options.max_attempts,
                    delay,
                    reason,
                )
                self._wait(consumer, delay)
                delay = min(delay * 2, self.options.max_backoff_s)
                continue
            self.metrics.job_completed(final)
            return True
        return False

    def _give_up(
        self,
        consumer: Consumer,
        message: Message,
        request: ReindexRequest,
        attempts: int,
        reason: str,
    ) -> bool:
        """Record the job failed, dead-letter its request; True once both are durable."""
        log.error("job %s failed %d times, giving up: %s", request.job_id, attempts, reason)
        self.metrics.job_failed()
        delay = self.options.backoff_s
        while not self.stopping:
            try:
                record_job_end(self.settings, request, "failed", reason)
                break
            except ReindexError as e:
                log.error("cannot record job %s failed, retrying: %s", request.job_id, e)
                self._wait(consumer, delay)
                delay = min(delay * 2, self.options.max_backoff_s)
        else:
            return False
        reason = f"job {request.job_id} failed after {attempts} attempts: {reason}"
        return self._reject(consumer, message, reason, request.job_id)

    def _reject(
        self, consumer: Consumer, message: Message, reason: str, job_id: str | None = None
    ) -> bool:
        """Send ``message`` to the DLQ with ``reason``; True once the broker has it."""
        log.warning("request %s rejected, sent to the DLQ: %s", _where(message), reason)
        envelope = dlq_message(
            reason=reason,
            service="serve",
            topic=message.topic() or self.settings.requests_topic,
            partition=message.partition(),
            offset=message.offset(),
            key=message.key(),
            value=message.value(),
        )
        key = message.key()
        if key is not None and len(key) > MAX_REQUEST_BYTES:
            key = key[:MAX_REQUEST_BYTES]
        if job_id is not None:
            envelope = envelope.model_copy(update={"job_id": job_id})
        envelope = bound_envelope(envelope, self.settings.max_message_bytes, key)
        delay = self.options.backoff_s
        while not self.stopping:
            try:
                producer = ReliableProducer(self.settings, client_id="reindex-serve-dlq")
                producer.send(self.settings.dlq_topic, dump(envelope), key=key)
                producer.flush(30)
                self.metrics.request_rejected()
                return True
            except ReindexError as e:
                log.error("cannot write to the DLQ, retrying in %.0f s: %s", delay, e)
                self._wait(consumer, delay)
                delay = min(delay * 2, self.options.max_backoff_s)
        return False

    def _commit(self, consumer: Consumer, message: Message) -> None:
        try:
            consumer.commit(message=message, asynchronous=False)
        except KafkaException as e:
            # The request comes again (here or to another member); its job is done by then.
            log.warning("could not commit request %s: %s", _where(message), e.args[0].str())

    # --- the group membership while a request is handled ---------------------------------------

    @contextmanager
    def _paused(self, consumer: Consumer) -> Iterator[None]:
        consumer.pause(consumer.assignment())
        try:
            yield
        finally:
            try:
                consumer.resume(consumer.assignment())
            except KafkaException as e:
                log.warning("could not resume the requests assignment: %s", e.args[0].str())

    def _keep_alive(self, consumer: Consumer, timeout_s: float = 0) -> None:
        """Poll without taking a request: serves the group protocol and max.poll.interval."""
        message = consumer.poll(timeout_s)
        if message is None or message.error() is not None:
            return
        # A rebalance assigned a partition afresh (not paused): put the message back for later.
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if topic is not None and partition is not None and offset is not None:
            consumer.seek(TopicPartition(topic, partition, offset))
        consumer.pause(consumer.assignment())

    def _on_page(self, consumer: Consumer, checkpoint: JobCheckpoint) -> None:
        self.metrics.checkpoint(checkpoint)
        self._between_pages(consumer)

    def _between_pages(self, consumer: Consumer) -> None:
        if self.stopping:
            raise JobInterrupted("the service is stopping")
        self._keep_alive(consumer)

    def _wait(self, consumer: Consumer, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and (left := deadline - time.monotonic()) > 0:
            self._keep_alive(consumer, min(left, 0.5))


def serve_forever(settings: Settings, options: ServeOptions = ServeOptions()) -> None:
    """Run the service in the main thread; SIGTERM and SIGINT stop it at a page boundary."""
    service = RequestService(settings, options)
    metrics_server = None
    if settings.metrics_port is not None:  # GET /metrics, from a daemon thread
        render = service.metrics.exposition
        metrics_server = MetricsServer(settings.metrics_bind, settings.metrics_port, render)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        service.stop()

    previous: dict[signal.Signals, Any] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, on_signal)
    try:
        service.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if metrics_server is not None:
            metrics_server.stop()
