"""Whether this worker may still write a batch: its assignment epoch and its group lease.

A batch may run a statement on a shard (DELETE, INSERT), send to the DLQ or publish what it
wrote only while this worker still owns the batch's partitions. Two things end that ownership:

1. **A rebalance.** The intake's epoch changes when Faust starts revoking partitions (and again
   when it resumes): a batch taken under an older epoch is abandoned. The group cannot hand
   the partitions to another member before this worker rejoins, and it rejoins only after
   every batch it tracks was acked or abandoned (Faust waits for them in ``wait_empty``); a
   batch notices at its next statement, so a revoke waits at most one statement.
2. **Losing the group without knowing it yet** (the process was paused, the broker unreachable):
   the broker drops a member whose heartbeats stop for ``session_timeout``. The lease counts
   from the last heartbeat the broker answered; once it is older than the session timeout
   less one heartbeat interval, the worker no longer assumes it owns anything.

Checked before every statement, the fence cannot stop a statement already sent: what bounds
that is the statement's own HTTP timeout, well inside the group's rebalance timeout (see
``consumer/app.py`` for how the timeouts relate).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from reindex_common.errors import ReindexError

Fence = Callable[[], None]
"""Raises :class:`NotOwnerError` when the batch it was made for may no longer write."""


class NotOwnerError(ReindexError):
    """This worker no longer owns the partitions of the batch: abandon it, write nothing more."""


def no_fence() -> None:
    """A fence that never fires (for writes outside a consumer group)."""


class HeartbeatLease:
    """When the broker last heard from this member, from any thread; valid for a session."""

    def __init__(self, session_timeout: float, heartbeat_interval: float) -> None:
        self.length = max(session_timeout - heartbeat_interval, 0.5)
        self._renewed: float | None = None
        self._lock = threading.Lock()

    def renew(self, at: float | None = None) -> None:
        """The broker answered a heartbeat (or a join) sent at ``at`` (monotonic seconds)."""
        at = time.monotonic() if at is None else at
        with self._lock:
            if self._renewed is None or at > self._renewed:
                self._renewed = at

    def valid(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            return self._renewed is not None and now < self._renewed + self.length
