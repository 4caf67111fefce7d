"""``reindex dlq list|show|replay``: look into the dead-letter topic and replay from it.

Every DLQ record is a :class:`DlqMessage` envelope holding the original bytes, the reason and
where the message came from; a record is named by its place in the DLQ, ``PARTITION:OFFSET``.

Replay publishes the original key and bytes again to the topic they came from (after a fix), once:

1. read the DLQ and the replay markers — records of the jobs topic keyed
   ``dlq-replayed/<partition>/<offset>`` (keys with ``/`` are never job ids);
2. skip what was replayed before, and what cannot be replayed (a truncated original, an envelope
   without a source topic);
3. publish the originals and wait until the broker has acknowledged every one;
4. only then record one marker per replayed record, and wait for those too.

A crash between 3 and 4 replays those records again next time: delivery is at least once, and the
consumers' writes are idempotent.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka import KafkaError as ConfluentKafkaError
from pydantic import ValidationError

from reindex_common.errors import BadInputError, KafkaError, ReindexError
from reindex_common.kafka import ReliableProducer, TopicTail
from reindex_common.messages import DlqMessage
from reindex_common.settings import Settings

log = logging.getLogger("reindex.dlq")

REPLAYED_PREFIX = "dlq-replayed/"
_ID = re.compile(r"^\s*(\d+):(\d+)\s*$")


def replay_key(partition: int, offset: int) -> bytes:
    """The jobs-topic key that records the replay of DLQ record ``partition:offset``."""
    return f"{REPLAYED_PREFIX}{partition}/{offset}".encode()


def parse_id(text: str) -> tuple[int, int]:
    """``"0:42"`` -> (0, 42); :class:`BadInputError` otherwise."""
    match = _ID.match(text)
    if not match:
        raise BadInputError(f"not a DLQ record id: {text!r} (expected PARTITION:OFFSET, e.g. 0:42)")
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class DeadLetter:
    """One record of the DLQ, its envelope parsed."""

    partition: int
    offset: int
    envelope: DlqMessage
    replayed: bool = False

    @property
    def id(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def original(self) -> bytes:
        return base64.b64decode(self.envelope.original_value_base64)

    @property
    def original_key(self) -> bytes | None:
        key = self.envelope.original_key_base64
        return None if key is None else base64.b64decode(key)

    @property
    def job_id(self) -> str | None:
        """The envelope's job id, else the ``job_id`` field of the original JSON, if any."""
        if self.envelope.job_id is not None:
            return self.envelope.job_id
        if self.envelope.truncated or self.envelope.original_value is None:
            return None
        try:
            found = json.loads(self.envelope.original_value)
        except ValueError:
            return None
        job = found.get("job_id") if isinstance(found, dict) else None
        return job if isinstance(job, str) else None

    @property
    def source(self) -> str:
        e = self.envelope
        if e.source_partition is None:
            return e.source_topic
        return f"{e.source_topic}[{e.source_partition}]@{e.source_offset}"

    @property
    def why_not_replayable(self) -> str | None:
        if self.envelope.truncated:
            size = self.envelope.original_size
            of = f" of {size:,} bytes" if size is not None else ""
            return f"only a prefix{of} was kept (truncated): the original cannot be replayed"
        if not self.envelope.source_topic:
            return "the envelope names no source topic"
        return None

    def summary(self) -> dict[str, Any]:
        """The record for ``dlq list -o json`` (without the original bytes)."""
        e = self.envelope
        return {
            "id": self.id,
            "partition": self.partition,
            "offset": self.offset,
            "failed_at": e.failed_at.isoformat(),
            "job_id": self.job_id,
            "reason": e.reason,
            "service": e.service,
            "source_topic": e.source_topic,
            "source_partition": e.source_partition,
            "source_offset": e.source_offset,
            "original_size": e.original_size if e.original_size is not None else len(self.original),
            "truncated": e.truncated,
            "replayed": self.replayed,
        }

    def document(self) -> dict[str, Any]:
        """The record for ``dlq show -o json``: the summary plus the original bytes."""
        return {
            **self.summary(),
            "original_key_base64": self.envelope.original_key_base64,
            "original_value_base64": self.envelope.original_value_base64,
            "original_value": self.envelope.original_value,
        }


@dataclass(frozen=True)
class DlqFilter:
    job: str | None = None
    reason: str | None = None  # a case-insensitive substring of the reason
    since: datetime | None = None  # failed at or after

    def matches(self, letter: DeadLetter) -> bool:
        if self.job is not None and letter.job_id != self.job:
            return False
        if self.reason is not None and self.reason.lower() not in letter.envelope.reason.lower():
            return False
        return self.since is None or letter.envelope.failed_at >= self.since


def _read_dlq(settings: Settings, timeout_s: float = 30.0) -> list[tuple[int, int, bytes]]:
    """(partition, offset, value) of every record of the DLQ topic, in order."""
    topic = settings.dlq_topic
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"reindex-dlq-reader-{uuid.uuid4().hex[:8]}",  # never joins
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
        }
    )
    records: list[tuple[int, int, bytes]] = []
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            return []  # no DLQ yet: nothing was ever dead-lettered
        pending = set()
        for p in found.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            if high > low:
                pending.add(p)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in found.partitions])
        while pending:
            msg = consumer.poll(timeout_s)
            if msg is None:
                raise KafkaError(f"timed out reading {topic}")
            error = msg.error()
            partition = msg.partition() or 0
            if error is not None:
                if error.code() == ConfluentKafkaError._PARTITION_EOF:
                    pending.discard(partition)
                    continue
                raise KafkaError(f"cannot read {topic}: {error.str()}")
            value = msg.value()
            offset = msg.offset()
            if value and offset is not None:
                records.append((partition, offset, value))
    except KafkaException as e:
        raise KafkaError(f"cannot read {topic}: {e.args[0].str()}") from e
    finally:
        consumer.close()
    return records


