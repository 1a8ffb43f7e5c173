"""The in-process baseline: a pipeline's own code, without the server.

The pipeline's models are loaded from the repository and called directly in
this one process: the same Python models (tokenizer, image/audio
pre-processing, post-processing), the same ONNX through the same runner with
the same settings but every core for onnxruntime (one instance), the steps wired exactly
as the pipeline wires them.
Either layout reads the same way: an ensemble's steps are models of the
repository; a fused pipeline's steps are listed in `pipeline.json` of its served
version and live in that version's `steps/` folder, a mini repository.
A whole batch goes through as one request. What is left out is precisely what
serving adds: gRPC, the scheduler and dynamic batcher, and the hops between
processes. `triton_python_backend_utils` exists only inside Triton's stub, so
mmserve/serving/backend_stub.py's stand-in is put in its place while the models
run here.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tritonclient.grpc.model_config_pb2 import ModelConfig

from mmserve.bench.inputs import Request, stack
from mmserve.bench.perf import BenchError
from mmserve.repository_layout import MODEL_PY, Layout, OnnxStepParameters, ProductParameters
from mmserve.exporters import triton_config
from mmserve.exporters.fused import ENSEMBLE_LAYOUT, FUSED
from mmserve.exporters.triton_config import ENSEMBLE, ensemble_step
from mmserve.exporters.versions import CONFIG_FILE, active_version, step_version
from mmserve.serving import backend_stub
from mmserve.serving.fused import PLAN_FILE, STEP_VERSION, STEPS_FOLDER
from mmserve.serving.pipeline import PipelineRunner, PipelineStep, fused_sources, load_step_class, step_args

BATCH_SIZES = (1, 2, 4, 8, 16, 32)


# ---- the repository, read as Triton reads it ----
def model_config(repository: Path, name: str) -> ModelConfig:
    """A model's config.pbtxt; a clear error when it has none Triton could read."""
    config = triton_config.read_config(repository / name / CONFIG_FILE)
    if config is None:
        raise BenchError(f"{repository / name} has no config.pbtxt Triton could read; export the pipeline first")
    if not config.name:
        config.name = name
    return config


def pipeline_layout(repository: Path, name: str) -> str | None:
    """`ensemble` (an ensemble config), `fused` (a Python model with pipeline.json in its served
    version), None for anything else (a step model, a standalone model, no config)."""
    config = triton_config.read_config(repository / name / CONFIG_FILE)
    if config is None:
        return None
    recorded = ProductParameters.read(config)
    if recorded is not None:  # what the export recorded (a head product is neither layout)
        return recorded.layout.value if recorded.layout in (Layout.FUSED, Layout.ENSEMBLE) else None
    # exported before layouts were recorded: from the platform and the files
    if config.platform == ENSEMBLE:
        return ENSEMBLE_LAYOUT
    if config.backend == "python":
        version = active_version(repository, name)
        if version is not None and (repository / name / str(version) / PLAN_FILE).is_file():
            return FUSED
    return None


def repository_layout(repository: Path) -> str:
    """The one layout of a repository's pipelines; a clear error for a mixed or unknown one."""
    found: dict[str, list[str]] = {}
    folders = sorted(p for p in Path(repository).iterdir() if (p / CONFIG_FILE).is_file()) if Path(repository).is_dir() else []
    for folder in folders:
        layout = pipeline_layout(Path(repository), folder.name)
        if layout is not None:
            found.setdefault(layout, []).append(folder.name)
    if not found:
        raise BenchError(
            f"{repository} holds no pipeline of a known layout (an ensemble config, or a Python model with "
            f"{PLAN_FILE} in its served version folder); export one with `mmserve export ... --layout fused|ensemble`")
    if len(found) > 1:
        listed = "; ".join(f"{layout}: {', '.join(names)}" for layout, names in found.items())
        raise BenchError(f"{repository} mixes layouts ({listed}); export each layout into a repository of its own "
                         "and pass each with --repository")
    return next(iter(found))


def load_python_model(repository: Path, name: str, version: int | None = None) -> tuple[Any, ModelConfig]:
    """Import a model's model.py and initialise it the way the Python backend does, at
    `version` (default: the version the model's config serves)."""
    backend_stub.install()
    folder = repository / name
    config = model_config(repository, name)
    if config.backend != "python":
        raise BenchError(f"{name} uses backend {config.backend or config.platform!r}; "
                         "the in-process baseline runs Python-backend models (the cpu profile)")
    version = version if version is not None else active_version(repository, name)
    if version is None:
        raise BenchError(f"{folder} has no numbered version folder")
    model = load_step_class(folder / str(version) / MODEL_PY)()
    if hasattr(model, "initialize"):
        # One instance (instances=0: no instance group): this process gives onnxruntime every
        # core, whatever the server runs (the best one process does; a served layout with 2
        # instances of 1 thread is measured against that, not against a single thread).
        model.initialize(step_args(folder, name, str(version), instances=0))
    return model, config


