"""The encoders in-process: a TensorRT FP16 engine (held to the ONNX graph first), onnxruntime
with the CUDA or TensorRT execution provider, and onnxruntime CPU for the dry run; timed."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mmserve.bench.gpu.runner import EncoderStep, Feeds
from mmserve.exporters.gpu_stack import ort_provider_advice
from mmserve.exporters.tensorrt import ShapeProfile, export_profile, onnx_input_axes
from mmserve.repository_layout import OnnxStepParameters


def engine_profile(step: EncoderStep, feeds: Sequence[Feeds], max_batch: int) -> ShapeProfile:
    """One optimisation profile for every batch measured: the batch axis 1..max_batch, a
    sequence axis up to the tokenizer's max_length (or the longest input), fixed axes fixed."""
    limits: dict[str, int] = {}
    for name, axes in onnx_input_axes(step.onnx).items():
        for axis, size in enumerate(axes[1:], start=1):
            if not (isinstance(size, int) and size > 0):
                seen = max(int(feed[name].shape[axis]) for feed in feeds)
                limits[str(size)] = max(seen, step.max_length or seen)
    return export_profile(step.onnx, limits, feeds, max_batch=max_batch)


def timed(call: Callable[[Any], Any], batches: Sequence[Any], seconds: float, batch: int) -> tuple[float, float, float, int]:
    """(p50 ms, p99 ms, items/s, calls) over at least SECONDS, cycling through BATCHES."""
    from mmserve.bench.inprocess import time_calls

    times = time_calls(call, list(batches), seconds, min_calls=10)
    return (1e3 * statistics.median(times), 1e3 * float(np.percentile(times, 99)), batch * len(times) / sum(times), len(times))


def served_provider_options(step_config: Path) -> dict[str, str]:
    """The TensorRT provider options the export wrote for this encoder step (its shape profile,
    FP16, the cache): in-process with the same options, onnxruntime builds the engine the served
    pipeline then finds in the cache, instead of building it twice."""
    import json

    from google.protobuf import text_format
    from tritonclient.grpc.model_config_pb2 import ModelConfig

    config = text_format.Parse(step_config.read_text(encoding="utf-8"), ModelConfig())
    options = OnnxStepParameters.read(config).provider_options
    return dict(json.loads(options).get("TensorrtExecutionProvider", {})) if options else {}


def ort_session(onnx_path: Path, provider: str, profile: ShapeProfile | None, cache: Path,
                options: dict[str, Any] | None = None) -> Any:
    """An onnxruntime session whose first provider is PROVIDER, or an error saying why not and what to do.
    `options`: the TensorRT provider's, as the export wrote them (else FP16 over `profile`)."""
    import onnxruntime as ort

    from mmserve.exporters.triton_config import trt_profile_options

    available = ort.get_available_providers()
    if provider not in available:
        raise RuntimeError(ort_provider_advice(provider, available, ort.__version__))
    if provider == "TensorrtExecutionProvider":
        cache.mkdir(parents=True, exist_ok=True)
        options = dict(options) if options else {
            "trt_fp16_enable": True, "trt_engine_cache_enable": True, "trt_max_workspace_size": 4 << 30,
            **(trt_profile_options(profile) if profile else {})}
        options["trt_engine_cache_path"] = str(cache)
    else:
        options = {}
    chain: list[Any] = [(provider, options)]
    chain += [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p != provider and p in available]
    session = ort.InferenceSession(str(onnx_path), providers=chain)
    if session.get_providers()[0] != provider:
        raise RuntimeError(f"onnxruntime fell back to {session.get_providers()[0]} (could not initialise {provider})")
    return session


def fp16_graph(step: EncoderStep, workdir: Path) -> Path:
    """The FP16 graph a strongly typed TensorRT (10, 11) builds an FP16 engine from (cached)."""
    from mmserve.exporters.fp16 import convert_fp16

    target = workdir / "fp16" / step.pipeline / "model.fp16.onnx"
    return target if target.is_file() else convert_fp16(step.onnx, target)


class TensorRtEncoder:
    """The check's own FP16 engine over every measured batch, held to the FP32 graph (cosine >= 0.999)."""

    def __init__(self, step: EncoderStep, profile: ShapeProfile, workdir: Path, parity_feeds: Sequence[Feeds]) -> None:
        from mmserve.exporters.engines import EngineRunner, graph_outputs
        from mmserve.exporters.tensorrt import build_engine, engine_parity

        plan = workdir / "engines" / f"{step.pipeline}.plan"
        self.runner = EngineRunner(build_engine(fp16_graph(step, workdir), [profile], plan))
        output = self.runner.outputs[0]
        reference = graph_outputs(step.onnx, parity_feeds, output)
        self.parity = engine_parity([self.runner.run(feed)[output] for feed in parity_feeds], reference,
                                    f"{step.pipeline} TensorRT FP16 engine")

    def call(self, feeds: Sequence[Feeds]) -> tuple[Callable[[Any], Any], list[Any]]:
        """A call on device-resident inputs (the engine's own time), and the staged batches it cycles through."""
        staged = [self.runner.stage(feed) for feed in feeds]
        return (lambda batch: self.runner.run_staged(batch, download=False)), staged
