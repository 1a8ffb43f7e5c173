"""CUDA shared memory copies only what a request needs (issue 24, defect 12): the inputs'
bytes to the device, each output's own bytes back, instead of the whole region both ways.

No GPU here: the CUDA runtime is stood in for by host memory with the same calls and
pointer arithmetic (tritonclient's set_shared_memory_region, cuda-python's cudaMemcpy),
which counts the bytes each call moves. The round trip on a GPU is tests/test_client_shm.py's."""
from __future__ import annotations

import ctypes
from enum import Enum
from types import SimpleNamespace

import numpy as np

from mmserve.client._shm import CudaRegion


class _Runtime:
    """Device memory as a host buffer; records the bytes moved by each copy."""

    def __init__(self, size: int) -> None:
        self.device = np.zeros(size, dtype=np.uint8)
        self.to_device: list[int] = []
        self.to_host: list[int] = []
        errors = Enum("cudaError_t", {"cudaSuccess": 0})
        kinds = Enum("cudaMemcpyKind", {"cudaMemcpyDeviceToHost": 2})
        self.cudart = SimpleNamespace(cudaError_t=errors, cudaMemcpyKind=kinds, cudaMemcpy=self._memcpy)

    def set_shared_memory_region(self, handle, arrays) -> None:
        offset = 0
        for array in arrays:
            data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
            self.device[offset : offset + data.size] = data
            self.to_device.append(data.size)
            offset += data.size

    def _memcpy(self, destination: int, source: int, count: int, kind):
        ctypes.memmove(destination, source, count)
        self.to_host.append(count)
        return (self.cudart.cudaError_t.cudaSuccess,)


def _region(size: int) -> tuple[CudaRegion, _Runtime]:
    runtime = _Runtime(size)
    region = object.__new__(CudaRegion)  # the allocation itself needs a GPU; the copies are what is tested
    region.name, region.size, region.registered, region.device = "r", size, False, 0
    region._cuda, region._handle = runtime, SimpleNamespace(_base_addr=runtime.device.ctypes.data)
    region._host, region._end = np.zeros(size, dtype=np.uint8), 0
    return region, runtime


def test_a_request_copies_its_inputs_and_outputs_not_the_region():
    region, runtime = _region(1 << 20)  # a 1 MiB region, grown for an earlier large request
    ids = np.arange(12, dtype=np.int64)
    region.write(0, ids)
    region.write(128, np.ones(12, dtype=np.int64))
    region.commit()
    assert runtime.to_device == [128 + 96]  # up to the last input's end, not 1 MiB
    runtime.device[4096 : 4096 + 16] = np.arange(4, dtype=np.float32).view(np.uint8)  # the server's answer
    region.fetch()
    answer = region.read(4096, np.dtype(np.float32), [1, 4])
    assert answer.tolist() == [[0.0, 1.0, 2.0, 3.0]]
    assert runtime.to_host == [16]  # the output's own bytes
    region.commit()  # nothing written since: nothing copied
    assert runtime.to_device == [224]
