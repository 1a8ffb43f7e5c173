"""What every Python model of the repository shares: config parameters, per-request
error isolation, and the one ONNX runner all encoders use.

Imported inside Triton's Python stub, so it needs only numpy and onnxruntime;
`triton_python_backend_utils` is imported lazily (it exists only in the stub).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np


class InputError(ValueError):
    """A request's input is bad: answered with INVALID_ARG, the message names the input."""


def model_parameters(args: dict[str, str]) -> dict[str, str]:
    """The `parameters { key: ... value { string_value: ... } }` of a model's config.pbtxt."""
    config = json.loads(args["model_config"])
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def model_folder(args: dict[str, str]) -> Path:
    return Path(args["model_repository"]) / args["model_version"]


def instance_count(args: dict[str, str]) -> int:
    config = json.loads(args["model_config"])
    groups = config.get("instance_group") or [{"count": 1}]
    return max(1, sum(int(group.get("count", 1)) for group in groups))


def answer_each(requests: Sequence[Any], handle: Callable[[Any], list[Any]]) -> list[Any]:
    """Run `handle` per request; a bad request gets its own error, the others their answers.

    The model instance never raises out of execute(): Triton would fail every
    request of the batch, and a Python exception is reported as INTERNAL.
    """
    import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

    responses = []
    for request in requests:
        try:
            responses.append(pb_utils.InferenceResponse(output_tensors=handle(request)))
        except InputError as error:
            responses.append(error_response(str(error), invalid=True))
        except Exception as error:  # noqa: BLE001 - a server never crashes on a request
            responses.append(error_response(f"{type(error).__name__}: {error}", invalid=False))
    return responses


def error_response(message: str, invalid: bool) -> Any:
    import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

    code = pb_utils.TritonError.INVALID_ARG if invalid else pb_utils.TritonError.INTERNAL
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))


def input_array(request: Any, name: str) -> np.ndarray:
    import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise InputError(f"input {name} is missing")
    return tensor.as_numpy()


def output_tensor(name: str, array: np.ndarray) -> Any:
    import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

    return pb_utils.Tensor(name, array)


def bytes_array(strings: Sequence[str]) -> np.ndarray:
    """A [N, 1] object array of UTF-8 bytes: how Triton carries BYTES tensors."""
    return np.array([[s.encode("utf-8")] for s in strings], dtype=np.object_).reshape(len(strings), 1)


@dataclass(frozen=True)
class RunnerSettings:
    intra_op_threads: int
    inter_op_threads: int = 1
    allow_spinning: bool = False

    @classmethod
    def for_instances(cls, instances: int, override: str | None = None, allow_spinning: str | None = None) -> "RunnerSettings":
        """Split this machine's cores among the instances of a model, unless told otherwise."""
        spinning = (allow_spinning or "0").strip() == "1"
        if override:
            return cls(intra_op_threads=max(1, int(override)), allow_spinning=spinning)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return cls(intra_op_threads=max(1, cores // max(1, instances)), allow_spinning=spinning)


class OnnxRunner:
    """One onnxruntime session that runs a batch made of several requests at once.

    Requests arrive with their own sequence lengths (ragged batching); inputs are
    right-padded with zeros to the longest, run in one call, and split back.
    Outputs whose second axis is the same symbolic axis as an input's (e.g.
    per-token scores) are cut back to each request's own length.
    """

    def __init__(self, onnx_path: Path, settings: RunnerSettings, providers: Sequence[str] = ("CPUExecutionProvider",)):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.intra_op_threads
        options.inter_op_num_threads = settings.inter_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads starve the tokenizer and post-processing processes on small machines.
        spinning = "1" if settings.allow_spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
        self.session = ort.InferenceSession(str(onnx_path), options, providers=list(providers))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._input_dtypes = {i.name: _numpy_dtype(i.type) for i in self.session.get_inputs()}
        input_seq_axes = {
            i.shape[1] for i in self.session.get_inputs() if len(i.shape) > 1 and isinstance(i.shape[1], str)
        }
        self._ragged_outputs = {
            o.name for o in self.session.get_outputs()
            if len(o.shape) > 1 and isinstance(o.shape[1], str) and o.shape[1] in input_seq_axes
        }

    def run(self, feeds: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Run several requests' inputs as one batch; answer per request."""
        sizes = [len(next(iter(feed.values()))) for feed in feeds]
        lengths = [max((a.shape[1] for a in feed.values() if a.ndim > 1), default=0) for feed in feeds]
        batch = {
            name: _pad_and_stack([feed[name] for feed in feeds]).astype(self._input_dtypes[name], copy=False)
            for name in self.input_names
        }
        outputs = dict(zip(self.output_names, self.session.run(self.output_names, batch)))
        answers: list[dict[str, np.ndarray]] = []
        start = 0
        for size, length in zip(sizes, lengths):
            answer = {}
            for name, value in outputs.items():
                part = value[start : start + size]
                answer[name] = part[:, :length] if name in self._ragged_outputs else part
            answers.append(answer)
            start += size
        return answers


def _pad_and_stack(arrays: Sequence[np.ndarray]) -> np.ndarray:
    if len(arrays) == 1:
        return arrays[0]
    if arrays[0].ndim == 1 or all(a.shape[1:] == arrays[0].shape[1:] for a in arrays):
        return np.concatenate(arrays, axis=0)
    target = [max(a.shape[axis] for a in arrays) for axis in range(1, arrays[0].ndim)]
    padded = [
        np.pad(a, [(0, 0)] + [(0, t - s) for t, s in zip(target, a.shape[1:])]) for a in arrays
    ]
    return np.concatenate(padded, axis=0)


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


def _numpy_dtype(ort_type: str) -> type:
    return _ORT_TYPES[ort_type]
