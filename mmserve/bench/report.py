"""Results -> markdown tables and docs/benchmarks.md (the figures: analysis.py; the plots: plots.py).

Works from `results.json` alone, so a report can be re-rendered without
measuring again (`mmserve bench --from-results DIR --report`).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Sequence

from mmserve.bench.analysis import (
    TARGET_CONCURRENCY,
    _at,
    _f,
    _layout_of,
    _ms,
    _ours,
    _server_split,
    _table,
    efficiency,
    faster_layouts,
    layout_race,
    layouts,
    measured_layouts,
    peer_summary,
    perf_rows,
    scheduling,
    target_reasons,
    targets,
)
from mmserve.bench.analysis import latency_met, throughput_met  # noqa: F401 - importers read the figures here too
from mmserve.bench.plots import make_plots
from mmserve.bench.results import BenchResults, PerfRow, Pipeline
from mmserve.pipelines import MAX_BATCH_SIZE
from mmserve.repository_layout import THREADS_PARAMETER


# ---- markdown ----
def pipeline_section(results: BenchResults, pipeline: Pipeline, image: str | None) -> str:
    name = pipeline["name"]
    out = [f"### `{name}` ({pipeline['kind']})\n\n", f"Input data: {pipeline['data']}.\n\n"]
    measured = measured_layouts(results, name) or layouts(results)[:1]
    several = len(measured) > 1
    for layout in measured:
        steps = scheduling(results, name, layout)
        if not steps:
            continue
        parts = []
        for step, s in steps.items():
            delay = "no batching" if s["max_queue_delay_us"] is None else f"delay {s['max_queue_delay_us']} µs"
            preferred = [v for v in s["preferred_batch_size"] if v != MAX_BATCH_SIZE]  # Triton fills that one in
            extra = f", preferred {preferred}" if preferred else ""
            threads = f", {s[THREADS_PARAMETER]} intra-op threads" if s.get(THREADS_PARAMETER) else ""
            parts.append(f"`{step}` {s['instances']}× ({delay}{extra}{threads})")
        out.append(f"Scheduling{' (' + layout + ')' if several else ''}: " + "; ".join(parts) + ".\n\n")
    table = []
    for layout in measured:
        for r in perf_rows(results, name, layout=layout):
            split = _server_split(r) if r.get("steps") else None
            table.append(([layout] if several else []) + [
                int(r["load"]), _f(r["throughput"]), _ms(r["p50_us"]), _ms(r["p90_us"]), _ms(r["p99_us"]),
                _f(split["queue"], 1) if split else "–", _f(split["input"] + split["execute"], 1) if split else "–",
                "" if r.get("stable", True) else "loose"])
    if table:
        out.append(_table((["layout"] if several else []) + [
            "concurrency", "infer/s", "p50 ms", "p90 ms", "p99 ms", "queue ms (Σ steps)", "compute ms (Σ steps)",
            "stability"], table))
    for layout in measured:
        rates = perf_rows(results, name, "rate", layout)
        if rates:
            out.append(f"\nOpen-loop request rates{' (' + layout + ')' if several else ''}:\n\n")
            out.append(_table(["request rate /s", "infer/s", "p50 ms", "p90 ms", "p99 ms"],
                              [[_f(r["load"], 0), _f(r["throughput"]), _ms(r["p50_us"]), _ms(r["p90_us"]),
                                _ms(r["p99_us"])] for r in rates]))
    for r in results["perf"]:
        if r["pipeline"] == name and "error" in r:
            out.append(f"\n- {_layout_of(results, r) + ', ' if several else ''}load {r['load']:g}: {r['error']}\n")
    steps = step_table(results, name, measured)
    if steps:
        out.append("\nWhere the time goes, per step (Triton's statistics over each run; µs per request; "
                   "batch = inferences ÷ executions; a fused pipeline is one model):\n\n" + steps)
    for layout in measured:
        cpu = cpu_table(perf_rows(results, name, layout=layout))
        if cpu:
            out.append(f"\nCPU cores used while each level ran{' (' + layout + ')' if several else ''} (server "
                       "process, each Python-backend stub, the perf_analyzer client; the rest idle or used by "
                       "other processes of the machine):\n\n" + cpu)
    if image:
        out.append(f"\n![{name}]({image})\n")
    return "".join(out) + "\n"


def cpu_table(rows: Sequence[PerfRow]) -> str:
    measured = [r for r in rows if r.get("cpu")]
    if not measured:
        return ""
    # Only the processes this pipeline kept busy; the other models' stubs sleep.
    names = list(dict.fromkeys(n for r in measured for n, v in r["cpu"].items()
                               if n not in ("perf_analyzer", "idle or other") and v >= 0.01))
    names += ["perf_analyzer", "idle or other"]
    table = [[int(r["load"])] + [_f(r["cpu"].get(n), 2) for n in names] for r in measured]
    header = ["c"] + [f"`{n}`" if n not in ("perf_analyzer", "idle or other") else n for n in names]
    return _table(header, table)


def step_table(results: BenchResults, pipeline: str, measured: Sequence[str]) -> str:
    """Triton's per-step figures; at c=1 next to the same step's execute() time in-process (batch 1)
    (for a fused pipeline, next to the whole in-process call)."""
    baseline = results["baselines"].get(pipeline) or {}
    b1 = next((t for t in baseline.get("timings", []) if t["batch"] == 1), None)
    several = len(measured) > 1
    table = []
    for layout in measured:
        rows = perf_rows(results, pipeline, layout=layout)
        for r in rows:
            if int(r["load"]) not in (1, TARGET_CONCURRENCY, 16) and len(rows) > 3:
                continue
            for model, step in sorted(r.get("steps", {}).items()):
                local = None
                if b1 and int(r["load"]) == 1:
                    local = b1["p50_ms"] if model == pipeline else b1.get("steps_ms", {}).get(model)
                table.append(([layout] if several else []) + [
                    int(r["load"]), f"`{model}`", _f(step["queue_us"], 0), _f(step["compute_input_us"], 0),
                    _f(step["compute_infer_us"], 0), _f(step["compute_output_us"], 0), _f(step["avg_batch"], 2),
                    "" if local is None else _f(local * 1000, 0)])
    if not table:
        return ""
    return _table((["layout"] if several else []) + [
        "c", "step", "queue", "compute input", "compute infer", "compute output", "avg batch",
        "in-process execute() b1"], table)


def baseline_section(results: BenchResults) -> str:
    several = len(layouts(results)) > 1
    table = []
    for pipeline in results["pipelines"]:
        for layout in measured_layouts(results, pipeline["name"]):
            eff = efficiency(results, pipeline["name"], layout)
            if not eff:
                continue
            table.append([f"`{pipeline['name']}`"] + ([layout] if several else []) + [
                _f(eff["b1_p50_ms"], 2), _f(eff["b1_throughput"]), f"b{eff['best_batch']}", _f(eff["best_throughput"]),
                _f(eff["c1_p50_ms"], 2),
                _f(eff["c1_p50_ms"] - eff["b1_p50_ms"], 2) if eff["c1_p50_ms"] and eff["b1_p50_ms"] else "–",
                _f(eff["c8_throughput"]), f"**{_f(eff['latency_ratio'], 2)}×**", f"**{_f(eff['throughput_ratio'], 2)}×**"])
    if not table:
        return "No in-process baseline (the repository is not local, or its models are not Python-backend).\n"
    return _table(["pipeline"] + (["layout"] if several else []) + [
        "in-process b1 p50 ms", "b1 items/s", "best batch", "best items/s", "served c=1 p50 ms",
        "serving adds at c=1 (ms)", f"served c={TARGET_CONCURRENCY} infer/s", "p50 c=1 ÷ b1",
        f"c={TARGET_CONCURRENCY} ÷ best"], table)


def peers_section(results: BenchResults, image: str | None) -> str:
    peers = results.get("peers") or {}
    summary = peer_summary(results)
    if not summary:
        return "Peers not run (`--skip-peers`, or no text_embed pipeline).\n"
    loads = sorted({int(r["load"]) for t in summary for r in t["rows"]})
    header = ["target", "vectors vs sentence-transformers (min cos)"] + [f"c={c} infer/s (p50 ms)" for c in loads]
    table = []
    for target in summary:
        cells = []
        for c in loads:
            row = _at(target["rows"], c)
            cells.append(f"{_f(row['throughput'])} ({_ms(row['p50_us'])})" if row else "–")
        cosine = target.get("min_cosine")
        table.append([target["name"], "–" if cosine is None else f"{cosine:.6f}"] + cells)
    out = [f"Model: `{peers.get('model')}` for every target.\n\n", _table(header, table)]
    ratio_rows = []
    ours_all = _ours(summary)
    for ours in ours_all:
        for target in summary[len(ours_all):]:
            cells = []
            for c in loads:
                mine, theirs = _at(ours["rows"], c), _at(target["rows"], c)
                cells.append(f"{mine['throughput'] / theirs['throughput']:.2f}×" if mine and theirs else "–")
            layout = f" ({ours['layout']})" if len(ours_all) > 1 else ""
            ratio_rows.append([f"gRPC text_embed{layout} ÷ {target['name']}"] + cells)
    if ratio_rows:
        out.append("\nThroughput ratios (ours over gRPC ÷ target):\n\n")
        out.append(_table(["ratio"] + [f"c={c}" for c in loads], ratio_rows))
    for target in summary:
        if target.get("error"):
            out.append(f"\n- {target['name']}: {target['error']}\n")
    for note in peers.get("notes", []):
        out.append(f"\n- {note}\n")
    if image:
        out.append(f"\n![peers]({image})\n")
    return "".join(out)


def runtimes_section(results: BenchResults) -> str:
    table_data = results.get("runtimes")
    if not table_data:
        return "Runtime table not run.\n"
    table = []
    for r in table_data["rows"]:
        accuracy = "–" if r.get("accuracy") is None else f"{100 * r['accuracy']:.2f}% ({r['accuracy_items']})"
        drift = "reference" if r["runtime"] == r["reference"] else (
            f"{r['max_abs_diff']:.1e} / {r['min_cosine']:.5f} vs {r['reference']}"
        )
        table.append([f"`{r['encoder']}`", r["runtime"], _f(r["b1_ms"], 2), _f(r["b8_ms"], 2),
                      _f(r["b8_items_per_s"]), drift, accuracy])
    out = _table(["encoder", "runtime", "b1 ms", "b8 ms", "b8 items/s", "max abs diff / min cosine",
                  "dev accuracy (n)"], table)
    for note in table_data.get("notes", []):
        out += f"\n- {note}\n"
    return out


def tuning_section(results: BenchResults) -> str:
    sweeps = results.get("tuning")
    if not sweeps:
        return "Not part of this run (add `--tune`).\n"
    if isinstance(sweeps, dict):  # results.json of a run that swept one pipeline
        sweeps = [sweeps]
    out = ["Each variant is a fresh server over a copy of the repository whose configs differ only as "
           "described; variants are measured in interleaved rounds and the median of the rounds is shown.\n"]
    for tuning in sweeps:
        table = []
        for v in tuning["variants"]:
            cells = [f"`{v['name']}`", v["description"]]
            for key in ("c1", "c8"):
                row = v.get(key)
                cells.append(f"{_f(row['throughput'])} / {_ms(row['p50_us'])} / {_ms(row['p99_us'])}" if row else "–")
            table.append(cells)
        out += [f"\n### `{tuning['pipeline']}` ({tuning['rounds']} rounds)\n\n",
                _table(["variant", "what differs", "c=1 infer/s / p50 / p99 ms", "c=8 infer/s / p50 / p99 ms"], table)]
        chosen = tuning.get("chosen")
        if chosen:
            verdict = ("the exported defaults stand" if chosen == "exported"
                       else "a candidate for the exported defaults; re-measure before changing them")
            out.append(f"\nBest by this run's rule ({tuning['rule']}): **`{chosen}`**: {verdict}.\n")
    return "".join(out)


def headlines(results: BenchResults) -> list[str]:
    """One line per pipeline and layout for the terminal: p50 at c=1, throughput at the highest
    concurrency, and the served ÷ in-process ratios where the run measured both."""
    lines = []
    several = len(layouts(results)) > 1
    for pipeline in results["pipelines"]:
        for layout in measured_layouts(results, pipeline["name"]):
            rows = perf_rows(results, pipeline["name"], layout=layout)
            c1, top = _at(rows, 1), max(rows, key=lambda r: r["load"])
            parts = [f"p50 c=1 {_f(c1['p50_us'] / 1000, 2)} ms" if c1 else "",
                     f"{_f(top['throughput'])} infer/s at c={top['load']:g}"]
            eff = efficiency(results, pipeline["name"], layout)
            if eff and eff["throughput_ratio"]:
                parts.append(f"c={TARGET_CONCURRENCY} ÷ in-process best {_f(eff['throughput_ratio'], 2)}×")
            if eff and eff["latency_ratio"]:
                parts.append(f"c=1 p50 ÷ in-process b1 {_f(eff['latency_ratio'], 2)}×")
            name = f"{pipeline['name']} ({layout})" if several else pipeline["name"]
            lines.append(f"{name}: " + ", ".join(p for p in parts if p))
    return lines + faster_layouts(results)


def layouts_section(results: BenchResults) -> str:
    served = results.get("layouts") or {}
    rows = [[label, v["layout"], f"`{v['repository']}`"] for label, v in served.items()]
    out = ("Each repository was served by its own tritonserver, one after the other (each stopped before the "
           "next started), on the same requests and cores; the in-process baseline and the peers were measured "
           "once, during the first.\n\n" + _table(["label", "layout", "repository"], rows) + "\n")
    race = layout_race(results)
    wins = Counter(fastest for _, fastest, _ in race)
    overall = ", ".join(f"**{layout}** in {count} of {len(race)}" for layout, count in wins.most_common())
    return (out + "".join(f"- {line}\n" for line in faster_layouts(results))
            + (f"\nFaster on CPU: {overall} pipelines.\n" if race else ""))


def render(results: BenchResults, images: dict[str, str]) -> str:
    verdicts = targets(results)
    reasons = target_reasons(results)
    m = results["machine"]
    load = lambda key: ", ".join(f"{v:.2f}" for v in results.get(key, [])) or "–"  # noqa: E731
    s = results["settings"]
    out = [
        "# Benchmarks\n\n",
        f"Generated by `{results['command'] or 'mmserve bench'}` from one run on one machine: every ratio "
        "below compares figures measured minutes apart under the same conditions. Regenerate with that "
        "command; raw perf_analyzer CSVs, logs and `results.json` are in the run's `--out` folder.\n\n",
        "## Machine and method\n\n",
        _table(["", ""], [
            ["command", f"`{results['command']}`"],
            ["when", f"{results['started']} → {results.get('finished', '?')}"],
            ["CPU", f"{m.get('cpu', '?')}, {m.get('logical_cpus')} logical CPUs, used: {m.get('cpus_used')}"],
            ["memory", f"{m.get('memory_gib', '?')} GiB"],
            ["software", f"tritonserver {m.get('tritonserver')}, perf_analyzer from tritonclient "
                         f"{m.get('tritonclient')}, onnxruntime {m.get('onnxruntime')}, Python {m.get('python')}"],
            ["load average (1/5/15 min)", f"start {load('loadavg_start')}; after serving "
                                          f"{load('loadavg_after_serving')}; end {load('loadavg_end')}"],
            ["perf_analyzer", f"gRPC, closed loop, {s['measurement_interval_ms']} ms windows, stable within "
                              f"{s['stability_percentage']:g}% over 3 windows (else retried at "
                              f"{s['loose_stability_percentage']:g}%, marked *loose*), shared memory: "
                              f"{s['shared_memory']}"],
            ["in-process baseline", f"same models in one process, {s['baseline_seconds']:g} s per batch size"],
        ]),
    ]
    if results.get("notes"):
        out.append("\n" + "".join(f"- {n}\n" for n in results["notes"]))
    out += [
        "\nServer, perf_analyzer and the peers share the same CPUs: the client's own cost is inside every "
        "figure, as it would be for a sidecar or a co-located app. Latencies are client-side, as perf_analyzer "
        "reports them.\n\n",
        *(["## Targets\n\n", _table(["target", "measured", "verdict"], verdicts)] if verdicts else []),
        *(["\nWhere a target is missed, why (this run's own statistics):\n\n",
           "".join(f"- {line}\n" for line in reasons)] if reasons else []),
        *(["\n## Layouts: which is faster on CPU\n\n", layouts_section(results), "\n"]
          if len(layouts(results)) > 1 else []),
        "\n## Serving efficiency: served vs in-process\n\n",
        "The in-process baseline runs the pipeline's own models (tokenizer or pre-processing, the same ONNX "
        "through the same runner and settings, post-processing) in one Python process on the same "
        "requests, with the whole batch in one call and every core given to onnxruntime (one instance); "
        "the best batch size is the one with the highest items/s. A served ratio above 1× at c=8 is the "
        "server running several instances side by side (a fused image or audio pipeline runs 2 of 1 "
        "thread each), which one process making one call at a time does not.\n\n",
        baseline_section(results),
        "\n## Pipelines under load\n\n",
    ]
    for pipeline in results["pipelines"]:
        out.append(pipeline_section(results, pipeline, images.get(pipeline["name"])))
    out += [
        "## Side by side: infinity-emb and a naive FastAPI server\n\n",
        "Same MiniLM folder, same sentences (each request one sentence), same concurrency levels, same CPUs; "
        "perf_analyzer drives every target (`--service-kind openai` for the peers' `/embeddings`). "
        "infinity-emb 0.0.78 runs in its own venv with its defaults except `--no-vector-disk-cache` "
        "(it would otherwise answer repeated sentences from a cache) and `--pooling-method mean`; each "
        "peer's vectors are checked against sentence-transformers before it is timed.\n\n",
        peers_section(results, images.get("peers")),
        "\n## Runtimes: torch eager vs onnxruntime fp32 vs INT8\n\n",
        "Encoder only, fed by the pipeline's own pre-processing of the bench requests; INT8 is the exporter's "
        "dynamic quantization (per-channel weights). Drift is against torch where the checkpoint is known. "
        "Accuracy: the classifier's dev split, rebuilt from its training config.\n\n",
        runtimes_section(results),
        "\n## Tuning sweep\n\n",
        tuning_section(results),
    ]
    return "".join(out)


def write_report(results: BenchResults, docs: Path, image_folder: Path | None = None) -> Path:
    """docs/benchmarks.md plus its PNGs in docs/img (paths in the markdown are relative)."""
    image_folder = image_folder or docs.parent / "img"
    plots = make_plots(results, image_folder)
    images = {key: str(path.relative_to(docs.parent)) if path.is_relative_to(docs.parent) else str(path)
              for key, path in plots.items()}
    docs.parent.mkdir(parents=True, exist_ok=True)
    text = render(results, images)
    kept = _kept_analysis(docs)
    if kept:
        text += "\n" + kept
    from mmserve.bench.realsize import kept_section  # `--real-size --report`'s section, from its own run

    text += kept_section(docs)
    docs.write_text(text, encoding="utf-8")
    return docs


ANALYSIS_START, ANALYSIS_END = "<!-- analysis: kept when the report is regenerated -->", "<!-- /analysis -->"


def _kept_analysis(docs: Path) -> str:
    """The hand-written reading of the figures between the analysis markers, kept across regenerations."""
    if not docs.exists():
        return ""
    text = docs.read_text(encoding="utf-8")
    if ANALYSIS_START not in text or ANALYSIS_END not in text:
        return ""
    start = text.index(ANALYSIS_START)
    return text[start : text.index(ANALYSIS_END, start) + len(ANALYSIS_END)] + "\n"


def write_run_summary(results: BenchResults, out: Path) -> Path:
    """summary.md and plots inside the run's own folder."""
    plots = make_plots(results, out / "img")
    images = {key: str(path.relative_to(out)) for key, path in plots.items()}
    path = out / "summary.md"
    path.write_text(render(results, images), encoding="utf-8")
    return path


def load_results(folder: Path) -> BenchResults:
    return json.loads((folder / "results.json").read_text())
