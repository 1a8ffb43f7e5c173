"""TensorRT engines from the exported ONNX graphs: `mmserve export ... --profile gpu --tensorrt`
writes them as Triton `tensorrt_plan` models, and the GPU check (mmserve/bench/gpu/runtimes.py)
builds its own with the same code.

An engine is built for the GPU and TensorRT version that will run it, so it is built on the
serving machine (exporters/engines.py rebuilds it there from the ONNX kept beside it), and a
plan built elsewhere is refused by its record (check_engine_record). Each dynamic axis gets
an optimisation profile: the batch axis spans 1..MAX_BATCH_SIZE (Triton's max_batch_size),
every other symbolic axis (tokens, samples) the product's own range, which the product line
states (`Graph.axis_limits`); fixed axes stay fixed.

Nothing here imports tensorrt at module level: the exporters import this module on every
machine, and only `--tensorrt` (or the GPU check) needs the library and a GPU.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence, Tuple, Union

import numpy as np

from mmserve.exporters.onnx_export import ExportError
from mmserve.exporters.triton_config import PLAN_FILE, check_engine_io
from mmserve.pipelines import MAX_BATCH_SIZE

__all__ = ["PLAN_FILE", "build_engine", "built_plan", "check_engine_io", "check_gpu_options", "engine_data_types", "export_profile",
           "require_tensorrt"]
WORKSPACE_BYTES = 4 << 30  # the builder's scratch memory: ample for the encoders we export
# The batch the engine's kernels are tuned for: dynamic batching's typical batch under load.
# Both 1 and MAX_BATCH_SIZE stay in range; only the tactic choice favours this size.
OPT_BATCH = 16

Shape = tuple[int, ...]
ShapeRange = tuple[Shape, Shape, Shape]  # (min, opt, max) of one input
ShapeProfile = dict[str, ShapeRange]  # one optimisation profile: graph input -> its range

def install_advice() -> str:
    """What to install: the TensorRT of the Triton image the project deploys (exporters/gpu_stack.py)."""
    from mmserve.exporters.gpu_stack import StackError, deployed_image

    try:
        requirement = deployed_image().tensorrt_requirement
    except (StackError, OSError):
        requirement = "tensorrt-cu12"
    return (
        f"install the TensorRT of the deployed Triton image on the GPU machine (`pip install '{requirement}'`: "
        "an engine loads only in the TensorRT that built it) or run the export inside the NGC Triton image "
        "(docker/Dockerfile); or drop --tensorrt: --profile gpu alone serves the ONNX graph through Triton's "
        "onnxruntime backend with TensorRT FP16"
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
        raise TensorRtUnavailable(f"--tensorrt: the tensorrt module is not importable ({exc}); {install_advice()}") from exc
    if not (Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()):
        raise TensorRtUnavailable(
            "--tensorrt: no NVIDIA GPU on this machine (no /proc/driver/nvidia, no /dev/nvidia0). An engine is "
            "built for the GPU that runs it: export on the serving GPU machine (or inside docker/Dockerfile's "
            "image with --gpus), or drop --tensorrt"
        )
    check_tensorrt_version(trt.__version__)
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


def check_tensorrt_version(version: str) -> None:
    """Refuse a TensorRT older than 10: its ONNX parser turns the int64 token ids every
    tokenizer step of mmserve emits into int32 engine inputs, so the engine could not load
    beside the tokenizer in one pipeline (Triton checks the types of an ensemble's steps)."""
    if int(version.split(".")[0]) < 10:
        from mmserve.exporters.gpu_stack import DOCKERFILE, deployed_image

        raise TensorRtUnavailable(
            f"--tensorrt: TensorRT {version} takes int32 token ids where the tokenizer steps emit int64, so its "
            f"engine cannot serve in a pipeline; install TensorRT 10 or later: `pip install "
            f"'{deployed_image(DOCKERFILE).tensorrt_requirement}'`, the TensorRT of the deployed Triton image"
        )


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


AxisLimit = Union[int, Tuple[int, int]]  # the largest size, or (smallest, largest)


def export_profile(
    onnx_path: Path,
    axis_limits: Mapping[str, AxisLimit],
    feeds: Sequence[Mapping[str, np.ndarray]] = (),
    max_batch: int = MAX_BATCH_SIZE,
) -> ShapeProfile:
    """The optimisation profile a served engine needs: every request Triton may form fits.

    Axis 0 is the batch: 1..max_batch, tuned for OPT_BATCH. Another dynamic axis named
    in `axis_limits` (e.g. "sequence": the tokenizer's max_length) spans 1..its limit, or
    smallest..largest when the limit is a pair (a waveform: the pre-processing pads every
    clip to the encoder's shortest input, and an engine tuned from 1 sample wastes its
    range on sizes never sent), tuned for the longest of `feeds` (real inputs: the parity
    feeds). A dynamic axis without a limit is an error: an engine cannot serve an unbounded axis.
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
            bound = axis_limits[size]
            smallest, limit = (int(bound[0]), int(bound[1])) if isinstance(bound, tuple) else (1, int(bound))
            if not 1 <= smallest <= limit:
                raise ExportError(f"{onnx_path.name}: axis {size!r} limits {bound!r}: need 1 <= smallest <= largest")
            seen = [int(feed[name].shape[axis]) for feed in feeds if name in feed]
            low.append(smallest)
            opt.append(max(smallest, min(limit, max(seen))) if seen else limit)
            high.append(limit)
        profile[name] = (tuple(low), tuple(opt), tuple(high))
    return profile


def network_flags(trt: Any, fp16_graph: bool) -> tuple[int, list[Any]]:
    """(network creation flags, builder flags) for this TensorRT and graph.

    TensorRT 11 removed BuilderFlag.FP16: networks are strongly typed and each layer runs in
    the type the graph states, so an FP16 engine comes from an FP16 ONNX graph (`--fp16`,
    exporters/fp16.py). Every TensorRT that has STRONGLY_TYPED (9 and later, 10 included)
    is used that way, so 10 and 11 build the same engine; BuilderFlag.FP16 is set only by a
    TensorRT without it, and only for an FP16 graph.
    """
    creation = trt.NetworkDefinitionCreationFlag
    if hasattr(creation, "STRONGLY_TYPED"):
        return 1 << int(creation.STRONGLY_TYPED), []
    flags = 1 << int(creation.EXPLICIT_BATCH) if hasattr(creation, "EXPLICIT_BATCH") else 0
    builder = [trt.BuilderFlag.FP16] if fp16_graph and hasattr(trt.BuilderFlag, "FP16") else []
    return flags, builder


def graph_is_fp16(onnx_path: Path) -> bool:
    """Whether the graph's weights are half precision (what `--fp16` writes)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)


def build_engine(
    onnx_path: Path, profiles: Sequence[ShapeProfile], plan: Path, workspace_bytes: int = WORKSPACE_BYTES,
    fp16_graph: bool | None = None,
) -> bytes:
    """Build a serialized engine from `onnx_path` with one optimisation profile per entry of
    `profiles`, in the graph's own precision (FP16 from an FP16 graph: network_flags); written
    to `plan` and returned. `fp16_graph`: known from the engine's record (the serving image
    has no `onnx` package to read the graph with); None: read from the graph."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    fp16 = graph_is_fp16(onnx_path) if fp16_graph is None else fp16_graph
    creation, builder_flags = network_flags(trt, fp16)
    network = builder.create_network(creation)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    for flag in builder_flags:
        config.set_flag(flag)
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


# ---- engines built where they are served --------------------------------------------------------

ENGINE_RECORD = "engine.json"  # beside a plan: what built it, to refuse a plan built elsewhere
PARITY_MIN_COSINE = 0.999  # an FP16 engine's rows against the ONNX graph's, on the parity inputs


class EngineMismatch(ExportError):
    """A plan was built by another TensorRT or for another GPU architecture than this one."""


def engine_key(tensorrt_version: str, capability: str) -> str:
    """The cache key of an engine: it loads only in this TensorRT, on GPUs of this compute capability."""
    return f"trt{tensorrt_version}-sm{capability.replace('.', '')}"


def engine_record(tensorrt_version: str, capability: str, profile: ShapeProfile, parity: Mapping[str, Any] | None) -> dict:
    """What the card and ENGINE_RECORD say about one engine."""
    return {
        "tensorrt": tensorrt_version, "capability": capability, "key": engine_key(tensorrt_version, capability),
        "profile": {name: {"min": list(lo), "opt": list(opt), "max": list(hi)} for name, (lo, opt, hi) in profile.items()},
        "parity": dict(parity) if parity else None,
    }


def check_engine_record(record: Mapping[str, Any], tensorrt_version: str, capability: str, where: str) -> None:
    """Refuse a plan built by another TensorRT or for another GPU, with the reason and the fix."""
    built = (record.get("tensorrt"), record.get("capability"))
    if built != (tensorrt_version, capability):
        raise EngineMismatch(
            f"{where}: the TensorRT engine was built by TensorRT {built[0]} for compute capability {built[1]}; this "
            f"machine has TensorRT {tensorrt_version} on compute capability {capability}. A plan loads only where it "
            "was built: rebuild it here from the ONNX graph (`python -m mmserve.exporters.engines build REPOSITORY`, "
            "the GPU pod's init step, docs/deploy.md)"
        )


def engine_parity(engine_rows: Sequence[np.ndarray], graph_rows: Sequence[np.ndarray], what: str,
                  minimum: float = PARITY_MIN_COSINE) -> dict[str, float]:
    """Row cosines of an engine's outputs against the ONNX graph's on the same inputs; an engine
    below `minimum` is refused before it goes live (FP16 overflow in a LayerNorm, a bad tactic)."""
    from mmserve.exporters.similarity import drift, row_cosines

    engine = [np.asarray(a, dtype=np.float32) for a in engine_rows]
    graph = [np.asarray(a, dtype=np.float32) for a in graph_rows]
    worst_diff, _ = drift(engine, graph)
    cosines = np.concatenate([row_cosines(a, b) for a, b in zip(engine, graph)])
    worst_cosine = float(np.min(cosines))  # NaN (an FP16 overflow) stays NaN here, and is refused
    figures = {"min_cosine": float(worst_cosine), "mean_cosine": float(np.mean(cosines)),
               "max_abs_diff": float(worst_diff), "samples": int(len(cosines))}
    if not np.isfinite(worst_cosine) or worst_cosine < minimum:
        raise ExportError(
            f"{what}: the TensorRT engine's outputs differ from the ONNX graph's on the parity inputs (cosine min "
            f"{worst_cosine:.5f} < {minimum}); refused before it goes live. Build it from the FP32 graph (drop --fp16) "
            "or check the graph in FP16 (`mmserve export ... --fp16` reports its FP16 parity)"
        )
    return figures
