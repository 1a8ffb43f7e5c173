"""Shared-memory transport (``shared_memory="system"``) against the real server: the same
answers as gRPC, one region per request at a time under concurrency, payloads beyond
gRPC's message limits, regions reused and grown, and nothing left behind on close or
at interpreter exit."""
from __future__ import annotations

import asyncio
import glob
import io
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from mmserve.client import AsyncClient, Classification, Client, InvalidInputError, MmserveError, ZeroShotResult

from layouts import both_layouts  # noqa: E402

server, triton = both_layouts()  # every test here runs against both cpu layouts

GRPC_DEFAULT_LIMIT = 4 * 1024 * 1024  # gRPC's own default message limit (tritonclient raises it to 2 GiB)


def photo(width: int, height: int, seed: int, noise: float = 12.0) -> bytes:
    """A JPEG with gradients, blocks and sensor-like noise (compresses like a photo)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=-1)
    for _ in range(12):
        x0, y0 = rng.integers(0, width - 1), rng.integers(0, height - 1)
        image[y0 : y0 + height // 5, x0 : x0 + width // 6] = rng.integers(0, 255, 3)
    image += rng.normal(0, noise, image.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def tone(rate: int, seconds: float, hz: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.4 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def same(a: object, b: object) -> bool:
    """Equal results, allowing float rounding of a different dynamic batch."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, Classification) and isinstance(b, Classification):
        return a.label == b.label and np.allclose(a.probs, b.probs, atol=1e-5)
    if isinstance(a, ZeroShotResult) and isinstance(b, ZeroShotResult):
        return a.labels == b.labels and np.allclose(a.probs, b.probs, atol=1e-5)
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.shape == b.shape and np.allclose(a, b, atol=1e-5)
    return a == b


def our_regions(triton) -> dict[str, int]:
    """Regions this test process has registered on the server: name -> size."""
    status = triton.get_system_shared_memory_status()
    prefix = f"mmserve_{os.getpid()}_"
    return {name: region.byte_size for name, region in status.regions.items() if name.startswith(prefix)}


def our_files() -> set[str]:
    return set(glob.glob(f"/dev/shm/mmserve_{os.getpid()}_*"))


@pytest.fixture(scope="module")
def calls():
    """The same calls for both transports: (name, function of a client)."""
    texts = [f"where is parcel {i}?" for i in range(150)]  # three requests, sent in parallel
    images = [photo(320, 240, seed) for seed in range(5)]
    clips = [tone(16000, 0.5 + 0.25 * i, 300 + 50 * i) for i in range(4)]  # different lengths: one request each
    return [
        ("classify one", lambda c: c.classify_text("cancel my order")),
        ("classify 150", lambda c: c.classify_text(texts)),
        ("embed text", lambda c: c.embed_text(texts[:7])),
        ("entities (BYTES out)", lambda c: c.extract_entities(["Angela Merkel visited Paris.", "nothing"])),
        ("images", lambda c: c.embed_images(images)),
        ("zero-shot (PROBS [-1])", lambda c: c.zero_shot(images[:2], ["a red thing", "a blue thing", "text"])),
        ("audio clips", lambda c: c.classify_audio(clips, sample_rate=16000)),
        ("audio embed", lambda c: c.embed_audio(clips[0], sample_rate=16000)),
    ]


def test_results_equal_the_grpc_path(server, calls):
    with Client(server.grpc_url, timeout=60) as grpc, Client(server.grpc_url, timeout=60, shared_memory="system") as shm:
        for name, call in calls:
            assert same(call(shm), call(grpc)), name


def test_async_results_equal_the_grpc_path(server, calls):
    with Client(server.grpc_url, timeout=60) as grpc:
        expected = [call(grpc) for _, call in calls]

    async def run() -> list:
        async with AsyncClient(server.grpc_url, timeout=60, shared_memory="system") as shm:
            return [await call(shm) for _, call in calls]

    for (name, _), got, want in zip(calls, asyncio.run(run()), expected):
        assert same(got, want), name


