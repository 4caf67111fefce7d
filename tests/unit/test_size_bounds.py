"""DLQ envelopes bounded by REINDEX_MAX_MESSAGE_BYTES; scorecards over it named."""

from __future__ import annotations

import base64

import pytest

from reindex_common.messages import DlqMessage, dlq_message, dump
from reindex_common.size_limit import (
    MessageTooLargeError,
    bound_envelope,
    check_message_size,
    payload_limit,
    scorecard_name,
)

LIMIT = 256 * 1024


def _envelope(value: bytes, reason: str = "bad") -> DlqMessage:
    return dlq_message(
        reason=reason,
        service="consumer:w1",
        topic="scorecard-reindex",
        partition=3,
        offset=42,
        key=b"k",
        value=value,
    )


def test_an_original_that_fits_is_kept_exactly() -> None:
    value = '{"x": "é\\"✓"}'.encode() * 100
    bounded = bound_envelope(_envelope(value), LIMIT, b"k")
    assert not bounded.truncated
    assert bounded.original_size == len(value)
    assert base64.b64decode(bounded.original_value_base64) == value
    assert bounded.original_value == value.decode()


@pytest.mark.parametrize("size", [LIMIT // 2, LIMIT - 10, LIMIT * 40])
def test_a_large_original_keeps_a_prefix_under_the_limit(size: int) -> None:
    # Half the limit already makes an envelope over it: base64 and text repeat the original.
    value = bytes(range(32, 127)) * (size // 95) + b"x" * (size % 95)
    envelope = _envelope(value, reason="r" * 100_000)
    assert len(dump(envelope)) > LIMIT
    bounded = bound_envelope(envelope, LIMIT, b"k")
    size_on_wire = len(dump(bounded)) + 1
    assert size_on_wire <= payload_limit(LIMIT)
    assert bounded.original_size == len(value)
    assert bounded.original_value is None  # the text goes first
    prefix = base64.b64decode(bounded.original_value_base64)
    if size == LIMIT // 2:  # the bytes alone fit
        assert not bounded.truncated
        assert prefix == value
    else:
        assert bounded.truncated
        assert value.startswith(prefix)
        assert len(prefix) > LIMIT // 2  # as much as fits, not a token
    assert len(bounded.reason) < 5000
    back = DlqMessage.model_validate_json(dump(bounded))
    assert back.truncated == bounded.truncated
    assert back.original_size == len(value)


def test_a_message_over_the_limit_is_named_with_its_size() -> None:
    key = b"cust\x1fprof\x1fsc-1"
    check_message_size(LIMIT, scorecard_name(key), key, b"x" * (payload_limit(LIMIT) - len(key)))
    with pytest.raises(MessageTooLargeError) as raised:
        check_message_size(LIMIT, scorecard_name(key), key, b"x" * LIMIT)
    text = str(raised.value)
    assert text.startswith(f"scorecard cust/prof/sc-1 is {LIMIT + len(key):,} bytes")
    assert "REINDEX_MAX_MESSAGE_BYTES=262,144" in text
    assert "\n" not in text
