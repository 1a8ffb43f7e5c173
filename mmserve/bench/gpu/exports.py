"""The exports the check runs: the user's own `mmserve export` commands, in child processes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from mmserve.bench.gpu.config import GpuCheckConfig
from mmserve.repository_layout import Layout


def run_cli(args: Sequence[str], log: Path) -> None:
    """`mmserve ARGS` in a child process, its output kept in LOG; a failure names the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as f:
        f.write("$ mmserve " + " ".join(args) + "\n")
        f.flush()
        code = subprocess.run([sys.executable, "-m", "mmserve.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                              check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"}).returncode
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
        raise RuntimeError(f"`mmserve {' '.join(args[:2])}` exited {code}: {' '.join(tail)} (full log: {log})")


def clip_checkpoint(config: GpuCheckConfig, log: Path) -> Path:
    """A CLIP checkpoint of the real architecture (random weights are fine for timing): one short epoch."""
    if config.clip_checkpoint is not None:
        return config.clip_checkpoint
    from mmserve.training.clip_shapes import write_dataset

    out = config.workdir / "checkpoints" / f"clip-{Path(config.clip_arch).stem}"
    if (out / "open_clip_config.json").is_file():
        return out
    data = write_dataset(config.workdir / "shapes", n_train=16, n_val=8, n_test=8, n_unseen=8)
    run_cli(["train", "clip", "--arch", config.clip_arch, "--data", str(data.train), "--val-data", str(data.val),
             "--classes", str(data.classes), "--out", str(out), "--epochs", "1", "--batch-size", "8"], log)
    return out


def export_command(product: str, config: GpuCheckConfig, log: Path, layout: str = Layout.FUSED.value) -> list[str]:
    """`mmserve export` of PRODUCT's default model for the GPU, fused: onnxruntime's GPU providers
    inside the Python backend, which the pip-bundled Triton serves."""
    target = ["--repository", str(config.repository), "--profile", "gpu", "--layout", layout]
    if product == "text":
        from mmserve.training.defaults import default_text_base

        return ["export", "text", str(config.text_base or default_text_base()), *target]
    if product == "speech":
        from mmserve.training.speech_whisper import default_speech_base

        return ["export", "speech", str(config.speech_base or default_speech_base()), "--task", "embed", *target]
    if product == "clip":
        return ["export", "clip", str(clip_checkpoint(config, log)), *target]
    raise ValueError(f"unknown product {product!r}")
