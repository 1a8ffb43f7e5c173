"""Results -> markdown tables, PNG plots and docs/benchmarks.md.

Works from `results.json` alone, so a report can be re-rendered without
measuring again (`mmserve bench --from-results DIR --report`).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Sequence

from mmserve.pipelines import MAX_BATCH_SIZE
from mmserve.repository_layout import Layout

ENSEMBLE_LAYOUT = Layout.ENSEMBLE.value  # what every run served before layouts were compared
TARGET_CONCURRENCY = 8
# issue 13's targets, per pipeline and layout
THROUGHPUT_RATIO = 0.85  # c=8 throughput ≥ this × in-process at its best batch
LATENCY_RATIO = 1.3  # c=1 p50 ≤ this × in-process batch 1 ...
SMALL_MODEL_MS, SMALL_MODEL_ADDED_MS = 2.0, 0.5  # ... or, for a model under 2 ms, serving adds ≤ 0.5 ms
PEER_RATIO = 1.5  # text_embed ≥ this × infinity-emb's throughput


# ---- small helpers ----
def _ms(us: float | None) -> str:
    return "–" if us is None else f"{us / 1000:.1f}"


def _f(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ---- layouts: each repository the run served, by label ----
def layouts(results: dict) -> list[str]:
    """The run's layout labels in the order served; a run from before layouts were compared
    served one repository, in the ensemble layout."""
    return list(results.get("layouts") or {}) or [ENSEMBLE_LAYOUT]


def _layout_of(results: dict, row: dict) -> str:
    return row.get("layout") or layouts(results)[0]


def scheduling(results: dict, pipeline: str, layout: str) -> dict[str, dict[str, Any]]:
    served = (results.get("layouts") or {}).get(layout)
    if served is not None:
        return served.get("scheduling", {}).get(pipeline) or {}
    return next((p.get("scheduling") or {} for p in results["pipelines"] if p["name"] == pipeline), {})


def perf_rows(results: dict, pipeline: str, mode: str = "concurrency", layout: str | None = None) -> list[dict]:
    """One layout's rows of a pipeline (default: the first layout served), by load."""
    layout = layout or layouts(results)[0]
    return sorted(
        (r for r in results["perf"] if r["pipeline"] == pipeline and r["mode"] == mode and "error" not in r
         and r.get("target", "triton-grpc").startswith("triton") and _layout_of(results, r) == layout),
        key=lambda r: r["load"],
    )


def measured_layouts(results: dict, pipeline: str) -> list[str]:
    return [layout for layout in layouts(results) if perf_rows(results, pipeline, layout=layout)]


def _at(rows: Sequence[dict], load: float) -> dict | None:
    return next((r for r in rows if r["load"] == load), None)


