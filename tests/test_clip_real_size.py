"""The real architecture users bring: ViT-B-32 with --pretrained FILE, trained and exported.

No CLIP weights are reachable offline, so the "pretrained" file holds a randomly
initialised ViT-B-32 saved the way open_clip publishes weights. Minutes on a CPU:
run with MMSERVE_SLOW=1 (not part of `make test`); it prints export time and sizes.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("MMSERVE_SLOW") != "1", reason="real-size ViT-B-32 takes minutes: MMSERVE_SLOW=1"),
]


def test_vit_b_32_fine_tunes_from_a_weights_file_and_exports(tmp_path: Path):
    import open_clip
    import torch

    from mmserve.exporters.clip import export_clip
    from mmserve.training.clip import ClipTrainConfig, train_clip
    from mmserve.training.clip_shapes import write_dataset

    weights = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(open_clip.create_model("ViT-B-32").state_dict(), weights)
    data = write_dataset(tmp_path / "shapes", n_train=16, n_val=8, n_test=8, n_unseen=8)
    started = time.perf_counter()
    train_clip(ClipTrainConfig(
        arch="ViT-B-32", pretrained=str(weights), data=str(data.train), val_data=str(data.val),
        classes=str(data.classes), out=str(tmp_path / "ckpt"), epochs=1, batch_size=8, lora=True,
    ))
    trained = time.perf_counter() - started
    result = export_clip(tmp_path / "ckpt", tmp_path / "repo")
    print(f"\nViT-B-32: LoRA epoch (16 pairs) {trained:.0f} s\n{result.summary()}")
    image, text = result.graphs["image_tower"], result.graphs["text_tower"]
    assert image.output_dims == text.output_dims == (512,)
    assert image.parity.passed and text.parity.passed
    assert image.onnx_bytes > 300e6 and text.onnx_bytes > 200e6
