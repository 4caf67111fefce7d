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


def test_max_lag_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from reindex_common.errors import ConfigError  # noqa: PLC0415
    from reindex_common.lag import LagGate  # noqa: PLC0415
    from reindex_common.settings import load_settings  # noqa: PLC0415

    monkeypatch.setenv("REINDEX_MAX_LAG", "5000")
    assert load_settings().max_lag == 5000
    monkeypatch.setenv("REINDEX_MAX_LAG", "0")
    settings = load_settings()
    # Off: no Kafka client is made and waiting returns at once (this broker does not exist).
    with LagGate(settings.replace(kafka_bootstrap="127.0.0.1:1"), "t") as gate:
        gate.wait(dict)
        assert gate.waits == 0
    monkeypatch.setenv("REINDEX_MAX_LAG", "-1")
    with pytest.raises(ConfigError, match="REINDEX_MAX_LAG"):
        load_settings()
