"""What the served funnel did between two scrapes of Triton's metrics endpoint.

The serving step's numbers (requests, failures, latency quantiles, queue vs compute time, CPU
and memory) computed the way Prometheus computes them from the same endpoint (monitoring/),
so a test or a benchmark reads them from a running server without a Prometheus:

    before = parse_exposition(client.metrics_text())
    ...                                     # traffic
    window = serving_window(before, parse_exposition(client.metrics_text()))
    window.models["funnel"].p99_ms, window.models["funnel"].non_success_rate

Counters are differenced between the scrapes. Latency quantiles come from a histogram's bucket
deltas when the server exposes one (exact for the window, up to bucket resolution), else from a
summary's quantiles, which Triton computes over its own sliding window (the last 60 s or so),
not over the time between the scrapes. Plain Python: no Triton client, no TensorFlow.
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field

from recfunnel.errors import RecfunnelError

# Triton's metric names (Triton 2.51) and the server flag that provides each when not default.
SUCCESS = "nv_inference_request_success"
FAILURE = "nv_inference_request_failure"            # label reason: BACKEND, CANCELED, ...
REQUEST_DURATION = "nv_inference_request_duration_us"
QUEUE_DURATION = "nv_inference_queue_duration_us"
COMPUTE_DURATION = "nv_inference_compute_infer_duration_us"
REQUEST_LATENCY = "nv_inference_request_summary_us"
CPU_UTILIZATION = "nv_cpu_utilization"
MEMORY_USED = "nv_cpu_memory_used_bytes"
MEMORY_TOTAL = "nv_cpu_memory_total_bytes"
PROVIDED_BY = {
    REQUEST_LATENCY: "--metrics-config=summary_latencies=true (TritonServer passes it)",
    **dict.fromkeys((CPU_UTILIZATION, MEMORY_USED, MEMORY_TOTAL),
                    "--allow-cpu-metrics=true (Triton's default, Linux only)"),
}
DEFAULT_PROVIDER = "--allow-metrics=true (Triton's default) and a model that has been loaded"
QUANTILES = (0.5, 0.95, 0.99)

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE_LINE = re.compile(rf"^(?P<name>{_NAME})(?:\{{(?P<labels>.*)\}})?\s+(?P<value>\S+)"
                          r"(?:\s+-?\d+)?\s*$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


class MetricsError(RecfunnelError, ValueError):
    """The exposition text is malformed, or lacks a metric the computation needs."""


@dataclass(frozen=True)
class Sample:
    """One line of the exposition: `name{labels} value`."""
    name: str
    labels: dict[str, str]
    value: float


@dataclass
class Scrape:
    """Every sample of one scrape, with the families' declared types (# TYPE)."""
    samples: list[Sample]
    types: dict[str, str] = field(default_factory=dict)

    def series(self, name: str, **labels: str) -> list[Sample]:
        """Samples named `name` whose labels include `labels`."""
        return [s for s in self.samples if s.name == name
                and all(s.labels.get(k) == v for k, v in labels.items())]

    def has(self, name: str) -> bool:
        return any(s.name == name for s in self.samples)

    def require(self, name: str) -> None:
        if not self.has(name):
            raise MetricsError(f"the scrape has no {name!r} metric; the server provides it "
                               f"with {PROVIDED_BY.get(name, DEFAULT_PROVIDER)}")

    def per_model(self, name: str, **labels: str) -> dict[str, float]:
        """`name` summed over versions (and other labels) per model label."""
        self.require(name)
        totals: dict[str, float] = defaultdict(float)
        for s in self.series(name, **labels):
            totals[s.labels.get("model", "")] += s.value
        return dict(totals)

    def gauge(self, name: str) -> float:
        """A server-wide gauge (summed if, unusually, it has several series)."""
        self.require(name)
        return sum(s.value for s in self.series(name))


