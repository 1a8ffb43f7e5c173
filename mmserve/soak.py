"""`mmserve soak`: a long, mixed load over every product a server serves, to catch what
short tests cannot -- errors that show after thousands of requests, latency that drifts,
memory that creeps up.

C client threads share one gRPC channel (mmserve's client, retries off so every failure
counts) and cycle through every READY product with the bench's realistic inputs
(mmserve/bench/inputs.py) until the time is up. Alongside, the resident memory (RSS) of
the tritonserver process and of each Python-backend stub (its children, one per model
instance, told apart by their command lines) is sampled from /proc.

The report (results.json, summary.md, soak.png in --out) has the errors by type, p50/p99
per time window and per product, RSS over time and its growth after warm-up: the first
20% of the run is warm-up (onnxruntime arenas and caches settle); growth compares the
median RSS just after it with the median over the last 10% of the run.

Verdict (the exit code): 0 pass, 1 a request failed, 3 a process's RSS (or all of them
together) grew more than --max-rss-growth percent and --min-rss-growth MiB after warm-up.
The MiB floor keeps one-off steps of a small process (a 48 MiB pre-processing stub
stepping up 4 MiB once when a larger batch arrives, then flat) from reading as a leak.
"""
from __future__ import annotations

import json
import statistics
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mmserve import kinds
from mmserve.kinds import InputShape
from mmserve.pipelines import AUDIO, IMAGE, TEXT, Kind

EXIT_PASS = 0
EXIT_ERRORS = 1
EXIT_RSS_GROWTH = 3
SERVER_LABEL = "tritonserver"
TOTAL_LABEL = "total"


@dataclass(frozen=True)
class SoakConfig:
    """One soak run. `url` None: start a server over `repository` on free loopback ports."""

    minutes: float
    concurrency: int
    out: Path
    url: str | None = None
    repository: Path | None = None
    window_s: float = 30.0
    warmup_fraction: float = 0.2
    max_rss_growth_pct: float = 5.0
    # Growth smaller than this never fails the run: one-off steps of a few MiB are an
    # allocator's or onnxruntime arena's high-water mark (a larger dynamic batch than
    # before), not a leak; a leak keeps growing with the requests served.
    min_rss_growth_mib: float = 8.0
    request_timeout_s: float = 30.0
    sample_every_s: float = 2.0
    server_pid: int | None = None  # with `url`: the tritonserver to sample (default: found by its gRPC port)
    admin_key: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_server_name: str | None = None
    distinct_inputs: int = 8

    def __post_init__(self) -> None:
        if self.minutes <= 0 or self.concurrency < 1:
            raise ValueError("--minutes must be positive and --concurrency at least 1")
        if (self.url is None) == (self.repository is None):
            raise ValueError("give either --url HOST:PORT (a running server) or --repository DIR (one is started)")

    @property
    def duration_s(self) -> float:
        return self.minutes * 60.0


# --- the load ----------------------------------------------------------------------------

Call = Callable[[Any], Any]  # (client) -> answer


def _text_args(request: Mapping[str, np.ndarray]) -> tuple[Any, ...]:
    return (bytes(request[TEXT.name][0]).decode("utf-8"),)


def _image_args(request: Mapping[str, np.ndarray]) -> tuple[Any, ...]:
    return (bytes(request[IMAGE.name][0]),)


def _image_and_labels_args(request: Mapping[str, np.ndarray]) -> tuple[Any, ...]:
    from mmserve.bench.inputs import ZERO_SHOT_LABELS

    return (bytes(request[IMAGE.name][0]), list(ZERO_SHOT_LABELS))


def _audio_args(request: Mapping[str, np.ndarray]) -> tuple[Any, ...]:
    from mmserve.bench.inputs import SAMPLE_RATE

    return (request[AUDIO.name], SAMPLE_RATE)


# A bench request as the arguments of the kind's client method (before `pipeline`), per input
# shape of the kind table (tests/test_kind_table.py checks every row's shape is here).
CALL_ARGUMENTS: dict[InputShape, Callable[[Mapping[str, np.ndarray]], tuple[Any, ...]]] = {
    InputShape.TEXT: _text_args,
    InputShape.IMAGE: _image_args,
    InputShape.IMAGE_AND_LABELS: _image_and_labels_args,
    InputShape.AUDIO: _audio_args,
}


