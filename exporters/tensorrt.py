"""TensorRT engines from the exported ONNX graphs: `mmserve export ... --profile gpu --tensorrt`
writes them as Triton `tensorrt_plan` models, and the GPU check (mmserve/bench/gpu_check.py)
builds its own with the same code.

An engine is built for the GPU and TensorRT version that will run it, so it is built on the
serving machine (or in the NGC image of docker/Dockerfile), never shipped from elsewhere.
Each dynamic axis gets an optimisation profile: the batch axis spans 1..MAX_BATCH_SIZE
(Triton's max_batch_size), every other symbolic axis (tokens, samples) 1..the product's own
limit, which the product line states (`Graph.axis_limits`); fixed axes stay fixed.

Nothing here imports tensorrt at module level: the exporters import this module on every
machine, and only `--tensorrt` (or the GPU check) needs the library and a GPU.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mmserve.exporters.onnx_export import ExportError
from mmserve.exporters.triton_config import PLAN_FILE
from mmserve.pipelines import MAX_BATCH_SIZE

__all__ = ["PLAN_FILE", "build_engine", "built_plan", "check_gpu_options", "engine_data_types", "export_profile",
           "require_tensorrt"]
WORKSPACE_BYTES = 4 << 30  # the builder's scratch memory: ample for the encoders we export
# The batch the engine's kernels are tuned for: dynamic batching's typical batch under load.
# Both 1 and MAX_BATCH_SIZE stay in range; only the tactic choice favours this size.
OPT_BATCH = 16

Shape = tuple[int, ...]
ShapeRange = tuple[Shape, Shape, Shape]  # (min, opt, max) of one input
ShapeProfile = dict[str, ShapeRange]  # one optimisation profile: graph input -> its range

INSTALL_ADVICE = (
    "install TensorRT's Python package on the GPU machine (`pip install tensorrt`, matching its CUDA) or run "
    "the export inside the NGC Triton image (docker/Dockerfile); or drop --tensorrt: --profile gpu alone serves "
    "the ONNX graph through Triton's onnxruntime backend with TensorRT FP16"
)


class TensorRtUnavailable(ExportError):
    """--tensorrt cannot build an engine here (no tensorrt module, or no GPU for it)."""


def require_tensorrt() -> Any:
    """The tensorrt module, once it is known to build engines on this machine; else a
    TensorRtUnavailable that says what to install or where to run.

    Checked before a checkpoint is loaded or a graph exported, so a CPU machine is told
    in a second, not after minutes of export.
    """
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRtUnavailable(f"--tensorrt: the tensorrt module is not importable ({exc}); {INSTALL_ADVICE}") from exc
    if not (Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()):
        raise TensorRtUnavailable(
            "--tensorrt: no NVIDIA GPU on this machine (no /proc/driver/nvidia, no /dev/nvidia0). An engine is "
            "built for the GPU that runs it: export on the serving GPU machine (or inside docker/Dockerfile's "
            "image with --gpus), or drop --tensorrt"
        )
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    except Exception as exc:  # noqa: BLE001 - TensorRT raises several types when CUDA cannot start
        builder, error = None, exc
    else:
        error = None
    if builder is None:
        raise TensorRtUnavailable(
            f"--tensorrt: TensorRT {trt.__version__} could not start a builder on this GPU ({error or 'no CUDA device'}); "
            "check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES"
        )
    return trt


class GpuOptionError(ExportError, ValueError):
    """--fp16/--tensorrt asked for where they cannot apply (a usage error)."""


def check_gpu_options(profile: str, int8: bool = False, fp16: bool = False, tensorrt: bool = False) -> None:
    """Refuse what cannot work before anything slow runs; with --tensorrt, also that TensorRT
    and a GPU are here (require_tensorrt)."""
    from mmserve.exporters.fp16 import CPU_PROFILE_REFUSAL

    if tensorrt and profile != "gpu":
        raise GpuOptionError(
            f"--tensorrt writes tensorrt_plan models, which only the gpu profile serves: add --profile gpu "
            f"(got --profile {profile})"
        )
    if fp16 and profile != "gpu":
        raise GpuOptionError(CPU_PROFILE_REFUSAL)
    if int8 and (fp16 or tensorrt):
        raise GpuOptionError(
            "--int8 is onnxruntime's dynamic INT8 for CPUs; --fp16/--tensorrt are the GPU's precision "
            "(TensorRT cannot build onnxruntime's DynamicQuantizeLinear/MatMulInteger graphs): give one of them"
        )
    if tensorrt:
        require_tensorrt()


def onnx_input_axes(onnx_path: Path) -> dict[str, tuple[int | str, ...]]:
    """Each graph input's axes as the ONNX file states them: a size, or the name of a dynamic axis."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    return {
        value.name: tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value.type.tensor_type.shape.dim)
        for value in model.graph.input
        if value.name not in initializers
    }


