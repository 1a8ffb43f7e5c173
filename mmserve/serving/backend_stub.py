"""A stand-in for `triton_python_backend_utils`, to run mmserve.serving's models outside Triton.

Inside tritonserver, the Python backend's stub provides the `triton_python_backend_utils`
module the models import (lazily, in mmserve/serving/runtime.py). The bench's in-process
baseline (mmserve/bench/inprocess.py) and its GPU check call the very same model classes
in the bench's own process, where that module does not exist; `install()` puts this
stand-in in its place. It covers only what mmserve's models use -- tensors, requests,
responses and errors -- with the real module's names and signatures; it is never used
when the real module is importable (inside Triton).
"""
from __future__ import annotations

import sys
import types
from typing import Any, Sequence

import numpy as np

MODULE_NAME = "triton_python_backend_utils"


class TritonError(Exception):
    """pb_utils.TritonError: a message and a status code (INVALID_ARG for a bad input)."""

    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS = range(7)

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class Tensor:
    """pb_utils.Tensor: a named numpy array on the CPU."""

    def __init__(self, name: str, array: Any) -> None:
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def is_cpu(self) -> bool:
        return True


class InferenceRequest:
    """What a model's execute() receives: the step's input tensors and the outputs asked for."""

    def __init__(self, tensors: dict[str, np.ndarray], requested: Sequence[str]) -> None:
        self._tensors = {name: Tensor(name, value) for name, value in tensors.items()}
        self._requested = list(requested)

    def inputs(self) -> list[Tensor]:
        return list(self._tensors.values())

    def requested_output_names(self) -> list[str]:
        return list(self._requested)


class InferenceResponse:
    """pb_utils.InferenceResponse: output tensors, or an error."""

    def __init__(self, output_tensors: Sequence[Tensor] = (), error: TritonError | None = None) -> None:
        self._outputs, self._error = list(output_tensors), error

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return request._tensors.get(name)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors() if t.name() == name), None)


def _module() -> types.ModuleType:
    module = types.ModuleType(MODULE_NAME, __doc__)
    module.Tensor = Tensor
    module.InferenceResponse = InferenceResponse
    module.TritonError = TritonError
    module.TritonModelException = TritonError
    module.get_input_tensor_by_name = get_input_tensor_by_name
    module.get_output_tensor_by_name = get_output_tensor_by_name
    return module


def install() -> None:
    """Make `import triton_python_backend_utils` find this stand-in (a no-op when one is there)."""
    if MODULE_NAME not in sys.modules:
        sys.modules[MODULE_NAME] = _module()
