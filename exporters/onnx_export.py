"""torch -> ONNX with a parity gate: the one `convert` every modality uses.

An export that does not reproduce torch on real inputs is refused with a
`ParityError` before anything reaches a model repository.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from mmserve.exporters.similarity import drift


class ExportError(RuntimeError):
    """The checkpoint could not be exported; the message says what to do."""


class ParityError(ExportError):
    """The ONNX graph disagrees with torch beyond the tolerance: nothing is written."""


@dataclass(frozen=True)
class OnnxSpec:
    """What an exported graph looks like: names and which axes are dynamic."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    opset: int = 17


@dataclass(frozen=True)
class ParityReport:
    max_abs_diff: float
    min_cosine: float
    samples: int
    tolerance: float
    min_cosine_required: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.min_cosine >= self.min_cosine_required

    def __str__(self) -> str:
        return (
            f"max |onnx - torch| = {self.max_abs_diff:.2e} (limit {self.tolerance:.0e}), "
            f"min cosine = {self.min_cosine:.7f} over {self.samples} inputs"
        )


def export_onnx(module, example_inputs: tuple, spec: OnnxSpec, path: Path) -> Path:
    """Trace `module` to ONNX; the TorchScript exporter first (seconds), dynamo if it fails."""
    import torch

    module.eval()  # torch.onnx.export restores the original mode; dropout would break parity
    path.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for dynamo in (False, True):
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module,
                    example_inputs,
                    str(path),
                    input_names=list(spec.input_names),
                    output_names=list(spec.output_names),
                    dynamic_axes=spec.dynamic_axes,
                    opset_version=spec.opset if not dynamo else max(spec.opset, 18),
                    dynamo=dynamo,
                    external_data=False,
                )
            return path
        except Exception as error:  # noqa: BLE001 - try the other exporter, report both
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(error).__name__}: {error}")
    raise ExportError("ONNX export failed with both exporters:\n" + "\n".join(errors))


def check_parity(
    module,
    onnx_path: Path,
    batches: Sequence[dict[str, np.ndarray]],
    output_name: str,
    tolerance: float = 1e-4,
    min_cosine: float = 0.9999,
) -> ParityReport:
    """Run torch and onnxruntime on the same real inputs and compare one output."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    output_index = [o.name for o in session.get_outputs()].index(output_name)
    actual, expected = [], []
    with torch.no_grad():
        for feed in batches:
            outputs = module(*(torch.from_numpy(feed[name]) for name in feed))
            expected.append((outputs[output_index] if isinstance(outputs, (tuple, list)) else outputs).numpy())
            actual.append(session.run([output_name], feed)[0])
    worst_diff, worst_cosine = drift(actual, expected)
    return ParityReport(worst_diff, worst_cosine, sum(len(a) for a in actual), tolerance, min_cosine)


def require_parity(report: ParityReport, what: str) -> ParityReport:
    if not report.passed:
        raise ParityError(
            f"{what}: the ONNX export does not match torch ({report}). Nothing was written. "
            "Check for train-mode layers (dropout), data-dependent control flow or ops the "
            "exporter approximates; report it with the checkpoint if it persists."
        )
    return report