# ---- derived figures ----
def measured_efficiencies(results: dict) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(pipeline, layout, efficiency) for every pipeline and layout measured against a baseline."""
    for pipeline in results["pipelines"]:
        for layout in measured_layouts(results, pipeline["name"]):
            eff = efficiency(results, pipeline["name"], layout)
            if eff:
                yield pipeline["name"], layout, eff


def efficiency(results: dict, pipeline: str, layout: str | None = None) -> dict[str, Any] | None:
    """Served ÷ in-process: throughput at c=8 over the best batch, p50 at c=1 over batch 1."""
    baseline = results["baselines"].get(pipeline)
    if not baseline or "timings" not in baseline:
        return None
    timings = {t["batch"]: t for t in baseline["timings"]}
    best = max(baseline["timings"], key=lambda t: t["throughput"])
    rows = perf_rows(results, pipeline, layout=layout)
    c8, c1 = _at(rows, TARGET_CONCURRENCY), _at(rows, 1)
    return {
        "best_batch": best["batch"], "best_throughput": best["throughput"],
        "b1_p50_ms": timings[1]["p50_ms"] if 1 in timings else None,
        "b1_throughput": timings[1]["throughput"] if 1 in timings else None,
        "c8_throughput": c8["throughput"] if c8 else None,
        "c1_p50_ms": c1["p50_us"] / 1000 if c1 else None,
        "throughput_ratio": c8["throughput"] / best["throughput"] if c8 else None,
        "b8_throughput": timings[TARGET_CONCURRENCY]["throughput"] if TARGET_CONCURRENCY in timings else None,
        "b8_ratio": (c8["throughput"] / timings[TARGET_CONCURRENCY]["throughput"]
                     if c8 and TARGET_CONCURRENCY in timings else None),
        "latency_ratio": (c1["p50_us"] / 1000) / timings[1]["p50_ms"] if c1 and 1 in timings else None,
    }


def latency_met(eff: dict[str, Any]) -> bool | None:
    """c=1 p50 ≤ 1.3× in-process batch 1, or serving adds ≤ 0.5 ms where the model itself is under 2 ms."""
    if eff["latency_ratio"] is None:
        return None
    added = eff["c1_p50_ms"] - eff["b1_p50_ms"]
    return eff["latency_ratio"] <= LATENCY_RATIO or (eff["b1_p50_ms"] < SMALL_MODEL_MS and added <= SMALL_MODEL_ADDED_MS)


def throughput_met(eff: dict[str, Any]) -> bool | None:
    return None if eff["throughput_ratio"] is None else eff["throughput_ratio"] >= THROUGHPUT_RATIO


def peer_summary(results: dict) -> list[dict[str, Any]]:
    """Per target: throughput and p50 per concurrency (ours over gRPC first, one per layout)."""
    peers = results.get("peers") or {}
    pipeline = peers.get("pipeline")
    if not pipeline:
        return []
    several = len(measured_layouts(results, pipeline)) > 1
    targets = [{"name": f"mmserve {pipeline} (gRPC{', ' + layout if several else ''})", "layout": layout,
                "min_cosine": peers.get("ours_min_cosine") if layout == peers.get("layout", layout) else None,
                "rows": perf_rows(results, pipeline, layout=layout)}
               for layout in measured_layouts(results, pipeline) or layouts(results)[:1]]
    for target in peers.get("targets", []):
        targets.append({**target, "rows": sorted((r for r in target.get("rows", []) if "error" not in r),
                                                  key=lambda r: r["load"])})
    return targets


def _ours(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in summary if "layout" in t]


def targets(results: dict) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for the issue's targets: every pipeline in every layout."""
    verdicts: list[tuple[str, str, str]] = []

    def verdict(ok: bool | None) -> str:
        return "not measured" if ok is None else ("**met**" if ok else "**not met**")

    for name, layout, eff in measured_efficiencies(results):
        ratio = eff["throughput_ratio"]
        same_batch = (f"; vs in-process b{TARGET_CONCURRENCY}: {_f(eff['b8_ratio'], 2)}×") if eff["b8_ratio"] else ""
        verdicts.append((
            f"`{name}` {layout}: c={TARGET_CONCURRENCY} throughput ≥ {THROUGHPUT_RATIO}× in-process best batch",
            f"{_f(eff['c8_throughput'])} vs {_f(eff['best_throughput'])} infer/s (b{eff['best_batch']}) = "
            f"**{_f(ratio, 2)}×**{same_batch}" if ratio else f"no c={TARGET_CONCURRENCY} in this run",
            verdict(throughput_met(eff)),
        ))
        ratio = eff["latency_ratio"]
        verdicts.append((
            f"`{name}` {layout}: c=1 p50 ≤ {LATENCY_RATIO}× in-process b1 (or ≤ +{SMALL_MODEL_ADDED_MS} ms "
            f"under a {SMALL_MODEL_MS:g} ms model)",
            f"{_f(eff['c1_p50_ms'], 2)} vs {_f(eff['b1_p50_ms'], 2)} ms = **{_f(ratio, 2)}×** "
            f"({eff['c1_p50_ms'] - eff['b1_p50_ms']:+.2f} ms)" if ratio else "no c=1 in this run",
            verdict(latency_met(eff)),
        ))
    summary = peer_summary(results)
    for ours in _ours(summary):
        label = f"text_embed {ours['layout']}" if len(_ours(summary)) > 1 else "text_embed"
        ours_c8 = _at(ours["rows"], TARGET_CONCURRENCY)
        infinity = [t for t in summary if t["name"].startswith("infinity") and _at(t["rows"], TARGET_CONCURRENCY)]
        if ours_c8 and infinity:
            # Its default engine is what a user gets; its optimum/ORT engine is the fairer runtime match.
            for engine in sorted(infinity, key=lambda t: "torch" not in t["name"]):
                theirs = _at(engine["rows"], TARGET_CONCURRENCY)["throughput"]
                ratio = ours_c8["throughput"] / theirs
                which = "its default engine" if "torch" in engine["name"] else "its onnxruntime engine"
                verdicts.append((
                    f"{label} ≥ {PEER_RATIO}× infinity-emb throughput at c={TARGET_CONCURRENCY} ({which})",
                    f"{_f(ours_c8['throughput'])} vs {_f(theirs)} infer/s ({engine['name']}) = **{_f(ratio, 2)}×**",
                    verdict(ratio >= PEER_RATIO),
                ))
        else:
            verdicts.append((f"{label} ≥ {PEER_RATIO}× infinity-emb throughput at c={TARGET_CONCURRENCY}", "–",
                             verdict(None)))
        naive = next((t for t in summary if t["name"].startswith("naive") and t["rows"]), None)
        if naive and ours["rows"]:
            ratios = []
            for row in naive["rows"]:
                mine = _at(ours["rows"], row["load"])
                if mine:
                    ratios.append((int(row["load"]), mine["throughput"] / row["throughput"]))
            verdicts.append((
                f"{label} ahead of naive FastAPI at every concurrency",
                ", ".join(f"c={c}: {r:.2f}×" for c, r in ratios),
                verdict(bool(ratios) and all(r > 1.0 for _, r in ratios)),
            ))
        else:
            verdicts.append((f"{label} ahead of naive FastAPI at every concurrency", "–", verdict(None)))
    int8 = int8_summary(results)
    if int8:
        verdicts.append((
            "INT8 ≥ 1.5× fp32 throughput, ≤ 1 point accuracy loss (intent dev set)",
            f"{int8['encoder']}: b8 {int8['speedup_b8']:.2f}× (b1 {int8['speedup_b1']:.2f}×), accuracy "
            f"{100 * int8['fp32_accuracy']:.2f}% → {100 * int8['int8_accuracy']:.2f}% "
            f"({100 * (int8['int8_accuracy'] - int8['fp32_accuracy']):+.2f} points, {int8['items']} dev texts)",
            verdict(int8["speedup_b8"] >= 1.5 and (int8["fp32_accuracy"] - int8["int8_accuracy"]) <= 0.01),
        ))
    return verdicts


