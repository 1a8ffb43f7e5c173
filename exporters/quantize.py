"""INT8 with onnxruntime dynamic quantization, and what it costs in accuracy.

Per-channel weights: the default per-tensor settings drifted to cosine 0.906 on
MiniLM, per-channel keeps it at ~0.98 (measured; ../shared/notes/ml-stack.md).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np


@dataclass(frozen=True)
class QuantizationReport:
    min_cosine: float
    mean_cosine: float
    fp32_bytes: int
    int8_bytes: int
    fp32_accuracy: float | None = None
    int8_accuracy: float | None = None

    def __str__(self) -> str:
        text = (
            f"cosine to fp32 min {self.min_cosine:.4f} / mean {self.mean_cosine:.4f}, "
            f"size {self.fp32_bytes / 1e6:.1f} -> {self.int8_bytes / 1e6:.1f} MB"
        )
        if self.fp32_accuracy is not None and self.int8_accuracy is not None:
            change = 100 * (self.int8_accuracy - self.fp32_accuracy)
            text += (
                f", dev accuracy {100 * self.fp32_accuracy:.2f}% -> {100 * self.int8_accuracy:.2f}% "
                f"({change:+.2f} points)"
            )
        return text


def quantize_int8(
    onnx_path: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    output_name: str,
    evaluation: Callable[[object], float] | None = None,
) -> tuple[Path, QuantizationReport]:
    """Write model.int8.onnx beside `onnx_path`; compare it with fp32 on `feeds`."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    target = onnx_path.with_name("model.int8.onnx")
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        try:
            quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - pre-processing is an optimisation, not a requirement
            prepared = onnx_path
        quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8, per_channel=True)

    fp32 = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    cosines = []
    for feed in feeds:
        a = fp32.run([output_name], feed)[0].reshape(len(next(iter(feed.values()))), -1).astype(np.float64)
        b = int8.run([output_name], feed)[0].reshape(a.shape).astype(np.float64)
        cosines.extend((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12))
    report = QuantizationReport(
        min_cosine=float(np.min(cosines)),
        mean_cosine=float(np.mean(cosines)),
        fp32_bytes=onnx_path.stat().st_size,
        int8_bytes=target.stat().st_size,
        fp32_accuracy=evaluation(fp32) if evaluation else None,
        int8_accuracy=evaluation(int8) if evaluation else None,
    )
    return target, report
