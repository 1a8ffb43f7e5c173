"""The GPU check's sequence, within its budget: exports, in-process encoders, served pipelines,
the export-time engine path. Each step is reported as it ends; one failing leaves the others."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from mmserve.bench.gpu.config import (
    EXIT_FAILED,
    EXIT_TARGET_MISSED,
    PRODUCTS,
    RUNTIME_ORT_CPU,
    RUNTIME_ORT_CUDA,
    RUNTIME_ORT_TRT,
    RUNTIME_TRT,
    SERVED,
    GpuCheckConfig,
)
from mmserve.bench.gpu.device import detect_gpu, driver_version, library_versions
from mmserve.bench.gpu.exports import export_command, run_cli
from mmserve.bench.gpu.report import Measurement, Report
from mmserve.bench.gpu.runner import encoder_step, preprocess
from mmserve.bench.gpu.runtimes import TensorRtEncoder, engine_profile, ort_session, served_provider_options, timed
from mmserve.pipelines import MAX_BATCH_SIZE
from mmserve.serving.runtime import PROVIDERS_OVERRIDE
from mmserve.repository_layout import PROVIDER_OPTIONS_PARAMETER, PROVIDERS_PARAMETER, Layout

DRY_RUN_BATCHES = (1, 4)


class Budget:
    def __init__(self, seconds: float) -> None:
        self.seconds, self.deadline = seconds, time.monotonic() + seconds

    @property
    def left(self) -> float:
        return self.deadline - time.monotonic()


def _step(report: Report, budget: Budget, what: str, action: Callable[[], str | None]) -> bool:
    """Run ACTION as step WHAT unless the budget is spent; its failure is reported, not raised."""
    if budget.left <= 0:
        report.skip(what, f"time budget ({budget.seconds:.0f} s) spent")
        return False
    started = time.monotonic()
    try:
        detail = action() or ""
    except Exception as error:  # noqa: BLE001 - one step failing leaves the others measurable
        report.step(what, "failed", time.monotonic() - started, f"{type(error).__name__}: {error}")
        return False
    report.step(what, "done", time.monotonic() - started, detail)
    return True


def measure_encoder(config: GpuCheckConfig, report: Report, budget: Budget, product: str) -> None:
    """Every runtime asked for, at the product's batch sizes, on real inputs from its own pre-processing."""
    from mmserve.bench.inputs import requests_for

    spec = PRODUCTS[product]
    step = encoder_step(config.repository, spec.pipeline)
    batches = DRY_RUN_BATCHES if config.dry_run else spec.batch_sizes
    feeds = {b: preprocess(config.repository, step, [requests_for(spec.kind, b, seed=s) for s in range(3)]) for b in batches}
    everything = [feed for batch in feeds.values() for feed in batch]
    profile = engine_profile(step, everything, max(batches))
    ranges = "; ".join(f"{n} {list(lo)}..{list(hi)}" for n, (lo, _, hi) in profile.items())
    runtimes = (RUNTIME_ORT_CPU, *(r for r in config.runtimes if r == RUNTIME_TRT)) if config.dry_run else config.runtimes
    for runtime in runtimes:
        what = f"{spec.pipeline} / {runtime}"
        if budget.left <= 0:
            report.skip(what, f"time budget ({budget.seconds:.0f} s) spent")
            continue
        try:
            if runtime == RUNTIME_TRT and config.dry_run:
                report.skip(what, f"dry run: the FP16 engine needs CUDA; its profile here: {ranges}")
                continue
            if runtime == RUNTIME_TRT:
                encoder = TensorRtEncoder(step, profile, config.workdir, feeds[batches[0]][:2])
                note = f"inputs on the GPU; cosine to the ONNX graph min {encoder.parity['min_cosine']:.5f}"
                calls = {b: encoder.call(f) for b, f in feeds.items()}
            else:
                provider = {RUNTIME_ORT_CUDA: "CUDAExecutionProvider", RUNTIME_ORT_TRT: "TensorrtExecutionProvider",
                            RUNTIME_ORT_CPU: "CPUExecutionProvider"}[runtime]
                served = served_provider_options(step.config) if runtime == RUNTIME_ORT_TRT else {}
                session = ort_session(step.onnx, provider, profile, trt_cache(config), served)
                note = "host inputs and outputs" + ("; the served pipeline's profile and engine cache" if served else "")
                calls = {b: ((lambda feed, s=session: s.run(None, feed)), f) for b, f in feeds.items()
                         if not served or b <= MAX_BATCH_SIZE}
                for batch in sorted(set(feeds) - set(calls)):
                    report.skip(f"{what} batch {batch}", f"the served profile stops at max_batch_size {MAX_BATCH_SIZE}")
            for batch, (call, staged) in calls.items():
                p50, p99, rate, count = timed(call, staged, 0.2 if config.dry_run else config.seconds, batch)
                report.add(Measurement(spec.pipeline, runtime, batch, p50, p99, rate, count, note))
        except Exception as error:  # noqa: BLE001 - one runtime failing leaves the others measurable
            report.skip(what, f"{type(error).__name__}: {error}")


