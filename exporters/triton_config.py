"""config.pbtxt for every model we write, as Triton's own `ModelConfig` messages.

Configs are built as `tritonclient.grpc.model_config_pb2.ModelConfig` and printed with
protobuf's `text_format`, so a config that names a field Triton does not have fails here,
not at load time; and everything that reads a config back (versions, lifecycle, the bench)
gets the same message type from `read_config`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from google.protobuf import text_format
from tritonclient.grpc.model_config_pb2 import (
    DataType,
    ModelConfig,
    ModelDynamicBatching,
    ModelEnsembling,
    ModelInput,
    ModelInstanceGroup,
    ModelOutput,
)

from mmserve.exporters.onnx_export import ExportError
from mmserve.pipelines import MAX_BATCH_SIZE, TensorSpec
from mmserve.repository_layout import ENSEMBLE_PLATFORM, LABELS_FILE, TENSORRT_PLAN_FILE, OnnxStepParameters  # LABELS_FILE: re-exported

ENSEMBLE = ENSEMBLE_PLATFORM  # an ensemble's `platform`


def parse_config(text: str) -> ModelConfig:
    return text_format.Parse(text, ModelConfig())


def print_config(config: ModelConfig) -> str:
    return text_format.MessageToString(config)


def read_config(path: Path) -> ModelConfig | None:
    """A config.pbtxt as a message; None when absent or not a config Triton could read."""
    try:
        return parse_config(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, text_format.ParseError):
        return None


def copy_config(config: ModelConfig) -> ModelConfig:
    """An independent copy, to change without touching the original."""
    copy = ModelConfig()
    copy.CopyFrom(config)
    return copy


@dataclass(frozen=True)
class Tensor:
    """One input or output as the exporters describe it, before it becomes a config entry."""

    name: str
    data_type: str  # config spelling, e.g. TYPE_FP32
    dims: tuple[int, ...]
    label_filename: str | None = None
    ragged: bool = False

    @classmethod
    def from_spec(cls, spec: TensorSpec, dims: tuple[int, ...] | None = None) -> "Tensor":
        return cls(spec.name, spec.config_dtype, dims if dims is not None else spec.dims)

    def as_input(self) -> ModelInput:
        return ModelInput(
            name=self.name, data_type=DataType.Value(self.data_type), dims=self.dims, allow_ragged_batch=self.ragged
        )

    def as_output(self) -> ModelOutput:
        return ModelOutput(
            name=self.name, data_type=DataType.Value(self.data_type), dims=self.dims,
            label_filename=self.label_filename or "",
        )


_ORT_TO_TRITON = {
    "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16",
    "tensor(int64)": "TYPE_INT64",
    "tensor(int32)": "TYPE_INT32",
    "tensor(bool)": "TYPE_BOOL",
}


def onnx_tensors(onnx_path: Path) -> tuple[list[Tensor], list[Tensor]]:
    """The graph's inputs and outputs as Triton sees them: batch axis dropped, symbolic axes -1.

    Read through onnxruntime, which resolves axes the exporter left symbolic
    (e.g. the embedding width) that the raw graph does not state. Without graph
    optimisations: only shapes are read, and onnxruntime's CPU provider crashed optimising
    FP16 graphs (exporters/fp16.py).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    def convert(values: Iterable) -> list[Tensor]:
        return [
            Tensor(v.name, _ORT_TO_TRITON[v.type], tuple(d if isinstance(d, int) else -1 for d in v.shape[1:]))
            for v in values
        ]

    return convert(session.get_inputs()), convert(session.get_outputs())


def _batched_model(
    name: str, inputs: Sequence[Tensor], outputs: Sequence[Tensor], instances: int, kind: str, max_queue_delay_us: int
) -> ModelConfig:
    """What every non-ensemble model shares: dynamic batching up to the contract's batch size."""
    return ModelConfig(
        name=name,
        max_batch_size=MAX_BATCH_SIZE,
        dynamic_batching=ModelDynamicBatching(max_queue_delay_microseconds=max_queue_delay_us),
        input=[t.as_input() for t in inputs],
        output=[t.as_output() for t in outputs],
        instance_group=[ModelInstanceGroup(count=instances, kind=ModelInstanceGroup.Kind.Value(kind))],
    )