def parse_exposition(text: str) -> Scrape:
    """Prometheus text exposition (format 0.0.4, what /metrics serves) into a Scrape.

    Comments other than # TYPE are skipped; timestamps are dropped. "Nan", "+Inf" and "-Inf"
    are floats. A line that is not a sample is an error naming its line number.
    """
    samples, types = [], {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 4 and parts[1] == "TYPE":
                types[parts[2]] = parts[3].strip()
            continue
        match = _SAMPLE_LINE.match(line)
        if match is None:
            raise MetricsError(f"line {number} is not a sample 'name{{labels}} value': {line!r}")
        try:
            value = float(match["value"])
        except ValueError:
            raise MetricsError(f"line {number}: value {match['value']!r} is not a number "
                               "(expected a float, Nan, +Inf or -Inf)") from None
        samples.append(Sample(match["name"], _parse_labels(match["labels"] or "", number), value))
    return Scrape(samples, types)


def _parse_labels(text: str, number: int) -> dict[str, str]:
    labels, position = {}, 0
    while position < len(text.rstrip()):
        match = _LABEL.match(text, position)
        if match is None:
            raise MetricsError(f"line {number}: labels {{{text}}} are not name=\"value\" pairs "
                               f"separated by commas (trouble at {text[position:]!r})")
        labels[match[1]] = re.sub(r'\\[\\"n]', lambda m: _UNESCAPE[m[0]], match[2])
        position = match.end()
    return labels


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """The q-quantile of a histogram, as Prometheus's histogram_quantile computes it.

    `buckets` are (upper bound `le`, cumulative count) pairs, +Inf included. The rank q * total
    falls in one bucket; the value is interpolated linearly inside it (from 0 for the first
    bucket). A rank in the +Inf bucket gives the highest finite bound. NaN with no observations.
    """
    if not 0 <= q <= 1:
        raise ValueError(f"quantile {q} must lie in [0, 1]")
    buckets = sorted(buckets)
    if not buckets or buckets[-1][0] != math.inf:
        raise MetricsError("a histogram needs its le=\"+Inf\" bucket (the total count)")
    total = buckets[-1][1]
    if total <= 0:
        return math.nan
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for upper_bound, count in buckets:
        if count >= rank:
            if upper_bound == math.inf:
                return lower_bound
            if count == lower_count:
                return upper_bound
            return lower_bound + (upper_bound - lower_bound) * (rank - lower_count) / (
                count - lower_count)
        lower_bound, lower_count = upper_bound, count
    return lower_bound


@dataclass(frozen=True)
class ModelWindow:
    """One model's requests between two scrapes (all its versions together); times in ms.

    `failures` are the requests Triton counted as failed (nv_inference_request_failure: an
    exception in the model, cancelled, rejected by the scheduler); `non_success_rate` is
    failures / requests, NaN without requests. Means are per successful request.
    `latency_source` says where the quantiles came from: "histogram" (this window) or
    "summary" (Triton's sliding window).
    """
    model: str
    successes: int
    failures: int
    failures_by_reason: dict[str, int]
    p50_ms: float
    p95_ms: float
    p99_ms: float
    latency_source: str
    mean_request_ms: float
    mean_queue_ms: float
    mean_compute_ms: float

    @property
    def requests(self) -> int:
        return self.successes + self.failures

    @property
    def non_success_rate(self) -> float:
        return self.failures / self.requests if self.requests else math.nan


@dataclass(frozen=True)
class ServingWindow:
    """What the server did between two scrapes: per model, and the host's CPU and memory.

    CPU and memory are Triton's host-wide gauges at the second scrape (utilization 0-1 over
    Triton's last metrics interval, used and total RAM in bytes), not the server process's.
    Triton reads them every --metrics-interval-ms (2 s): all 0 in the first interval.
    """
    models: dict[str, ModelWindow]
    cpu_utilization: float
    memory_used_bytes: float
    memory_total_bytes: float

    @property
    def memory_used_fraction(self) -> float:
        """NaN until Triton has read the host's memory once."""
        return self.memory_used_bytes / self.memory_total_bytes if self.memory_total_bytes \
            else math.nan


def serving_window(before: Scrape, after: Scrape,
                   latency_metric: str = REQUEST_LATENCY) -> ServingWindow:
    """Per model: counts, failure rate, p50/p95/p99 and mean times between `before` and `after`.

    `latency_metric` names the latency family: a histogram (`<name>_bucket` series with `le`)
    or a summary (`<name>` series with `quantile`); microseconds unless it ends in `_ms`.
    A metric missing from either scrape is an error naming it and the flag that provides it;
    a counter that went down (the server restarted between the scrapes) is an error too.
    """
    deltas = {name: _counter_delta(before, after, name)
              for name in (SUCCESS, REQUEST_DURATION, QUEUE_DURATION, COMPUTE_DURATION)}
    failures = _failures_by_reason(before, after)
    quantiles = _latency_quantiles(before, after, latency_metric)
    to_ms = 1.0 if latency_metric.endswith("_ms") else 1e-3
    models = {}
    for model in sorted(set(deltas[SUCCESS]) | set(failures)):
        successes = int(round(deltas[SUCCESS].get(model, 0.0)))
        by_reason = failures.get(model, {})
        mean_ms = {name: deltas[name].get(model, 0.0) * 1e-3 / successes if successes
                   else math.nan for name in deltas}
        q, source = quantiles.get(model, ({}, "none"))     # none: no latency observed
        models[model] = ModelWindow(
            model=model, successes=successes, failures=sum(by_reason.values()),
            failures_by_reason=by_reason, p50_ms=q.get(0.5, math.nan) * to_ms,
            p95_ms=q.get(0.95, math.nan) * to_ms, p99_ms=q.get(0.99, math.nan) * to_ms,
            latency_source=source, mean_request_ms=mean_ms[REQUEST_DURATION],
            mean_queue_ms=mean_ms[QUEUE_DURATION], mean_compute_ms=mean_ms[COMPUTE_DURATION])
    return ServingWindow(models, cpu_utilization=after.gauge(CPU_UTILIZATION),
                         memory_used_bytes=after.gauge(MEMORY_USED),
                         memory_total_bytes=after.gauge(MEMORY_TOTAL))


def _counter_delta(before: Scrape, after: Scrape, name: str, **labels: str) -> dict[str, float]:
    old, new = before.per_model(name, **labels), after.per_model(name, **labels)
    deltas = {}
    for model, value in new.items():
        delta = value - old.get(model, 0.0)      # a model loaded after `before` starts at 0
        if delta < 0:
            raise MetricsError(f"{name} of model {model!r} went down from {old[model]} to "
                               f"{value}: the server restarted between the scrapes")
        deltas[model] = delta
    return deltas


def _failures_by_reason(before: Scrape, after: Scrape) -> dict[str, dict[str, int]]:
    after.require(FAILURE)
    reasons = sorted({s.labels.get("reason", "") for s in after.series(FAILURE)})
    by_model: dict[str, dict[str, int]] = defaultdict(dict)
    for reason in reasons:
        for model, delta in _counter_delta(before, after, FAILURE, reason=reason).items():
            if delta:
                by_model[model][reason] = int(round(delta))
    return by_model


def _latency_quantiles(before: Scrape, after: Scrape,
                       name: str) -> dict[str, tuple[dict[float, float], str]]:
    """{model: ({quantile: value}, source)}; the worst version's, as the recording rules do."""
    if after.has(f"{name}_bucket"):
        return _histogram_quantiles(before, after, name)
    if not any("quantile" in s.labels for s in after.series(name)):
        raise MetricsError(
            f"the scrape has no latency histogram {name}_bucket and no summary {name} with "
            f"quantiles; the server provides {name} with "
            f"{PROVIDED_BY.get(name, 'a --metrics-config setting that enables it')}")
    counts = _per_version_delta(before, after, f"{name}_count")
    worst: dict[str, dict[float, float]] = defaultdict(dict)
    for s in after.series(name):
        key = _version_key(s)
        quantile = float(s.labels.get("quantile", "nan"))
        if counts.get(key, 0) > 0 and quantile in QUANTILES and not math.isnan(s.value):
            worst[key[0]][quantile] = max(s.value, worst[key[0]].get(quantile, -math.inf))
    return {model: (q, "summary") for model, q in worst.items()}


def _histogram_quantiles(before: Scrape, after: Scrape,
                         name: str) -> dict[str, tuple[dict[float, float], str]]:
    def per_version(scrape):
        buckets: dict[tuple[str, str], dict[float, float]] = defaultdict(dict)
        for s in scrape.series(f"{name}_bucket"):
            buckets[_version_key(s)][float(s.labels["le"])] = s.value
        return buckets
    old = per_version(before)
    buckets = {key: {le: count - old.get(key, {}).get(le, 0.0) for le, count in counts.items()}
               for key, counts in per_version(after).items()}
    worst: dict[str, dict[float, float]] = defaultdict(dict)
    for (model, _), counts in buckets.items():
        pairs = sorted(counts.items())
        if pairs and pairs[-1][1] > 0:
            for q in QUANTILES:
                value = histogram_quantile(q, pairs)
                worst[model][q] = max(value, worst[model].get(q, -math.inf))
    return {model: (q, "histogram") for model, q in worst.items()}


def _per_version_delta(before: Scrape, after: Scrape, name: str) -> dict[tuple[str, str], float]:
    old = {_version_key(s): s.value for s in before.series(name)}
    return {_version_key(s): s.value - old.get(_version_key(s), 0.0) for s in after.series(name)}


def _version_key(sample: Sample) -> tuple[str, str]:
    return sample.labels.get("model", ""), sample.labels.get("version", "")