def test_concurrent_requests_never_share_a_region(server, triton):
    """Threads and tasks with payloads of different sizes: each answer is its own."""
    jobs = [("text", f"order {i} is missing" * (1 + i % 5)) for i in range(12)]
    jobs += [("image", photo(160 + 40 * i, 120 + 30 * i, 100 + i)) for i in range(6)]
    jobs += [("audio", tone(16000, 0.3 + 0.2 * i, 200 + 40 * i)) for i in range(6)]

    def send(client: Client, job: tuple[str, object]) -> object:
        kind, payload = job
        if kind == "text":
            return client.classify_text(payload)
        if kind == "image":
            return client.embed_images(payload)
        return client.classify_audio(payload, sample_rate=16000)

    with Client(server.grpc_url, timeout=60) as grpc:
        expected = [send(grpc, job) for job in jobs]
    threads_n, rounds = 6, 3
    others = our_regions(triton)  # clients of earlier tests in this process that are still open
    with Client(server.grpc_url, timeout=60, shared_memory="system") as shm:
        failures: list[str] = []
        peak: list[int] = []

        def worker(k: int) -> None:
            for r in range(rounds):
                for i in range(k, len(jobs), threads_n) if r % 2 else range(len(jobs) - 1 - k, -1, -threads_n):
                    try:
                        if not same(send(shm, jobs[i]), expected[i]):
                            failures.append(f"job {i} got another answer")
                    except Exception as exc:  # noqa: BLE001
                        failures.append(f"job {i}: {exc!r}")
            peak.append(len(set(our_regions(triton)) - set(others)))

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not failures, failures[:3]
        # registered once and reused: about one region per request in flight, not per call
        # (3 x 24 calls here). "About": a thread that needs a bigger region retires the smallest
        # free one, which may be the one another thread just gave back; that thread then finds
        # none free and adds one. Each such race adds one region while sizes settle (seen: 7
        # for 6 threads, with the fused layout's quicker answers).
        assert 1 <= max(peak) <= threads_n + 2

    async def tasks() -> list:
        async with AsyncClient(server.grpc_url, timeout=60, shared_memory="system") as client:
            return await asyncio.gather(*(
                client.classify_text(p) if k == "text" else client.embed_images(p) if k == "image"
                else client.classify_audio(p, sample_rate=16000)
                for k, p in jobs
            ))

    assert all(same(got, want) for got, want in zip(asyncio.run(tasks()), expected))
    assert our_regions(triton) == {} and our_files() == set()


def test_payloads_beyond_the_grpc_message_limit(server):
    clip_48k_30s = tone(48000, 30.0, 440.0)  # 5.76 MB of float32: more than gRPC's 4 MiB
    noisy = [photo(1920, 1080, seed, noise=60.0) for seed in range(3)]
    assert clip_48k_30s.nbytes > GRPC_DEFAULT_LIMIT and sum(map(len, noisy)) > GRPC_DEFAULT_LIMIT
    with Client(server.grpc_url, timeout=120) as unlimited:
        expected_audio = unlimited.classify_audio(clip_48k_30s, sample_rate=48000)
        expected_images = unlimited.embed_images(noisy)
        expected_embeddings = unlimited.embed_text([f"text {i}" for i in range(64)])
    limits = dict(max_send_message_size=GRPC_DEFAULT_LIMIT, max_receive_message_size=GRPC_DEFAULT_LIMIT)
    with Client(server.grpc_url, timeout=120, **limits) as limited:
        with pytest.raises(InvalidInputError, match=r"larger than max.*shared_memory='system'"):
            limited.classify_audio(clip_48k_30s, sample_rate=48000)
        with pytest.raises(InvalidInputError):
            limited.embed_images(noisy)
    with Client(server.grpc_url, timeout=120, shared_memory="system", **limits) as shm:
        assert same(shm.classify_audio(clip_48k_30s, sample_rate=48000), expected_audio)
        assert same(shm.embed_images(noisy), expected_images)
    # outputs come back through shared memory too: a receive limit smaller than the answer
    with Client(server.grpc_url, timeout=60, max_receive_message_size=2048) as tiny_receive:
        with pytest.raises(InvalidInputError, match="larger than max"):
            tiny_receive.embed_text([f"text {i}" for i in range(64)])
    with Client(server.grpc_url, timeout=60, shared_memory="system", max_receive_message_size=2048) as shm:
        assert same(shm.embed_text([f"text {i}" for i in range(64)]), expected_embeddings)