def python_model_config(
    name: str,
    inputs: Sequence[Tensor],
    outputs: Sequence[Tensor],
    parameters: Mapping[str, str] | None = None,
    instances: int = 1,
    max_queue_delay_us: int = 0,
) -> ModelConfig:
    config = _batched_model(name, inputs, outputs, instances, "KIND_CPU", max_queue_delay_us)
    config.backend = "python"
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = str(value)
    return config


# Decoders and feature extractors (image_preprocess, audio_preprocess) hold the GIL for
# most of a request: a second instance lets them use a second core. Measured on 2 cores
# at concurrency 8 (docs/benchmarks.md, tuning sweep): image_embed 284 -> 437 infer/s with
# concurrency-1 latency unchanged; neutral for audio. The text tokenizer gained nothing
# measurable, so it keeps one.
DECODER_INSTANCES = 2


@dataclass(frozen=True)
class EncoderTuning:
    """How an encoder is scheduled; defaults chosen by measurement (docs/benchmarks.md)."""

    instances: int = 1
    max_queue_delay_us: int = 100
    intra_op_threads: int | None = None  # None: cores / instances


# TensorRT through onnxruntime on the gpu profile: FP16, a 4 GiB workspace, engines cached
# in a named folder (a volume in the pod: docker/compose.gpu.yaml, docs/deploy.md) so a
# restart does not rebuild them, and one optimisation profile per encoder spanning every
# shape the product sends (set_trt_profile): without it onnxruntime rebuilds the engine
# whenever a longer input than any before arrives, and requests wait for the rebuild.
ORT_TRT_CACHE = "/var/cache/mmserve/ort-trt"
_TENSORRT = {
    "precision_mode": "FP16", "max_workspace_size_bytes": "4294967296", "trt_engine_cache_enable": "true",
    "trt_engine_cache_path": ORT_TRT_CACHE,
}
TRT_PROFILE_KEYS = ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")


def trt_profile_options(profile: Mapping[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]) -> dict[str, str]:
    """onnxruntime's TensorRT EP spelling of a (min, opt, max) shape per input: `name:1x1,other:1x1`."""
    return {
        key: ",".join(f"{name}:{'x'.join(str(d) for d in shapes[index])}" for name, shapes in profile.items())
        for index, key in enumerate(TRT_PROFILE_KEYS)
    }


def set_trt_profile(config: ModelConfig, profile: Mapping[str, tuple[tuple[int, ...], ...]]) -> bool:
    """Put the shape profile on a gpu encoder's TensorRT accelerator (False: the config has none)."""
    for accelerator in config.optimization.execution_accelerators.gpu_execution_accelerator:
        if accelerator.name == "tensorrt":
            accelerator.parameters.update(trt_profile_options(profile))
            return True
    return False


TENSORRT_PLAN = "tensorrt_plan"  # the `platform` of a TensorRT engine (--tensorrt)
PLAN_FILE = TENSORRT_PLAN_FILE  # Triton's default file of a tensorrt_plan model


def tensorrt_plan_config(
    name: str, inputs: Sequence[Tensor], outputs: Sequence[Tensor], tuning: EncoderTuning = EncoderTuning()
) -> ModelConfig:
    """An encoder served as a TensorRT engine (`--tensorrt`) on the GPU; its tensors as the engine takes them."""
    config = _batched_model(name, inputs, outputs, tuning.instances, "KIND_GPU", tuning.max_queue_delay_us)
    config.platform = TENSORRT_PLAN
    config.default_model_filename = PLAN_FILE
    return config


def check_engine_io(engine_types: Mapping[str, str], graph_types: Mapping[str, str]) -> None:
    """An engine takes and gives the types its ONNX graph states, or the export is refused:
    a pipeline's other steps were written for the graph's types."""
    changed = {name: (graph_types[name], kind) for name, kind in engine_types.items()
               if name in graph_types and graph_types[name] != kind}
    if changed:
        listed = ", ".join(f"{name} {was} -> {now}" for name, (was, now) in changed.items())
        raise ExportError(
            f"the TensorRT engine changed tensor types ({listed}); the pipeline's other steps (the tokenizer's "
            "int64 ids) were written for the ONNX graph's types. Build with TensorRT 10 or later (pip install the "
            "version exporters/gpu_stack.py pins for the deployed image)"
        )


