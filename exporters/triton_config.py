"""config.pbtxt for every model we write: derived from ONNX graphs and the contract.

Configs are built as plain dicts and printed as protobuf text, so each kind of
model has one builder and the output is deterministic (checked-in configs can
be compared byte for byte).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from mmserve.pipelines import MAX_BATCH_SIZE, TensorSpec


class Enum(str):
    """A protobuf enum value: printed bare, not quoted."""


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # config spelling, e.g. TYPE_FP32
    dims: tuple[int, ...]
    label_filename: str | None = None
    ragged: bool = False

    @classmethod
    def from_spec(cls, spec: TensorSpec, dims: tuple[int, ...] | None = None) -> "Tensor":
        return cls(spec.name, spec.config_dtype, dims if dims is not None else spec.dims)

    def as_input(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "data_type": Enum(self.data_type), "dims": list(self.dims)}
        if self.ragged:
            entry["allow_ragged_batch"] = True
        return entry

    def as_output(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "data_type": Enum(self.data_type), "dims": list(self.dims)}
        if self.label_filename:
            entry["label_filename"] = self.label_filename
        return entry


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
    (e.g. the embedding width) that the raw graph does not state.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def convert(values: Iterable[Any]) -> list[Tensor]:
        return [
            Tensor(v.name, _ORT_TO_TRITON[v.type], tuple(d if isinstance(d, int) else -1 for d in v.shape[1:]))
            for v in values
        ]

    return convert(session.get_inputs()), convert(session.get_outputs())


def python_model_config(
    name: str,
    inputs: Sequence[Tensor],
    outputs: Sequence[Tensor],
    parameters: Mapping[str, str] | None = None,
    instances: int = 1,
    max_queue_delay_us: int = 0,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": name,
        "backend": "python",
        "max_batch_size": MAX_BATCH_SIZE,
        "dynamic_batching": {"max_queue_delay_microseconds": max_queue_delay_us},
        "input": [t.as_input() for t in inputs],
        "output": [t.as_output() for t in outputs],
        "instance_group": [{"count": instances, "kind": Enum("KIND_CPU")}],
    }
    if parameters:
        config["parameters"] = [
            {"key": key, "value": {"string_value": str(value)}} for key, value in sorted(parameters.items())
        ]
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


def encoder_config(
    name: str,
    onnx_path: Path,
    profile: str,
    labels_output: str | None = None,
    tuning: EncoderTuning = EncoderTuning(),
) -> dict[str, Any]:
    """cpu: the shared ONNX runner in the Python backend; gpu: Triton's onnxruntime + TensorRT FP16."""
    inputs, outputs = onnx_tensors(onnx_path)
    outputs = [
        Tensor(t.name, t.data_type, t.dims, label_filename="labels.txt" if t.name == labels_output else None)
        for t in outputs
    ]
    if profile == "cpu":
        parameters = {"onnx_file": onnx_path.name}
        if tuning.intra_op_threads:
            parameters["intra_op_threads"] = str(tuning.intra_op_threads)
        return python_model_config(
            name,
            [Tensor(t.name, t.data_type, t.dims, ragged=True) for t in inputs],
            outputs,
            parameters,
            instances=tuning.instances,
            max_queue_delay_us=tuning.max_queue_delay_us,
        )
    if profile == "gpu":
        return {
            "name": name,
            "backend": "onnxruntime",
            "default_model_filename": onnx_path.name,
            "max_batch_size": MAX_BATCH_SIZE,
            "dynamic_batching": {"max_queue_delay_microseconds": tuning.max_queue_delay_us},
            "input": [t.as_input() for t in inputs],
            "output": [t.as_output() for t in outputs],
            "instance_group": [{"count": tuning.instances, "kind": Enum("KIND_GPU")}],
            "optimization": {
                "execution_accelerators": {
                    "gpu_execution_accelerator": [
                        {
                            "name": "tensorrt",
                            "parameters": [
                                {"key": "precision_mode", "value": "FP16"},
                                {"key": "max_workspace_size_bytes", "value": "4294967296"},
                                {"key": "trt_engine_cache_enable", "value": "true"},
                            ],
                        }
                    ]
                }
            },
        }
    raise ValueError(f"unknown profile {profile!r}: use 'cpu' or 'gpu'")


@dataclass(frozen=True)
class Step:
    model: str
    inputs: Mapping[str, str]  # the step model's input name -> ensemble tensor
    outputs: Mapping[str, str]  # the step model's output name -> ensemble tensor


def ensemble_config(name: str, inputs: Sequence[Tensor], outputs: Sequence[Tensor], steps: Sequence[Step]) -> dict[str, Any]:
    """An ensemble whose every output a caller may ask for alone (see require_terminal_outputs)."""
    require_terminal_outputs(name, [t.name for t in outputs], steps)
    return {
        "name": name,
        "platform": "ensemble",
        "max_batch_size": MAX_BATCH_SIZE,
        "input": [t.as_input() for t in inputs],
        "output": [t.as_output() for t in outputs],
        "ensemble_scheduling": {
            "step": [
                {
                    "model_name": step.model,
                    "model_version": -1,
                    "input_map": [{"key": k, "value": v} for k, v in step.inputs.items()],
                    "output_map": [{"key": k, "value": v} for k, v in step.outputs.items()],
                }
                for step in steps
            ]
        },
    }


def require_terminal_outputs(name: str, outputs: Sequence[str], steps: Sequence[Step]) -> None:
    """Each ensemble output is produced by exactly one step and fed to none.

    Triton prunes the steps that no requested output needs, and its pruning takes every
    ensemble output for a leaf: an output that also feeds a later step makes any request
    naming a subset of the outputs fail with "unexpected deadlock". Such a pipeline must
    feed the later step an internal tensor and have that step pass the output through
    (mmserve.exporters.classification does so for PROBS).
    """
    for output in outputs:
        producers = [step.model for step in steps if output in step.outputs.values()]
        if len(producers) != 1:
            raise ValueError(f"ensemble {name}: output {output} must come from exactly one step, not {producers or 'none'}")
        consumers = [step.model for step in steps if output in step.inputs.values()]
        if consumers:
            raise ValueError(
                f"ensemble {name}: output {output} also feeds step {consumers[0]}, so a request for a subset of "
                f"the outputs would deadlock in Triton; feed {consumers[0]} an internal tensor and let the last "
                f"step pass {output} through"
            )


def to_pbtxt(message: Mapping[str, Any], indent: int = 0) -> str:
    """Protobuf text format for a config dict; lists of messages print as `key [ {...}, ... ]`."""
    pad = "  " * indent
    lines = []
    for key, value in message.items():
        if isinstance(value, Mapping):
            lines.append(f"{pad}{key} {{\n{to_pbtxt(value, indent + 1)}{pad}}}")
        elif isinstance(value, list) and value and isinstance(value[0], Mapping):
            items = ",\n".join(f"{pad}  {{\n{to_pbtxt(v, indent + 2)}{pad}  }}" for v in value)
            lines.append(f"{pad}{key} [\n{items}\n{pad}]")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "".join(line + "\n" for line in lines)


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
