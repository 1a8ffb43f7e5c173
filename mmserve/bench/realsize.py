"""`mmserve bench --real-size`: the sizes users bring, served beside in-process, in one run.

Three encoders of real architecture and size, with random weights (speed and memory do not
depend on the values; no such weights are reachable offline): open_clip's ViT-B-32 (the
CLIP trio image_embed / clip_text_embed / zero_shot_image), a BERT-base text encoder
(text_embed) and Whisper-base's encoder (audio_embed). They are exported with the cpu
profile's defaults into one repository, then:

1. in-process baseline of each measured pipeline (the same steps in one process, every
   core): p50 at batch 1 and items/s at batches 1..8;
2. one server: perf_analyzer at concurrency 1 and 8 per pipeline, then the memory of the
   whole server (tritonserver + every Python stub: RSS and proportional PSS, and the PSS
   of the shared weight files) after that load;
3. the same server with weight sharing off (`MMSERVE_ORT_CACHE=off`, what every stub did
   before issue 23), warmed at concurrency 8, memory again.

Targets (issue 23): served c=1 p50 <= 1.3x in-process b1, c=8 >= 0.9x in-process best
batch, and the server's PSS <= 1.5x (one copy of the weights + the runtime). Results land
in OUT/results.json; `--report` writes them as the "Real-size models" section of
docs/benchmarks.md (that section only).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from mmserve.pipelines import Kind
from mmserve.repository_layout import Layout

DEFAULT_OUT = Path("artifacts/bench/real-size")
MEASURED = (("image_embed", Kind.IMAGE_EMBED), ("text_embed", Kind.TEXT_EMBED), ("audio_embed", Kind.AUDIO_EMBED))
BATCH_SIZES = (1, 4, 8)  # concurrency 8 forms batches of at most 8; each size takes >= 20 calls (Whisper-base b8: ~4 s each)
LATENCY_TARGET, THROUGHPUT_TARGET, MEMORY_TARGET = 1.3, 0.9, 1.5
EXPORTED = "exported.json"  # written once the export is complete: --reuse measures that repository
REQUESTS = 64  # distinct requests per pipeline, the same in-process and served (seed 0)
SECTION_START = "<!-- real-size: written by `mmserve bench --real-size --report` -->"
SECTION_END = "<!-- /real-size -->"


@dataclass(frozen=True)
class RealSizeConfig:
    out: Path = DEFAULT_OUT
    docs: Path = Path("docs/benchmarks.md")
    report: bool = False
    size: str = "real"  # "demo": the demo's sizes (MiniLM-L6, the tiny ViT, Whisper tiny.en); "tiny": a smoke run
    reuse: bool = False  # measure the repository an earlier run of this --out exported
    demo_results: Path | None = DEFAULT_OUT.with_name("demo-size") / "results.json"  # its memory rows join the report
    seconds: float = 4.0  # per in-process batch size
    measurement_interval_ms: int = 4000
    command: str = "mmserve bench --real-size"


# ---- the models ----------------------------------------------------------------------------


def clip_checkpoint(folder: Path, size: str) -> Path:
    """A CLIP checkpoint folder as `mmserve train clip` writes it, random ViT-B-32 weights (the demo's tiny ViT below real size)."""
    import open_clip

    from mmserve.training.clip import TINY_ARCH, resolve_arch
    from mmserve.training.clip_checkpoint import save_clip_checkpoint, tokenizer_settings

    arch = "ViT-B-32" if size == "real" else TINY_ARCH
    name, model_cfg = resolve_arch(arch)
    model = open_clip.create_model(name)
    tokenizer = open_clip.get_tokenizer(name)
    settings = {
        "kind": "clip", "arch": arch, "open_clip_model": name, "tokenizer": tokenizer_settings(tokenizer, model_cfg),
        "prompt_templates": ["a photo of a {}."], "classes": ["dog", "cat", "red circle"],
        "training": {"note": "random weights (mmserve bench --real-size)"},
    }
    save_clip_checkpoint(folder, model, open_clip.get_model_config(name) or model_cfg, model.visual.preprocess_cfg, settings)
    return folder


def text_checkpoint(folder: Path, size: str) -> Path:
    """BERT-base (768 wide, 12 layers, 110M parameters), random weights, bert-base-uncased's vocabulary
    (the embedded MiniLM's tokenizer is that one); at demo size the embedded MiniLM-L6 itself."""
    from transformers import BertConfig, BertModel

    from mmserve.training.defaults import default_text_base

    if size == "demo":
        return default_text_base()
    config = BertConfig() if size == "real" else BertConfig(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512)
    BertModel(config).save_pretrained(folder)
    base = default_text_base()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (base / name).is_file():
            shutil.copy2(base / name, folder / name)
    return folder


def speech_checkpoint(folder: Path, size: str) -> Path:
    """Whisper-base's encoder (512 wide, 6 layers, 8 heads), random weights, as a transformers folder;
    at demo size Whisper tiny.en's (the embedded default)."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForAudioClassification

    if size == "demo":
        from mmserve.training.speech_whisper import default_speech_base

        return default_speech_base()
    shape = dict(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048) if size == "real" else dict(
        d_model=64, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=256)
    config = WhisperConfig(num_mel_bins=80, decoder_layers=shape["encoder_layers"],
                           decoder_attention_heads=shape["encoder_attention_heads"], decoder_ffn_dim=shape["encoder_ffn_dim"],
                           **shape)
    WhisperForAudioClassification(config).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder


def export_all(work: Path, repository: Path, size: str, log: Callable[[str], None]) -> dict[str, float]:
    """Checkpoints and their export into `repository` (cpu profile defaults); seconds per product."""
    from mmserve.exporters.clip import export_clip
    from mmserve.exporters.speech import export_speech
    from mmserve.exporters.text import export_text

    seconds = {}
    steps = [
        ("clip", clip_checkpoint, lambda c: export_clip(c, repository)),
        ("text", text_checkpoint, lambda c: export_text(c, repository)),
        ("speech", speech_checkpoint, lambda c: export_speech(c, repository, task="embed")),
    ]
    for product, build, export in steps:
        started = time.perf_counter()
        folder = work / "checkpoints" / product
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        log(f"{product}: building the checkpoint and exporting ...")
        result = export(build(folder, size))
        seconds[product] = round(time.perf_counter() - started, 1)
        log(result.summary())
    return seconds


def weight_bytes(repository: Path) -> int:
    """The ONNX files of the repository, each file once (hard links share an inode)."""
    seen: dict[tuple[int, int], int] = {}
    for path in repository.rglob("*.onnx"):
        if ".mmserve-staging" not in str(path):
            info = path.stat()
            seen[(info.st_dev, info.st_ino)] = info.st_size
    return sum(seen.values())


def onnx_copies(repository: Path) -> dict[str, int]:
    """On disk: ONNX file names in the repository vs distinct files behind them."""
    paths = [p for p in repository.rglob("*.onnx") if ".mmserve-staging" not in str(p)]
    return {"paths": len(paths), "files": len({(p.stat().st_dev, p.stat().st_ino) for p in paths})}


# ---- memory ------------------------------------------------------------------------------


def server_memory(server_pid: int, weights_root: Path | None) -> dict[str, Any]:
    """RSS and PSS of tritonserver and every stub; `weights_pss`: the part mapped from the shared weight files."""
    from mmserve.bench.server_stats import process_tree

    total = {"rss_mib": 0.0, "pss_mib": 0.0, "weights_pss_mib": 0.0, "processes": 0}
    per_process: dict[str, float] = {}
    for pid, name in process_tree(server_pid).items():
        try:
            rss, pss, mapped = _smaps(pid, weights_root)
        except OSError:
            continue
        total["rss_mib"] += rss / 1024
        total["pss_mib"] += pss / 1024
        total["weights_pss_mib"] += mapped / 1024
        total["processes"] += 1
        per_process[name] = round(per_process.get(name, 0.0) + pss / 1024, 1)
    return {**{k: round(v, 1) for k, v in total.items()}, "pss_by_process_mib": per_process}


def _smaps(pid: int, weights_root: Path | None) -> tuple[int, int, int]:
    """(RSS, PSS, PSS of mappings under weights_root) in KiB."""
    rss = pss = mapped = 0
    inside = False
    root = str(weights_root) if weights_root else None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if not fields:
                continue
            if "-" in fields[0] and not fields[0].endswith(":"):
                inside = bool(root) and len(fields) >= 6 and fields[5].startswith(root)
            elif fields[0] == "Rss:":
                rss += int(fields[1])
            elif fields[0] == "Pss:":
                pss += int(fields[1])
                mapped += int(fields[1]) if inside else 0
    return rss, pss, mapped


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ---- the run -----------------------------------------------------------------------------


def run_real_size(config: RealSizeConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    from mmserve.bench.perf import find_perf_analyzer

    find_perf_analyzer()
    out = config.out.resolve()
    # the run's prepared weights (random, never seen again) in a cache of its own, removed at the end
    with _environment(MMSERVE_ORT_CACHE=str(out / "ort-cache")):
        try:
            return _run(config, out, log)
        finally:
            shutil.rmtree(out / "ort-cache", ignore_errors=True)


def _run(config: RealSizeConfig, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    from mmserve.bench import inputs as bench_inputs
    from mmserve.bench.perf import BenchError, Load, PerfSettings, run_level
    from mmserve.bench.run import loadavg, machine
    from mmserve.pipelines import PIPELINES
    from mmserve.serving.shared_weights import cache_root

    repository = out / "repository"
    reused = config.reuse and (out / EXPORTED).is_file()
    if not reused:
        shutil.rmtree(repository, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"command": config.command, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                               "machine": machine(), "loadavg_start": loadavg(), "size": config.size}
    if reused:
        results["export_seconds"] = json.loads((out / EXPORTED).read_text(encoding="utf-8"))
    else:
        results["export_seconds"] = export_all(out, repository, config.size, log)
        (out / EXPORTED).write_text(json.dumps(results["export_seconds"]), encoding="utf-8")
    results["weights_mib"] = round(weight_bytes(repository) / 2**20, 1)
    results["onnx_on_disk"] = onnx_copies(repository)
    requests = {name: bench_inputs.requests_for(kind, REQUESTS, seed=0) for name, kind in MEASURED}
    results["inputs"] = {name: bench_inputs.describe(kind, requests[name]) for name, kind in MEASURED}

    results["baselines"] = {}
    for name, kind in MEASURED:
        log(f"{name}: in-process baseline (b{', b'.join(map(str, BATCH_SIZES))}) ...")
        try:
            results["baselines"][name] = baseline_isolated(repository, name, kind, config.seconds)
        except BenchError as error:  # the served figures still come; the report says what is missing
            log(str(error))
            results["baselines"][name] = {"pipeline": name, "error": str(error)}
    results["loadavg_after_baselines"] = loadavg()
    _save(results, out)  # partial results survive an interrupted run

    settings = PerfSettings(measurement_interval_ms=config.measurement_interval_ms, max_trials=4)
    raw = out / "raw"
    results["perf"], results["memory"] = [], {}
    for shared in (True, False):
        label = "shared" if shared else "not shared"
        with _environment(MMSERVE_ORT_CACHE=os.environ.get("MMSERVE_ORT_CACHE", "") if shared else "off"), \
                _serving(repository, raw / f"triton.{'shared' if shared else 'copies'}.log", log) as (url, pid, client):
            if shared:
                results["scheduling"] = {name: _scheduling(client, name) for name, _ in MEASURED}
            for name, kind in MEASURED:
                data = bench_inputs.perf_json(requests[name], PIPELINES[kind], raw / f"{name}.input.json")
                for concurrency in ((1, 8) if shared else (8,)):
                    log(f"{name} ({label} weights): c={concurrency} ...")
                    level = _settings_for(settings, results["baselines"].get(name, {}), concurrency)
                    row = _measured_level(client, url, name, data, Load("concurrency", concurrency), level, raw, run_level)
                    if shared:
                        results["perf"].append(row)
            results["memory"][label] = server_memory(pid, cache_root() if shared else None)
            log(f"server memory ({label} weights): {results['memory'][label]}")
            _save(results, out)
    results["loadavg_end"] = loadavg()
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    results["verdicts"] = verdicts(results)
    if config.demo_results is not None and config.demo_results.is_file():
        results["demo_size"] = json.loads(config.demo_results.read_text(encoding="utf-8"))
    _save(results, out)
    if config.report:
        write_section(config.docs, render(results))
    return results


def _save(results: dict, out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")


MIN_CALLS = 3  # per in-process batch size (after 2 warm-up calls) (and at least `seconds`): Whisper-base's b8 takes seconds a call


def baseline_isolated(repository: Path, name: str, kind: Kind, seconds: float) -> dict:
    """The in-process baseline (bench.inprocess.measure_baseline) in a child process of its own
    session, as the server runs in one (see measure_baseline_isolated), with MIN_CALLS calls."""
    import subprocess
    import sys

    from mmserve.bench.perf import BenchError

    request = json.dumps({"repository": str(repository), "pipeline": name, "kind": kind.value, "seconds": seconds})
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "mmserve.bench.realsize", "--baseline", request],
                          capture_output=True, text=True, start_new_session=True, env=env)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise BenchError(f"in-process baseline of {name} failed: {lines[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _baseline_child(request: dict) -> dict:
    from mmserve.bench.inprocess import measure_baseline
    from mmserve.bench.inputs import requests_for

    requests = requests_for(request["kind"], REQUESTS, seed=0)
    return measure_baseline(Path(request["repository"]), request["pipeline"], requests, BATCH_SIZES,
                            request["seconds"], min_calls=MIN_CALLS).as_dict()


@contextmanager
def _serving(repository: Path, log_file: Path, log: Callable[[str], None]) -> Iterator[tuple[str, int, Any]]:
    import tritonclient.grpc as grpcclient

    from mmserve.server import ServerPorts, TritonServer

    log_file.parent.mkdir(parents=True, exist_ok=True)
    log(f"starting tritonserver over {repository} ...")
    with TritonServer(repository, ServerPorts.free(), log_file=log_file) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            yield server.grpc_url, server.pid, client
        finally:
            client.close()


def _scheduling(client: Any, pipeline: str) -> dict[str, Any]:
    config = client.get_model_config(pipeline, as_json=True)["config"]
    return {"instances": sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1,
            "max_queue_delay_us": int(config.get("dynamic_batching", {}).get("max_queue_delay_microseconds", 0))}


def _settings_for(settings: Any, baseline: dict, concurrency: int) -> Any:
    """Windows long enough for MIN_WINDOW_ITEMS answers at the in-process pace: a Whisper-base
    request takes about a second, and a 4 s window of a handful of answers never settles."""
    from dataclasses import replace

    timings = {t["batch"]: t for t in baseline.get("timings", [])}
    pace = timings.get(min(concurrency, max(timings, default=1)), {}).get("throughput")
    if not pace:
        return settings
    wanted = min(MAX_WINDOW_MS, int(1000 * MIN_WINDOW_ITEMS / pace))
    return replace(settings, measurement_interval_ms=max(settings.measurement_interval_ms, wanted))


MIN_WINDOW_ITEMS = 16
MAX_WINDOW_MS = 20_000  # Whisper-base on a busy 2-core VM: 16 answers took 109 s a window


def _measured_level(client: Any, url: str, name: str, data: Path, load: Any, settings: Any, raw: Path, run_level: Any) -> dict:
    from mmserve.bench.perf import BenchError
    from mmserve.bench.server_stats import difference, snapshot

    before = snapshot(client)
    try:
        row = run_level(url, name, data, load, settings, raw / "perf")
    except BenchError as error:
        return {"pipeline": name, "load": load.value, "error": str(error)}
    row.layout = Layout.FUSED.value
    row.steps = difference(before, snapshot(client))
    return row.as_dict()


# ---- verdicts and the report ---------------------------------------------------------------


def _perf(results: dict, name: str, concurrency: int) -> dict | None:
    return next((r for r in results["perf"] if r["pipeline"] == name and r.get("load") == concurrency and "error" not in r), None)


def verdicts(results: dict) -> list[dict[str, Any]]:
    """Each pipeline's latency and throughput against in-process; the server's memory against the weights."""
    found = []
    for name, _ in MEASURED:
        baseline = results["baselines"].get(name, {})
        timings = {t["batch"]: t for t in baseline.get("timings", [])}
        c1, c8 = _perf(results, name, 1), _perf(results, name, 8)
        if 1 in timings and c1:
            served, local = c1["p50_us"] / 1e3, timings[1]["p50_ms"]
            found.append({"pipeline": name, "metric": "c=1 p50", "served": served, "in_process": local,
                          "ratio": served / local, "met": served / local <= LATENCY_TARGET, "unit": "ms", "batch": 1,
                          "reason": _latency_reason(c1, timings[1], name)})
        if timings and c8:
            best = max(timings.values(), key=lambda t: t["throughput"])
            step = (c8.get("steps") or {}).get(name, {})
            found.append({"pipeline": name, "metric": "c=8 throughput", "served": c8["throughput"],
                          "in_process": best["throughput"], "ratio": c8["throughput"] / best["throughput"],
                          "met": c8["throughput"] / best["throughput"] >= THROUGHPUT_TARGET, "unit": "items/s",
                          "batch": best["batch"], "served_avg_batch": step.get("avg_batch"),
                          "reason": _throughput_reason(c8, timings, best, step.get("avg_batch"))})
    memory = results.get("memory", {}).get("shared")
    if memory:
        weights = results["weights_mib"]
        runtime = memory["pss_mib"] - memory["weights_pss_mib"]  # interpreters, libraries, activations
        one_copy = weights + runtime
        found.append({"pipeline": "server", "metric": "PSS", "served": memory["pss_mib"], "in_process": one_copy,
                      "ratio": memory["pss_mib"] / one_copy, "met": memory["weights_pss_mib"] <= 1.1 * weights
                      and memory["pss_mib"] <= MEMORY_TARGET * one_copy, "unit": "MiB",
                      "weights_pss_mib": memory["weights_pss_mib"], "weights_mib": weights})
    return found


def _latency_reason(row: dict, local: dict, name: str) -> str:
    """Where a lone request's time went: inside the pipeline model (Triton's compute) vs around it."""
    step = (row.get("steps") or {}).get(name, {})
    inside = step.get("compute_infer_us")
    served = row["p50_us"] / 1e3
    if inside is None:
        return f"served {served - local['p50_ms']:+.1f} ms vs in-process"
    return (f"the pipeline model computed {inside / 1e3:.1f} ms a request (in-process {local['p50_ms']:.1f} ms), "
            f"queue {step.get('queue_us', 0) / 1e3:.1f} ms; gRPC, the client and the stub's hand-over the remaining "
            f"{served - inside / 1e3 - step.get('queue_us', 0) / 1e3:.1f} ms")


def _throughput_reason(row: dict, timings: dict, best: dict, avg_batch: float | None) -> str:
    """What batch the server formed and what the in-process pipeline reaches at about that batch."""
    if not avg_batch:
        return ""
    near = min(timings.values(), key=lambda t: abs(t["batch"] - avg_batch))
    steps = near.get("steps_ms") or {}
    encoder = max(steps.values(), default=0.0)
    others = sum(steps.values()) - encoder
    share = f"; outside the encoder (decoding, features, tokens) {100 * others / sum(steps.values()):.0f}% of an " \
            f"in-process b{near['batch']} call" if steps and sum(steps.values()) > 0 else ""
    return (f"served batches averaged {avg_batch:.1f}; in-process b{near['batch']} gives {near['throughput']:.1f} "
            f"items/s (best b{best['batch']} {best['throughput']:.1f}){share}")


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def render(results: dict) -> str:
    """The report's "Real-size models" section."""
    machine_info = results["machine"]
    lines = [
        SECTION_START, "", "## Real-size models: ViT-B-32, BERT-base, Whisper-base (issue 23)", "",
        f"`{results['command']}`, one run, {results['started']} → {results['finished']}, "
        f"{machine_info.get('cpu', 'CPU')}, {machine_info.get('logical_cpus')} logical CPUs shared with other work: "
        f"load average start {', '.join(map(str, results['loadavg_start']))}; after the in-process baselines "
        f"{', '.join(map(str, results['loadavg_after_baselines']))}; end {', '.join(map(str, results['loadavg_end']))}. "
        "Random weights of the real architectures (speed and memory do not depend on the values), exported with the "
        f"cpu profile's defaults (fused layout) in {', '.join(f'{k} {v:.0f} s' for k, v in results['export_seconds'].items())}. "
        "Served: perf_analyzer, gRPC, closed loop. In-process: the same steps in one process with every core, "
        f"on the same inputs, batches {', '.join(map(str, BATCH_SIZES))}.", "",
        "| pipeline | inputs | instances (threads = cores ÷ instances) |", "| --- | --- | --- |",
    ]
    for name, _ in MEASURED:
        lines.append(f"| `{name}` | {results['inputs'][name]} | {results.get('scheduling', {}).get(name, {}).get('instances', '–')} |")
    lines += ["", "| pipeline | figure | served | in-process | ratio | target | verdict |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for v in results["verdicts"]:
        if v["pipeline"] == "server":
            continue
        target = f"≤ {LATENCY_TARGET}×" if v["metric"] == "c=1 p50" else f"≥ {THROUGHPUT_TARGET}× best batch"
        local = f"{_fmt(v['in_process'])} {v['unit']} (b{v['batch']})"
        served = f"{_fmt(v['served'])} {v['unit']}" + (
            f" (batches of {_fmt(v.get('served_avg_batch'))})" if v.get("served_avg_batch") else "")
        lines.append(f"| `{v['pipeline']}` | {v['metric']} | {served} | {local} | **{v['ratio']:.2f}×** | {target} | "
                     f"{'met' if v['met'] else '**not met**'} |")
    missed = [v for v in results["verdicts"] if not v["met"] and v.get("reason")]
    if missed:
        lines += ["", "Where a target is missed, what was measured:", ""]
        lines += [f"- `{v['pipeline']}` {v['metric']}: {v['reason']}." for v in missed]
    shared, copies = results["memory"].get("shared", {}), results["memory"].get("not shared", {})
    disk = results["onnx_on_disk"]
    lines += [
        "", f"Memory of the whole server (tritonserver + every Python stub, {shared.get('processes', '–')} processes), "
        f"after the load above; the repository's ONNX weights: {_fmt(results['weights_mib'])} MiB, "
        f"{disk['paths']} ONNX paths on disk backed by {disk['files']} files (hard links).", "",
        "| weights | RSS | PSS | PSS of the shared weight files |", "| --- | --- | --- | --- |",
        f"| shared (default: prepared copy memory-mapped) | {_fmt(shared.get('rss_mib'))} MiB | {_fmt(shared.get('pss_mib'))} MiB "
        f"| {_fmt(shared.get('weights_pss_mib'))} MiB |",
        f"| not shared (`MMSERVE_ORT_CACHE=off`: each stub parses its own copy) | {_fmt(copies.get('rss_mib'))} MiB "
        f"| {_fmt(copies.get('pss_mib'))} MiB | – |",
    ]
    demo = results.get("demo_size")
    if demo:
        small, small_copies = demo["memory"].get("shared", {}), demo["memory"].get("not shared", {})
        lines += [
            "", f"The same at the demo's sizes (MiniLM-L6, the tiny ViT, Whisper tiny.en: {_fmt(demo['weights_mib'])} MiB "
            f"of ONNX weights; {demo['started']}, load average {', '.join(map(str, demo['loadavg_start']))}):", "",
            "| weights | RSS | PSS | PSS of the shared weight files |", "| --- | --- | --- | --- |",
            f"| shared | {_fmt(small.get('rss_mib'))} MiB | {_fmt(small.get('pss_mib'))} MiB | {_fmt(small.get('weights_pss_mib'))} MiB |",
            f"| not shared | {_fmt(small_copies.get('rss_mib'))} MiB | {_fmt(small_copies.get('pss_mib'))} MiB | – |",
        ]
    memory = next((v for v in results["verdicts"] if v["pipeline"] == "server"), None)
    if memory:
        lines += ["", f"Memory target (≤ {MEMORY_TARGET}× one copy of the weights + the runtime): the weight files count "
                  f"{_fmt(memory['weights_pss_mib'])} MiB of PSS for {_fmt(memory['weights_mib'])} MiB of weights (one copy), "
                  f"and the server's PSS is {memory['ratio']:.2f}× (weights + everything else the processes hold: "
                  f"interpreters, libraries, activation arenas) — **{'met' if memory['met'] else 'not met'}**. "
                  f"PSS by process (MiB): {', '.join(f'{k} {v}' for k, v in sorted(shared.get('pss_by_process_mib', {}).items()))}."]
    lines += ["", SECTION_END, ""]
    return "\n".join(lines)


def write_section(docs: Path, section: str) -> Path:
    """Put the section into docs/benchmarks.md: in place of an earlier one, else at the end."""
    text = docs.read_text(encoding="utf-8") if docs.exists() else "# Benchmarks\n"
    if SECTION_START in text and SECTION_END in text:
        start = text.index(SECTION_START)
        end = text.index(SECTION_END, start) + len(SECTION_END)
        text = text[:start] + section.rstrip("\n") + text[end:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    docs.write_text(text, encoding="utf-8")
    return docs


def kept_section(docs: Path) -> str:
    """The section as docs/benchmarks.md holds it now ("" when absent): a regenerated report keeps it."""
    text = docs.read_text(encoding="utf-8") if docs.exists() else ""
    if SECTION_START not in text or SECTION_END not in text:
        return ""
    start = text.index(SECTION_START)
    return "\n" + text[start : text.index(SECTION_END, start) + len(SECTION_END)] + "\n"


def summary_lines(results: dict) -> list[str]:
    return [f"{v['pipeline']} {v['metric']}: {_fmt(v['served'])} vs {_fmt(v['in_process'])} {v['unit']} = "
            f"{v['ratio']:.2f}x -> {'met' if v['met'] else 'not met'}" for v in results["verdicts"]]



def main(argv: list[str] | None = None) -> int:
    """`python -m mmserve.bench.realsize [--size demo|real|tiny] [--out DIR]`: a run without the report."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mmserve.bench.realsize")
    parser.add_argument("--size", choices=("real", "demo", "tiny"), default="real")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--reuse", action="store_true", help="measure the repository an earlier run exported into --out")
    parser.add_argument("--baseline", help=argparse.SUPPRESS)  # the child of baseline_isolated
    args = parser.parse_args(argv)
    if args.baseline:
        print(json.dumps(_baseline_child(json.loads(args.baseline))))
        return 0
    out = args.out or DEFAULT_OUT.with_name(f"{args.size}-size")
    results = run_real_size(RealSizeConfig(out=out, size=args.size, seconds=args.seconds, reuse=args.reuse,
                                           command=f"python -m mmserve.bench.realsize --size {args.size}"))
    for line in summary_lines(results):
        print(line)
    print(f"results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