def encoder_config(
    name: str,
    onnx_path: Path,
    profile: str,
    labels_output: str | None = None,
    tuning: EncoderTuning = EncoderTuning(),
    engine_types: Mapping[str, str] | None = None,
) -> ModelConfig:
    """cpu: the shared ONNX runner in the Python backend; gpu: Triton's onnxruntime + TensorRT FP16,
    or, given `engine_types` (each tensor's type in an engine --tensorrt built), the engine itself."""
    inputs, outputs = onnx_tensors(onnx_path)
    outputs = [
        Tensor(t.name, t.data_type, t.dims, label_filename=LABELS_FILE if t.name == labels_output else None)
        for t in outputs
    ]
    if engine_types is not None:
        if profile != "gpu":
            raise ValueError(f"a TensorRT engine is served by the gpu profile only, not {profile!r}")
        check_engine_io(engine_types, {t.name: t.data_type for t in (*inputs, *outputs)})
        retyped = [
            [Tensor(t.name, engine_types.get(t.name, t.data_type), t.dims, t.label_filename) for t in tensors]
            for tensors in (inputs, outputs)
        ]
        return tensorrt_plan_config(name, retyped[0], retyped[1], tuning)
    if profile == "cpu":
        parameters = OnnxStepParameters(onnx_path.name, tuning.intra_op_threads or None).values()
        return python_model_config(
            name,
            [Tensor(t.name, t.data_type, t.dims, ragged=True) for t in inputs],
            outputs,
            parameters,
            instances=tuning.instances,
            max_queue_delay_us=tuning.max_queue_delay_us,
        )
    if profile == "gpu":
        config = _batched_model(name, inputs, outputs, tuning.instances, "KIND_GPU", tuning.max_queue_delay_us)
        config.backend = "onnxruntime"
        config.default_model_filename = onnx_path.name
        config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt", parameters=_TENSORRT)
        return config
    raise ValueError(f"unknown profile {profile!r}: use 'cpu' or 'gpu'")


def ensemble_step(model: str, inputs: Mapping[str, str], outputs: Mapping[str, str]) -> ModelEnsembling.Step:
    """A step calling `model`: its input name -> ensemble tensor, its output name -> ensemble tensor.

    `model_version: -1` (the model's served version) until the repository writer pins the
    product's own steps to the version it writes.
    """
    return ModelEnsembling.Step(model_name=model, model_version=-1, input_map=inputs, output_map=outputs)


def ensemble_config(
    name: str, inputs: Sequence[Tensor], outputs: Sequence[Tensor], steps: Sequence[ModelEnsembling.Step]
) -> ModelConfig:
    """An ensemble whose every output a caller may ask for alone (see require_terminal_outputs)."""
    require_terminal_outputs(name, [t.name for t in outputs], steps)
    return ModelConfig(
        name=name,
        platform=ENSEMBLE,
        max_batch_size=MAX_BATCH_SIZE,
        input=[t.as_input() for t in inputs],
        output=[t.as_output() for t in outputs],
        ensemble_scheduling=ModelEnsembling(step=steps),
    )


def require_terminal_outputs(name: str, outputs: Sequence[str], steps: Sequence[ModelEnsembling.Step]) -> None:
    """Each ensemble output is produced by exactly one step and fed to none.

    Triton prunes the steps that no requested output needs, and its pruning takes every
    ensemble output for a leaf: an output that also feeds a later step makes any request
    naming a subset of the outputs fail with "unexpected deadlock". Such a pipeline must
    feed the later step an internal tensor and have that step pass the output through
    (mmserve.exporters.classification does so for PROBS).
    """
    for output in outputs:
        producers = [step.model_name for step in steps if output in step.output_map.values()]
        if len(producers) != 1:
            raise ValueError(f"ensemble {name}: output {output} must come from exactly one step, not {producers or 'none'}")
        consumers = [step.model_name for step in steps if output in step.input_map.values()]
        if consumers:
            raise ValueError(
                f"ensemble {name}: output {output} also feeds step {consumers[0]}, so a request for a subset of "
                f"the outputs would deadlock in Triton; feed {consumers[0]} an internal tensor and let the last "
                f"step pass {output} through"
            )