def calls_for(kind: Kind, pipeline: str, n: int) -> list[Call]:
    """`n` client calls of one product, each a realistic single-item request (bench inputs),
    through the kind's own client method (the kind table's ``client_method``)."""
    from mmserve.bench.inputs import requests_for

    row = kinds.info(kind)
    arguments = CALL_ARGUMENTS[row.input]
    return [
        lambda c, m=row.client_method, a=arguments(request): getattr(c, m)(*a, pipeline)
        for request in requests_for(kind, n)
    ]


@dataclass(frozen=True)
class Record:
    """One request: when it started (s into the run), which product, how long, how it failed."""

    start_s: float
    pipeline: str
    latency_s: float
    error: str | None  # the client's error type, None when answered


def _drive(client: Any, plan: list[tuple[str, Call]], offset: int, start: float, deadline: float,
           records: list[Record], messages: dict[str, str], stop: threading.Event) -> None:
    """One client thread: the plan's calls in turn (from its own offset) until the deadline."""
    k = offset
    while not stop.is_set():
        began = time.perf_counter()
        if began >= deadline:
            return
        pipeline, call = plan[k % len(plan)]
        k += 1
        error = None
        try:
            call(client)
        except Exception as exc:  # noqa: BLE001 - every failure is counted and reported by type
            error = type(exc).__name__
            messages.setdefault(f"{error} ({pipeline})", str(exc)[:500])
        records.append(Record(began - start, pipeline, time.perf_counter() - began, error))


# --- memory --------------------------------------------------------------------------------


def rss_kib(pid: int) -> int | None:
    """Resident memory of a process in KiB, None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def find_server_pid(grpc_port: int) -> int | None:
    """The tritonserver process on this host whose command line serves gRPC on `grpc_port`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "tritonserver":
                continue
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if f"--grpc-port={grpc_port}" in argv:
            return int(entry.name)
    return None


@dataclass
class RssSample:
    t_s: float
    kib: dict[str, int]  # label (tritonserver or a stub's instance name) -> RSS
    pids: dict[str, int]


class MemoryMeter:
    """Samples the server's and its Python stubs' RSS every `every_s` in a thread."""

    def __init__(self, server_pid: int, every_s: float) -> None:
        self.server_pid = server_pid
        self.every_s = every_s
        self.samples: list[RssSample] = []
        self.models: dict[str, str] = {SERVER_LABEL: "(server)"}  # label -> model
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-rss", daemon=True)
        self._start = 0.0

    def start(self, start: float) -> "MemoryMeter":
        self._start = start
        self._thread.start()
        return self

    def sample(self) -> None:
        from mmserve.supervisor import python_stubs

        kib, pids = {}, {}
        server = rss_kib(self.server_pid)
        if server is not None:
            kib[SERVER_LABEL], pids[SERVER_LABEL] = server, self.server_pid
        for pid, stub in python_stubs(self.server_pid).items():
            value = rss_kib(pid)
            if value is not None:
                kib[stub.instance], pids[stub.instance] = value, pid
                self.models[stub.instance] = stub.model
        self.samples.append(RssSample(time.perf_counter() - self._start, kib, pids))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()  # the state at the very end


def rss_growth(samples: list[RssSample], warmup_end_s: float, duration_s: float) -> dict[str, dict[str, Any]]:
    """Per process (and all together): median RSS just after warm-up, over the last 10% of
    the run, and the growth in percent. A process whose pid changed (a stub restarted) is
    reported as replaced, without a growth figure."""
    if not samples:
        return {}
    after = [s for s in samples if warmup_end_s <= s.t_s <= warmup_end_s + duration_s * 0.1]
    after = after or [min(samples, key=lambda s: abs(s.t_s - warmup_end_s))]  # a short run: the nearest one
    tail = [s for s in samples if s.t_s >= duration_s * 0.9] or samples[-1:]
    labels = sorted({label for s in samples for label in s.kib})
    growth: dict[str, dict[str, Any]] = {}
    for label in [*labels, TOTAL_LABEL]:
        def values(chosen: list[RssSample]) -> list[int]:
            if label == TOTAL_LABEL:
                return [sum(s.kib.values()) for s in chosen]
            return [s.kib[label] for s in chosen if label in s.kib]

        pids = {s.pids[label] for s in samples if label in s.pids} if label != TOTAL_LABEL else set()
        base, end = values(after), values(tail)
        peak = max(values(samples), default=0)
        if len(pids) > 1 or not base or not end:
            growth[label] = {"warm_kib": None, "end_kib": None, "peak_kib": peak, "growth_pct": None,
                             "note": "replaced (pid changed)" if len(pids) > 1 else "not sampled throughout"}
            continue
        warm, last = statistics.median(base), statistics.median(end)
        growth[label] = {"warm_kib": int(warm), "end_kib": int(last), "peak_kib": peak,
                         "growth_pct": round(100.0 * (last - warm) / warm, 2) if warm else None, "note": ""}
    return growth


