"""The progress bar says when the producer waits for the consumers (--max-lag)."""

from __future__ import annotations

import sys

import pytest

from reindex_common.progress import ProgressView


def test_the_progress_bar_shows_a_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    with ProgressView("publishing j", 100) as view:
        assert view._bar is not None
        view.note("waiting for the consumers: 300 behind, max 200")
        (task,) = view._bar.tasks
        assert task.description == "publishing j (waiting for the consumers: 300 behind, max 200)"
        view.note(None)
        assert view._bar.tasks[0].description == "publishing j"
