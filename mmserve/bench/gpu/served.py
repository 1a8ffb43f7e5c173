"""The fused pipelines served by Triton on the GPU, under our own asyncio gRPC load generator.

perf_analyzer (from tritonclient[all]) links libb64, a Debian package: a GPU machine with
PyPI only has no way to install it, so the check drives the server with tritonclient's
asyncio client instead: C concurrent callers, each sending the next request when its
answer arrives (perf_analyzer's concurrency mode), for a fixed time.
"""
from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from mmserve.bench.gpu.report import Measurement, Report


async def _load(url: str, model: str, requests: Sequence[dict[str, np.ndarray]], concurrency: int, seconds: float) -> list[float]:
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    from mmserve.bench.inputs import stack

    def inputs(request: dict[str, np.ndarray]) -> list:
        tensors = []
        for name, array in stack([request]).items():  # one request: a batch of one
            tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        return tensors

    client = grpcclient.InferenceServerClient(url)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def caller(offset: int) -> None:
        index = offset
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await client.infer(model, inputs(requests[index % len(requests)]))
            latencies.append(time.perf_counter() - started)
            index += concurrency

    try:
        await client.infer(model, inputs(requests[0]))  # warm-up (first-call allocations, engine load)
        await asyncio.gather(*(caller(i) for i in range(concurrency)))
    finally:
        await client.close()
    return latencies


def measure_served(repository: Path, pipelines: dict[str, list[dict[str, np.ndarray]]], seconds: float,
                   report: Report, log: Path, label: str, timeout_s: float) -> None:
    """Serve PIPELINES from REPOSITORY with the launcher users run; each at concurrency 1 and 8."""
    from mmserve.server import ServerPorts, TritonServer

    server = TritonServer(repository, ServerPorts.free(), models=list(pipelines), log_file=log, startup_timeout_s=timeout_s)
    server.start()  # the TensorRT EP builds (or loads from its cache) each engine here
    try:
        for pipeline, requests in pipelines.items():
            for concurrency in (1, 8):
                latencies = asyncio.run(_load(server.grpc_url, pipeline, requests, concurrency, seconds))
                report.add(Measurement(pipeline, label, concurrency, 1e3 * statistics.median(latencies),
                                       1e3 * float(np.percentile(latencies, 99)), len(latencies) / seconds,
                                       len(latencies), "gRPC, asyncio client, batch 1 per request"), served=True)
    finally:
        server.stop()