# ---- why a target is missed, from the run's own statistics ----
def _server_split(row: dict) -> dict[str, float]:
    """ms per request the server's statistics account for (Σ over an ensemble's steps, or the fused model)."""
    steps = list((row.get("steps") or {}).values())
    return {
        "queue": sum(s["queue_us"] for s in steps) / 1000,
        "input": sum(s["compute_input_us"] for s in steps) / 1000,
        "execute": sum(s["compute_infer_us"] + s["compute_output_us"] for s in steps) / 1000,
    }


def _main_step(results: dict, pipeline: str, row: dict) -> tuple[str, dict[str, float]] | None:
    """Where the batch that matters forms: an ensemble's encoder (as the baseline found it; else the step
    that computes longest), a fused pipeline's one model."""
    steps = row.get("steps") or {}
    if not steps:
        return None
    encoders = (results["baselines"].get(pipeline) or {}).get("encoders") or []
    encoder = next((name for name in encoders if name in steps), None)
    if encoder is not None:
        return encoder, steps[encoder]
    return max(steps.items(), key=lambda item: item[1]["compute_infer_us"])


def _cores(row: dict) -> str:
    cpu = row.get("cpu") or {}
    if not cpu:
        return ""
    server = sum(v for n, v in cpu.items() if n not in ("perf_analyzer", "idle or other"))
    busiest = max(((n, v) for n, v in cpu.items() if n not in ("perf_analyzer", "idle or other")),
                  key=lambda item: item[1], default=None)
    parts = [f"server {_f(server, 2)}" + (f" (`{busiest[0]}` {_f(busiest[1], 2)})" if busiest else ""),
             f"perf_analyzer {_f(cpu.get('perf_analyzer'), 2)}", f"idle or other {_f(cpu.get('idle or other'), 2)}"]
    return "cores used: " + ", ".join(parts)