class InProcessPipeline:
    """A pipeline's models wired as its ensemble (or its fused model) wires them, called in this process."""

    def __init__(self, repository: Path, pipeline: str) -> None:
        self.repository = repository.resolve()
        self.pipeline = pipeline
        config = model_config(self.repository, pipeline)
        self.output_names = [o.name for o in config.output]
        self.layout = pipeline_layout(self.repository, pipeline)
        self.step_root = self.repository  # the repository the steps' folders are in
        self.models: dict[str, Any] = {}
        self.configs: dict[str, ModelConfig] = {}
        if self.layout == FUSED:
            self._load_fused(active_version(self.repository, pipeline))
        else:
            self._load_models(config)
        self.captured: dict[str, dict[str, np.ndarray]] = {}  # the last inputs each step saw
        self.step_times: dict[str, list[float]] = {step.model_name: [] for step in self.steps}  # s per answer_batch()
        missing = [step.model_name for step in self.steps if not callable(getattr(self.models[step.model_name], "answer_batch", None))]
        if missing:
            raise BenchError(f"{pipeline}: steps {missing} are not mmserve Python steps (no answer_batch); "
                             "the in-process baseline runs the cpu profile's steps")
        # the project's one in-process runner (mmserve/serving/pipeline.py), in call order
        self.runner = PipelineRunner(
            [PipelineStep(step.model_name, self.models[step.model_name], dict(step.input_map), dict(step.output_map))
             for step in _call_order(self.steps, [i.name for i in config.input], pipeline)],
            self.output_names, on_step=self._record,
        )

    def _record(self, model: str, requests: Sequence[Any], seconds: float) -> None:
        """The runner's hook: each step's inputs (the last batch's) and its time."""
        self.captured[model] = dict(requests[0].inputs)
        self.step_times[model].append(seconds)

    def _load_models(self, config: ModelConfig) -> None:
        """An ensemble's steps, or one model served on its own as a pipeline of one step."""
        if config.platform == ENSEMBLE:
            self.steps = list(config.ensemble_scheduling.step)
        else:
            self.steps = [ensemble_step(self.pipeline, {i.name: i.name for i in config.input},
                                        {n: n for n in self.output_names})]
        # the version of each step the ensemble runs: the product version it pins, not the newest folder
        self.versions = {step.model_name: step_version(self.repository, step) for step in self.steps}
        for step in self.steps:
            self.models[step.model_name], self.configs[step.model_name] = load_python_model(
                self.repository, step.model_name, self.versions[step.model_name]
            )

    def _load_fused(self, version: int | None) -> None:
        """The steps pipeline.json lists, each from its folder of the served version's steps/."""
        served = self.repository / self.pipeline / str(version)
        try:
            sources = fused_sources(served)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise BenchError(f"{served / PLAN_FILE} is not a fused pipeline's step list ({error}); export it again") from error
        self.step_root = served / STEPS_FOLDER
        self.steps = [ensemble_step(s.model, s.input_map, s.output_map) for s in sources]
        self.versions = {step.model_name: int(STEP_VERSION) for step in self.steps}
        for step in self.steps:  # each step a model of the mini repository, loaded as the fused model loads it
            self.models[step.model_name], self.configs[step.model_name] = load_python_model(
                self.step_root, step.model_name, self.versions[step.model_name]
            )

    def encoder_steps(self) -> list[str]:
        """Steps that are an ONNX file through the shared runner: the step's inputs are the graph's inputs.

        (A step that runs ONNX on tensors it computes itself, e.g. zero-shot label prompts, is not.)
        """
        found = []
        for step in self.steps:
            runner = getattr(self.models[step.model_name], "runner", None)
            if hasattr(runner, "session") and set(runner.input_names) <= set(step.input_map):
                found.append(step.model_name)
        return found

    def onnx_path(self, encoder: str) -> Path:
        """The ONNX file an encoder step serves: its `onnx_file` in the version the ensemble runs."""
        onnx_file = OnnxStepParameters.read(self.configs[encoder]).onnx_file
        return self.step_root / encoder / str(self.versions[encoder]) / onnx_file

    def __call__(self, batch: Request) -> dict[str, np.ndarray]:
        """The whole batch as one request through the pipeline's steps (every output asked)."""
        (result,) = self.runner.run([dict(batch)], [self.output_names])
        if isinstance(result, Exception):
            raise BenchError(f"{self.pipeline} failed: {type(result).__name__}: {result}") from result
        missing = [name for name in self.output_names if name not in result]
        if missing:
            raise BenchError(f"{self.pipeline}: no step produced {missing}")
        return result


