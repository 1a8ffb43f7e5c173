"""Real-size encoders through export -> serve -> answer (issue 23): ViT-B-32 (the CLIP trio),
BERT-base (text_embed) and Whisper-base's encoder (audio_embed), random weights of the real
architectures, exported with the cpu profile's defaults and served by one tritonserver.

Checks what the quick tests (tests/test_real_size_sharing.py) cannot at small size: the
pipelines answer with the real widths, a real-size encoder's pipeline runs one instance,
the repository holds each tower once on disk, and the whole server maps each encoder's
weights once (the PSS of the shared weight files is one copy, not one per stub).
Minutes on a CPU: run with MMSERVE_SLOW=1 (not part of `make test`).
"""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("MMSERVE_SLOW") != "1", reason="real-size encoders take minutes: MMSERVE_SLOW=1"),
]


@pytest.fixture(scope="module")
def real_size(tmp_path_factory):
    """The three products exported; their prepared weights (random, never used again) in a
    cache of this module's own, removed at the end."""
    from mmserve.bench.realsize import export_all

    work = tmp_path_factory.mktemp("real-size")
    previous = os.environ.get("MMSERVE_ORT_CACHE")
    os.environ["MMSERVE_ORT_CACHE"] = str(work / "ort-cache")
    try:
        export_all(work, work / "repository", "real", log=print)
        yield work / "repository"
    finally:
        if previous is None:
            os.environ.pop("MMSERVE_ORT_CACHE", None)
        else:
            os.environ["MMSERVE_ORT_CACHE"] = previous
        shutil.rmtree(work / "ort-cache", ignore_errors=True)


@pytest.fixture(scope="module")
def served(real_size: Path, tmp_path_factory):
    from mmserve.server import ServerPorts, TritonServer

    with TritonServer(real_size, ServerPorts.free(), log_file=tmp_path_factory.mktemp("logs") / "triton.log") as server:
        yield server


def _jpeg() -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_real_size_pipelines_answer_with_their_widths(served):
    from mmserve.client import Client

    with Client(served.grpc_url, timeout=120.0) as client:
        image = client.embed_images(_jpeg())
        clip_text = client.embed_clip_texts("a photo of a dog")
        zero_shot = client.zero_shot(_jpeg(), ["dog", "cat"])
        text = client.embed_text(["a sentence of a dozen words or so to embed with a BERT-base encoder"])
        audio = client.embed_audio(np.zeros(16000, np.float32), 16000)
    assert image.shape == (512,) and clip_text.shape == (512,)  # ViT-B-32's shared space
    assert abs(float(np.linalg.norm(image)) - 1.0) < 1e-3
    assert zero_shot.label in ("dog", "cat")
    assert text.shape == (1, 768)  # BERT-base
    assert audio.shape == (512,)  # Whisper-base's width


def test_real_size_encoders_run_one_instance_and_one_copy(real_size: Path, served):
    from mmserve.bench.realsize import onnx_copies, server_memory, weight_bytes
    from mmserve.exporters.triton_config import read_config
    from mmserve.serving.shared_weights import cache_root

    for pipeline in ("image_embed", "audio_embed", "zero_shot_image", "text_embed"):
        config = read_config(real_size / pipeline / "config.pbtxt")
        assert config is not None and sum(g.count for g in config.instance_group) == 1, pipeline
    disk = onnx_copies(real_size)
    assert disk["files"] < disk["paths"]  # the towers are linked, not copied, into each pipeline
    memory = server_memory(served.pid, cache_root())
    weights_mib = weight_bytes(real_size) / 2**20
    print(f"\nweights {weights_mib:.0f} MiB on disk ({disk}); server {memory}")
    # every stub maps the same prepared files: their PSS is about one copy of the weights
    assert memory["weights_pss_mib"] <= 1.1 * weights_mib
    assert memory["pss_mib"] < 2.0 * weights_mib + 200 * memory["processes"]
