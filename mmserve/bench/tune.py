"""The tuning sweep: scheduling variants of one pipeline, each on a fresh server.

A variant is a copy of the pipeline's models (weights linked, not copied)
whose config.pbtxt differs in one respect: the encoder's dynamic-batching
delay or preferred sizes, its instance count, onnxruntime intra-op threads,
the tokenizer's batching delay, or the INT8 encoder. Variants are measured in
interleaved rounds (A B C ... A B C ...) so slow drift of a shared machine hits
all of them alike; the median of the rounds is reported.
"""
from __future__ import annotations

import shutil
import statistics
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from mmserve.bench.inprocess import InProcessPipeline
from mmserve.bench.inputs import Request, perf_json, stack
from mmserve.bench.perf import BenchError, Load, run_level
from mmserve.exporters.quantize import INT8_FILE, quantize_int8
from mmserve.exporters.triton_config import print_config, read_config
from mmserve.exporters.versions import CONFIG_FILE
from mmserve.kinds import InputShape
from mmserve.repository_layout import OnnxStepParameters
from mmserve.pipelines import PIPELINES, Kind

LATENCY_SLACK = 1.10  # a variant may cost up to 10% of c=1 p50 against the best c=1 p50


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    encoder: dict[str, Any] = field(default_factory=dict)  # delay_us, preferred, instances, threads, int8
    preprocess: dict[str, Any] = field(default_factory=dict)  # the first Python step (tokenizer, decoder): delay_us, instances


VARIANTS = (
    Variant("exported", "as `mmserve export` writes it today"),
    Variant("enc-delay-0", "encoder max_queue_delay 0 µs", {"delay_us": 0}),
    Variant("enc-delay-500", "encoder max_queue_delay 500 µs", {"delay_us": 500}),
    Variant("enc-delay-2000", "encoder max_queue_delay 2000 µs", {"delay_us": 2000}),
    Variant("enc-pref-4-8", "encoder preferred_batch_size [4, 8], delay 2000 µs", {"delay_us": 2000, "preferred": [4, 8]}),
    Variant("enc-1-thread", "encoder intra_op_threads 1 (1 instance)", {"threads": 1}),
    Variant("enc-2-instances", "encoder 2 instances × 1 intra-op thread", {"instances": 2, "threads": 1}),
    Variant("enc-2-instances-2-threads", "encoder 2 instances × 2 intra-op threads", {"instances": 2, "threads": 2}),
    Variant("enc-spinning", "encoder onnxruntime threads spin while waiting for work", {"spinning": True}),
    Variant("enc-2-instances-delay-0", "encoder 2 instances × 1 thread, delay 0 µs",
            {"instances": 2, "threads": 1, "delay_us": 0}),
    Variant("enc-pref-8-delay-1000", "encoder preferred_batch_size [8], delay 1000 µs",
            {"delay_us": 1000, "preferred": [8]}),
    Variant("pre-delay-500", "pre-processing max_queue_delay 500 µs", preprocess={"delay_us": 500}),
    Variant("pre-2-instances", "pre-processing 2 instances", preprocess={"instances": 2}),
    Variant("enc-int8", "INT8 encoder (dynamic, per-channel)", {"int8": True}),
)


# For pipelines whose pre-processing is heavy Python work (JPEG decode, resampling + log-mel).
DECODER_VARIANTS = (
    Variant("exported", "as `mmserve export` writes it today"),
    Variant("pre-1-instance", "pre-processing 1 instance", preprocess={"instances": 1}),
    Variant("pre-3-instances", "pre-processing 3 instances", preprocess={"instances": 3}),
    Variant("enc-2-instances", "encoder 2 instances × 1 intra-op thread", {"instances": 2, "threads": 1}),
)

# What `mmserve bench --tune` sweeps, per input shape of the kind table: the first pipeline
# measured of that shape (text_embed, image_embed, audio_classify when all are served).
# tests/test_kind_table.py checks every shape is swept or listed in NOT_SWEPT.
SWEEPS = {InputShape.TEXT: VARIANTS, InputShape.IMAGE: DECODER_VARIANTS, InputShape.AUDIO: DECODER_VARIANTS}
NOT_SWEPT = frozenset({InputShape.IMAGE_AND_LABELS})  # the image_embed sweep covers its decoding


def _rewrite(folder: Path, changes: dict[str, Any], int8_file: str | None = None) -> None:
    config = read_config(folder / CONFIG_FILE)
    if config is None:
        raise BenchError(f"{folder} has no config.pbtxt Triton could read")
    if "delay_us" in changes:
        config.dynamic_batching.max_queue_delay_microseconds = int(changes["delay_us"])
    if "preferred" in changes:
        del config.dynamic_batching.preferred_batch_size[:]
        config.dynamic_batching.preferred_batch_size.extend(changes["preferred"])
    if "instances" in changes:
        config.instance_group[0].count = int(changes["instances"])
    step = OnnxStepParameters.read(config)
    if "threads" in changes:
        step = replace(step, intra_op_threads=int(changes["threads"]))
    if "spinning" in changes:
        step = replace(step, allow_spinning=bool(changes["spinning"]))
    if int8_file:
        step = replace(step, onnx_file=int8_file)
    if "threads" in changes or "spinning" in changes or int8_file:
        step.write(config)
    (folder / CONFIG_FILE).write_text(print_config(config))