def _call_order(steps: Sequence[Any], inputs: Sequence[str], pipeline: str) -> list[Any]:
    """An ensemble's steps in an order each one's inputs exist by (Triton does not require the
    config to list them so); a clear error for a step that waits for a tensor nothing makes."""
    available, ordered, pending = set(inputs), [], list(steps)
    while pending:
        ready = [step for step in pending if set(step.input_map.values()) <= available]
        if not ready:
            raise BenchError(f"{pipeline}: steps {[s.model_name for s in pending]} wait for missing tensors")
        for step in ready:
            ordered.append(step)
            available.update(step.output_map.values())
            pending.remove(step)
    return ordered


@dataclass
class BatchTiming:
    batch: int
    calls: int
    throughput: float  # items per second
    p50_ms: float
    p99_ms: float
    steps_ms: dict[str, float] = field(default_factory=dict)  # median execute() time per step


@dataclass
class Baseline:
    pipeline: str
    timings: list[BatchTiming] = field(default_factory=list)
    encoders: list[str] = field(default_factory=list)  # the steps that run the ONNX graph (where batching pays)

    @property
    def best(self) -> BatchTiming:
        return max(self.timings, key=lambda t: t.throughput)

    @property
    def batch1(self) -> BatchTiming:
        return next(t for t in self.timings if t.batch == 1)

    def as_dict(self) -> dict:
        return {"pipeline": self.pipeline, "timings": [asdict(t) for t in self.timings],
                "best_batch": self.best.batch, "encoders": list(self.encoders)}


def time_calls(call: Callable[[Request], Any], batches: Sequence[Request], seconds: float, min_calls: int = 20) -> list[float]:
    """Per-call wall times (s), cycling through `batches` for at least `seconds` and `min_calls`."""
    for batch in batches[:2]:
        call(batch)  # warm-up: first-call allocations, lazy initialisation
    times: list[float] = []
    started = time.perf_counter()
    index = 0
    while time.perf_counter() - started < seconds or len(times) < min_calls:
        batch = batches[index % len(batches)]
        t0 = time.perf_counter()
        call(batch)
        times.append(time.perf_counter() - t0)
        index += 1
    return times


def measure_baseline(
    repository: Path,
    pipeline: str,
    requests: Sequence[Request],
    batch_sizes: Sequence[int] = BATCH_SIZES,
    seconds: float = 3.0,
    progress: Callable[[str], None] | None = None,
    min_calls: int = 20,
) -> Baseline:
    """Items/s and latency per batch size, on the same requests perf_analyzer sends (at least
    `seconds` and `min_calls` calls per size)."""
    runner = InProcessPipeline(repository, pipeline)
    result = Baseline(pipeline, encoders=runner.encoder_steps())
    for size in batch_sizes:
        if progress:
            progress(f"{pipeline} in-process b{size}")
        batches = [stack([requests[(start + k) % len(requests)] for k in range(size)])
                   for start in range(0, max(len(requests), size * 4), size)]
        for values in runner.step_times.values():
            values.clear()
        times = time_calls(runner, batches, seconds, min_calls)
        result.timings.append(
            BatchTiming(
                batch=size,
                calls=len(times),
                throughput=size * len(times) / sum(times),
                p50_ms=1e3 * statistics.median(times),
                p99_ms=1e3 * float(np.percentile(times, 99)),
                steps_ms={model: 1e3 * statistics.median(values) for model, values in runner.step_times.items() if values},
            )
        )
    return result


def measure_baseline_isolated(
    repository: Path, pipeline: str, kind: str, n_requests: int, seconds: float, seed: int = 0,
    batch_sizes: Sequence[int] = BATCH_SIZES,
) -> Baseline:
    """measure_baseline in a child process with its own session.

    Triton runs in a session of its own (the launcher's start_new_session), and
    Linux's autogroup scheduler shares a busy CPU between sessions, not
    processes: measured from inside the bench's session, the baseline would get
    a different share of a contended machine than the server does.
    """
    import subprocess

    command = [
        sys.executable, "-m", "mmserve.bench.inprocess", str(repository), pipeline, kind, str(n_requests),
        str(seconds), str(seed), ",".join(map(str, batch_sizes)),
    ]
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")  # as the server's environment has it
    env.setdefault("OMP_NUM_THREADS", "1")
    done = subprocess.run(command, capture_output=True, text=True, start_new_session=True, env=env)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise BenchError(f"in-process baseline of {pipeline} failed: {lines[-1]}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return Baseline(pipeline, [BatchTiming(**t) for t in data["timings"]], data.get("encoders", []))


def _main(argv: Sequence[str]) -> int:
    from mmserve.bench.inputs import requests_for

    repository, pipeline, kind, n_requests, seconds, seed, sizes = argv
    requests = requests_for(kind, int(n_requests), seed=int(seed))
    baseline = measure_baseline(Path(repository), pipeline, requests, [int(v) for v in sizes.split(",")], float(seconds))
    print(json.dumps(baseline.as_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
