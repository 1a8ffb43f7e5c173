"""The typed client measured against raw tritonclient, and shared memory against gRPC.

``mmserve bench --client`` (or ``python -m mmserve.bench.client``) runs, in one process
against one server:

- overhead: ``Client.classify_text`` vs the same request built and parsed with raw
  ``tritonclient.grpc`` (text_classify, batch 1, sequential calls), in interleaved
  rounds so that machine drift hits both alike; prints both p50s, their ratio and
  the difference in microseconds, then the same against raw tritonclient given the
  client's deadline (a gRPC deadline has a cost of its own);
- shared memory: ``Client(..., shared_memory="system")`` vs plain gRPC on 1080p JPEGs
  (image_embed) and 30 s clips (audio_classify), batch 1, interleaved likewise.

Nothing is asserted: the figures are printed (and returned) for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmserve.pipelines import LABEL, PROBS, TEXT, Kind
from mmserve.repository_layout import CONFIG_FILE

__all__ = ["Comparison", "client_overhead", "shared_memory_gain", "client_command"]

PIPELINES = (Kind.TEXT_CLASSIFY.value, Kind.IMAGE_EMBED.value, Kind.AUDIO_CLASSIFY.value)


@dataclass(frozen=True)
class Comparison:
    """Two ways to make the same call, timed in alternating rounds."""

    what: str
    a_name: str
    b_name: str
    a_us: list[float]  # per-call latencies, microseconds
    b_us: list[float]
    a_cpu_us: float  # this process's CPU time per call (all its threads), microseconds:
    b_cpu_us: float  # less sensitive than latency to other load on the machine
    round_size: int  # a_us and b_us were measured in alternating rounds of this many calls

    @property
    def paired_difference_us(self) -> float:
        """Median over rounds of (a's round p50 - b's round p50): neighbouring rounds see the
        same machine, so drift between rounds cancels."""
        n = self.round_size
        rounds = min(len(self.a_us), len(self.b_us)) // n
        return statistics.median(
            statistics.median(self.a_us[i * n : (i + 1) * n]) - statistics.median(self.b_us[i * n : (i + 1) * n])
            for i in range(rounds)
        )

    @property
    def a_p50(self) -> float:
        return statistics.median(self.a_us)

    @property
    def b_p50(self) -> float:
        return statistics.median(self.b_us)

    def line(self) -> str:
        a, b = self.a_p50, self.b_p50
        unit, scale = ("ms", 1e-3) if min(a, b) > 10_000 else ("µs", 1.0)
        return (
            f"{self.what}: {self.a_name} p50 {a * scale:,.1f} {unit}, {self.b_name} p50 {b * scale:,.1f} {unit}; "
            f"{self.a_name} / {self.b_name} = {a / b:.3f} ({(a - b) * scale:+,.1f} {unit}; "
            f"paired by round {self.paired_difference_us * scale:+,.1f} {unit}); "
            f"client CPU per call {self.a_cpu_us:,.0f} vs {self.b_cpu_us:,.0f} µs; "
            f"{len(self.a_us)} + {len(self.b_us)} calls"
        )


def interleaved(
    calls_: Sequence[Callable[[], object]], calls: int, round_size: int, warmup: int
) -> list[tuple[list[float], float]]:
    """Rounds of each callable in turn (the order reversed every other round) until each
    made ``calls`` calls. Per callable: its per-call latencies (µs) and its mean process
    CPU time per call (µs)."""
    for _ in range(warmup):
        for call in calls_:
            call()
    times: list[list[float]] = [[] for _ in calls_]
    cpu = [0.0] * len(calls_)
    order = list(range(len(calls_)))
    for r in range(max(1, calls // round_size)):
        for index in order if r % 2 == 0 else order[::-1]:
            call, bucket = calls_[index], times[index]
            cpu_start = time.process_time()
            for _ in range(round_size):
                start = time.perf_counter_ns()
                call()
                bucket.append((time.perf_counter_ns() - start) / 1000)
            cpu[index] += time.process_time() - cpu_start
    return [(bucket, spent / len(bucket) * 1e6) for bucket, spent in zip(times, cpu)]


def client_overhead(
    url: str, calls: int = 3000, round_size: int = 50, text: str = "where is my parcel?"
) -> list[Comparison]:
    """Our Client (default options) vs raw tritonclient on text_classify, batch 1, the same
    text each call; and vs raw tritonclient given the same 10 s deadline, which gRPC makes
    cost something of its own."""
    import tritonclient.grpc as grpcclient

    from mmserve.client import Client

    raw = grpcclient.InferenceServerClient(url)
    ours = Client(url)
    try:
        item = np.array([[text.encode("utf-8")]], dtype=np.object_)
        pipeline = Kind.TEXT_CLASSIFY.value

        def raw_call(**options: float) -> tuple[np.ndarray, str]:
            # What an app writes by hand for the same answer: inputs, outputs, parse.
            infer_input = grpcclient.InferInput(TEXT.name, [1, 1], TEXT.triton_dtype)
            infer_input.set_data_from_numpy(item)
            outputs = [grpcclient.InferRequestedOutput(PROBS.name), grpcclient.InferRequestedOutput(LABEL.name)]
            result = raw.infer(pipeline, [infer_input], outputs=outputs, **options)
            return result.as_numpy(PROBS.name)[0], result.as_numpy(LABEL.name)[0, 0].decode("utf-8")

        if ours.classify_text(text).label != raw_call()[1]:
            raise AssertionError("the client and raw tritonclient disagree; not measuring")
        (ours_us, ours_cpu), (raw_us, raw_cpu), (dl_us, dl_cpu) = interleaved(
            [lambda: ours.classify_text(text), raw_call, lambda: raw_call(client_timeout=ours.timeout)],
            calls,
            round_size,
            warmup=100,
        )
    finally:
        ours.close()
        raw.close()
    what = "client overhead, text_classify b1"
    return [
        Comparison(what, "mmserve.client", "raw tritonclient", ours_us, raw_us, ours_cpu, raw_cpu, round_size),
        Comparison(
            what, "mmserve.client", "raw tritonclient with the same deadline", ours_us, dl_us, ours_cpu, dl_cpu, round_size
        ),
    ]


def shared_memory_gain(url: str, calls: int = 200, round_size: int = 20, seed: int = 0) -> list[Comparison]:
    """gRPC vs system shared memory on 1080p JPEGs and 30 s audio clips, batch 1."""
    from mmserve.bench.inputs import photo_jpeg, speech_clips
    from mmserve.client import Client

    rng = np.random.default_rng(seed)
    images = [photo_jpeg(rng, size=(1920, 1080), quality=90) for _ in range(8)]
    clip = speech_clips(1, seed=seed, seconds=30.0)[0]
    grpc = Client(url, timeout=120)
    shm = Client(url, timeout=120, shared_memory="system")
    results = []
    try:
        counter = iter(range(10**9))
        cases: Sequence[tuple[str, Callable[[Client], object]]] = (
            (
                f"image_embed, 1080p JPEG ({np.mean([len(x) for x in images]) / 1e6:.2f} MB)",
                lambda c: c.embed_images(images[next(counter) % len(images)]),
            ),
            (f"audio_classify, 30 s clip at 16 kHz ({clip.nbytes / 1e6:.2f} MB)", lambda c: c.classify_audio(clip, sample_rate=16000)),
        )
        for what, call in cases:
            (grpc_us, grpc_cpu), (shm_us, shm_cpu) = interleaved(
                [lambda: call(grpc), lambda: call(shm)], calls, round_size, warmup=10
            )
            results.append(Comparison(what, "gRPC", "shared memory", grpc_us, shm_us, grpc_cpu, shm_cpu, round_size))
    finally:
        shm.close()
        grpc.close()
    return results


def _pipeline_models(repository: Path, pipelines: Sequence[str]) -> list[str]:
    """The pipelines and the models their ensembles call: a server that starts fast."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    names: list[str] = []
    for pipeline in pipelines:
        path = repository / pipeline / CONFIG_FILE
        config = text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
        for name in (pipeline, *(step.model_name for step in config.ensemble_scheduling.step)):
            if name not in names:
                names.append(name)
    return names


