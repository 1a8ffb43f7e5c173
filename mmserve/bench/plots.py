"""A bench run's PNG plots (matplotlib, the bench extra), from `results.json` (typed by results.py)."""
from __future__ import annotations

from pathlib import Path

from mmserve.bench.analysis import (
    efficiency,
    measured_layouts,
    peer_summary,
    perf_rows,
)
from mmserve.bench.results import BenchResults


# ---- plots ----
def plot_pipeline(results: BenchResults, pipeline: str, path: Path) -> Path | None:
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
    return _save(fig, path)


def plot_peers(results: BenchResults, path: Path) -> Path | None:
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
    return _save(fig, path)


def make_plots(results: BenchResults, folder: Path) -> dict[str, Path]:
    plots = {}
    for pipeline in results["pipelines"]:
        made = plot_pipeline(results, pipeline["name"], folder / f"bench-{pipeline['name']}.png")
        if made:
            plots[pipeline["name"]] = made
    peers = plot_peers(results, folder / "bench-peers.png")
    if peers:
        plots["peers"] = peers
    return plots


def _save(fig, path: Path) -> Path:
    """Lay out, write and close one figure (the report links the file)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
