"""The live view's data: Triton's own counters, sampled every few seconds into a ring buffer.

Triton keeps cumulative per-model statistics (requests, failures, time queued and
computing, executions); the difference between two samples gives, per model and
interval, the request rate, the average time per request and the average batch the
dynamic batcher formed. Percentiles exist only where the server publishes latency
summaries on its metrics port (``--metrics-config=summary_latencies=true``); then
p50/p99 come from there. No Prometheus server is needed: the console keeps the last
minutes itself.
"""
from __future__ import annotations

import math
import re
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

# The durations Triton accumulates per model, in nanoseconds, summed over requests.
_DURATIONS = ("success", "queue", "compute_input", "compute_infer", "compute_output")
# Quantiles the live view draws when the metrics port has summaries.
QUANTILES = ("0.5", "0.99")


@dataclass(frozen=True)
class ModelCounters:
    """One model's cumulative counters (all versions summed) at one instant."""

    success: float = 0.0  # requests answered
    fail: float = 0.0  # requests failed
    inferences: float = 0.0  # items (a request of batch 4 counts 4)
    executions: float = 0.0  # model executions (one per batch the scheduler formed)
    success_ns: float = 0.0  # end-to-end time of answered requests inside the server
    queue_ns: float = 0.0
    compute_ns: float = 0.0  # compute input + infer + output


@dataclass(frozen=True)
class Sample:
    time: float  # Unix seconds
    models: dict[str, ModelCounters]
    quantiles_us: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> quantile -> µs


def counters_from_statistics(model_stats: Iterable[dict[str, Any]]) -> dict[str, ModelCounters]:
    """Triton's ``get_inference_statistics(as_json=True)["model_stats"]`` -> counters per model."""
    totals: dict[str, dict[str, float]] = {}
    for model in model_stats:
        entry = totals.setdefault(model["name"], dict.fromkeys(ModelCounters.__dataclass_fields__, 0.0))
        stats = model.get("inference_stats", {})
        ns = {d: float(stats.get(d, {}).get("ns", 0)) for d in _DURATIONS}
        entry["success"] += float(stats.get("success", {}).get("count", 0))
        entry["fail"] += float(stats.get("fail", {}).get("count", 0))
        entry["inferences"] += float(model.get("inference_count", 0))
        entry["executions"] += float(model.get("execution_count", 0))
        entry["success_ns"] += ns["success"]
        entry["queue_ns"] += ns["queue"]
        entry["compute_ns"] += ns["compute_input"] + ns["compute_infer"] + ns["compute_output"]
    return {name: ModelCounters(**values) for name, values in totals.items()}


_SAMPLE_LINE = re.compile(r"^nv_inference_request_summary_us\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def request_quantiles(prometheus_text: str) -> dict[str, dict[str, float]]:
    """``nv_inference_request_summary_us`` quantiles per model from Triton's metrics text.

    Versions are merged by taking the largest value (a conservative reading while two
    versions serve side by side); NaN (no request in the summary's window) is left out.
    """
    result: dict[str, dict[str, float]] = {}
    for line in prometheus_text.splitlines():
        match = _SAMPLE_LINE.match(line)
        if not match:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        quantile, model = labels.get("quantile"), labels.get("model")
        try:
            value = float(match["value"])
        except ValueError:
            continue
        if quantile is None or model is None or math.isnan(value):
            continue
        key = _quantile_key(quantile)
        per_model = result.setdefault(model, {})
        per_model[key] = max(value, per_model.get(key, value))
    return result


def _quantile_key(text: str) -> str:
    """"0.500000" and "0.5" name the same quantile: "0.5"."""
    try:
        return f"{float(text):g}"
    except ValueError:
        return text


@dataclass(frozen=True)
class Series:
    """Per interval (between consecutive samples) values for one model; None = no data."""

    time: list[float]
    requests_per_s: list[float | None]
    failures_per_s: list[float | None]
    latency_ms: list[float | None]  # average time in the server per answered request
    queue_ms: list[float | None]
    compute_ms: list[float | None]
    batch: list[float | None]  # average items per execution
    quantiles_ms: dict[str, list[float | None]]  # "0.5"/"0.99" -> from the metrics port, if published

    def as_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "requests_per_s": self.requests_per_s,
            "failures_per_s": self.failures_per_s,
            "latency_ms": self.latency_ms,
            "queue_ms": self.queue_ms,
            "compute_ms": self.compute_ms,
            "batch": self.batch,
            "quantiles_ms": self.quantiles_ms,
        }


