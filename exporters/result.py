"""What exporting one encoder pipeline hands back: text and speech print the same summary."""
from __future__ import annotations

from dataclasses import dataclass

from mmserve.exporters.onnx_export import ParityReport
from mmserve.exporters.quantize import QuantizationReport


@dataclass(frozen=True)
class EncoderExportResult:
    pipeline: str
    task: str
    models: tuple[str, ...]
    parity: ParityReport
    quantization: QuantizationReport | None
    onnx_bytes: int
    seconds: float
    family: str | None = None  # speech: whisper or waveform
    version: int | None = None  # the product version written (exporters/versions.py)

    def summary(self) -> str:
        what = f"{self.task}, {self.family}" if self.family else self.task
        lines = [
            f"pipeline {self.pipeline} ({what}) version {self.version}: models {', '.join(self.models)}",
            f"  parity fp32: {self.parity}",
            f"  encoder ONNX {self.onnx_bytes / 1e6:.1f} MB, export {self.seconds:.1f} s",
        ]
        if self.quantization:
            lines.append(f"  int8: {self.quantization}")
        return "\n".join(lines)
