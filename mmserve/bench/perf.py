"""perf_analyzer: find it, run it for one load level, read its CSV.

One invocation per load level (a concurrency or a request rate), so a level
that cannot stabilise on a noisy machine costs only itself, is retried with a
looser stability threshold and is marked as such in the results.
"""
from __future__ import annotations

import csv
import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path


class BenchError(RuntimeError):
    """The bench could not run; the message says what to do."""


@dataclass(frozen=True)
class Load:
    """One load level: `concurrency` closed-loop clients, or an open-loop `rate` in requests/s."""

    mode: str  # "concurrency" | "rate"
    value: float

    def __str__(self) -> str:
        return f"c={int(self.value)}" if self.mode == "concurrency" else f"{self.value:g} req/s"

    def args(self) -> list[str]:
        if self.mode == "concurrency":
            return ["--concurrency-range", str(int(self.value))]
        return ["--request-rate-range", f"{self.value:g}"]


@dataclass(frozen=True)
class PerfSettings:
    measurement_interval_ms: int = 3000
    stability_percentage: float = 15.0
    max_trials: int = 8
    loose_stability_percentage: float = 60.0  # the retry when a level will not settle
    shared_memory: str = "none"  # none | system
    output_shared_memory_size: int = 1 << 20
    timeout_s: float = 300.0


@dataclass
class PerfRow:
    """One load level as perf_analyzer measured it. Times are in microseconds."""

    pipeline: str
    target: str  # what served it: "triton-grpc", "infinity-emb", ...
    mode: str
    load: float
    throughput: float  # inferences (items) per second
    p50_us: float
    p90_us: float
    p95_us: float
    p99_us: float
    avg_us: float | None
    server_queue_us: float | None = None
    server_compute_input_us: float | None = None
    server_compute_infer_us: float | None = None
    server_compute_output_us: float | None = None
    stable: bool = True
    layout: str = ""  # the repository layout that served it (ensemble, fused); "" for the peers
    steps: dict[str, dict[str, float]] = field(default_factory=dict)  # per composing model, from Triton's statistics
    cpu: dict[str, float] = field(default_factory=dict)  # cores used per process while this level ran

    def as_dict(self) -> dict:
        return asdict(self)


def find_perf_analyzer() -> Path:
    """$PERF_ANALYZER, then the one beside this Python (tritonclient's wheel puts it there), then PATH."""
    explicit = os.environ.get("PERF_ANALYZER")
    candidates = [Path(explicit)] if explicit else []
    candidates.append(Path(sys.executable).parent / "perf_analyzer")
    on_path = shutil.which("perf_analyzer")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise BenchError(
        "perf_analyzer not found: it ships in the `tritonclient[all]==2.50.0` wheel "
        "(`pip install 'mmserve[server]'` or `make setup`), or set PERF_ANALYZER to its path."
    )


def perf_environment() -> dict[str, str]:
    """perf_analyzer links libcudart.so.12 even on CPU: put the pip CUDA runtime's lib on the path."""
    env = dict(os.environ)
    folders = []
    spec = importlib.util.find_spec("nvidia.cuda_runtime") if importlib.util.find_spec("nvidia") else None
    if spec is not None and spec.submodule_search_locations:
        folders.append(str(Path(list(spec.submodule_search_locations)[0]) / "lib"))
    if env.get("LD_LIBRARY_PATH"):
        folders.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(folders)
    return env