def client_command(repository: Path, url: str | None, calls: int, quick: bool = False, log: Callable[[str], None] = print) -> list[Comparison]:
    """Measure both, on a running server (``url``) or on one started over ``repository``."""
    from mmserve.server import ServerPorts, TritonServer

    if quick:
        calls = min(calls, 300)
    load = os.getloadavg()[0]
    log(f"load average (1 min) at start: {load:.2f}" + ("  -- the machine is busy: figures are noisy" if load >= 2.5 else ""))
    server = None
    if url is None:
        missing = [p for p in PIPELINES if not (repository / p / CONFIG_FILE).exists()]
        if missing:
            raise SystemExit(f"{repository} lacks {', '.join(missing)}; export them or pass --url of a server that has them")
        server = TritonServer(repository, ServerPorts.free(), models=_pipeline_models(repository, PIPELINES)).start()
        url = server.grpc_url
    try:
        comparisons = client_overhead(url, calls=calls)
        for comparison in comparisons:
            log(comparison.line())
        for comparison in shared_memory_gain(url, calls=max(40, calls // 15)):
            comparisons.append(comparison)
            log(comparison.line())
    finally:
        if server is not None:
            server.stop()
    log(f"load average (1 min) at end: {os.getloadavg()[0]:.2f}")
    return comparisons


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmserve.bench.client", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--url", help="gRPC address of a running server (default: start one over --repository)")
    parser.add_argument("--calls", type=int, default=3000, help="calls per side for the overhead figure")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    client_command(args.repository, args.url, args.calls, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
