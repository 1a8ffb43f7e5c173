"""`--fp16`: the exported graph in half precision, with onnxruntime's own converter, and
what it costs against fp32.

`onnxruntime.transformers.float16.convert_float_to_float16` with `keep_io_types=True`:
weights and activations become FP16 while the graph's inputs and outputs stay as the
contract states them (FP32 embeddings, int64 token ids), so configs, ensembles and clients
are unchanged.

FP16 is for the gpu profile only. On this project's CPU machine (x86, onnxruntime 1.32)
onnxruntime's CPU provider crashed with a segmentation fault creating a session at its
default optimisation level (ORT_ENABLE_ALL, what the cpu profile's runner uses) for a
converted transformer graph; at ORT_ENABLE_BASIC it runs. So the parity figures are
computed at that level in a child process: a crash of the CPU provider becomes a reason
in the report instead of the end of the export.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from mmserve.exporters.similarity import drift, row_cosines
from mmserve.repository_layout import ONNX_FILE

FP16_FILE = "model.fp16.onnx"  # beside the fp32 graph; the served file with --fp16

CPU_PROFILE_REFUSAL = (
    "--fp16 is for --profile gpu: onnxruntime's CPU provider (the cpu profile's runner) crashed with a "
    "segmentation fault creating its default session for FP16 graphs here (onnxruntime 1.32, x86), and "
    "CPUs gain nothing from FP16; on CPU use --int8 instead"
)


@dataclass(frozen=True)
class Fp16Report:
    """FP16 against FP32 on the parity feeds (None figures: not computed, `skipped` says why)."""

    max_abs_diff: float | None
    min_cosine: float | None
    mean_cosine: float | None
    samples: int
    fp32_bytes: int
    fp16_bytes: int
    skipped: str | None = None

    def __str__(self) -> str:
        size = f"size {self.fp32_bytes / 1e6:.1f} -> {self.fp16_bytes / 1e6:.1f} MB"
        if self.skipped:
            return f"parity not computed ({self.skipped}); {size}"
        return (
            f"max |fp16 - fp32| = {self.max_abs_diff:.2e}, cosine to fp32 min {self.min_cosine:.5f} / "
            f"mean {self.mean_cosine:.5f} over {self.samples} inputs, {size}"
        )


def convert_fp16(onnx_path: Path, target: Path | None = None) -> Path:
    """Write the FP16 graph (contract-typed inputs/outputs kept) to `target`, default FP16_FILE beside `onnx_path`."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    target = target or Path(onnx_path).with_name(FP16_FILE)
    target.parent.mkdir(parents=True, exist_ok=True)
    model = convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    onnx.save(model, str(target))
    return target


def fp32_graph(onnx_path: Path) -> Path:
    """The FP32 graph an FP16 one was converted from (`convert_fp16` writes FP16_FILE beside
    model.onnx), else the graph itself. What runs on onnxruntime's CPU provider must be this
    one: the CPU provider crashed creating ORT_ENABLE_ALL sessions for FP16 graphs (see above)."""
    onnx_path = Path(onnx_path)
    source = onnx_path.with_name(ONNX_FILE)
    return source if onnx_path.name == FP16_FILE and source.is_file() else onnx_path


def fp16_report(fp32_path: Path, fp16_path: Path, feeds: Sequence[Mapping[str, np.ndarray]], output: str) -> Fp16Report:
    """Max abs difference and row cosines of `output`, FP16 against FP32, on `feeds`.

    Run in a child process (see the module's docstring); a crash or a missing CPU kernel
    is reported as the reason parity was skipped.
    """
    sizes = {"fp32_bytes": Path(fp32_path).stat().st_size, "fp16_bytes": Path(fp16_path).stat().st_size}
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            pairs = pool.submit(_run_both, str(fp32_path), str(fp16_path), [dict(f) for f in feeds], output).result()
    except BrokenProcessPool:
        return Fp16Report(None, None, None, 0, **sizes, skipped=(
            "onnxruntime's CPU provider crashed running the FP16 graph; compare on the GPU (scripts/gpu_check.sh)"))
    except Exception as error:  # noqa: BLE001 - e.g. NOT_IMPLEMENTED: no CPU kernel for an FP16 op
        return Fp16Report(None, None, None, 0, **sizes, skipped=(
            f"onnxruntime CPU cannot run the FP16 graph: {type(error).__name__}: {str(error)[:200]}"))
    fp32, fp16 = [p[0] for p in pairs], [p[1] for p in pairs]
    worst_diff, worst_cosine = drift(fp16, fp32)
    cosines = np.concatenate([row_cosines(a, b) for a, b in zip(fp16, fp32)])
    return Fp16Report(worst_diff, worst_cosine, float(np.mean(cosines)), sum(len(a) for a in fp16), **sizes)


def _run_both(fp32_path: str, fp16_path: str, feeds: list[dict[str, np.ndarray]], output: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fp32, fp16) outputs per feed; runs in the child process."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    fp32 = ort.InferenceSession(fp32_path, providers=["CPUExecutionProvider"])
    fp16 = ort.InferenceSession(fp16_path, options, providers=["CPUExecutionProvider"])
    return [(fp32.run([output], feed)[0], fp16.run([output], feed)[0].astype(np.float32)) for feed in feeds]
