"""The few CUDA runtime calls the engine path needs, through ctypes on libcudart.

Why not torch or cuda-python: torch 2.14 from PyPI is a CUDA 13 build that an older driver
cannot use (exporters/gpu_stack.py), and cuda-python changed its module names at 13. The
CUDA runtime library comes with every CUDA wheel mmserve installs on a GPU host
(nvidia-cuda-runtime-cu12 in the server extra, TensorRT's own), so device buffers, copies,
a stream and the device's compute capability are a dozen lines here, on any driver that
runs that runtime. Every failure says which call failed and why, in CUDA's own words.
"""
from __future__ import annotations

import ctypes
import glob
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_HOST_TO_DEVICE, _DEVICE_TO_HOST = 1, 2
_ATTRIBUTE_MAJOR, _ATTRIBUTE_MINOR = 75, 76  # cudaDevAttrComputeCapabilityMajor / Minor


class CudaError(RuntimeError):
    """A CUDA runtime call failed (no driver, no device, a driver too old for this runtime)."""


def _candidates() -> list[str]:
    """libcudart from the pip wheels of this interpreter first, then the system's."""
    found = []
    for root in map(Path, sys.path):
        found += sorted(glob.glob(str(root / "nvidia" / "cuda_runtime" / "lib" / "libcudart.so*")), reverse=True)
        found += sorted(glob.glob(str(root / "nvidia" / "cu13" / "lib" / "libcudart.so*")), reverse=True)
    return found + ["libcudart.so.13", "libcudart.so.12", "libcudart.so"]


@dataclass
class CudaRuntime:
    """libcudart, loaded once; `check` turns an error code into CudaError with CUDA's message."""

    library: Any
    path: str

    @classmethod
    def load(cls) -> "CudaRuntime":
        errors = []
        for candidate in _candidates():
            try:
                return cls(ctypes.CDLL(candidate), candidate)
            except OSError as error:
                errors.append(f"{candidate}: {error}")
        raise CudaError("no CUDA runtime library (libcudart) here: install nvidia-cuda-runtime-cu12 "
                        "(mmserve's server extra) or TensorRT's wheel; tried " + "; ".join(errors[-3:]))

    def check(self, code: int, call: str) -> None:
        if code != 0:
            self.library.cudaGetErrorString.restype = ctypes.c_char_p
            message = self.library.cudaGetErrorString(code).decode()
            raise CudaError(f"{call} failed: CUDA error {code} ({message})")

    def version(self) -> str:
        value = ctypes.c_int()
        self.check(self.library.cudaRuntimeGetVersion(ctypes.byref(value)), "cudaRuntimeGetVersion")
        return f"{value.value // 1000}.{value.value % 1000 // 10}"

    def driver_version(self) -> str:
        """The CUDA version the installed driver supports ("0.0": no driver)."""
        value = ctypes.c_int()
        self.check(self.library.cudaDriverGetVersion(ctypes.byref(value)), "cudaDriverGetVersion")
        return f"{value.value // 1000}.{value.value % 1000 // 10}"

    def device_count(self) -> int:
        value = ctypes.c_int()
        self.check(self.library.cudaGetDeviceCount(ctypes.byref(value)), "cudaGetDeviceCount")
        return value.value

    def capability(self, device: int = 0) -> str:
        """Compute capability, e.g. "9.0" on an H100: a TensorRT engine is built for one."""
        major, minor = ctypes.c_int(), ctypes.c_int()
        self.check(self.library.cudaDeviceGetAttribute(ctypes.byref(major), _ATTRIBUTE_MAJOR, device), "cudaDeviceGetAttribute")
        self.check(self.library.cudaDeviceGetAttribute(ctypes.byref(minor), _ATTRIBUTE_MINOR, device), "cudaDeviceGetAttribute")
        return f"{major.value}.{minor.value}"

    def stream(self) -> int:
        handle = ctypes.c_void_p()
        self.check(self.library.cudaStreamCreate(ctypes.byref(handle)), "cudaStreamCreate")
        return handle.value or 0

    def synchronize(self, stream: int) -> None:
        self.check(self.library.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")


class DeviceArray:
    """One device buffer of a fixed shape and dtype; copies to and from numpy."""

    def __init__(self, cuda: CudaRuntime, shape: tuple[int, ...], dtype: Any) -> None:
        self.cuda, self.shape, self.dtype = cuda, tuple(int(s) for s in shape), np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        pointer = ctypes.c_void_p()
        cuda.check(cuda.library.cudaMalloc(ctypes.byref(pointer), ctypes.c_size_t(max(1, self.nbytes))), "cudaMalloc")
        self.pointer = pointer.value or 0

    @classmethod
    def from_numpy(cls, cuda: CudaRuntime, array: np.ndarray, dtype: Any = None) -> "DeviceArray":
        host = np.ascontiguousarray(array, dtype=dtype or array.dtype)
        device = cls(cuda, host.shape, host.dtype)
        device.upload(host)
        return device

    def upload(self, host: np.ndarray) -> None:
        host = np.ascontiguousarray(host, dtype=self.dtype)
        self.cuda.check(self.cuda.library.cudaMemcpy(ctypes.c_void_p(self.pointer), host.ctypes.data_as(ctypes.c_void_p),
                                                     ctypes.c_size_t(host.nbytes), _HOST_TO_DEVICE), "cudaMemcpy H2D")

    def numpy(self, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The first prod(shape) items, copied to the host (only those bytes cross the bus)."""
        shape = tuple(shape or self.shape)
        host = np.empty(shape, dtype=self.dtype)
        self.cuda.check(self.cuda.library.cudaMemcpy(host.ctypes.data_as(ctypes.c_void_p), ctypes.c_void_p(self.pointer),
                                                     ctypes.c_size_t(host.nbytes), _DEVICE_TO_HOST), "cudaMemcpy D2H")
        return host

    def free(self) -> None:
        if self.pointer:
            self.cuda.library.cudaFree(ctypes.c_void_p(self.pointer))
            self.pointer = 0


def gpu_capability() -> str:
    """The compute capability of device 0 (CUDA_VISIBLE_DEVICES applies), or CudaError saying why not."""
    cuda = CudaRuntime.load()
    if cuda.device_count() < 1:
        raise CudaError(f"no CUDA device visible (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    return cuda.capability(0)
