"""Triton's own per-model statistics around a measurement: where the time went.

A snapshot before and after each load level; the difference, per composing
model, gives the average queue and compute time per request and the average
batch the dynamic batcher formed (inferences ÷ executions).
"""
from __future__ import annotations

import os
import resource
import time
from pathlib import Path
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


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces): state, ppid, ..."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = _stat_fields(pid)
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _process_name(cmdline: list[str]) -> str:
    if "stub" in Path(cmdline[0]).name and len(cmdline) > 1:
        return Path(cmdline[1]).parent.parent.name  # .../<model>/<version>/model.py
    return Path(cmdline[0]).name


def process_tree(root: int) -> dict[int, str]:
    """The server process and its descendants (the Python backend stubs), by name."""
    parents: dict[int, tuple[int, list[str]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry))[1])
            with open(f"/proc/{entry}/cmdline") as f:
                cmdline = f.read().split("\0")
        except (OSError, ValueError, IndexError):
            continue
        parents[int(entry)] = (ppid, cmdline)
    members, grew = {root}, True
    while grew:
        grew = False
        for pid, (ppid, _) in parents.items():
            if ppid in members and pid not in members:
                members.add(pid)
                grew = True
    return {pid: _process_name(parents[pid][1]) for pid in members if pid in parents and parents[pid][1][0]}


class CpuMeter:
    """CPU cores used per process of the server's tree, by perf_analyzer (a finished child) and left idle."""

    def __init__(self, server_pid: int | None) -> None:
        self._tree = process_tree(server_pid) if server_pid else {}
        self._start = {pid: _cpu_seconds(pid) for pid in self._tree}
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._children = usage.ru_utime + usage.ru_stime
        self._t0 = time.perf_counter()
        self._cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def read(self) -> dict[str, float]:
        wall = time.perf_counter() - self._t0
        used: dict[str, float] = {}
        for pid, name in self._tree.items():
            end, start = _cpu_seconds(pid), self._start.get(pid)
            if end is not None and start is not None:
                used[name] = used.get(name, 0.0) + (end - start) / wall
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        used["perf_analyzer"] = (usage.ru_utime + usage.ru_stime - self._children) / wall
        used["idle or other"] = max(0.0, self._cores - sum(used.values()))
        return {name: round(value, 3) for name, value in used.items()}