def _link_model(source: Path, target: Path) -> None:
    """A model folder whose files are links to the original's, config.pbtxt a copy (to rewrite)."""
    for path in source.rglob("*"):
        relative = path.relative_to(source)
        if path.is_dir():
            (target / relative).mkdir(parents=True, exist_ok=True)
        elif relative.name == CONFIG_FILE:
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / relative)
        else:
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            (target / relative).symlink_to(path.resolve())


def variant_repository(repository: Path, pipeline: InProcessPipeline, variant: Variant, target: Path,
                       int8: dict[str, Path]) -> Path:
    for step in pipeline.steps:
        _link_model(repository / step.model_name, target / step.model_name)
    _link_model(repository / pipeline.pipeline, target / pipeline.pipeline)
    encoders = pipeline.encoder_steps()
    others = [s.model_name for s in pipeline.steps if s.model_name not in encoders]
    for encoder in encoders:
        int8_file = None
        if variant.encoder.get("int8"):  # beside the served version's fp32 graph
            served = target / encoder / pipeline.onnx_path(encoder).parent.name
            (served / INT8_FILE).unlink(missing_ok=True)
            (served / INT8_FILE).symlink_to(int8[encoder].resolve())
            int8_file = INT8_FILE
        _rewrite(target / encoder, {k: v for k, v in variant.encoder.items() if k != "int8"}, int8_file)
    for model in others[:1]:  # the pre-processing step (tokenizer, image or audio decoder)
        if variant.preprocess:
            _rewrite(target / model, variant.preprocess)
    return target


def _int8_models(pipeline: InProcessPipeline, requests: Sequence[Request], workdir: Path) -> dict[str, Path]:
    """Each encoder's served graph quantized as `mmserve export --int8` would, fed real requests."""
    made = {}
    for encoder in pipeline.encoder_steps():
        feeds = []
        for start in range(0, 32, 8):
            pipeline(stack([requests[(start + k) % len(requests)] for k in range(8)]))
            feeds.append(dict(pipeline.captured[encoder]))
        output = pipeline.models[encoder].runner.output_names[0]
        target = workdir / "int8" / encoder / INT8_FILE
        made[encoder], _ = quantize_int8(pipeline.onnx_path(encoder), feeds, output, target=target)
    return made


def tune_pipeline(repository: Path, name: str, kind: Kind, requests: Sequence[Request], config, out: Path,
                  log: Callable[[str], None] = print, variants: Sequence[Variant] = VARIANTS,
                  rounds: int | None = None, loads: Sequence[int] = (1, 8)) -> dict[str, Any]:
    from mmserve.server import ServerPorts, TritonServer

    rounds = rounds or (1 if config.quick else 2)
    pipeline = InProcessPipeline(repository, name)
    int8 = _int8_models(pipeline, requests, out) if any(v.encoder.get("int8") for v in variants) else {}
    data = perf_json(requests, PIPELINES[kind], out / "raw" / f"{name}.input.json")
    measured: dict[str, dict[int, list[dict]]] = {v.name: {c: [] for c in loads} for v in variants}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="mmserve-tune-", dir=out) as scratch:
        for round_index in range(rounds):
            for variant in variants:
                log(f"tuning round {round_index + 1}/{rounds}: {variant.name}")
                repo = variant_repository(repository, pipeline, variant, Path(scratch) / f"{variant.name}-{round_index}", int8)
                try:
                    with TritonServer(repo, ServerPorts.free(), log_file=out / "raw" / "tune" / f"{variant.name}.log") as server:
                        for c in loads:
                            row = run_level(server.grpc_url, name, data, Load("concurrency", c), config.settings,
                                            out / "raw" / "tune", label=f"tune-{variant.name}-r{round_index}")
                            measured[variant.name][c].append(row.as_dict())
                except RuntimeError as error:  # BenchError, or the server's ServerError
                    errors[variant.name] = str(error)
    results = []
    for variant in variants:
        entry: dict[str, Any] = {"name": variant.name, "description": variant.description}
        for c in loads:
            rows = measured[variant.name][c]
            if rows:
                entry[f"c{c}"] = {key: statistics.median(r[key] for r in rows) for key in ("throughput", "p50_us", "p99_us")}
                entry[f"c{c}_rounds"] = [r["throughput"] for r in rows]
        if variant.name in errors:
            entry["error"] = errors[variant.name]
        results.append(entry)
    candidates = [v for v in results if "c1" in v and "c8" in v and v["name"] != "enc-int8"]
    chosen = None
    if candidates:
        best_p50 = min(v["c1"]["p50_us"] for v in candidates)
        allowed = [v for v in candidates if v["c1"]["p50_us"] <= LATENCY_SLACK * best_p50]
        chosen = max(allowed, key=lambda v: v["c8"]["throughput"])["name"]
    return {
        "pipeline": name, "rounds": rounds, "variants": results, "chosen": chosen,
        "rule": f"highest c=8 throughput among fp32 variants whose c=1 p50 is within {LATENCY_SLACK:.2f}× of the best",
    }
