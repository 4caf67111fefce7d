"""A strict reader of Prometheus text exposition (0.0.4), for the metrics tests.

Every line must be a ``# HELP``, a ``# TYPE`` or a sample of the family declared just before, with
label values escaped as the format says; the result is then read again with prometheus_client's
own parser. It also checks the conventions: counters' samples end in ``_total``, a histogram has
cumulative ``_bucket`` series ending in ``le="+Inf"`` equal to its ``_count``, and a ``_sum``.
"""

from __future__ import annotations

import re
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\\\|\\"|\\n)*"'
_SAMPLE = re.compile(rf"({_NAME})(\{{(?:{_LABEL})(?:,{_LABEL})*\}})? (\S+)")
_LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"')

Labels = tuple[tuple[str, str], ...]


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse(text: str) -> dict[str, dict[Labels, float]]:
    """Sample name -> labels (sorted pairs) -> value; raises AssertionError on any deviation."""
    assert text.endswith("\n"), "the exposition ends with a newline"
    samples: dict[str, dict[Labels, float]] = defaultdict(dict)
    types: dict[str, str] = {}
    family = ""
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            family = line.split(" ", 3)[2]
            assert re.fullmatch(_NAME, family), line
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name == family, f"TYPE for {name} follows HELP for {family}"
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in types, f"{name} declared twice"
            types[name] = kind
            continue
        match = _SAMPLE.fullmatch(line)
        assert match, f"not a valid sample line: {line!r}"
        name, labels_text, value = match.groups()
        kind = types[family]
        if kind == "counter":
            assert family.endswith("_total"), f"counter {family} does not end in _total"
            assert name == family, f"counter sample {name}"
        elif kind == "histogram":
            assert name in (f"{family}_bucket", f"{family}_sum", f"{family}_count"), name
        else:
            assert name == family, name
        labels = tuple(sorted((k, _unescape(v)) for k, v in _LABEL_PAIR.findall(labels_text or "")))
        assert labels not in samples[name], f"duplicate series {name}{labels}"
        samples[name][labels] = float(value)

    for name, kind in types.items():
        if kind == "histogram":
            _check_histogram(name, samples)
    # The same text through the reference parser: the same series and values.
    reference = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    mine = {(n, labels): v for n, series in samples.items() for labels, v in series.items()}
    assert reference == mine
    return dict(samples)


def _check_histogram(name: str, samples: dict[str, dict[Labels, float]]) -> None:
    by_series: dict[Labels, list[tuple[float, float]]] = defaultdict(list)
    for labels, value in samples[f"{name}_bucket"].items():
        le = dict(labels)["le"]
        rest = tuple(p for p in labels if p[0] != "le")
        by_series[rest].append((float(le), value))
    for rest, buckets in by_series.items():
        buckets.sort()
        counts = [c for _, c in buckets]
        assert counts == sorted(counts), f"{name} buckets are not cumulative"
        assert buckets[-1][0] == float("inf"), f"{name} has no +Inf bucket"
        assert buckets[-1][1] == samples[f"{name}_count"][rest]
        assert rest in samples[f"{name}_sum"]


def total(samples: dict[str, dict[Labels, float]], name: str, **match: str) -> float:
    """The sum of ``name``'s series whose labels include ``match``."""
    return sum(
        value
        for labels, value in samples.get(name, {}).items()
        if all(dict(labels).get(k) == v for k, v in match.items())
    )