def throughput_reason(results: dict, pipeline: str, layout: str) -> str:
    """Why c=8 falls short of the in-process best batch: the batches formed, where the time went, the cores."""
    row = _at(perf_rows(results, pipeline, layout=layout), TARGET_CONCURRENCY)
    eff = efficiency(results, pipeline, layout)
    if not row or not eff:
        return ""
    parts = []
    main = _main_step(results, pipeline, row)
    if main:
        step, stats = main
        formed = stats["avg_batch"]
        timings = sorted(results["baselines"][pipeline]["timings"], key=lambda t: t["batch"])
        near = ([t for t in timings if t["batch"] <= max(1, round(formed))] or timings)[-1]
        parts.append(f"`{step}` formed batches of {_f(formed, 2)} on average vs the in-process best b{eff['best_batch']} "
                     f"(in-process b{near['batch']} gives {_f(near['throughput'])} infer/s; served reaches "
                     f"{_f(row['throughput'] / near['throughput'], 2)}× that)")
    split = _server_split(row)
    if row.get("steps"):
        outside = (row["avg_us"] or row["p50_us"]) / 1000 - sum(split.values())
        parts.append(f"per request {_f(split['queue'], 2)} ms queued, {_f(split['input'] + split['execute'], 2)} ms "
                     f"computing in the server, {_f(max(0.0, outside), 2)} ms outside its statistics (gRPC, client)")
    cores = _cores(row)
    if cores:
        parts.append(cores)
    return "; ".join(parts)


def latency_reason(results: dict, pipeline: str, layout: str) -> str:
    """What serving adds at c=1: queues, input hand-over, execute() vs in-process, what is left for gRPC and the client."""
    row = _at(perf_rows(results, pipeline, layout=layout), 1)
    eff = efficiency(results, pipeline, layout)
    if not row or not eff or eff["b1_p50_ms"] is None:
        return ""
    added = row["p50_us"] / 1000 - eff["b1_p50_ms"]
    text = f"serving adds {_f(added, 2)} ms to the in-process {_f(eff['b1_p50_ms'], 2)} ms"
    if not row.get("steps"):
        return text
    split = _server_split(row)
    rest = row["p50_us"] / 1000 - sum(split.values())
    hops = len(row["steps"])
    return (text + f": queues {_f(split['queue'], 2)} ms (incl. batching delays), inputs handed over "
            f"{_f(split['input'], 2)} ms, execute() {_f(split['execute'], 2)} ms vs {_f(eff['b1_p50_ms'], 2)} ms "
            f"in-process ({hops} Python-backend {'hop' if hops == 1 else 'hops'}), "
            + (f"{_f(rest, 2)} ms outside the server's statistics (gRPC, client"
               + (", the ensemble's hand-overs)" if hops > 1 else ")") if rest >= 0.05
               else "nothing measurable outside the server's statistics"))


