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
from typing import Any, Mapping, Sequence

import numpy as np

from mmserve.repository_layout import PROVIDER_OPTIONS_PARAMETER, PROVIDERS_PARAMETER


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


Outputs = dict[str, np.ndarray]  # one request's answer: output name -> array


class LocalRequest:
    """One request answered inside this process: a fused pipeline model hands each step its
    inputs this way instead of through Triton (mmserve/serving/fused.py)."""

    __slots__ = ("inputs", "requested")

    def __init__(self, inputs: Mapping[str, np.ndarray], requested: Sequence[str] = ()) -> None:
        self.inputs = inputs
        self.requested = list(requested)

    def requested_output_names(self) -> list[str]:
        return self.requested


class PythonStep:
    """Base of every Python model of the repository: one step of a pipeline.

    A step answers a request's inputs with its outputs (`answer`, or `answer_batch` for the
    whole batch at once). The same object runs as its own Triton model (the ensemble layout:
    `execute`) or inside a fused pipeline model, which calls `answer_batch` with
    `LocalRequest`s, so both layouts run the same code.
    """

    def answer(self, request: Any) -> Outputs:
        raise NotImplementedError

    def answer_batch(self, requests: Sequence[Any]) -> list[Outputs | Exception]:
        """Each request's outputs, or the exception that request raised: a bad request gets
        its own error and the others their answers."""
        results: list[Outputs | Exception] = []
        for request in requests:
            try:
                results.append(self.answer(request))
            except Exception as error:  # noqa: BLE001 - a server never crashes on a request
                results.append(error)
        return results

    def execute(self, requests: list[Any]) -> list[Any]:
        """Triton's entry point: never raises (Triton would fail the whole batch, as INTERNAL)."""
        return [triton_response(result) for result in self.answer_batch(requests)]


def triton_response(result: Outputs | Exception) -> Any:
    """A step's answer as Triton's response: outputs, or INVALID_ARG for an InputError
    (the message names the input) and INTERNAL for anything else."""
    import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

    if isinstance(result, InputError):
        return error_response(str(result), invalid=True)
    if isinstance(result, Exception):
        return error_response(f"{type(result).__name__}: {result}", invalid=False)
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, v) for n, v in result.items()])


def error_response(message: str, invalid: bool) -> Any:
    import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

    code = pb_utils.TritonError.INVALID_ARG if invalid else pb_utils.TritonError.INTERNAL
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))


def input_array(request: Any, name: str) -> np.ndarray:
    """An input of a Triton request or a LocalRequest; InputError when it is missing."""
    if isinstance(request, LocalRequest):
        value = request.inputs.get(name)
    else:
        import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

        tensor = pb_utils.get_input_tensor_by_name(request, name)
        value = None if tensor is None else tensor.as_numpy()
    if value is None:
        raise InputError(f"input {name} is missing")
    return value


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


GPU_PROVIDER_ADVICE = (
    "install onnxruntime-gpu into the server's Python on a machine with an NVIDIA GPU: `pip uninstall -y onnxruntime` "
    "first (both packages install the same module directory and the CPU one wins), then `pip install onnxruntime-gpu`; "
    "or export the product with --profile cpu"
)


# Set to a comma-separated provider list (e.g. CPUExecutionProvider), it replaces what every
# step's config names: a GPU export run on a CPU machine on purpose, as the GPU check's dry run does.
PROVIDERS_OVERRIDE = "MMSERVE_ONNX_PROVIDERS"


def session_providers(parameters: Mapping[str, str]) -> list[Any]:
    """The onnxruntime providers a step's config names (`providers`, `provider_options` JSON):
    CPU when it names none. A pipeline exported for the GPU (`--profile gpu --layout fused`)
    refuses to load where its first provider is missing instead of falling back to the CPU."""
    names = [name.strip() for name in parameters.get(PROVIDERS_PARAMETER, "").split(",") if name.strip()]
    override = os.environ.get(PROVIDERS_OVERRIDE, "").strip()
    if override:  # an explicit choice of the operator (the GPU check's dry run on CPU), never a silent one
        names = [name.strip() for name in override.split(",") if name.strip()]
    if not names or names == ["CPUExecutionProvider"]:
        return ["CPUExecutionProvider"]
    import onnxruntime as ort

    available = ort.get_available_providers()
    if names[0] not in available:
        raise RuntimeError(
            f"this step was exported to run on {names[0]} (--profile gpu), which this onnxruntime {ort.__version__} "
            f"lacks (it has {', '.join(available)}): {GPU_PROVIDER_ADVICE}"
        )
    options = json.loads(parameters.get(PROVIDER_OPTIONS_PARAMETER) or "{}")
    chosen: list[Any] = []
    for name in names:
        if name not in available:
            continue
        settings = dict(options.get(name, {}))
        if name == "TensorrtExecutionProvider":  # engines survive restarts; a folder the server may write
            cache = Path(os.environ.get("MMSERVE_TRT_CACHE") or Path.home() / ".cache" / "mmserve" / "ort-trt")
            cache.mkdir(parents=True, exist_ok=True)
            settings.setdefault("trt_engine_cache_path", str(cache))
        chosen.append((name, settings))
    return chosen


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
        self.session = _inference_session(onnx_path, options, list(providers))
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


def _inference_session(onnx_path: Path, options: Any, providers: list[Any]) -> Any:
    """A session over the machine's one shareable copy of the weights (mmserve/serving/shared_weights.py)
    when it runs on the CPU alone, else over the plain file."""
    import onnxruntime as ort

    from mmserve.serving.shared_weights import load_failed, prepared_model

    names = [p[0] if isinstance(p, tuple) else p for p in providers]
    prepared = prepared_model(Path(onnx_path)) if names == ["CPUExecutionProvider"] else None
    if prepared is not None:
        # The prepared graph is already optimised for this CPU: optimising it again would only
        # copy weights out of the shared mapping.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            return ort.InferenceSession(str(prepared), options, providers=providers)
        except Exception as error:  # noqa: BLE001 - the plain file always works
            load_failed(onnx_path, prepared, error)
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_path), options, providers=providers)


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
