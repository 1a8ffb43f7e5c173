"""The GPU check on this CPU machine: `scripts/gpu_check.sh --dry-run` runs every step short of
CUDA (the gpu-profile fused export, its refusal to load without the GPU providers, real encoder
inputs, the engine's shape profile, onnxruntime timings, the fused pipeline served by the
pip-bundled Triton under the asyncio load generator at c=1 and c=8, the export-time engine
path's refusal), and without --dry-run it stops at once with the reason. The measurements
themselves need an NVIDIA GPU (docs/deploy.md, "The GPU check")."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from mmserve.bench.gpu import config as gpu_config
from mmserve.bench.gpu.config import RUNTIME_ORT_CPU, RUNTIME_TRT, parse_args
from mmserve.bench.gpu.device import NoGpuError, detect_gpu
from mmserve.bench.gpu.report import Measurement, Report
from mmserve.exporters.gpu_stack import deployed_image

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
HAS_GPU = Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()


def _script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key not in ("OUT", "MMSERVE_ONNX_PROVIDERS")}
    environment.update(PYTHON=sys.executable, **(env or {}))
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=environment, timeout=900)


# ---- the dry run: every step short of CUDA ------------------------------------------------------


@pytest.fixture(scope="module")
def dry_run(tiny_bert: Path, tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict, Path, Path]:
    """`gpu_check.sh --dry-run` for the text encoder (a tiny BERT stands in for MiniLM: the same code path)."""
    base = tmp_path_factory.mktemp("gpu-check")
    result = _script("--dry-run", "--encoders", "text", "--text-base", str(tiny_bert),
                     "--out", str(base / "out"), "--workdir", str(base / "work"))
    report = json.loads((base / "out" / "gpu_check.json").read_text()) if (base / "out" / "gpu_check.json").exists() else {}
    return result, report, base / "out", base / "work" / "repository"


def _steps(report: dict) -> dict[str, dict]:
    return {step["step"]: step for step in report["steps"]}


def test_the_dry_run_passes_and_writes_json_and_markdown(dry_run):
    result, report, out, _ = dry_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert report["dry_run"] is True and "Traceback" not in result.stderr
    assert (out / "gpu_check.md").read_text().startswith("# GPU check (dry run: CPU, no CUDA)")
    assert json.loads((out / "setup.json").read_text())["python"] == sys.executable
    assert "perf_analyzer skipped (needs libb64" in result.stderr  # said, not silently dropped
    steps = _steps(report)
    assert steps["export text --profile gpu --layout fused"]["status"] == "done"
    assert steps["measure text_embed"]["status"] == "done"
    assert steps["serve fused pipelines"]["status"] == "done", steps["serve fused pipelines"]


def test_the_gpu_fused_export_names_its_providers_and_refuses_a_cpu_onnxruntime(dry_run):
    _, report, _, repository = dry_run
    config = text_format.Parse((repository / "text_embed" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.backend == "python" and [i.name for i in config.input] == ["TEXT"]  # the public contract, fused
    (step_config,) = repository.glob("text_embed/[0-9]*/steps/text_embed_encoder/config.pbtxt")
    encoder = text_format.Parse(step_config.read_text(), model_config_pb2.ModelConfig())
    assert encoder.parameters["providers"].string_value == "TensorrtExecutionProvider,CUDAExecutionProvider"
    options = json.loads(encoder.parameters["provider_options"].string_value)["TensorrtExecutionProvider"]
    assert options["trt_fp16_enable"] == "True" and options["trt_engine_cache_enable"] == "True"
    assert options["trt_profile_min_shapes"] == "input_ids:1x1,attention_mask:1x1"
    assert options["trt_profile_max_shapes"] == "input_ids:64x256,attention_mask:64x256"  # the product's limits
    import onnxruntime as ort

    detail = _steps(report)["gpu fused configs"]["detail"]
    if "TensorrtExecutionProvider" not in ort.get_available_providers():  # this machine: refused, and why
        assert "refused here" in detail and "pip uninstall -y onnxruntime" in detail and "onnxruntime-gpu" in detail


def test_the_dry_run_measures_on_cpu_and_serves_at_both_concurrencies(dry_run):
    _, report, _, _ = dry_run
    rows = [(m["pipeline"], m["runtime"], m["batch"]) for m in report["measurements"]]
    assert rows == [("text_embed", RUNTIME_ORT_CPU, 1), ("text_embed", RUNTIME_ORT_CPU, 4)]
    assert all(m["p50_ms"] > 0 and m["items_per_s"] > 0 for m in report["measurements"])
    assert [(m["pipeline"], m["batch"]) for m in report["served"]] == [("text_embed", 1), ("text_embed", 8)]
    assert all(m["calls"] > 0 and m["p99_ms"] >= m["p50_ms"] for m in report["served"])
    skipped = {s["what"]: s["reason"] for s in report["skipped"]}
    # the engine's profile is computed from real inputs; only the CUDA build is left out
    assert "input_ids [1, 1]..[4, 256]" in skipped[f"text_embed / {RUNTIME_TRT}"]


@pytest.mark.skipif(HAS_GPU, reason="an NVIDIA driver is here: the export-time engine may be built")
def test_the_dry_run_tries_the_export_time_engine_and_names_the_pinned_tensorrt(dry_run):
    _, report, _, _ = dry_run
    step = _steps(report)["export text --profile gpu --fp16 --tensorrt"]
    assert step["status"] == "failed"
    assert deployed_image().tensorrt_requirement in step["detail"]  # what to install: the image's TensorRT


# ---- no GPU without --dry-run ------------------------------------------------------------------


@pytest.mark.skipif(HAS_GPU, reason="this machine has an NVIDIA driver: the no-GPU stop cannot be seen here")
def test_without_a_gpu_the_script_stops_before_exporting(tmp_path):
    result = _script("--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "work"))
    assert result.returncode == gpu_config.EXIT_NO_GPU, result.stderr
    assert "no GPU" in result.stderr and "--dry-run" in result.stderr  # what happened and what to do
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "work").exists()  # it stopped before any export or training


@pytest.mark.skipif(HAS_GPU, reason="this machine has an NVIDIA driver")
def test_detect_gpu_raises_the_no_gpu_error():
    with pytest.raises(NoGpuError, match="no GPU"):
        detect_gpu()


def test_the_cuda_runtime_names_the_failing_call_and_cudas_reason():
    from mmserve.exporters.cuda_runtime import CudaError, CudaRuntime

    try:
        cuda = CudaRuntime.load()
    except CudaError as error:  # no libcudart: says which wheel brings it
        assert "nvidia-cuda-runtime-cu12" in str(error)
        return
    assert re.fullmatch(r"\d+\.\d+", cuda.version())  # the runtime itself answers without a driver
    if HAS_GPU:
        pytest.skip("a GPU is here: the runtime works")
    with pytest.raises(CudaError, match=r"cudaGetDeviceCount failed: CUDA error \d+ \(.+\)"):
        cuda.device_count()


# ---- arguments and the report --------------------------------------------------------------------


def test_defaults_cover_every_encoder_and_runtime(monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    config = parse_args([])
    assert config.products == ("text", "clip", "speech") and not config.dry_run
    assert set(config.runtimes) == set(gpu_config.RUNTIMES.values())
    assert config.out == Path("artifacts/gpu_check")
    assert gpu_config.PRODUCTS["text"].batch_sizes == (1, 32, 64, 128)  # MiniLM b1 p50/p99, b32/64/128 throughput
    assert gpu_config.PRODUCTS["clip"].batch_sizes == (32, 64, 128)


def test_out_defaults_to_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("OUT", str(tmp_path / "from-env"))
    assert parse_args([]).out == tmp_path / "from-env"
    assert parse_args(["--out", str(tmp_path / "flag")]).out == tmp_path / "flag"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--encoders", "text,vision"], "unknown encoder vision; choose from text, clip, speech"),
        (["--runtimes", "cuda"], "unknown runtime cuda"),
        (["--budget", "0"], "must be positive"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == gpu_config.EXIT_USAGE
    assert message in capsys.readouterr().err


def _row(pipeline: str, runtime: str, batch: int, p50_ms: float, items_per_s: float) -> Measurement:
    return Measurement(pipeline, runtime, batch, p50_ms, p50_ms * 2, items_per_s, 100)


def test_targets_are_judged_on_their_own_runtime_and_batch():
    report = Report()
    assert [v["verdict"] for v in report.target_verdicts()] == ["not measured", "not measured"]
    report.measurements += [
        _row("text_embed", RUNTIME_TRT, 1, 0.41, 2400.0),
        _row("text_embed", gpu_config.RUNTIME_ORT_CUDA, 1, 0.20, 5000.0),  # another runtime: not the target's
        _row("image_embed", RUNTIME_TRT, 32, 30.0, 1066.0),
        _row("image_embed", RUNTIME_TRT, 64, 70.0, 914.0),  # the best batch counts for throughput
    ]
    minilm, clip = report.target_verdicts()
    assert (minilm["value"], minilm["verdict"]) == (0.41, "met")
    assert (clip["value"], clip["batch"], clip["verdict"]) == (1066.0, 32, "met")
    report.measurements[0] = _row("text_embed", RUNTIME_TRT, 1, 0.61, 1600.0)
    assert report.target_verdicts()[0]["verdict"] == "missed"
    assert "| MiniLM encoder, TensorRT FP16, batch 1: p50 < 0.53 ms | 0.61 (batch 1) | missed |" in report.markdown()


def test_the_report_is_written_after_every_figure(tmp_path):
    """A check stopped by its time limit still leaves what it measured."""
    report = Report(out=tmp_path)
    report.add(_row("text_embed", RUNTIME_TRT, 1, 0.4, 2500.0))
    assert json.loads((tmp_path / "gpu_check.json").read_text())["measurements"][0]["p50_ms"] == 0.4
    report.skip("image_embed / TensorRT FP16", "time budget (400 s) spent")
    assert "time budget (400 s) spent" in (tmp_path / "gpu_check.md").read_text()


def test_the_driver_version_is_read_from_either_kernel_module():
    from mmserve.bench.gpu.device import parse_driver_version

    proprietary = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\nGCC version: gcc 12"
    open_module = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  (dvs-builder@U16)"
    assert parse_driver_version(proprietary) == "550.54.15"
    assert parse_driver_version(open_module) == "580.65.06"
    assert parse_driver_version("no driver here") is None