def target_reasons(results: dict) -> list[str]:
    """One line per missed serving target: the computed reason."""
    lines = []
    for name, layout, eff in measured_efficiencies(results):
        if throughput_met(eff) is False:
            lines.append(f"`{name}` {layout}, c={TARGET_CONCURRENCY} throughput {_f(eff['throughput_ratio'], 2)}×: "
                         + throughput_reason(results, name, layout) + ".")
        if latency_met(eff) is False:
            lines.append(f"`{name}` {layout}, c=1 p50 {_f(eff['latency_ratio'], 2)}×: "
                         + latency_reason(results, name, layout) + ".")
    summary = peer_summary(results)
    ort = next((t for t in summary if t["name"].startswith("infinity") and "torch" not in t["name"]
                and _at(t["rows"], TARGET_CONCURRENCY)), None)
    pipeline = (results.get("peers") or {}).get("pipeline")
    for ours in _ours(summary):
        mine = _at(ours["rows"], TARGET_CONCURRENCY)
        eff = efficiency(results, pipeline, ours["layout"]) if pipeline else None
        if ort and mine and eff and mine["throughput"] < PEER_RATIO * _at(ort["rows"], TARGET_CONCURRENCY)["throughput"]:
            theirs = _at(ort["rows"], TARGET_CONCURRENCY)["throughput"]
            lines.append(
                f"`{pipeline}` {ours['layout']} vs infinity-emb's onnxruntime engine: {PEER_RATIO}× its "
                f"{_f(theirs)} infer/s is {_f(PEER_RATIO * theirs)} infer/s, "
                f"{_f(PEER_RATIO * theirs / eff['best_throughput'], 2)}× what the same model reaches in-process at its "
                f"best batch ({_f(eff['best_throughput'])} infer/s); served at c={TARGET_CONCURRENCY} it reaches "
                f"{_f(eff['throughput_ratio'], 2)}× of that.")
    return lines


def layout_race(results: dict) -> list[tuple[str, str, str]]:
    """(pipeline, the layout faster on CPU, the figures) per pipeline measured in more than one layout:
    c=8 throughput decides; c=1 p50 is named beside it, and said when it favours the other layout."""
    race = []
    for pipeline in results["pipelines"]:
        name = pipeline["name"]
        measured = measured_layouts(results, name)
        if len(measured) < 2:
            continue
        figures = {}
        for layout in measured:
            rows = perf_rows(results, name, layout=layout)
            figures[layout] = (_at(rows, TARGET_CONCURRENCY) or rows[-1], _at(rows, 1))
        top = {layout: row["throughput"] for layout, (row, _) in figures.items()}
        fastest = max(top, key=top.get)
        order = [fastest, *(layout for layout in measured if layout != fastest)]
        level = int(figures[fastest][0]["load"])
        parts = [f"c={level} " + " vs ".join(_f(top[layout]) for layout in order) + f" infer/s ({' vs '.join(order)})"]
        c1 = {layout: row["p50_us"] / 1000 for layout, (_, row) in figures.items() if row}
        if len(c1) == len(measured):
            parts.append("c=1 p50 " + " vs ".join(_f(c1[layout], 2) for layout in order) + " ms")
            quickest = min(c1, key=c1.get)
            if quickest != fastest:
                parts.append(f"at c=1 {quickest} answers sooner")
        race.append((name, fastest, "; ".join(parts)))
    return race


def faster_layouts(results: dict) -> list[str]:
    """One line per pipeline measured in more than one layout: which is faster on CPU, with the figures."""
    return [f"`{name}`: **{fastest}** faster on CPU: {figures}." for name, fastest, figures in layout_race(results)]


def int8_summary(results: dict) -> dict[str, Any] | None:
    """The intent classifier's INT8 vs fp32 (the encoder with a dev accuracy)."""
    table = results.get("runtimes") or {}
    rows = table.get("rows", [])
    scored = [r for r in rows if r.get("accuracy") is not None]
    # The intent classifier when present (the target names its dev set), else any scored classifier.
    scored.sort(key=lambda r: r["pipeline"] != "text_classify")
    for encoder in dict.fromkeys(r["encoder"] for r in scored):
        by = {r["runtime"]: r for r in rows if r["encoder"] == encoder}
        if "ORT fp32" in by and "ORT INT8" in by:
            fp32, int8 = by["ORT fp32"], by["ORT INT8"]
            return {
                "encoder": encoder,
                "speedup_b8": int8["b8_items_per_s"] / fp32["b8_items_per_s"],
                "speedup_b1": fp32["b1_ms"] / int8["b1_ms"],
                "fp32_accuracy": fp32["accuracy"], "int8_accuracy": int8["accuracy"],
                "items": fp32["accuracy_items"],
            }
    return None