def test_regions_are_reused_grown_and_cleaned_up_on_close(server, triton):
    before = our_files()
    others = our_regions(triton)  # clients of earlier tests in this process that are still open

    def mine() -> dict[str, int]:
        return {name: size for name, size in our_regions(triton).items() if name not in others}

    client = Client(server.grpc_url, timeout=60, shared_memory="system")
    client.classify_text("hello")
    first = mine()
    assert len(first) == 1
    client.classify_text(["hello", "again"])
    assert mine() == first  # reused: no new registration
    big = photo(1920, 1080, 7, noise=60.0)
    client.embed_images(big)
    grown = mine()
    assert len(grown) == 1 and grown.keys() != first.keys()  # replaced, not added
    assert next(iter(grown.values())) >= len(big) > next(iter(first.values()))
    assert len(our_files() - before) == 1
    client.close()
    assert mine() == {} and our_files() == before

    async def async_close() -> None:
        client = AsyncClient(server.grpc_url, timeout=60, shared_memory="system")
        await client.classify_text("hello")
        assert len(mine()) == 1
        await client.close()

    asyncio.run(async_close())
    assert mine() == {} and our_files() == before


@pytest.mark.parametrize("ending", ["exit without close", "client dropped", "asyncio, exit without close"])
def test_regions_are_cleaned_up_at_interpreter_exit(server, triton, ending):
    body = {
        "exit without close": "c = Client(URL, shared_memory='system'); c.classify_text('hi')",
        "client dropped": "c = Client(URL, shared_memory='system'); c.classify_text('hi'); del c; gc.collect()",
        "asyncio, exit without close": (
            "async def main():\n    c = AsyncClient(URL, shared_memory='system'); await c.classify_text('hi')\n"
            "asyncio.run(main())"
        ),
    }[ending]
    code = (
        "import asyncio, gc, glob, os\n"
        "from mmserve.client import AsyncClient, Client\n"
        f"URL = {server.grpc_url!r}\n{body}\n"
        "print(os.getpid(), flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pid = done.stdout.split()[-1]
    status = triton.get_system_shared_memory_status()
    assert not [name for name in status.regions if name.startswith(f"mmserve_{pid}_")]
    assert not glob.glob(f"/dev/shm/mmserve_{pid}_*")
    assert "leaked" not in done.stderr  # the resource tracker had nothing to clean up


def test_bad_shared_memory_option_is_refused():
    with pytest.raises(InvalidInputError, match="'none', 'system' or 'cuda'"):
        Client("127.0.0.1:1", shared_memory="gpu")  # type: ignore[arg-type]


# ---- CUDA shared memory (shared_memory="cuda") ------------------------------------------------


def _cuda_unusable() -> str | None:
    """Why this process cannot use CUDA shared memory, or None when it can."""
    from mmserve.client._shm import cuda_shared_memory

    try:
        cuda_shared_memory()
    except MmserveError as error:
        return str(error)
    return None


CUDA_UNUSABLE = _cuda_unusable()


@pytest.mark.skipif(CUDA_UNUSABLE is None, reason="CUDA shared memory is usable here: the refusal cannot be seen")
def test_cuda_shared_memory_without_a_usable_gpu_is_refused_when_the_client_is_made():
    for make in (lambda: Client("127.0.0.1:1", shared_memory="cuda"), lambda: AsyncClient("127.0.0.1:1", shared_memory="cuda")):
        with pytest.raises(MmserveError) as refused:
            make()
        message = str(refused.value)
        assert "CUDA" in message and "(" in message  # what is missing, with the underlying reason
        assert "shared_memory='system'" in message  # and what to use instead


@pytest.mark.skipif(CUDA_UNUSABLE is not None, reason=f"no CUDA device: {CUDA_UNUSABLE}")
def test_cuda_results_equal_the_grpc_path(server, triton, calls):
    def ours() -> list[str]:
        status = triton.get_cuda_shared_memory_status()
        return [name for name in status.regions if name.startswith(f"mmserve_{os.getpid()}_")]

    with Client(server.grpc_url, timeout=60) as grpc, Client(server.grpc_url, timeout=60, shared_memory="cuda") as cuda:
        for name, call in calls:
            assert same(call(cuda), call(grpc)), name
        assert ours(), "the CUDA client registered no region"
    assert not ours()  # close() unregistered them