def export_profile(
    onnx_path: Path,
    axis_limits: Mapping[str, int],
    feeds: Sequence[Mapping[str, np.ndarray]] = (),
    max_batch: int = MAX_BATCH_SIZE,
) -> ShapeProfile:
    """The optimisation profile a served engine needs: every request Triton may form fits.

    Axis 0 is the batch: 1..max_batch, tuned for OPT_BATCH. Another dynamic axis named
    in `axis_limits` (e.g. "sequence": the tokenizer's max_length) spans 1..its limit,
    tuned for the longest of `feeds` (real inputs: the parity feeds). A dynamic axis
    without a limit is an error: an engine cannot serve an unbounded axis.
    """
    profile: ShapeProfile = {}
    for name, axes in onnx_input_axes(onnx_path).items():
        low, opt, high = [1], [min(OPT_BATCH, max_batch)], [max_batch]
        for axis, size in enumerate(axes[1:], start=1):
            if isinstance(size, int) and size > 0:
                for bounds in (low, opt, high):
                    bounds.append(size)
                continue
            if size not in axis_limits:
                raise ExportError(
                    f"{onnx_path.name}: input {name} axis {axis} ({size!r}) is dynamic and the product states no limit "
                    f"for it (Graph.axis_limits); a TensorRT engine needs the largest size it will be sent"
                )
            limit = int(axis_limits[size])
            seen = [int(feed[name].shape[axis]) for feed in feeds if name in feed]
            low.append(1)
            opt.append(min(limit, max(seen)) if seen else limit)
            high.append(limit)
        profile[name] = (tuple(low), tuple(opt), tuple(high))
    return profile


def build_engine(
    onnx_path: Path, profiles: Sequence[ShapeProfile], plan: Path, fp16: bool = True, workspace_bytes: int = WORKSPACE_BYTES
) -> bytes:
    """Build a serialized engine from `onnx_path` with one optimisation profile per entry of
    `profiles` (FP16 kernels allowed unless `fp16` is False); written to `plan` and returned."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    for shapes in profiles:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in shapes.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT {trt.__version__} could not build an engine from {onnx_path} (its log above says why)")
    data = bytes(serialized)
    plan.parent.mkdir(parents=True, exist_ok=True)
    plan.write_bytes(data)
    return data


# TensorRT's data types -> the config's spelling (int64 I/O since TensorRT 10; older parsers cast to int32).
_TRT_TO_TRITON = {"FLOAT": "TYPE_FP32", "HALF": "TYPE_FP16", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64",
                  "INT8": "TYPE_INT8", "BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8", "BF16": "TYPE_BF16"}


def engine_data_types(plan: Path) -> dict[str, str]:
    """Each I/O tensor of a built engine -> its data type as Triton's config spells it.

    The engine, not the ONNX graph, decides: a TensorRT older than 10 serves int64 token
    ids as int32, and a tensorrt_plan config must state what the engine takes.
    """
    trt = require_tensorrt()
    engine = trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(plan.read_bytes())
    if engine is None:
        raise ExportError(f"TensorRT could not read the engine {plan} it built")
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    return {name: _TRT_TO_TRITON[engine.get_tensor_dtype(name).name] for name in names}


def built_plan(onnx_path: Path) -> Path | None:
    """The engine the export driver built from `onnx_path` (PLAN_FILE beside it), if it did."""
    plan = Path(onnx_path).with_name(PLAN_FILE)
    return plan if plan.is_file() else None