def perf_command(
    binary: Path,
    url: str,
    model: str,
    data: Path,
    load: Load,
    settings: PerfSettings,
    csv_path: Path,
    stability: float,
    service: str = "triton-grpc",
    endpoint: str | None = None,
) -> list[str]:
    cmd = [str(binary), "-m", model, "-u", url, "--input-data", str(data), *load.args()]
    cmd += [
        "--measurement-interval", str(settings.measurement_interval_ms),
        "-s", f"{stability:g}",
        "-r", str(settings.max_trials),
        "-f", str(csv_path),
    ]
    if service.startswith("triton"):
        cmd += ["-i", "http" if service == "triton-http" else "grpc", "--verbose-csv"]
        if settings.shared_memory != "none":
            cmd += ["--shared-memory", settings.shared_memory,
                    "--output-shared-memory-size", str(settings.output_shared_memory_size)]
    else:  # an OpenAI-compatible HTTP endpoint (the peers): JSON payloads, async only
        cmd += ["--service-kind", "openai", "--endpoint", endpoint or "v1/embeddings", "--async"]
    return cmd


def run_level(
    url: str,
    model: str,
    data: Path,
    load: Load,
    settings: PerfSettings,
    workdir: Path,
    service: str = "triton-grpc",
    endpoint: str | None = None,
    label: str | None = None,
) -> PerfRow:
    """Measure one load level; retry once with a loose stability threshold if it will not settle."""
    binary = find_perf_analyzer()
    workdir.mkdir(parents=True, exist_ok=True)
    stem = f"{label or model}.{load.mode}{load.value:g}".replace("/", "_")
    csv_path, log_path = workdir / f"{stem}.csv", workdir / f"{stem}.log"
    # The retry also doubles the window: a slow target may finish only a request or two per window.
    loose = replace(settings, measurement_interval_ms=2 * settings.measurement_interval_ms)
    attempts = [(settings, settings.stability_percentage, True), (loose, settings.loose_stability_percentage, False),
                (loose, 1000.0, False)]  # last resort on a machine that will not settle: report, marked loose
    errors = []
    for used, stability, stable in attempts:
        csv_path.unlink(missing_ok=True)
        cmd = perf_command(binary, url, model, data, load, used, csv_path, stability, service, endpoint)
        try:
            done = subprocess.run(
                cmd, env=perf_environment(), capture_output=True, text=True, timeout=settings.timeout_s
            )
        except subprocess.TimeoutExpired:
            errors.append(f"timed out after {settings.timeout_s:.0f} s")
            continue
        log_path.write_text(" ".join(cmd) + "\n\n" + done.stdout + done.stderr)
        if done.returncode == 0 and csv_path.exists():
            rows = parse_csv(csv_path, pipeline=label or model, target=service, mode=load.mode)
            if rows:
                rows[0].stable = stable
                return rows[0]
        errors.append(_last_error(done.stdout + done.stderr))
    raise BenchError(f"perf_analyzer failed for {label or model} at {load}: {' / '.join(errors)} (log: {log_path})")


def _last_error(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    wanted = [line for line in lines if "error" in line.lower() or "failed" in line.lower()]
    return (wanted or lines or ["no output"])[-1]


def _number(row: dict[str, str], key: str) -> float | None:
    value = row.get(key)
    if value is None or value.strip() == "":
        return None
    return float(value)


def parse_csv(path: Path, pipeline: str, target: str, mode: str) -> list[PerfRow]:
    """perf_analyzer's `-f` CSV (plain or --verbose-csv), one row per load level."""
    with path.open(newline="") as f:
        records = list(csv.DictReader(f))
    rows = []
    for record in records:
        load_key = "Concurrency" if "Concurrency" in record else "Request Rate"
        rows.append(
            PerfRow(
                pipeline=pipeline,
                target=target,
                mode=mode,
                load=float(record[load_key]),
                throughput=float(record["Inferences/Second"]),
                p50_us=float(record["p50 latency"]),
                p90_us=float(record["p90 latency"]),
                p95_us=float(record["p95 latency"]),
                p99_us=float(record["p99 latency"]),
                avg_us=_number(record, "Avg latency"),
                server_queue_us=_number(record, "Server Queue"),
                server_compute_input_us=_number(record, "Server Compute Input"),
                server_compute_infer_us=_number(record, "Server Compute Infer"),
                server_compute_output_us=_number(record, "Server Compute Output"),
            )
        )
    return rows
