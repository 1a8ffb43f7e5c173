"""The typed shape of `mmserve bench`'s results.json: one TypedDict per record.

The writers build plain dicts (run.py, run_peers.py, perf.PerfRow.as_dict, inprocess.Baseline.as_dict,
runtimes.RuntimeTable.as_dict, server_stats.difference, tune.tune_pipeline); analysis.py, plots.py and
report.py read them back, also from a saved results.json (`--from-results`). TypedDicts type those dicts
without changing a byte of the file. Keys that older runs lack, or that only some records carry, are in a
`total=False` class. tests/test_bench_results_schema.py validates real results against these classes
(pydantic, extra keys refused) and checks that every key the report reads is declared here.

Not covered: the real-size bench (realsize.py) and the gateway bench (gateway.py) write their own shapes.
"""
from __future__ import annotations

try:  # pydantic (the schema test) validates typing_extensions' TypedDict on Python < 3.12
    from typing_extensions import TypedDict
except ImportError:  # pragma: no cover - grpcio, a core dependency, brings typing_extensions
    from typing import TypedDict


# ---- one load level (perf.PerfRow.as_dict, with server_stats' figures) ----
class StepStats(TypedDict):
    """One model's share of a load level from Triton's statistics (server_stats.difference): µs per request."""

    requests: float
    queue_us: float
    compute_input_us: float
    compute_infer_us: float
    compute_output_us: float
    avg_batch: float  # inferences ÷ executions: the batch the dynamic batcher formed


class _PerfRowRequired(TypedDict):
    pipeline: str
    target: str  # "triton-grpc", or a peer's label
    mode: str  # "concurrency" | "rate"
    load: float
    throughput: float  # inferences per second
    p50_us: float
    p90_us: float
    p95_us: float
    p99_us: float
    avg_us: float | None
    server_queue_us: float | None
    server_compute_input_us: float | None
    server_compute_infer_us: float | None
    server_compute_output_us: float | None
    stable: bool
    steps: dict[str, StepStats]  # per composing model (a fused pipeline: its one model)
    cpu: dict[str, float]  # cores used per process while the level ran (empty: not metered)


class PerfRow(_PerfRowRequired, total=False):
    """A load level perf_analyzer measured (perf.PerfRow); rows of runs before layouts were compared lack `layout`."""

    layout: str  # the repository label that served it; "" for a peer


class _FailedLevelRequired(TypedDict):
    pipeline: str
    target: str
    mode: str
    load: float
    error: str


class FailedLevel(_FailedLevelRequired, total=False):
    """A load level that did not measure (run._measure, run_peers._level): what went wrong instead of figures."""

    layout: str


PerfEntry = PerfRow | FailedLevel


# ---- the in-process baseline (inprocess.Baseline.as_dict) ----
class BatchTiming(TypedDict):
    batch: int
    calls: int
    throughput: float  # items per second
    p50_ms: float
    p99_ms: float
    steps_ms: dict[str, float]  # median execute() time per step


class Baseline(TypedDict):
    pipeline: str
    timings: list[BatchTiming]
    best_batch: int
    encoders: list[str]  # the steps that run the ONNX graph (where batching pays)


class FailedBaseline(TypedDict):
    """A pipeline the bench could not run in-process (run._baseline)."""

    pipeline: str
    error: str


BaselineEntry = Baseline | FailedBaseline


# ---- what was served: pipelines, layouts, scheduling (run.py) ----
class SchedulingStep(TypedDict):
    """How the server schedules one step (run._scheduling); the last key is repository_layout.THREADS_PARAMETER."""

    instances: int
    max_queue_delay_us: int | None  # None: no dynamic batching
    preferred_batch_size: list[int]
    intra_op_threads: str | None


Scheduling = dict[str, SchedulingStep]  # step model -> its scheduling


class _PipelineRequired(TypedDict):
    name: str
    kind: str  # a pipelines.Kind value
    data: str  # what the requests are (inputs.describe)


class Pipeline(_PipelineRequired, total=False):
    """A pipeline the run measured; runs before layouts were compared kept its scheduling here."""

    scheduling: Scheduling


class ServedLayout(TypedDict):
    """One repository the run served, under its label (run.run_bench)."""

    layout: str  # ensemble | fused | served
    repository: str
    scheduling: dict[str, Scheduling]  # pipeline -> step -> scheduling


# ---- the peers on text_embed (run_peers.run_peers) ----
class _PeerTargetRequired(TypedDict):
    name: str
    rows: list[PerfEntry]


