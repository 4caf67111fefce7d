"""Prometheus metrics in the text exposition format (0.0.4), and a small server for ``/metrics``.

The conventions followed (https://prometheus.io/docs/practices/naming/): counters end in
``_total``, durations are histograms in seconds (``_bucket`` with ``le``, ``_sum``, ``_count``),
label values and help texts are escaped. The server answers ``GET /metrics`` and nothing else; it
is the only web server of a worker or of ``reindex serve`` (Faust's own web views are off).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from reindex_common.errors import ReindexError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Batch and job durations: from a few milliseconds to minutes.
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


def escape_label(value: str) -> str:
    """A label value as the text format wants it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{escape_label(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(labels)
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]

    def lines(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    """A monotonically increasing count; its name ends in ``_total``."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"a counter's name ends in _total: {name}")
        super().__init__(name, help_text, labels)
        self._values: dict[tuple[str, ...], float] = {}
        if not self.label_names:
            self._values[()] = 0.0  # an unlabelled counter is exposed from the start

    def inc(self, amount: float = 1.0, *labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(labels, 0.0)

    def lines(self) -> list[str]:
        with self._lock:
            values = sorted(self._values.items())
        return [
            f"{self.name}{_labels(self.label_names, key)} {format_value(v)}" for key, v in values
        ]


class Histogram(_Metric):
    """Observations (seconds) in cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = SECONDS_BUCKETS,
    ) -> None:
        super().__init__(name, help_text, labels)
        self.buckets = tuple(sorted(buckets))
        self._series: dict[tuple[str, ...], tuple[list[int], float, int]] = {}
        if not self.label_names:
            self._series[()] = ([0] * len(self.buckets), 0.0, 0)

    def observe(self, value: float, *labels: str) -> None:
        with self._lock:
            counts, total, count = self._series.get(labels, ([0] * len(self.buckets), 0.0, 0))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
            self._series[labels] = (counts, total + value, count + 1)

    def count(self, *labels: str) -> int:
        with self._lock:
            return self._series.get(labels, ([], 0.0, 0))[2]

    def lines(self) -> list[str]:
        with self._lock:
            series = sorted((k, (list(c), s, n)) for k, (c, s, n) in self._series.items())
        out = []
        for key, (counts, total, count) in series:
            for bound, cumulative in zip(self.buckets, counts, strict=True):
                le = f'le="{format_value(bound)}"'
                labels = _labels(self.label_names, key, le)
                out.append(f"{self.name}_bucket{labels} {cumulative}")
            inf = _labels(self.label_names, key, 'le="+Inf"')
            out.append(f"{self.name}_bucket{inf} {count}")
            out.append(f"{self.name}_sum{_labels(self.label_names, key)} {format_value(total)}")
            out.append(f"{self.name}_count{_labels(self.label_names, key)} {count}")
        return out


class Registry:
    """The metrics of one process, in the order they were added."""

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Counter:
        metric = Counter(name, help_text, labels)
        self._metrics.append(metric)
        return metric

    def histogram(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Histogram:
        metric = Histogram(name, help_text, labels)
        self._metrics.append(metric)
        return metric

    def exposition(self) -> str:
        lines: list[str] = []
        for metric in self._metrics:
            lines += metric.header()
            lines += metric.lines()
        return "\n".join(lines) + "\n"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/metrics":
            self._send(404, b"only /metrics is served here\n", "text/plain; charset=utf-8")
            return
        self._send(200, self.server.render().encode(), CONTENT_TYPE)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds is not worth a log line


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], render: Callable[[], str]) -> None:
        super().__init__(address, _Handler)
        self.render = render


class MetricsServer:
    """``GET /metrics`` on ``bind:port`` from a daemon thread, until :meth:`stop`."""

    def __init__(self, bind: str, port: int, render: Callable[[], str]) -> None:
        try:
            self._server = _Server((bind, port), render)
        except OSError as e:
            raise ReindexError(f"cannot serve metrics on {bind}:{port}: {e.strerror or e}") from e
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