def series(samples: list[Sample], model: str) -> Series:
    """The interval values of one model over the samples; counter resets (a reload) read as gaps."""
    out = Series([], [], [], [], [], [], [], {q: [] for q in QUANTILES})
    for before, after in zip(samples, samples[1:]):
        dt = after.time - before.time
        a, b = before.models.get(model), after.models.get(model)
        out.time.append(after.time)
        for q in QUANTILES:
            value = after.quantiles_us.get(model, {}).get(q)
            out.quantiles_ms[q].append(None if value is None else round(value / 1e3, 3))
        if a is None or b is None or dt <= 0 or b.success < a.success or b.fail < a.fail:
            for column in (out.requests_per_s, out.failures_per_s, out.latency_ms, out.queue_ms,
                           out.compute_ms, out.batch):
                column.append(None)
            continue
        answered = b.success - a.success
        executions = b.executions - a.executions
        out.requests_per_s.append(round(answered / dt, 3))
        out.failures_per_s.append(round((b.fail - a.fail) / dt, 3))
        per_request = (lambda ns: round(ns / answered / 1e6, 3)) if answered > 0 else (lambda ns: None)
        out.latency_ms.append(per_request(b.success_ns - a.success_ns))
        out.queue_ms.append(per_request(b.queue_ns - a.queue_ns))
        out.compute_ms.append(per_request(b.compute_ns - a.compute_ns))
        out.batch.append(round((b.inferences - a.inferences) / executions, 2) if executions > 0 else None)
    return out


@dataclass(frozen=True)
class Totals:
    """A product's figures over a window, for the overview table."""

    requests: float
    failures: float
    requests_per_s: float
    latency_ms: float | None


def totals(samples: list[Sample], model: str, window_s: float) -> Totals | None:
    """Requests, failures and the average latency over the last ``window_s`` seconds."""
    if len(samples) < 2:
        return None
    last = samples[-1]
    first = next((s for s in samples if last.time - s.time <= window_s), samples[0])
    a, b = first.models.get(model), last.models.get(model)
    if a is None or b is None or b.success < a.success or last.time <= first.time:
        return None
    answered = b.success - a.success
    return Totals(
        requests=answered,
        failures=max(0.0, b.fail - a.fail),
        requests_per_s=answered / (last.time - first.time),
        latency_ms=(b.success_ns - a.success_ns) / answered / 1e6 if answered else None,
    )


class StatsSampler:
    """Polls statistics (and the metrics port, when reachable) on a thread into a ring buffer."""

    def __init__(
        self,
        read_statistics: Callable[[], Iterable[dict[str, Any]]],
        metrics_url: str | None,
        interval_s: float = 2.0,
        history_s: float = 600.0,
    ) -> None:
        self._read_statistics = read_statistics
        self._metrics_url = metrics_url
        self.interval_s = interval_s
        self._samples: deque[Sample] = deque(maxlen=max(2, int(history_s / interval_s) + 1))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.metrics_note: str | None = None  # why there are no percentiles, if there are none

    def samples(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    def sample_once(self) -> Sample | None:
        """Take one sample now; errors are kept for the page to show, never raised."""
        try:
            models = counters_from_statistics(self._read_statistics())
        except Exception as error:  # noqa: BLE001 - shown on the page; the next poll retries
            self.last_error = f"statistics unavailable: {error}"
            return None
        self.last_error = None
        sample = Sample(time.time(), models, self._read_quantiles())
        with self._lock:
            self._samples.append(sample)
        return sample

    def _read_quantiles(self) -> dict[str, dict[str, float]]:
        if not self._metrics_url:
            self.metrics_note = "no metrics URL configured"
            return {}
        try:
            with urllib.request.urlopen(self._metrics_url, timeout=min(2.0, self.interval_s)) as response:
                text = response.read().decode("utf-8", errors="replace")
        except (urllib.error.URLError, OSError, ValueError) as error:
            self.metrics_note = f"metrics port unreachable ({self._metrics_url}: {error})"
            return {}
        quantiles = request_quantiles(text)
        has_summaries = "nv_inference_request_summary_us" in text
        self.metrics_note = None if has_summaries else (
            "the server publishes no latency summaries (start Triton with "
            "--metrics-config=summary_latencies=true for p50/p99)"
        )
        return quantiles

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mmserve-console-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.sample_once()
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