def trt_cache(config: GpuCheckConfig) -> Path:
    """onnxruntime's TensorRT engine cache: the served pipelines' own (MMSERVE_TRT_CACHE), so an
    engine built in-process is found again by the server."""
    return Path(os.environ.get("MMSERVE_TRT_CACHE") or config.workdir / "ort-trt")


def serve_pipelines(config: GpuCheckConfig, report: Report, budget: Budget, products: list[str]) -> str:
    from mmserve.bench.gpu.served import measure_served
    from mmserve.bench.inputs import requests_for

    pipelines = {PRODUCTS[p].pipeline: requests_for(PRODUCTS[p].kind, 16) for p in products if PRODUCTS[p].served}
    seconds = 0.5 if config.dry_run else config.serve_seconds
    label = "Triton (pip wheel), fused, onnxruntime CPU (dry run)" if config.dry_run else SERVED
    measure_served(config.repository, pipelines, seconds, report, config.out / "triton.log", label,
                   timeout_s=max(60.0, budget.left))
    return f"{', '.join(pipelines)} at concurrency 1 and 8"


def check_gpu_repository(repository: Path) -> str:
    """The dry run's look at the `--profile gpu --layout fused` export: every encoder step names
    the GPU providers and a TensorRT shape profile, and refuses to load without them."""
    from google.protobuf import text_format
    from tritonclient.grpc.model_config_pb2 import ModelConfig

    from mmserve.serving.runtime import session_providers

    configs = sorted(repository.glob("*/[0-9]*/steps/*/config.pbtxt"))
    encoders = []
    for path in configs:
        config = text_format.Parse(path.read_text(encoding="utf-8"), ModelConfig())
        if PROVIDERS_PARAMETER in config.parameters:
            parameters = {k: v.string_value for k, v in config.parameters.items()}
            if "trt_profile_max_shapes" not in parameters[PROVIDER_OPTIONS_PARAMETER]:
                raise RuntimeError(f"{path}: no TensorRT shape profile in its provider options")
            try:
                session_providers(parameters)
                encoders.append(f"{config.name}: {parameters[PROVIDERS_PARAMETER]} available here")
            except RuntimeError as error:
                encoders.append(f"{config.name}: refused here ({error})")
    if not encoders:
        raise RuntimeError(f"no encoder step with GPU providers in {repository}")
    return "; ".join(encoders)


def engine_export(config: GpuCheckConfig) -> str:
    """`mmserve export text ... --profile gpu --fp16 --tensorrt`: the export-time engine path
    (built here, held to the ONNX graph, recorded on the card), into a repository of its own."""
    import json

    command = export_command("text", config, config.out / "export.log", layout=Layout.ENSEMBLE.value)
    target = config.workdir / "tensorrt-repository"
    command[command.index("--repository") + 1] = str(target)
    run_cli([*command, "--fp16", "--tensorrt"], config.out / "export.log")
    (card,) = (target / "text_embed").glob("[0-9]*/card.json")
    record = json.loads(card.read_text())["tensorrt"]["encoder"]
    return f"engine {record['key']}, cosine to ONNX min {record['parity']['min_cosine']:.5f}"


def run_check(config: GpuCheckConfig) -> tuple[Report, int]:
    started = time.monotonic()
    budget = Budget(config.budget_s)
    report = Report(out=config.out, dry_run=config.dry_run)
    driver = driver_version()
    report.gpu = {"driver": driver or "none", "mode": "dry run: CPU, no CUDA"} if config.dry_run else detect_gpu()
    report.versions = library_versions(driver)
    report.write()
    log = config.out / "export.log"
    exported = []
    for product in config.products:
        command = export_command(product, config, log)
        if _step(report, budget, f"export {product} --profile gpu --layout fused", lambda c=command: run_cli(c, log)):
            exported.append(product)
    if exported:
        _step(report, budget, "gpu fused configs", lambda: check_gpu_repository(config.repository))
    if config.dry_run:  # what runs next runs on CPU, by explicit choice: the exported steps name GPU providers
        os.environ[PROVIDERS_OVERRIDE] = "CPUExecutionProvider"
    for product in exported:
        _step(report, budget, f"measure {PRODUCTS[product].pipeline}", lambda p=product: measure_encoder(config, report, budget, p))
    if config.serve and exported:
        _step(report, budget, "serve fused pipelines", lambda: serve_pipelines(config, report, budget, exported))
    if "text" in config.products:
        _step(report, budget, "export text --profile gpu --fp16 --tensorrt", lambda: engine_export(config))
    report.seconds = time.monotonic() - started
    report.write()
    if not report.measurements:
        return report, EXIT_FAILED
    missed = [v for v in report.target_verdicts() if v["verdict"] != "met"]
    return report, EXIT_TARGET_MISSED if config.require_targets and missed else 0