# ---- plots ----
def plot_pipeline(results: dict, pipeline: str, path: Path) -> Path | None:
    measured = measured_layouts(results, pipeline)
    if not measured:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for layout in measured:
        rows = perf_rows(results, pipeline, layout=layout)
        label = f"{layout} " if len(measured) > 1 else ""
        x = [r["throughput"] for r in rows]
        line = ax.plot(x, [r["p50_us"] / 1000 for r in rows], "o-", label=f"{label}p50")[0]
        ax.plot(x, [r["p99_us"] / 1000 for r in rows], "s--", color=line.get_color(), label=f"{label}p99")
        for r in rows:
            ax.annotate(f"c={int(r['load'])}", (r["throughput"], r["p50_us"] / 1000), textcoords="offset points",
                        xytext=(4, -12), fontsize=8)
    eff = efficiency(results, pipeline)
    if eff:
        ax.axvline(eff["best_throughput"], color="grey", linestyle=":", label=f"in-process best (b{eff['best_batch']})")
    ax.set_xlabel("throughput (inferences/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{pipeline}: throughput vs latency (perf_analyzer, gRPC)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_peers(results: dict, path: Path) -> Path | None:
    summary = [t for t in peer_summary(results) if t["rows"]]
    if len(summary) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.0), dpi=110)
    for target in summary:
        loads = [int(r["load"]) for r in target["rows"]]
        left.plot(loads, [r["throughput"] for r in target["rows"]], "o-", label=target["name"])
        right.plot([r["throughput"] for r in target["rows"]], [r["p50_us"] / 1000 for r in target["rows"]], "o-",
                   label=target["name"])
    left.set_xscale("log", base=2)
    left.set_xlabel("concurrency")
    left.set_ylabel("throughput (inferences/s)")
    left.set_title("throughput per concurrency")
    right.set_xlabel("throughput (inferences/s)")
    right.set_ylabel("p50 latency (ms)")
    right.set_yscale("log")
    right.set_title("throughput vs p50")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def make_plots(results: dict, folder: Path) -> dict[str, Path]:
    plots = {}
    for pipeline in results["pipelines"]:
        made = plot_pipeline(results, pipeline["name"], folder / f"bench-{pipeline['name']}.png")
        if made:
            plots[pipeline["name"]] = made
    peers = plot_peers(results, folder / "bench-peers.png")
    if peers:
        plots["peers"] = peers
    return plots


# ---- markdown ----
def pipeline_section(results: dict, pipeline: dict, image: str | None) -> str:
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
            threads = f", {s['intra_op_threads']} intra-op threads" if s.get("intra_op_threads") else ""
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


def cpu_table(rows: Sequence[dict]) -> str:
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


def step_table(results: dict, pipeline: str, measured: Sequence[str]) -> str:
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


def baseline_section(results: dict) -> str:
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


def peers_section(results: dict, image: str | None) -> str:
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


def runtimes_section(results: dict) -> str:
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


def tuning_section(results: dict) -> str:
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


def headlines(results: dict) -> list[str]:
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


def layouts_section(results: dict) -> str:
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


def render(results: dict, images: dict[str, str]) -> str:
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


def write_report(results: dict, docs: Path, image_folder: Path | None = None) -> Path:
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


def write_run_summary(results: dict, out: Path) -> Path:
    """summary.md and plots inside the run's own folder."""
    plots = make_plots(results, out / "img")
    images = {key: str(path.relative_to(out)) for key, path in plots.items()}
    path = out / "summary.md"
    path.write_text(render(results, images), encoding="utf-8")
    return path


def load_results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())
