"""The GPU check's results, written to $OUT (JSON + markdown) after every step, so a check
stopped by its time limit still leaves every figure it measured."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmserve.bench.gpu.config import TARGETS


@dataclass(frozen=True)
class Measurement:
    pipeline: str
    runtime: str
    batch: int  # in-process: the batch size; served: the client concurrency
    p50_ms: float
    p99_ms: float
    items_per_s: float
    calls: int
    note: str = ""


@dataclass(frozen=True)
class Skip:
    what: str
    reason: str


@dataclass
class Report:
    out: Path | None = None  # set: written there after every change (write())
    gpu: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)  # what ran, how long, how it ended
    measurements: list[Measurement] = field(default_factory=list)
    served: list[Measurement] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    dry_run: bool = False
    seconds: float = 0.0

    def add(self, measurement: Measurement, served: bool = False) -> None:
        (self.served if served else self.measurements).append(measurement)
        self.write()

    def skip(self, what: str, reason: str) -> None:
        self.skipped.append(Skip(what, reason))
        self.write()

    def step(self, what: str, status: str, seconds: float, detail: str = "") -> None:
        self.steps.append({"step": what, "status": status, "seconds": round(seconds, 1), "detail": detail})
        self.write()

    def target_verdicts(self) -> list[dict[str, Any]]:
        verdicts = []
        for target in TARGETS:
            rows = [m for m in self.measurements if m.pipeline == target.pipeline and m.runtime == target.runtime
                    and (target.batch is None or m.batch == target.batch)]
            if not rows:
                verdicts.append({"target": target.label, "value": None, "verdict": "not measured"})
                continue
            best = min(rows, key=lambda m: m.p50_ms) if target.metric == "p50_ms" else max(rows, key=lambda m: m.items_per_s)
            value = getattr(best, target.metric)
            verdicts.append({"target": target.label, "value": round(value, 3), "batch": best.batch,
                             "verdict": "met" if target.met_by(value) else "missed"})
        return verdicts

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run, "gpu": self.gpu, "versions": self.versions, "steps": self.steps,
            "measurements": [asdict(m) for m in self.measurements], "served": [asdict(m) for m in self.served],
            "skipped": [asdict(s) for s in self.skipped], "targets": self.target_verdicts(),
            "seconds": round(self.seconds, 1),
        }

    def markdown(self) -> str:
        title = "# GPU check (dry run: CPU, no CUDA)" if self.dry_run else "# GPU check"
        lines = [title, ""]
        if self.gpu:
            lines += [", ".join(f"{k}: {v}" for k, v in self.gpu.items()), ""]
        if self.versions:
            lines += [", ".join(f"{k} {v}" for k, v in self.versions.items()), ""]
        lines += ["## Targets", "", "| target | measured | verdict |", "| --- | --- | --- |"]
        for v in self.target_verdicts():
            value = "—" if v["value"] is None else f"{v['value']:g} (batch {v['batch']})"
            lines.append(f"| {v['target']} | {value} | {v['verdict']} |")
        for title, rows, batch in (("In-process encoders", self.measurements, "batch"),
                                   ("Served (Triton, fused pipelines)", self.served, "concurrency")):
            if rows:
                lines += ["", f"## {title}", "", f"| pipeline | runtime | {batch} | p50 ms | p99 ms | items/s | calls |",
                          "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
                lines += [f"| {m.pipeline} | {m.runtime} | {m.batch} | {m.p50_ms:.3f} | {m.p99_ms:.3f} | "
                          f"{m.items_per_s:,.1f} | {m.calls} |" for m in rows]
        if self.steps:
            lines += ["", "## Steps", ""] + [f"- {s['step']}: {s['status']} in {s['seconds']:.0f} s"
                                             + (f" ({s['detail']})" if s["detail"] else "") for s in self.steps]
        if self.skipped:
            lines += ["", "## Not measured", ""] + [f"- {s.what}: {s.reason}" for s in self.skipped]
        lines += ["", f"Whole check: {self.seconds:.0f} s.", ""]
        return "\n".join(lines)

    def write(self) -> None:
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.json").write_text(json.dumps(self.as_dict(), indent=2) + "\n", encoding="utf-8")
        (self.out / "gpu_check.md").write_text(self.markdown(), encoding="utf-8")
