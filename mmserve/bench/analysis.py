"""What a bench run's results say: each pipeline's efficiency against the in-process
baseline, the targets and why one is missed (from the run's own statistics), which layout
is faster, the peers and INT8 summaries. Pure functions over `results.json` (typed by results.py);
the plots are plots.py's, the markdown report.py's."""
from __future__ import annotations

from typing import Any, Iterator, Sequence

from mmserve.bench.results import (
    BenchResults,
    Efficiency,
    Int8Summary,
    PerfEntry,
    PerfRow,
    Scheduling,
    ServerSplit,
    StepStats,
    SummaryTarget,
)
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
def layouts(results: BenchResults) -> list[str]:
    """The run's layout labels in the order served; a run from before layouts were compared
    served one repository, in the ensemble layout."""
    return list(results.get("layouts") or {}) or [ENSEMBLE_LAYOUT]


def _layout_of(results: BenchResults, row: PerfEntry) -> str:
    return row.get("layout") or layouts(results)[0]


def scheduling(results: BenchResults, pipeline: str, layout: str) -> Scheduling:
    served = (results.get("layouts") or {}).get(layout)
    if served is not None:
        return served.get("scheduling", {}).get(pipeline) or {}
    return next((p.get("scheduling") or {} for p in results["pipelines"] if p["name"] == pipeline), {})


def perf_rows(results: BenchResults, pipeline: str, mode: str = "concurrency",
              layout: str | None = None) -> list[PerfRow]:
    """One layout's rows of a pipeline (default: the first layout served), by load."""
    layout = layout or layouts(results)[0]
    return sorted(
        (r for r in results["perf"] if r["pipeline"] == pipeline and r["mode"] == mode and "error" not in r
         and r.get("target", "triton-grpc").startswith("triton") and _layout_of(results, r) == layout),
        key=lambda r: r["load"],
    )


def measured_layouts(results: BenchResults, pipeline: str) -> list[str]:
    return [layout for layout in layouts(results) if perf_rows(results, pipeline, layout=layout)]


def _at(rows: Sequence[PerfRow], load: float) -> PerfRow | None:
    return next((r for r in rows if r["load"] == load), None)


# ---- derived figures ----
def measured_efficiencies(results: BenchResults) -> Iterator[tuple[str, str, Efficiency]]:
    """(pipeline, layout, efficiency) for every pipeline and layout measured against a baseline."""
    for pipeline in results["pipelines"]:
        for layout in measured_layouts(results, pipeline["name"]):
            eff = efficiency(results, pipeline["name"], layout)
            if eff:
                yield pipeline["name"], layout, eff


def efficiency(results: BenchResults, pipeline: str, layout: str | None = None) -> Efficiency | None:
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


def latency_met(eff: Efficiency) -> bool | None:
    """c=1 p50 ≤ 1.3× in-process batch 1, or serving adds ≤ 0.5 ms where the model itself is under 2 ms."""
    if eff["latency_ratio"] is None:
        return None
    added = eff["c1_p50_ms"] - eff["b1_p50_ms"]
    return eff["latency_ratio"] <= LATENCY_RATIO or (eff["b1_p50_ms"] < SMALL_MODEL_MS and added <= SMALL_MODEL_ADDED_MS)


def throughput_met(eff: Efficiency) -> bool | None:
    return None if eff["throughput_ratio"] is None else eff["throughput_ratio"] >= THROUGHPUT_RATIO


def peer_summary(results: BenchResults) -> list[SummaryTarget]:
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


def _ours(summary: list[SummaryTarget]) -> list[SummaryTarget]:
    return [t for t in summary if "layout" in t]


def targets(results: BenchResults) -> list[tuple[str, str, str]]:
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
def _server_split(row: PerfRow) -> ServerSplit:
    """ms per request the server's statistics account for (Σ over an ensemble's steps, or the fused model)."""
    steps = list((row.get("steps") or {}).values())
    return {
        "queue": sum(s["queue_us"] for s in steps) / 1000,
        "input": sum(s["compute_input_us"] for s in steps) / 1000,
        "execute": sum(s["compute_infer_us"] + s["compute_output_us"] for s in steps) / 1000,
    }


def _main_step(results: BenchResults, pipeline: str, row: PerfRow) -> tuple[str, StepStats] | None:
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


def _cores(row: PerfRow) -> str:
    cpu = row.get("cpu") or {}
    if not cpu:
        return ""
    server = sum(v for n, v in cpu.items() if n not in ("perf_analyzer", "idle or other"))
    busiest = max(((n, v) for n, v in cpu.items() if n not in ("perf_analyzer", "idle or other")),
                  key=lambda item: item[1], default=None)
    parts = [f"server {_f(server, 2)}" + (f" (`{busiest[0]}` {_f(busiest[1], 2)})" if busiest else ""),
             f"perf_analyzer {_f(cpu.get('perf_analyzer'), 2)}", f"idle or other {_f(cpu.get('idle or other'), 2)}"]
    return "cores used: " + ", ".join(parts)


def throughput_reason(results: BenchResults, pipeline: str, layout: str) -> str:
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


def latency_reason(results: BenchResults, pipeline: str, layout: str) -> str:
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


def target_reasons(results: BenchResults) -> list[str]:
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


def layout_race(results: BenchResults) -> list[tuple[str, str, str]]:
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


def faster_layouts(results: BenchResults) -> list[str]:
    """One line per pipeline measured in more than one layout: which is faster on CPU, with the figures."""
    return [f"`{name}`: **{fastest}** faster on CPU: {figures}." for name, fastest, figures in layout_race(results)]


def int8_summary(results: BenchResults) -> Int8Summary | None:
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
