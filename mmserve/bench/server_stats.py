"""Triton's own per-model statistics around a measurement: where the time went.

A snapshot before and after each load level; the difference, per composing
model, gives the average queue and compute time per request and the average
batch the dynamic batcher formed (inferences ÷ executions).
"""
from __future__ import annotations

from typing import Any

_DURATIONS = ("queue", "compute_input", "compute_infer", "compute_output")


def snapshot(client: Any) -> dict[str, dict[str, float]]:
    """Cumulative counters per model (all versions summed) from a tritonclient gRPC client."""
    stats = client.get_inference_statistics(as_json=True).get("model_stats", [])
    result: dict[str, dict[str, float]] = {}
    for model in stats:
        entry = result.setdefault(
            model["name"], {"inference_count": 0.0, "execution_count": 0.0, "success_count": 0.0,
                            **{f"{d}_ns": 0.0 for d in _DURATIONS}}
        )
        entry["inference_count"] += float(model.get("inference_count", 0))
        entry["execution_count"] += float(model.get("execution_count", 0))
        inference = model.get("inference_stats", {})
        entry["success_count"] += float(inference.get("success", {}).get("count", 0))
        for duration in _DURATIONS:
            entry[f"{duration}_ns"] += float(inference.get(duration, {}).get("ns", 0))
    return result


def difference(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per model that served requests in between: µs per request and the average batch."""
    steps = {}
    for name, end in after.items():
        start = before.get(name, {})
        requests = end["success_count"] - start.get("success_count", 0.0)
        if requests <= 0:
            continue
        executions = end["execution_count"] - start.get("execution_count", 0.0)
        inferences = end["inference_count"] - start.get("inference_count", 0.0)
        step = {"requests": requests}
        for duration in _DURATIONS:
            step[f"{duration}_us"] = (end[f"{duration}_ns"] - start.get(f"{duration}_ns", 0.0)) / requests / 1e3
        step["avg_batch"] = inferences / executions if executions > 0 else 0.0
        steps[name] = step
    return steps
