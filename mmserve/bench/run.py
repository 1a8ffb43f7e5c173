"""`mmserve bench`: one command, one run, every figure side by side.

For each pipeline the server offers: realistic input data, the in-process
baseline, then perf_analyzer at each load level with Triton's per-step
statistics. Given several repositories (one per layout: ensemble, fused), each is
served in turn by its own tritonserver, stopped before the next starts, and every
pipeline is measured at every load level in each; the baseline and the peers are
measured once. Then the runtime table, and optionally the tuning sweep.
Everything lands in `out/results.json` (+ CSV, plots); the report module
renders it as docs/benchmarks.md.
"""
from __future__ import annotations

import csv
import json
import os
import platform
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

from mmserve.bench import inputs as bench_inputs
from mmserve.bench.config import DEFAULT_OUT, DEFAULT_PEERS_VENV, BenchConfig  # noqa: F401 - importers use run's names
from mmserve.bench.inprocess import ENSEMBLE_LAYOUT, repository_layout
from mmserve.bench.perf import BenchError, Load, PerfRow, PerfSettings, find_perf_analyzer, run_level
from mmserve.bench.server_stats import CpuMeter, difference, snapshot
from mmserve import kinds
from mmserve.kinds import AnswerShape, Modality
from mmserve.pipelines import PIPELINES, Kind
from mmserve.repository_layout import THREADS_PARAMETER, recorded_kind_of, served_layout_of