def _replayed(settings: Settings) -> set[tuple[int, int]]:
    found: set[tuple[int, int]] = set()
    prefix = REPLAYED_PREFIX.encode()
    with TopicTail(settings, settings.jobs_topic) as tail:
        for key, _value in tail.read_new():
            if key is not None and key.startswith(prefix):
                partition, _, offset = key[len(prefix) :].decode().partition("/")
                found.add((int(partition), int(offset)))
    return found


def dead_letters(settings: Settings, where: DlqFilter = DlqFilter()) -> list[DeadLetter]:
    """The DLQ's records that match ``where``, oldest first; unreadable records are logged."""
    replayed = _replayed(settings)
    letters = []
    for partition, offset, value in _read_dlq(settings):
        try:
            envelope = DlqMessage.model_validate_json(value)
        except ValidationError:
            log.warning("DLQ record %d:%d is not a DLQ envelope; skipped", partition, offset)
            continue
        letter = DeadLetter(partition, offset, envelope, (partition, offset) in replayed)
        if where.matches(letter):
            letters.append(letter)
    return letters


def find(settings: Settings, record_id: str) -> DeadLetter:
    partition, offset = parse_id(record_id)
    for letter in dead_letters(settings):
        if (letter.partition, letter.offset) == (partition, offset):
            return letter
    raise ReindexError(f"no DLQ record {partition}:{offset} in {settings.dlq_topic}")


def describe_list(letters: list[DeadLetter]) -> str:
    if not letters:
        return "no dead letters"
    fmt = "%-10s %-20s %-28s %-8s %s"
    lines = [fmt % ("ID", "FAILED AT", "JOB", "REPLAYED", "REASON")]
    for letter in letters:
        reason = letter.envelope.reason.replace("\n", " ")
        lines.append(
            fmt
            % (
                letter.id,
                f"{letter.envelope.failed_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}",
                (letter.job_id or "-")[:28],
                "yes" if letter.replayed else "no",
                reason if len(reason) <= 100 else reason[:97] + "...",
            )
        )
    lines.append(f"{len(letters)} dead letter(s); 'reindex dlq show ID' shows one")
    return "\n".join(lines)


def describe_one(letter: DeadLetter) -> str:
    e = letter.envelope
    size = e.original_size if e.original_size is not None else len(letter.original)
    lines = [
        f"DLQ record  {letter.id}",
        f"reason      {e.reason}",
        f"from        {letter.source}",
        f"service     {e.service}",
        f"failed at   {e.failed_at.isoformat()}",
        f"job         {letter.job_id or '-'}",
        f"replayed    {'yes' if letter.replayed else 'no'}",
        f"size        {size:,} bytes"
        + (" (truncated: only a prefix is kept)" if e.truncated else ""),
    ]
    key = letter.original_key
    if key is not None:
        lines.append(f"key         {key.decode('utf-8', 'replace')!r}")
    if e.original_value is not None:
        lines += ["original (UTF-8):", e.original_value]
    else:
        lines += ["original (base64, not UTF-8):", e.original_value_base64]
    return "\n".join(lines)


@dataclass
class ReplayResult:
    replayed: list[DeadLetter] = field(default_factory=list)
    already: list[DeadLetter] = field(default_factory=list)
    not_replayable: list[tuple[DeadLetter, str]] = field(default_factory=list)
    dry_run: bool = False

    def document(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "replayed": [x.id for x in self.replayed],
            "already_replayed": [x.id for x in self.already],
            "not_replayable": [{"id": x.id, "why": why} for x, why in self.not_replayable],
        }

    def describe(self) -> str:
        verb = "would replay" if self.dry_run else "replayed"
        topics = sorted({x.envelope.source_topic for x in self.replayed})
        lines = [
            f"{verb} {len(self.replayed)} dead letter(s)"
            + (f" to {', '.join(topics)}" if topics else "")
            + f"; {len(self.already)} already replayed (skipped)"
        ]
        for letter, why in self.not_replayable:
            lines.append(f"not replayed {letter.id}: {why}")
        return "\n".join(lines)


def replay(settings: Settings, where: DlqFilter, *, dry_run: bool = False) -> ReplayResult:
    """Publish the originals of the matching records again, once each (see the module doc)."""
    result = ReplayResult(dry_run=dry_run)
    for letter in dead_letters(settings, where):
        why = letter.why_not_replayable
        if letter.replayed:
            result.already.append(letter)
        elif why is not None:
            result.not_replayable.append((letter, why))
        else:
            result.replayed.append(letter)
    if dry_run or not result.replayed:
        return result
    producer = ReliableProducer(settings, client_id="reindex-dlq-replay")
    for letter in result.replayed:
        producer.send(letter.envelope.source_topic, letter.original, key=letter.original_key)
    producer.flush()
    now = datetime.now(UTC).isoformat()
    for letter in result.replayed:
        marker = {"replayed_at": now, "to": letter.envelope.source_topic, "dlq": letter.id}
        producer.send(
            settings.jobs_topic,
            json.dumps(marker).encode(),
            key=replay_key(letter.partition, letter.offset),
        )
    producer.flush()
    log.info("replayed %d dead letter(s)", len(result.replayed))
    return result
