"""The in-process baseline: a pipeline's own code, without the server.

The pipeline's models are loaded from the repository and called directly in
this one process: the same Python models (tokenizer, image/audio
pre-processing, post-processing), the same ONNX through the same runner with
the same thread settings, the steps wired exactly as the ensemble wires them.
A whole batch goes through as one request. What is left out is precisely what
serving adds: gRPC, the scheduler and dynamic batcher, and the hops between
processes. `triton_python_backend_utils` exists only inside Triton's stub, so
mmserve/serving/backend_stub.py's stand-in is put in its place while the models
run here.
"""
from __future__ import annotations

import importlib.util
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc.model_config_pb2 import ModelConfig

from mmserve.bench.inputs import Request, stack
from mmserve.bench.perf import BenchError
from mmserve.exporters import triton_config
from mmserve.exporters.triton_config import ENSEMBLE, ensemble_step
from mmserve.exporters.versions import CONFIG_FILE, active_version, step_version
from mmserve.serving import backend_stub

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
    source = folder / str(version) / "model.py"
    module_spec = importlib.util.spec_from_file_location(f"mmserve_bench_model_{name}", source)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    args = {
        # what the Python backend hands initialize(): the config as JSON with proto field names
        "model_config": json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)),
        "model_repository": str(folder),
        "model_version": str(version),
        "model_name": name,
        "model_instance_name": f"{name}_0",
        "model_instance_kind": "CPU",
        "model_instance_device_id": "0",
    }
    if hasattr(model, "initialize"):
        model.initialize(args)
    return model, config


class InProcessPipeline:
    """A pipeline's models wired as its ensemble wires them, called in this process."""

    def __init__(self, repository: Path, pipeline: str) -> None:
        self.repository = repository.resolve()
        self.pipeline = pipeline
        config = model_config(self.repository, pipeline)
        self.output_names = [o.name for o in config.output]
        if config.platform == ENSEMBLE:
            self.steps = list(config.ensemble_scheduling.step)
        else:  # one model served on its own: a pipeline of one step
            self.steps = [ensemble_step(pipeline, {i.name: i.name for i in config.input}, {n: n for n in self.output_names})]
        # the version of each step the ensemble runs: the product version it pins, not the newest folder
        self.versions = {step.model_name: step_version(self.repository, step) for step in self.steps}
        self.models: dict[str, Any] = {}
        self.configs: dict[str, ModelConfig] = {}
        for step in self.steps:
            self.models[step.model_name], self.configs[step.model_name] = load_python_model(
                self.repository, step.model_name, self.versions[step.model_name]
            )
        self.captured: dict[str, dict[str, np.ndarray]] = {}  # the last inputs each step saw
        self.step_times: dict[str, list[float]] = {step.model_name: [] for step in self.steps}  # s per execute()

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
        parameters = self.configs[encoder].parameters
        onnx_file = parameters["onnx_file"].string_value if "onnx_file" in parameters else "model.onnx"
        return self.repository / encoder / str(self.versions[encoder]) / onnx_file

    def __call__(self, batch: Request) -> dict[str, np.ndarray]:
        tensors = dict(batch)
        pending = list(self.steps)
        while pending:
            ready = [s for s in pending if all(v in tensors for v in s.input_map.values())]
            if not ready:
                raise BenchError(f"{self.pipeline}: steps {[s.model_name for s in pending]} wait for missing tensors")
            for step in ready:
                model = step.model_name
                feeds = {key: tensors[value] for key, value in step.input_map.items()}
                self.captured[model] = feeds
                started = time.perf_counter()
                (response,) = self.models[model].execute([backend_stub.InferenceRequest(feeds, list(step.output_map))])
                self.step_times[model].append(time.perf_counter() - started)
                if response.has_error():
                    raise BenchError(f"{self.pipeline}: step {model} failed: {response.error().message()}")
                produced = {t.name(): t.as_numpy() for t in response.output_tensors()}
                for key, value in step.output_map.items():
                    if key not in produced:
                        raise BenchError(f"{self.pipeline}: step {model} did not produce {key}")
                    tensors[value] = produced[key]
                pending.remove(step)
        return {name: tensors[name] for name in self.output_names}


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

    @property
    def best(self) -> BatchTiming:
        return max(self.timings, key=lambda t: t.throughput)

    @property
    def batch1(self) -> BatchTiming:
        return next(t for t in self.timings if t.batch == 1)

    def as_dict(self) -> dict:
        return {"pipeline": self.pipeline, "timings": [asdict(t) for t in self.timings],
                "best_batch": self.best.batch}


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
) -> Baseline:
    """Items/s and latency per batch size, on the same requests perf_analyzer sends."""
    runner = InProcessPipeline(repository, pipeline)
    result = Baseline(pipeline)
    for size in batch_sizes:
        if progress:
            progress(f"{pipeline} in-process b{size}")
        batches = [stack([requests[(start + k) % len(requests)] for k in range(size)])
                   for start in range(0, max(len(requests), size * 4), size)]
        for values in runner.step_times.values():
            values.clear()
        times = time_calls(runner, batches, seconds)
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
    return Baseline(pipeline, [BatchTiming(**t) for t in data["timings"]])


def _main(argv: Sequence[str]) -> int:
    from mmserve.bench.inputs import requests_for

    repository, pipeline, kind, n_requests, seconds, seed, sizes = argv
    requests = requests_for(kind, int(n_requests), seed=int(seed))
    baseline = measure_baseline(Path(repository), pipeline, requests, [int(v) for v in sizes.split(",")], float(seconds))
    print(json.dumps(baseline.as_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