# --- the figures ------------------------------------------------------------------------------


def _percentiles(latencies_s: list[float]) -> dict[str, float | None]:
    if not latencies_s:
        return {"p50_ms": None, "p99_ms": None}
    values = np.asarray(latencies_s) * 1000.0
    return {"p50_ms": round(float(np.percentile(values, 50)), 2), "p99_ms": round(float(np.percentile(values, 99)), 2)}


def summarise(records: list[Record], samples: list[RssSample], models: dict[str, str], config: SoakConfig,
              products: dict[str, str], messages: dict[str, str], elapsed_s: float, server: str) -> dict[str, Any]:
    """Everything results.json holds, from the raw records and samples."""
    ok = [r for r in records if r.error is None]
    errors = Counter(r.error for r in records if r.error is not None)
    windows = []
    last_start = max((r.start_s for r in records), default=0.0)  # requests end after the deadline; none starts then
    for index in range(int(last_start // config.window_s) + 1):
        inside = [r for r in records if index * config.window_s <= r.start_s < (index + 1) * config.window_s]
        answered = [r.latency_s for r in inside if r.error is None]
        windows.append({"start_s": index * config.window_s, "requests": len(inside),
                        "errors": len(inside) - len(answered), **_percentiles(answered)})
    pipelines = {}
    for name in sorted(products):
        mine = [r for r in records if r.pipeline == name]
        answered = [r.latency_s for r in mine if r.error is None]
        pipelines[name] = {"kind": products[name], "requests": len(mine), "errors": len(mine) - len(answered),
                           **_percentiles(answered)}
    warmup_end_s = elapsed_s * config.warmup_fraction
    growth = rss_growth(samples, warmup_end_s, elapsed_s)
    grown = {label: g["growth_pct"] for label, g in growth.items()
             if g["growth_pct"] is not None and g["growth_pct"] > config.max_rss_growth_pct
             and g["end_kib"] - g["warm_kib"] > config.min_rss_growth_mib * 1024}
    verdict = EXIT_ERRORS if errors else EXIT_RSS_GROWTH if grown else EXIT_PASS
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()
                if k not in ("admin_key", "api_key")}
    return {
        "config": settings,
        "server": server,
        "elapsed_s": round(elapsed_s, 1),
        "requests": len(records),
        "answered": len(ok),
        "errors": dict(errors),
        "error_examples": messages,
        "throughput_per_s": round(len(records) / elapsed_s, 1) if elapsed_s else 0.0,
        **_percentiles([r.latency_s for r in ok]),
        "pipelines": pipelines,
        "windows": windows,
        "rss": {
            "sampled": bool(samples),
            "warmup_end_s": round(warmup_end_s, 1),
            "models": models,
            "growth": growth,
            "over_limit": grown,
            "series": [{"t_s": round(s.t_s, 2), "kib": s.kib} for s in samples],
        },
        "verdict": {EXIT_PASS: "pass", EXIT_ERRORS: "requests failed", EXIT_RSS_GROWTH: "RSS grew"}[verdict],
        "exit_code": verdict,
    }


def headline(results: dict[str, Any]) -> str:
    c = results["config"]
    errors = sum(results["errors"].values())
    parts = [
        f"soak: {results['elapsed_s'] / 60:.1f} min at concurrency {c['concurrency']} over "
        f"{len(results['pipelines'])} products: {results['requests']:,} requests "
        f"({results['throughput_per_s']}/s), {errors} failed",
        f"p50 {results['p50_ms']} ms, p99 {results['p99_ms']} ms",
    ]
    growth = {k: v for k, v in results["rss"]["growth"].items() if v["growth_pct"] is not None}
    if growth:
        worst = max((k for k in growth if k != TOTAL_LABEL), key=lambda k: growth[k]["growth_pct"], default=None)
        text = f"RSS after warm-up: total {growth[TOTAL_LABEL]['growth_pct']:+.1f}%" if TOTAL_LABEL in growth else "RSS"
        if worst is not None:
            text += f", most {worst} {growth[worst]['growth_pct']:+.1f}%"
        parts.append(text)
    else:
        parts.append("RSS not sampled")
    return "; ".join(parts) + f" -> {results['verdict'].upper()}"


def markdown(results: dict[str, Any]) -> str:
    c = results["config"]
    rss = results["rss"]
    lines = [
        "# Soak", "", headline(results), "",
        f"Server: {results['server']}. Window {c['window_s']:g} s; warm-up = first {100 * c['warmup_fraction']:g}% "
        f"({rss['warmup_end_s']} s); a process fails the run when its RSS grew by more than "
        f"{c['max_rss_growth_pct']:g}% and {c['min_rss_growth_mib']:g} MiB after warm-up.", "",
        "## Errors by type", "",
    ]
    if results["errors"]:
        lines += ["| type | count |", "|---|---|", *[f"| {k} | {v} |" for k, v in sorted(results["errors"].items())], ""]
        lines += ["Examples:", "", *[f"- {k}: {v}" for k, v in results["error_examples"].items()], ""]
    else:
        lines += ["None.", ""]
    lines += ["## Per product", "", "| product | kind | requests | errors | p50 ms | p99 ms |", "|---|---|---|---|---|---|"]
    for name, p in results["pipelines"].items():
        lines.append(f"| {name} | {p['kind']} | {p['requests']} | {p['errors']} | {p['p50_ms']} | {p['p99_ms']} |")
    lines += ["", "## Per window (all products)", "", "| from s | requests | errors | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    for w in results["windows"]:
        lines.append(f"| {w['start_s']:g} | {w['requests']} | {w['errors']} | {w['p50_ms']} | {w['p99_ms']} |")
    lines += ["", "## Resident memory (RSS)", ""]
    if rss["sampled"]:
        lines += ["| process | model | after warm-up MiB | end MiB | peak MiB | growth |", "|---|---|---|---|---|---|"]
        for label, g in rss["growth"].items():
            mib = lambda v: "" if v is None else f"{v / 1024:.1f}"  # noqa: E731
            pct = g["note"] if g["growth_pct"] is None else f"{g['growth_pct']:+.2f}%"
            lines.append(f"| {label} | {rss['models'].get(label, '')} | {mib(g['warm_kib'])} | {mib(g['end_kib'])} "
                         f"| {mib(g['peak_kib'])} | {pct} |")
    else:
        lines.append("Not sampled: the server's process is not on this host (pass --server-pid on its host).")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> Path:
    """p50/p99 per window, and RSS over time (server, stubs together, the five largest stubs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (latency, memory) = plt.subplots(2, 1, figsize=(10, 8), sharex=True)
    windows = [w for w in results["windows"] if w["p50_ms"] is not None]
    middles = [(w["start_s"] + results["config"]["window_s"] / 2) / 60 for w in windows]
    latency.plot(middles, [w["p50_ms"] for w in windows], marker="o", label="p50")
    latency.plot(middles, [w["p99_ms"] for w in windows], marker="o", label="p99")
    latency.set_ylabel("latency per window, ms (all products)")
    latency.set_ylim(bottom=0)
    latency.legend()
    latency.grid(alpha=0.3)
    series = results["rss"]["series"]
    if series:
        t = [s["t_s"] / 60 for s in series]
        stubs = sorted({k for s in series for k in s["kib"] if k != SERVER_LABEL},
                       key=lambda k: -max(s["kib"].get(k, 0) for s in series))
        memory.plot(t, [s["kib"].get(SERVER_LABEL, np.nan) / 1024 for s in series], label=SERVER_LABEL, linewidth=2)
        memory.plot(t, [sum(v for k, v in s["kib"].items() if k != SERVER_LABEL) / 1024 for s in series],
                    label=f"all {len(stubs)} Python stubs", linewidth=2)
        for label in stubs[:5]:
            memory.plot(t, [s["kib"].get(label, np.nan) / 1024 for s in series], label=label, linewidth=1)
        for axis in (latency, memory):
            axis.axvline(results["rss"]["warmup_end_s"] / 60, color="grey", linestyle="--", linewidth=1)
        memory.set_yscale("log")
        memory.legend(fontsize=7, ncol=2)
    memory.set_ylabel("RSS, MiB (log)")
    memory.set_xlabel("minutes (dashed: end of warm-up)")
    memory.grid(alpha=0.3)
    fig.suptitle(textwrap.fill(headline(results), 120), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(results: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {"results": out / "results.json", "summary": out / "summary.md", "plot": out / "soak.png"}
    files["results"].write_text(json.dumps(results, indent=1))
    files["summary"].write_text(markdown(results))
    plot(results, files["plot"])
    return files


# --- the run -------------------------------------------------------------------------------------


def default_out() -> Path:
    """runs/soak-<UTC time>/ (under $MMSERVE_RUNS when set), beside `mmserve serve`'s runs."""
    from mmserve.server import runs_root

    return runs_root() / time.strftime("soak-%Y%m%d-%H%M%S", time.gmtime())


def _client(config: SoakConfig, url: str):
    from mmserve.client import Client

    return Client(
        url, timeout=config.request_timeout_s, retry=None, admin_key=config.admin_key, api_key=config.api_key,
        ssl=config.tls, root_certificates=config.tls_ca, certificate_chain=config.tls_cert,
        private_key=config.tls_key, tls_server_name=config.tls_server_name,
    )


def run_soak(config: SoakConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the load (starting a server first when no url is given), write the report, return the results."""
    from mmserve.server import ServerPorts, TritonServer

    config.out.mkdir(parents=True, exist_ok=True)
    server = None
    if config.url is None:
        server = TritonServer(config.repository, ServerPorts.free(), log_file=config.out / "triton.log",
                              admin_key=config.admin_key, api_key=config.api_key)
        log(f"starting tritonserver over {config.repository} (log {config.out / 'triton.log'})")
        server.start()
    try:
        url = server.grpc_url if server is not None else config.url
        if server is not None:
            server_pid = server.pid
        else:
            port = url.rsplit(":", 1)[-1]
            server_pid = config.server_pid or (find_server_pid(int(port)) if port.isdigit() else None)
            if server_pid is None:
                log(f"RSS not sampled: no tritonserver serving gRPC on port {port} on this host (--server-pid names one)")
        where = f"{url} (started over {config.repository})" if server is not None else url
        return _soak(config, url, server_pid, where, log)
    finally:
        if server is not None:
            server.stop()


def _soak(config: SoakConfig, url: str, server_pid: int | None, where: str, log: Callable[[str], None]) -> dict[str, Any]:
    with _client(config, url) as client:
        products = {p.name: p.kind for p in client.products() if p.state == "READY"}
        if not products:
            raise SoakError(f"the server at {url} serves no READY product; export and load one first")
        log(f"products: {', '.join(sorted(products))}; preparing inputs")
        by_product = {name: calls_for(kind, name, config.distinct_inputs) for name, kind in sorted(products.items())}
        names = sorted(by_product)
        plan = [(names[i % len(names)], by_product[names[i % len(names)]][i // len(names)])
                for i in range(len(names) * config.distinct_inputs)]
        records: list[Record] = []
        messages: dict[str, str] = {}
        stop = threading.Event()
        start = time.perf_counter()
        meter = MemoryMeter(server_pid, config.sample_every_s).start(start) if server_pid else None
        deadline = start + config.duration_s
        workers = [
            threading.Thread(target=_drive, name=f"soak-{i}", daemon=True,
                             args=(client, plan, i * len(plan) // config.concurrency, start, deadline, records, messages, stop))
            for i in range(config.concurrency)
        ]
        log(f"soak: {config.minutes:g} min at concurrency {config.concurrency} against {where}")
        for worker in workers:
            worker.start()
        try:
            while any(w.is_alive() for w in workers):
                for w in workers:
                    w.join(timeout=1.0)
        except KeyboardInterrupt:
            stop.set()
            log("interrupted: reporting what ran")
            for w in workers:
                w.join()
        elapsed = time.perf_counter() - start
        if meter is not None:
            meter.stop()
    results = summarise(
        records, meter.samples if meter else [], meter.models if meter else {}, config,
        {name: kind.value for name, kind in products.items()}, messages, elapsed, where,
    )
    files = write_report(results, config.out)
    log(headline(results))
    log(f"report: {files['summary']}, {files['results']}, {files['plot']}")
    return results


class SoakError(RuntimeError):
    """The soak cannot run (no product to drive); the message says what to do."""