class Progress:
    """tqdm when installed, else one line per step."""

    def __init__(self, total: int) -> None:
        try:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr)
        except ImportError:
            self._bar, self._done, self._total = None, 0, total

    def step(self, label: str) -> None:
        if self._bar is not None:
            self._bar.set_description(label[:48])
        else:
            print(f"[{self._done + 1}/{self._total}] {label}", file=sys.stderr, flush=True)

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.update(1)
        else:
            self._done += 1

    def write(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# ---- which pipelines exist ----
def kind_of(name: str, inputs: Sequence[str], outputs: Sequence[str]) -> Kind | None:
    """The contract kind whose tensor names a model states exactly (its own name breaks ties)."""
    matches = [
        kind for kind, spec in PIPELINES.items()
        if [t.name for t in spec.inputs] == list(inputs) and [t.name for t in spec.outputs] == list(outputs)
    ]
    if not matches:
        return None
    return next((k for k in matches if k.value == name), matches[0])


def discover(client: Any, admin_key: str | None = None) -> list[tuple[str, Kind]]:
    """Every ready model of the server whose inputs and outputs are a pipeline's contract
    (the repository index is an admin call: ``admin_key`` where the server restricts it)."""
    found = []
    headers = {"triton-grpc-protocol-admin-key": admin_key} if admin_key else None
    for entry in client.get_model_repository_index(as_json=True, headers=headers).get("models", []):
        if entry.get("state") != "READY":
            continue
        config = client.get_model_config(entry["name"], as_json=True)["config"]
        kind = recorded_kind_of(config) or kind_of(  # the guess: repositories exported before kinds were recorded
            entry["name"], [i["name"] for i in config.get("input", [])], [o["name"] for o in config.get("output", [])]
        )
        if kind is not None and (entry["name"], kind) not in found:
            found.append((entry["name"], kind))
    return sorted(found, key=lambda item: (list(Kind).index(item[1]), item[0]))


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name"))
        info["memory_gib"] = round(
            int(next(l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal"))) / 2**20, 1
        )
    except (OSError, StopIteration):
        pass
    info["logical_cpus"] = os.cpu_count()
    info["cpus_used"] = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    try:
        import tritonclient

        info["tritonclient"] = getattr(tritonclient, "__version__", None) or _dist_version("tritonclient")
    except ImportError:
        pass
    return info


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def loadavg() -> list[float]:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


# ---- the run ----
def run_bench(config: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    find_perf_analyzer()  # fail fast, before a server starts
    if config.url and config.compare_with:
        raise BenchError("--url measures one running server; to compare layouts give each repository with "
                         "--repository and no --url (the bench serves them one after the other)")
    if config.cpus:
        os.sched_setaffinity(0, config.cpus)  # the server, perf_analyzer and the peers inherit these cores
    out = config.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    served = _layouts(config)  # before any server starts: a mixed or unknown repository fails fast
    results: dict[str, Any] = {
        "command": config.command,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "loadavg_start": loadavg(),
        "settings": {
            "concurrency": list(config.concurrency), "request_rates": list(config.request_rates),
            "shared_memory": config.shared_memory, **asdict(config.settings),
            "baseline_seconds": config.seconds, "requests_per_pipeline": config.requests,
        },
        "layouts": {}, "pipelines": [], "perf": [], "baselines": {}, "peers": {}, "runtimes": None, "tuning": None,
        "notes": [],
    }
    requests: dict[str, list] = {}
    chosen: list[tuple[str, Kind]] = []  # every pipeline measured, in any layout
    for label, (layout, repository) in served.items():
        results["layouts"][label] = {"layout": layout, "repository": str(repository), "scheduling": {}}
        for name, kind in _serve_and_measure(config, label, repository, results, requests, out / "raw", log):
            if (name, kind) not in chosen:
                chosen.append((name, kind))
    results["loadavg_after_serving"] = loadavg()

    repository = config.repository.resolve()
    local = repository.exists()
    if local and not config.skip_runtimes:
        try:
            from mmserve.bench.runtimes import measure_runtimes

            checkpoints = config.known_checkpoints
            log("runtime table (torch eager / ORT fp32 / ORT INT8) ...")
            table = measure_runtimes(
                repository, chosen, requests, checkpoints, out, seconds=config.seconds,
                progress=lambda label: log(f"  {label}"),
            )
            results["runtimes"] = table.as_dict()
        except ImportError as error:
            results["notes"].append(f"runtime table skipped: {error} (needs the train extra: torch, transformers)")
    if config.tune:
        from mmserve.bench.tune import SWEEPS, tune_pipeline

        results["tuning"] = []
        # the sweep varies an ensemble's step configs: the first repository in that layout
        ensemble = next((Path(v["repository"]) for v in results["layouts"].values() if v["layout"] == ENSEMBLE_LAYOUT), None)
        for shape, variants in SWEEPS.items():
            name, kind = next(((p["name"], Kind(p["kind"])) for p in results["pipelines"]
                               if kinds.info(p["kind"]).input is shape), (None, None))
            if name is None or kind is None or ensemble is None or not ensemble.exists():
                results["notes"].append(
                    f"tuning of a {shape.value} pipeline skipped: needs a local ensemble repository serving it")
                continue
            results["tuning"].append(
                tune_pipeline(ensemble, name, kind, requests[name], config, out, log, variants=variants))
    results["loadavg_end"] = loadavg()
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    write_results(results, out)
    return results


def _layouts(config: BenchConfig) -> dict[str, tuple[str, Path]]:
    """Each repository's label in the results (its layout; made unique when two share one) -> (layout, path).

    A repository the bench cannot read (only --url) takes the layout its server reports for
    its pipelines, found once the server answers; until then it is `served`.
    """
    found: dict[str, tuple[str, Path]] = {}
    for repository in config.repositories:
        repository = repository.resolve()
        if not repository.exists() and not config.url:
            raise BenchError(f"{repository} does not exist; export a repository first (`mmserve export`)")
        layout = repository_layout(repository) if repository.exists() else "served"
        label, n = layout, 2
        while label in found:
            label, n = f"{layout}-{n}", n + 1
        found[label] = (layout, repository)
    return found


def _serve_and_measure(config: BenchConfig, label: str, repository: Path, results: dict[str, Any],
                       requests: dict[str, list], raw: Path, log: Callable[[str], None]) -> list[tuple[str, Kind]]:
    """One repository: its own server (stopped on return), every chosen pipeline at every load level.

    The in-process baseline and the peers are measured the first time a pipeline is seen, so they
    sit next to the first layout's figures and are not repeated for the next.
    """
    import tritonclient.grpc as grpcclient

    from mmserve.server import ServerPorts, TritonServer

    local = repository.exists()
    layout = results["layouts"][label]
    with ExitStack() as stack:
        server_pid = None  # known when we started the server: its processes' CPU is metered
        if config.url:
            url = config.url
        else:
            server = TritonServer(repository, ServerPorts.free(), log_file=raw.parent / f"triton.{label}.log")
            log(f"starting tritonserver over {repository} ({label}) ...")
            stack.enter_context(server)
            url = server.grpc_url
            server_pid = server.pid
        client = grpcclient.InferenceServerClient(url)
        stack.callback(client.close)
        results["machine"]["tritonserver"] = client.get_server_metadata(as_json=True).get("version")
        from mmserve.local_servers import admin_key_for

        # --url: a server given by its address; its admin key from --admin-key-file, the environment,
        # or the key a local `mmserve serve` of this user generated (docs/security.md)
        available = discover(client, config.admin_key or os.environ.get("MMSERVE_ADMIN_KEY") or admin_key_for(url))
        if not available:
            raise BenchError(f"the server at {url} offers no pipeline (no model states a contract's tensor names)")
        chosen = _choose(available, config.pipelines, repository)
        if layout["layout"] == "served":
            layout["layout"] = _served_layout(client, chosen[0][0])
        loads = [Load("concurrency", c) for c in config.concurrency] + [Load("rate", r) for r in config.request_rates]
        text_embed = next((name for name, kind in chosen if _compared_with_peers(kind)), None)
        peers_wanted = not config.skip_peers and text_embed is not None and not results["peers"]
        http_url = None if config.url else server.http_url
        new = [name for name, _ in chosen if name not in results["baselines"]]
        total = len(chosen) * len(loads) + (len(new) if local else 0)
        if peers_wanted:
            from mmserve.bench.run_peers import peer_count

            total += peer_count(http_url is not None) * len(config.concurrency) + 1
        progress = Progress(total)
        stack.callback(progress.close)
        for name, kind in chosen:
            data = raw / f"{name}.input.json"
            if name not in requests:
                requests[name] = bench_inputs.requests_for(kind, config.requests, seed=0)
                bench_inputs.perf_json(requests[name], PIPELINES[kind], data)
                results["pipelines"].append(
                    {"name": name, "kind": kind.value, "data": bench_inputs.describe(kind, requests[name])})
            layout["scheduling"][name] = _scheduling(client, name)
            if local and name not in results["baselines"]:
                progress.step(f"{name}: in-process baseline")
                results["baselines"][name] = _baseline(repository, name, kind, config, progress)
                progress.advance()
            for load in loads:
                progress.step(f"{name} ({label}): {load}")
                results["perf"].append(
                    _measure(client, url, name, data, load, config.settings, raw / label, server_pid, label))
                progress.advance()
            if peers_wanted and name == text_embed:  # right after our own figures: same conditions
                from mmserve.bench.run_peers import run_peers

                results["peers"] = run_peers(config, client, url, http_url, name, requests[name], raw, progress)
                results["peers"]["layout"] = label  # whose server measured the HTTP row and the vectors
        progress.close()
    return chosen


def _served_layout(client: Any, pipeline: str) -> str:
    """The layout a running server reports for a pipeline (its config's mmserve_layout; for a
    repository exported before that was recorded: an ensemble, else one fused model)."""
    return served_layout_of(client.get_model_config(pipeline, as_json=True)["config"]).value


def _scheduling(client: Any, pipeline: str) -> dict[str, dict[str, Any]]:
    """How the server schedules each step of a pipeline: instances, batching delay, preferred sizes, threads."""
    config = client.get_model_config(pipeline, as_json=True)["config"]
    steps = [s["model_name"] for s in config.get("ensemble_scheduling", {}).get("step", [])] or [pipeline]
    found = {}
    for step in steps:
        c = client.get_model_config(step, as_json=True)["config"]
        batching = c.get("dynamic_batching")
        found[step] = {
            "instances": sum(int(g.get("count", 1)) for g in c.get("instance_group", [])) or 1,
            "max_queue_delay_us": int(batching.get("max_queue_delay_microseconds", 0)) if batching is not None else None,
            "preferred_batch_size": [int(v) for v in (batching or {}).get("preferred_batch_size", [])],
            THREADS_PARAMETER: c.get("parameters", {}).get(THREADS_PARAMETER, {}).get("string_value"),
        }
    return found


def _compared_with_peers(kind: Kind) -> bool:
    """The peers (sentence-embedding servers) answer what the text line's embedding kind does."""
    row = kinds.info(kind)
    return row.modality is Modality.TEXT and row.answer is AnswerShape.EMBEDDING


def _choose(available: list[tuple[str, Kind]], wanted: Sequence[str], repository: Path | None = None) -> list[tuple[str, Kind]]:
    if not wanted:
        return available
    names = {name: kind for name, kind in available}
    unknown = [w for w in wanted if w not in names]
    if unknown:
        over = f" over {repository}" if repository is not None and repository.exists() else ""
        raise BenchError(f"no pipeline named {', '.join(unknown)} on the server{over}; it offers {', '.join(names)}")
    return [(w, names[w]) for w in wanted]


def _baseline(repository: Path, name: str, kind: Kind, config: BenchConfig, progress: Progress) -> dict:
    from mmserve.bench.inprocess import measure_baseline_isolated

    try:  # the same requests: the generators are deterministic for a seed
        return measure_baseline_isolated(repository, name, kind.value, config.requests, config.seconds).as_dict()
    except BenchError as error:
        progress.write(f"{name}: no in-process baseline ({error})")
        return {"pipeline": name, "error": str(error)}


def _measure(client: Any, url: str, name: str, data: Path, load: Load, settings: PerfSettings, raw: Path,
             server_pid: int | None = None, layout: str = ENSEMBLE_LAYOUT) -> dict:
    """One load level with the server's statistics: per composing model of an ensemble (its own
    row would count each request twice), or the one model of a fused pipeline."""
    before = snapshot(client)
    meter = CpuMeter(server_pid)
    try:
        row = run_level(url, name, data, load, settings, raw)
    except BenchError as error:
        return {"pipeline": name, "target": "triton-grpc", "layout": layout, "mode": load.mode, "load": load.value,
                "error": str(error)}
    row.layout = layout
    row.cpu = meter.read() if server_pid else {}
    steps = difference(before, snapshot(client))
    row.steps = {model: step for model, step in steps.items() if model != name} or (
        {name: steps[name]} if name in steps else {})
    return row.as_dict()


def write_results(results: dict[str, Any], out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    fields = [f for f in PerfRow.__dataclass_fields__ if f not in ("steps", "cpu")]
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        rows = list(results["perf"])
        for peer in results.get("peers", {}).get("targets", []):
            rows += peer.get("rows", [])
        for row in rows:
            if "error" not in row:
                writer.writerow(row)
