"""One size limit for every message of the reindexer (SPEC §7, ``REINDEX_MAX_MESSAGE_BYTES``).

The same number is the producer's ``message.max.bytes``, the ``max.message.bytes`` of every topic
the reindexer creates and the consumers' per-partition fetch size, so that whatever one side
accepts the others accept too. Two rules follow from it:

- a scorecard message over the limit is never sent: the job fails with one line naming the
  scorecard and its size (:func:`check_message_size`), the same at every rerun until the limit
  is raised;
- a DLQ envelope is bounded by the limit too (:func:`bound_envelope`): it keeps the original
  bytes when they fit, otherwise a prefix of them, ``truncated=true`` and ``original_size``. The
  envelope repeats the original twice (base64 and text), so without a bound a message near the
  limit would make an envelope over it, which the broker refuses: the worker could then never
  get past that message.
"""

from __future__ import annotations

import base64

from reindex_common.errors import ReindexError
from reindex_common.messages import DlqMessage, dump

# Room left for Kafka's record framing (librdkafka counts headers and record overhead, about
# 100 bytes, against ``message.max.bytes``).
RECORD_OVERHEAD_BYTES = 1024
# A reason longer than this is cut: the reason is for people, the original bytes are kept apart.
MAX_REASON_CHARS = 4000
# A record key longer than this is not repeated in the envelope (it stays the record's key).
MAX_ENVELOPE_KEY_BYTES = 16 * 1024


class MessageTooLargeError(ReindexError):
    """A message is larger than ``REINDEX_MAX_MESSAGE_BYTES`` allows; retrying cannot help
    until the limit is raised."""


def payload_limit(max_message_bytes: int) -> int:
    """The largest key + value that a record may carry under ``max_message_bytes``."""
    return max_message_bytes - RECORD_OVERHEAD_BYTES


def check_message_size(max_message_bytes: int, what: str, key: bytes | None, value: bytes) -> None:
    """Raise :class:`MessageTooLargeError` naming ``what`` when the record would be too large."""
    size = len(value) + len(key or b"")
    if size > payload_limit(max_message_bytes):
        raise MessageTooLargeError(
            f"{what} is {size:,} bytes as a Kafka message, over the limit of "
            f"{payload_limit(max_message_bytes):,} (REINDEX_MAX_MESSAGE_BYTES="
            f"{max_message_bytes:,} less {RECORD_OVERHEAD_BYTES:,} for record framing); raise "
            "REINDEX_MAX_MESSAGE_BYTES (and max.message.bytes of topics created by hand)"
        )


def scorecard_name(key: bytes) -> str:
    """A scorecard's Kafka key (customer, profile, scorecard) as ``customer/profile/scorecard``."""
    return "scorecard " + key.decode("utf-8", errors="replace").replace("\x1f", "/")


def bound_envelope(
    envelope: DlqMessage, max_message_bytes: int, record_key: bytes | None = None
) -> DlqMessage:
    """``envelope`` made to fit, with its record key, under ``max_message_bytes``.

    It keeps the original bytes (and their text) when they fit; then the bytes without the text;
    otherwise the longest prefix of the bytes that fits, with ``truncated=True``.
    ``original_size`` is always set.
    """
    original = base64.b64decode(envelope.original_value_base64)
    reason = envelope.reason
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[:MAX_REASON_CHARS] + f"… ({len(envelope.reason):,} characters)"
    key_b64 = envelope.original_key_base64
    if key_b64 is not None and len(key_b64) > MAX_ENVELOPE_KEY_BYTES:
        key_b64 = None
    budget = payload_limit(max_message_bytes) - len(record_key or b"")
    whole = envelope.model_copy(
        update={
            "reason": reason,
            "original_key_base64": key_b64,
            "original_size": len(original),
            "truncated": False,
        }
    )
    if len(dump(whole)) <= budget:
        return whole
    bytes_only = whole.model_copy(update={"original_value": None})  # base64 holds them all
    if len(dump(bytes_only)) <= budget:
        return bytes_only
    empty = whole.model_copy(
        update={"original_value_base64": "", "original_value": None, "truncated": True}
    )
    room = budget - len(dump(empty))
    prefix = original[: max(0, room) // 4 * 3]  # base64: 4 characters per 3 bytes
    return empty.model_copy(update={"original_value_base64": base64.b64encode(prefix).decode()})
