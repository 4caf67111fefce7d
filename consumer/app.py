"""The Faust app of the consumer group: batches in, shard writes, offsets committed after.

Messages reach the batch loop through an :class:`~consumer.intake.Intake` (see there why not
through a Faust stream), and nothing acks them but the loop. The commit order, for every batch:

1. take up to ``consumer_batch_size`` messages, waiting at most ``consumer_batch_wait`` seconds,
   and no longer than ``consumer_batch_idle`` seconds without a new message;
2. in a thread, validate each message and group by shard — while the previous batch is still
   being written;
3. in another thread, one batch at a time and in the order taken: send invalid messages to the
   DLQ, and per shard run DELETE (clean-up), INSERT scorecards, INSERT scores, each retried until
   it succeeds or the retry deadline passes; then publish what was written per job and flush the
   DLQ and those records. Before each of these statements and sends, the batch's fence checks
   that this worker still owns the batch's partitions (``consumer/ownership.py``); if not, the
   batch is abandoned: nothing more is written, it is never acked, and its messages are read
   again by the partitions' owner;
4. only then, and only if no rebalance began since the batch was taken, ack the batch's
   messages; Faust commits every ``consumer_commit_interval`` seconds, on rebalance, and on
   shutdown, but only offsets up to the first message not yet written (``consumer/intake.py``).

If step 3 fails for good, nothing more is acked and the worker stops with an error: the batch's
offsets are never committed and the group redelivers it. (Faust's ``stream.take`` would be wrong
here: it acks its batch in a ``finally``, even when the body raised — see NOTES.md.) SIGTERM and
SIGINT let the batches already taken finish, commit them, and then leave the group.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import faust

from consumer.batch import ParsedBatch
from consumer.intake import Intake, IntakeApp, TakenBatch
from consumer.metrics import Metrics
from consumer.ownership import HeartbeatLease, NotOwnerError
from consumer.processor import BatchProcessor
from reindex_common.errors import ReindexError
from reindex_common.settings import Settings

log = logging.getLogger("reindex.consumer")


@dataclass(frozen=True)
class _Parsed:
    """A batch between the two stages: its Kafka messages (to ack) and their parsed form."""

    batch: TakenBatch
    parsed: ParsedBatch
    parse_seconds: float


@dataclass
class WorkerState:
    """What the agent and the signal handlers share."""

    worker_id: str
    pending: int = 0  # batches taken and not yet acked (parsing, queued or writing)
    draining: bool = False
    fatal: ReindexError | None = None
    worker: faust.Worker | None = None


# What a rebalance must also wait for beyond the write retry deadline: the statement in flight
# when the deadline passes (its HTTP timeout, reindex_common/clickhouse.py: 10 s to connect,
# 30 s to answer), the DLQ and written-record flushes, and a few heartbeats.
REBALANCE_MARGIN_S = 60.0


def rebalance_timeout(settings: Settings) -> float:
    """How long the group waits for a member to rejoin: ``write_retry_deadline`` + margin."""
    return settings.write_retry_deadline + REBALANCE_MARGIN_S


def _broker_credentials(settings: Settings) -> Any:
    if settings.kafka_sasl_mechanism is None:
        if settings.kafka_security_protocol == "SSL":
            import ssl  # noqa: PLC0415

            return faust.SSLCredentials(
                ssl.create_default_context(cafile=settings.kafka_ssl_ca_location)
            )
        return None
    import ssl  # noqa: PLC0415

    context = None
    if settings.kafka_security_protocol == "SASL_SSL":
        context = ssl.create_default_context(cafile=settings.kafka_ssl_ca_location)
    password = settings.kafka_sasl_password
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=password.get_secret_value() if password else None,
        mechanism=settings.kafka_sasl_mechanism,
        ssl_context=context,
    )


def create_app(settings: Settings, state: WorkerState) -> tuple[faust.App, BatchProcessor]:
    intake = Intake(settings.scorecards_topic, capacity=2 * settings.consumer_batch_size)
    app = IntakeApp(
        settings.group_id,
        intake=intake,
        lease=HeartbeatLease(
            settings.consumer_session_timeout, settings.consumer_heartbeat_interval
        ),
        broker=[f"kafka://{host.strip()}" for host in settings.kafka_bootstrap.split(",")],
        broker_credentials=_broker_credentials(settings),
        broker_session_timeout=settings.consumer_session_timeout,
        # A member that is revoking waits for its batch in flight; the group waits for it this
        # long before dropping it. Longer than a batch may retry a shard, with a margin for the
        # statement in flight (its HTTP timeout): a worker within its deadline is never dropped.
        broker_rebalance_timeout=rebalance_timeout(settings),
        # JoinGroup waits at the broker for the slowest member: as long as the rebalance may.
        broker_request_timeout=rebalance_timeout(settings) + 5,
        broker_heartbeat_interval=settings.consumer_heartbeat_interval,
        broker_commit_interval=settings.consumer_commit_interval,
        consumer_auto_offset_reset="earliest",
        # Bound what is fetched ahead of the agent, so that a worker's memory does not depend on
        # how much of a job waits in the topic: per poll and in the intake. Per partition, the
        # size limit: aiokafka skips (loses) a record that a fetch of this size cannot hold.
        consumer_max_fetch_size=settings.max_message_bytes,
        broker_max_poll_records=settings.consumer_batch_size,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        datadir=tempfile.mkdtemp(prefix=f"reindex-faust-{state.worker_id}-"),
        store="memory://",
        web_enabled=False,  # metrics are served by consumer.worker, without Faust's web views
    )
    metrics = Metrics(worker=state.worker_id)
    processor = BatchProcessor(settings, state.worker_id, metrics)
    # Subscribed through the conductor, delivered by the intake (no agent, no stream).
    app.topics.add(
        app.topic(settings.scorecards_topic, key_serializer="raw", value_serializer="raw")
    )

    async def write_batches() -> None:
        """Stage 1: take batches and parse each in a thread while the previous one writes."""
        size, wait = settings.consumer_batch_size, settings.consumer_batch_wait
        idle = settings.consumer_batch_idle
        parsed_batches: asyncio.Queue[_Parsed] = asyncio.Queue(maxsize=1)
        writer = asyncio.ensure_future(write_in_order(parsed_batches))
        try:
            while True:
                batch = await app.take_batch(size, wait, idle)
                if state.draining or state.fatal is not None:
                    app.abandon(batch)  # never acked: the group delivers these again
                    continue
                state.pending += 1
                began = time.monotonic()
                try:
                    parsed = await asyncio.to_thread(processor.parse, batch.messages)
                except Exception as e:  # a bug, not a bad message (those go to the DLQ)
                    _fail(state, e)
                    continue
                await parsed_batches.put(_Parsed(batch, parsed, time.monotonic() - began))
        finally:
            writer.cancel()

    async def write_in_order(parsed_batches: asyncio.Queue[_Parsed]) -> None:
        """Stage 2: one batch at a time, in order; ack a batch only after it is written, and
        only while its epoch is current (see ``consumer/ownership.py``)."""
        while True:
            item = await parsed_batches.get()
            batch = item.batch
            try:
                report = await asyncio.to_thread(
                    processor.write,
                    len(batch.messages),
                    item.parsed,
                    item.parse_seconds,
                    app.fence(batch.epoch),
                )
            except NotOwnerError as e:
                await app.give_up(batch)
                log.warning(
                    "abandoned a batch of %d messages, not acked: %s", len(batch.messages), e
                )
            except Exception as e:
                _fail(state, e)
                return  # nothing more is acked
            else:
                if app.owns(batch.epoch):
                    ack = app.consumer.ack
                    for message in batch.messages:
                        ack(message)
                    log.info("%s", report.line())
                else:  # written, but a rebalance began since: the next owner writes it again
                    await app.give_up(batch)
                    log.warning("%s; not acked: a rebalance began", report.line())
            state.pending -= 1
            if state.draining and state.pending == 0:
                await app.consumer.commit()
                log.info("batch committed; leaving the group")
                _shutdown(state)
                return

    app.task(write_batches)

    @app.on_partitions_assigned.connect
    def on_assigned(sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        assigned: set[Any] = args[0]
        app.lease.renew()  # the group has just answered this member
        mine = sorted(tp.partition for tp in assigned if tp.topic == settings.scorecards_topic)
        log.info(
            "worker %s assigned partitions %s of %s",
            state.worker_id,
            mine,
            settings.scorecards_topic,
        )

    @app.on_partitions_revoked.connect
    def on_revoked(sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        revoked: set[Any] = args[0]
        gone = sorted(tp.partition for tp in revoked if tp.topic == settings.scorecards_topic)
        if gone:
            log.info("worker %s gives up partitions %s", state.worker_id, gone)

    del write_batches, on_assigned, on_revoked
    return app, processor


def _fail(state: WorkerState, error: Exception) -> None:
    """Stop the worker for good: nothing more is acked, so nothing unwritten is committed."""
    if state.fatal is None:
        state.fatal = (
            error
            if isinstance(error, ReindexError)
            else ReindexError(f"unexpected error in a batch: {type(error).__name__}: {error}")
        )
    log.critical("stopping the worker, nothing of this batch is committed: %s", error)
    _shutdown(state)


def _shutdown(state: WorkerState) -> None:
    if state.worker is not None:
        # Leave without waiting for events that will never be acked (the failed batch, the next
        # one buffering): Faust then commits exactly the acked offsets and stops.
        state.worker.app.conf.stream_wait_empty = False
        # mode's own shutdown path, the one its SIGTERM handler takes
        state.worker._schedule_shutdown(signal.SIGTERM)


class ConsumerWorker(faust.Worker):
    """A Faust worker whose SIGTERM/SIGINT let the batch being written finish and commit."""

    def __init__(self, app: faust.App, state: WorkerState, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._state = state
        state.worker = self

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        state = self._state
        if state.draining:
            log.warning("second %s: stopping now (the batch in flight is not committed)", sig.name)
            _shutdown(state)
            return
        state.draining = True
        if state.pending:
            log.info("%s: finishing the current batch, then leaving the group", sig.name)
        else:
            log.info("%s: leaving the group", sig.name)
            _shutdown(state)

    def _on_sigterm(self) -> None:
        self._on_stop_signal(signal.SIGTERM)

    def _on_sigint(self) -> None:
        self._on_stop_signal(signal.SIGINT)
