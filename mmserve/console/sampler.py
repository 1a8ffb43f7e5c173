"""The live view's data: Triton's own counters, sampled every few seconds into a ring buffer.

Triton keeps cumulative per-model statistics (requests, failures, time queued and
computing, executions); the difference between two samples gives, per model and
interval, the request rate, the average time per request and the average batch the
dynamic batcher formed. Counters are kept per version: a reload or a version switch
restarts a version's counters (or brings a new version), which reads as a restart from
zero rather than a gap, and each interval knows which version(s) answered (the live
charts mark a change). Percentiles exist only where the server publishes latency
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
    models: dict[str, ModelCounters]  # all versions summed
    quantiles_us: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> quantile -> µs
    by_version: dict[str, dict[str, ModelCounters]] = field(default_factory=dict)  # model -> version -> counters

    def versions_of(self, model: str) -> dict[str, ModelCounters] | None:
        """The model's counters per version (one unnamed version for a sample without them)."""
        if model in self.by_version:
            return self.by_version[model]
        return {"": self.models[model]} if model in self.models else None


def _summed(counters: list[ModelCounters]) -> ModelCounters:
    return ModelCounters(**{f: sum(getattr(c, f) for c in counters) for f in ModelCounters.__dataclass_fields__})


def counters_by_version(model_stats: Iterable[dict[str, Any]]) -> dict[str, dict[str, ModelCounters]]:
    """The same statistics -> counters per model and version (Triton reports each loaded version)."""
    totals: dict[tuple[str, str], dict[str, float]] = {}
    for model in model_stats:
        key = (model["name"], str(model.get("version", "")))
        entry = totals.setdefault(key, dict.fromkeys(ModelCounters.__dataclass_fields__, 0.0))
        stats = model.get("inference_stats", {})
        ns = {d: float(stats.get(d, {}).get("ns", 0)) for d in _DURATIONS}
        entry["success"] += float(stats.get("success", {}).get("count", 0))
        entry["fail"] += float(stats.get("fail", {}).get("count", 0))
        entry["inferences"] += float(model.get("inference_count", 0))
        entry["executions"] += float(model.get("execution_count", 0))
        entry["success_ns"] += ns["success"]
        entry["queue_ns"] += ns["queue"]
        entry["compute_ns"] += ns["compute_input"] + ns["compute_infer"] + ns["compute_output"]
    out: dict[str, dict[str, ModelCounters]] = {}
    for (name, version), values in totals.items():
        out.setdefault(name, {})[version] = ModelCounters(**values)
    return out


def increment(before: Sample, after: Sample, model: str) -> tuple[ModelCounters, tuple[str, ...]] | None:
    """What the model did between two samples, and the versions that answered in between
    (None: no data for it in one of them). A version whose counters went down was
    reloaded and counts from zero; a version new in ``after`` counts all it has."""
    a, b = before.versions_of(model), after.versions_of(model)
    if a is None or b is None:
        return None
    parts, answered = [], []
    for version, now in b.items():
        then = a.get(version)
        restarted = then is None or now.success < then.success or now.fail < then.fail
        part = now if restarted else ModelCounters(**{
            f: getattr(now, f) - getattr(then, f) for f in ModelCounters.__dataclass_fields__})
        parts.append(part)
        if part.success > 0 and version:
            answered.append(version)
    return _summed(parts) if parts else ModelCounters(), tuple(sorted(answered, key=_version_order))


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 30, version)


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
    versions: list[str | None] = field(default_factory=list)  # which version(s) answered, e.g. "2" or "1+2"

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
            "versions": self.versions,
        }


def series(samples: list[Sample], model: str) -> Series:
    """The interval values of one model over the samples; a reload or a version switch reads
    as its counters restarting from zero (see :func:`increment`)."""
    out = Series([], [], [], [], [], [], [], {q: [] for q in QUANTILES}, [])
    for before, after in zip(samples, samples[1:]):
        dt = after.time - before.time
        out.time.append(after.time)
        for q in QUANTILES:
            value = after.quantiles_us.get(model, {}).get(q)
            out.quantiles_ms[q].append(None if value is None else round(value / 1e3, 3))
        step = increment(before, after, model) if dt > 0 else None
        if step is None:
            for column in (out.requests_per_s, out.failures_per_s, out.latency_ms, out.queue_ms,
                           out.compute_ms, out.batch, out.versions):
                column.append(None)
            continue
        d, answered_by = step
        out.versions.append("+".join(answered_by) or None)
        out.requests_per_s.append(round(d.success / dt, 3))
        out.failures_per_s.append(round(d.fail / dt, 3))
        per_request = (lambda ns: round(ns / d.success / 1e6, 3)) if d.success > 0 else (lambda ns: None)
        out.latency_ms.append(per_request(d.success_ns))
        out.queue_ms.append(per_request(d.queue_ns))
        out.compute_ms.append(per_request(d.compute_ns))
        out.batch.append(round(d.inferences / d.executions, 2) if d.executions > 0 else None)
    return out


@dataclass(frozen=True)
class Totals:
    """A product's figures over a window, for the overview table."""

    requests: float
    failures: float
    requests_per_s: float
    latency_ms: float | None
    versions: tuple[str, ...] = ()  # the versions that answered in the window


def totals(samples: list[Sample], model: str, window_s: float) -> Totals | None:
    """Requests, failures, the average latency and the versions that answered over the last
    ``window_s`` seconds, summed interval by interval (so a reload in the window does not
    blank the figures); None when fewer than two samples cover the window."""
    if len(samples) < 2:
        return None
    last = samples[-1]
    window = [s for s in samples if last.time - s.time <= window_s]
    if len(window) < 2:
        window = samples[-2:]
    answered = failed = success_ns = 0.0
    versions: set[str] = set()
    seen = False
    for before, after in zip(window, window[1:]):
        step = increment(before, after, model)
        if step is None:
            continue
        seen = True
        answered += step[0].success
        failed += step[0].fail
        success_ns += step[0].success_ns
        versions.update(step[1])
    if not seen:
        return None
    return Totals(
        requests=answered,
        failures=failed,
        requests_per_s=answered / (window[-1].time - window[0].time),
        latency_ms=success_ns / answered / 1e6 if answered else None,
        versions=tuple(sorted(versions, key=_version_order)),
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
            by_version = counters_by_version(self._read_statistics())
        except Exception as error:  # noqa: BLE001 - shown on the page; the next poll retries
            self.last_error = f"statistics unavailable: {error}"
            return None
        self.last_error = None
        models = {name: _summed(list(versions.values())) for name, versions in by_version.items()}
        sample = Sample(time.time(), models, self._read_quantiles(), by_version)
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