class PeerTarget(_PeerTargetRequired, total=False):
    min_cosine: float  # its vectors against sentence-transformers
    error: str


class _PeersRequired(TypedDict):
    pipeline: str
    model: str
    targets: list[PeerTarget]
    notes: list[str]


class Peers(_PeersRequired, total=False):
    ours_min_cosine: float
    layout: str  # the label whose server measured our HTTP row and vectors


class NoPeers(TypedDict):
    """`peers` of a run that skipped them: {}."""


# ---- the runtime table (runtimes.RuntimeTable.as_dict) ----
class RuntimeRow(TypedDict):
    encoder: str
    pipeline: str
    runtime: str  # "torch eager" | "ORT fp32" | "ORT INT8"
    b1_ms: float
    b8_ms: float
    b8_items_per_s: float
    max_abs_diff: float | None  # against the reference runtime
    min_cosine: float | None
    reference: str
    accuracy: float | None  # dev accuracy (classifiers with a known dev split)
    accuracy_items: int | None


class Runtimes(TypedDict):
    rows: list[RuntimeRow]
    notes: list[str]


# ---- the tuning sweep (tune.tune_pipeline, at its default loads c=1 and c=8) ----
class TunedLevel(TypedDict):
    """The median over the rounds."""

    throughput: float
    p50_us: float
    p99_us: float


class _TuningVariantRequired(TypedDict):
    name: str
    description: str


class TuningVariant(_TuningVariantRequired, total=False):
    c1: TunedLevel
    c8: TunedLevel
    c1_rounds: list[float]  # each round's throughput
    c8_rounds: list[float]
    error: str


class TuningSweep(TypedDict):
    pipeline: str
    rounds: int
    variants: list[TuningVariant]
    chosen: str | None
    rule: str


# ---- the run ----
class Machine(TypedDict, total=False):
    """run.machine(), plus the server's version once one answered."""

    platform: str
    python: str
    cpu: str
    memory_gib: float
    logical_cpus: int | None
    cpus_used: list[int] | None
    onnxruntime: str
    tritonclient: str | None
    tritonserver: str | None


class Settings(TypedDict):
    """The run's load levels and perf.PerfSettings' fields."""

    concurrency: list[int]
    request_rates: list[float]
    shared_memory: str
    measurement_interval_ms: int
    stability_percentage: float
    max_trials: int
    loose_stability_percentage: float
    output_shared_memory_size: int
    timeout_s: float
    baseline_seconds: float
    requests_per_pipeline: int


class _BenchResultsRequired(TypedDict):
    command: str
    started: str
    machine: Machine
    settings: Settings
    pipelines: list[Pipeline]
    perf: list[PerfEntry]
    baselines: dict[str, BaselineEntry]


class BenchResults(_BenchResultsRequired, total=False):
    """results.json of `mmserve bench` (run.run_bench); runs before layouts were compared lack `layouts`."""

    layouts: dict[str, ServedLayout]  # label -> the repository served under it, in the order served
    peers: Peers | NoPeers
    runtimes: Runtimes | None
    tuning: list[TuningSweep] | TuningSweep | None  # one sweep (not a list) in runs that swept one pipeline
    notes: list[str]
    loadavg_start: list[float]
    loadavg_after_serving: list[float]
    loadavg_end: list[float]
    finished: str


# ---- what analysis.py derives from them (not in results.json) ----
class Efficiency(TypedDict):
    """Served ÷ in-process for one pipeline and layout (analysis.efficiency)."""

    best_batch: int
    best_throughput: float
    b1_p50_ms: float | None
    b1_throughput: float | None
    c8_throughput: float | None
    c1_p50_ms: float | None
    throughput_ratio: float | None
    b8_throughput: float | None
    b8_ratio: float | None
    latency_ratio: float | None


class _SummaryTargetRequired(TypedDict):
    name: str
    rows: list[PerfRow]  # measured levels only, by load


class SummaryTarget(_SummaryTargetRequired, total=False):
    """One line of the peers comparison (analysis.peer_summary): ours carry `layout`, a peer its PeerTarget keys."""

    layout: str
    min_cosine: float | None
    error: str


class Int8Summary(TypedDict):
    encoder: str
    speedup_b8: float
    speedup_b1: float
    fp32_accuracy: float
    int8_accuracy: float
    items: int | None


class ServerSplit(TypedDict):
    """ms per request the server's statistics account for (analysis._server_split)."""

    queue: float
    input: float
    execute: float
