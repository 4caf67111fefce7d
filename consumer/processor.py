"""Processing one batch: validate, DLQ, write every shard, record what was written.

Two stages, each run in a thread (the Faust event loop keeps heartbeating meanwhile):
:meth:`BatchProcessor.parse` (route, and validate only when the shards cannot: CPU) and
:meth:`BatchProcessor.write` (DLQ, shard writes, written records: mostly waiting on the shards).
A batch goes to the shards as the messages' own JSON when every message is fit for it
(``consumer.batch.build_json``); a shard that refuses its part gets that part again through the
Python path (validation, exactly the bad messages to the DLQ, the rest inserted as columns).
The agent parses the next batch while this one writes, writes batches one at a time in order,
and acks a batch's events only after its ``write`` returned (``consumer/app.py``: commit order).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

from consumer.accounting import job_records
from consumer.batch import KafkaRecord, ParsedBatch, Rejected, ShardBatch, build, build_json
from consumer.metrics import Metrics
from consumer.ownership import Fence, no_fence
from consumer.writer import JsonRefused, ShardWriter
from reindex_common.kafka import ReliableProducer
from reindex_common.messages import dlq_message, dump
from reindex_common.settings import Settings
from reindex_common.size_limit import bound_envelope

log = logging.getLogger("reindex.consumer")


@dataclass(frozen=True)
class BatchReport:
    number: int
    messages: int
    parsed: ParsedBatch
    seconds: float
    parse_seconds: float
    write_seconds: float

    def line(self) -> str:
        shards = ", ".join(
            f"shard {b.shard}: {b.scorecard_count:,} scorecards/{b.score_count:,} scores"
            + (" as JSON" if b.json_rows is not None else "")
            + (" (clean-up)" if b.clean_up_keys else "")
            for b in sorted(self.parsed.shards.values(), key=lambda b: b.shard)
        )
        extra = f"; {len(self.parsed.rejected)} to the DLQ" if self.parsed.rejected else ""
        return (
            f"batch {self.number}: {self.messages:,} messages -> {shards or 'nothing to write'}"
            f" in {self.seconds * 1000:.0f} ms (parse {self.parse_seconds * 1000:.0f}, "
            f"write {self.write_seconds * 1000:.0f}){extra}"
        )


class BatchProcessor:
    def __init__(self, settings: Settings, worker_id: str, metrics: Metrics) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.metrics = metrics
        # Unique to this process: a redelivered batch gets new insert deduplication tokens.
        self.writer = ShardWriter(
            settings,
            nonce=f"{worker_id}-{uuid.uuid4().hex[:12]}",
            on_retry=lambda _: metrics.retried(),
        )
        self.producer = ReliableProducer(settings, client_id=f"reindex-consumer-{worker_id}")
        self.pool = ThreadPoolExecutor(max_workers=len(settings.shards), thread_name_prefix="shard")
        self.batch_number = 0

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.writer.close()
        self.producer.flush(30)

    def parse(self, raws: Sequence[KafkaRecord]) -> ParsedBatch:
        """Stage 1: route, validating only what the shards will not (CPU only; may run while
        the previous batch writes)."""
        shards = len(self.settings.shards)
        if self.settings.consumer_shards_parse:
            for_shards = build_json(raws, shards)
            if for_shards is not None:
                return for_shards
        return build(raws, shards)

    def _send_to_dlq(self, rejected: list[Rejected], fence: Fence) -> None:
        for reject in rejected:
            raw = reject.raw
            log.warning(
                "to the DLQ: %s[%d]@%d: %s", raw.topic, raw.partition, raw.offset, reject.reason
            )
            envelope = dlq_message(
                reason=reject.reason,
                service=f"consumer:{self.worker_id}",
                topic=raw.topic,
                partition=raw.partition,
                offset=raw.offset,
                key=raw.key,
                value=raw.value,
                job_id=reject.job_id,
            )
            envelope = bound_envelope(envelope, self.settings.max_message_bytes, raw.key)
            fence()
            self.producer.send(self.settings.dlq_topic, dump(envelope), key=raw.key)

    def _write_shard(
        self, number: int, shard_batch: ShardBatch, deadline: float, fence: Fence
    ) -> ParsedBatch | None:
        """Write one shard's part; the Python path's result if the shard refused its JSON."""
        try:
            self.writer.write(number, shard_batch, deadline, fence)
            return None
        except JsonRefused as refused:
            log.warning(
                "shard %d refused batch %d as JSON (%s); its %d messages take the Python path",
                shard_batch.shard,
                number,
                str(refused)[:300],
                len(shard_batch.raws),
            )
        python_path = build(shard_batch.raws, len(self.settings.shards))
        self._send_to_dlq(python_path.rejected, fence)
        for columns in python_path.shards.values():  # this shard's, since they all route here
            self.writer.write(number, columns, deadline, fence)
        return python_path

    def write(
        self,
        messages: int,
        parsed: ParsedBatch,
        parse_seconds: float,
        fence: Fence = no_fence,
    ) -> BatchReport:
        """Stage 2: DLQ, shard writes, written records; returns once all of it is durable.

        ``fence`` runs before every DLQ send, shard statement and written record, and raises
        :class:`~consumer.ownership.NotOwnerError` once the worker no longer owns the batch."""
        began = time.monotonic()
        self.batch_number += 1
        deadline = began + self.settings.write_retry_deadline

        self._send_to_dlq(parsed.rejected, fence)
        number = self.batch_number
        futures = {
            shard: self.pool.submit(self._write_shard, number, shard_batch, deadline, fence)
            for shard, shard_batch in parsed.shards.items()
        }
        wait(futures.values())  # every shard's statements are over before the batch may be given up
        for shard, future in futures.items():
            python_path = future.result()  # re-raises the first shard's failure
            if python_path is not None:
                parsed.replace_shard(shard, python_path)
        written_at = time.monotonic()

        fence()
        for record in job_records(parsed, self.worker_id):  # written and dead-lettered, per job
            self.producer.send(
                self.settings.written_topic,
                record.model_dump_json().encode(),
                key=record.job_id.encode(),
            )
        self.producer.flush()  # DLQ envelopes and written records are durable before the ack

        seconds = parse_seconds + time.monotonic() - began
        self.metrics.batch_done(parsed, seconds)
        return BatchReport(
            self.batch_number,
            messages,
            parsed,
            seconds,
            parse_seconds=parse_seconds,
            write_seconds=written_at - began,
        )
