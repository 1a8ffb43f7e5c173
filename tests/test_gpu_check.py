"""The GPU check's CPU-side behaviour: arguments, the no-GPU stop, the gpu-profile export and the
preparation of encoder inputs and TensorRT profiles. The measurements themselves need an NVIDIA
GPU (scripts/gpu_check.sh on one; docs/deploy.md)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmserve.bench import gpu_check
from mmserve.bench.gpu_check import Measurement, Report, parse_args
from mmserve.pipelines import MAX_BATCH_SIZE, Kind

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
HAS_GPU = Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()


def _script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "OUT"}  # --out decides
    environment.update(PYTHON=sys.executable, **(env or {}))
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=environment, timeout=900)


# ---- arguments --------------------------------------------------------------------------------


def test_defaults_cover_every_encoder_runtime_and_the_two_batch_sizes(monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    config = parse_args([])
    assert config.products == ("text", "clip", "speech")
    assert set(config.runtimes) == set(gpu_check.RUNTIMES)
    assert config.batch_sizes == (1, 32)
    assert config.out == Path("artifacts/gpu_check")
    assert not config.export_only and config.repository is None


def test_out_defaults_to_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("OUT", str(tmp_path / "from-env"))
    assert parse_args([]).out == tmp_path / "from-env"
    assert parse_args(["--out", str(tmp_path / "flag")]).out == tmp_path / "flag"


def test_subsets_and_batch_sizes_parse():
    config = parse_args(["--encoders", "clip,text", "--runtimes", "trt,triton", "--batch-sizes", "32,1,8"])
    assert config.products == ("clip", "text")
    assert config.runtimes == (gpu_check.RUNTIME_TRT, gpu_check.RUNTIME_TRITON)
    assert config.batch_sizes == (1, 8, 32)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--encoders", "text,vision"], "unknown encoder vision; choose from text, clip, speech"),
        (["--runtimes", "cuda"], "unknown runtime cuda"),
        (["--batch-sizes", "1,x"], "integers separated by commas"),
        (["--batch-sizes", f"1,{MAX_BATCH_SIZE + 1}"], f"1..{MAX_BATCH_SIZE}"),
        (["--export-only", "--repository", "r"], "give one of them"),
        (["--budget", "0"], "must be positive"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == gpu_check.EXIT_USAGE
    assert message in capsys.readouterr().err


# ---- no GPU -----------------------------------------------------------------------------------


@pytest.mark.skipif(HAS_GPU, reason="this machine has an NVIDIA driver: the no-GPU stop cannot be seen here")
def test_without_a_gpu_the_script_stops_before_exporting(tmp_path):
    result = _script("--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "work"))
    assert result.returncode == gpu_check.EXIT_NO_GPU, result.stderr
    assert "no GPU" in result.stderr and "--export-only" in result.stderr  # what happened and what to do
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "work").exists()  # it stopped before any export or training


@pytest.mark.skipif(HAS_GPU, reason="this machine has an NVIDIA driver")
def test_detect_gpu_raises_the_no_gpu_error():
    with pytest.raises(gpu_check.NoGpuError, match="no GPU"):
        gpu_check.detect_gpu()


def test_onnxruntime_without_the_cuda_provider_is_named():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(RuntimeError, match="no CUDAExecutionProvider.*install onnxruntime-gpu"):
        gpu_check.ort_session(Path("unused.onnx"), "CUDAExecutionProvider", Path("unused"), None)


def test_a_triton_without_the_onnxruntime_backend_is_a_reasoned_skip():
    from mmserve.server import find_triton

    try:
        install = find_triton()
    except Exception as error:  # noqa: BLE001
        pytest.skip(f"no tritonserver here: {error}")
    if install.backend_directory is None or (install.backend_directory / "onnxruntime").is_dir():
        pytest.skip("this tritonserver may carry the onnxruntime backend")
    found, reason = gpu_check.triton_with_onnxruntime()
    assert found is None
    assert "no onnxruntime backend" in reason and "NGC image" in reason


# ---- targets ----------------------------------------------------------------------------------


def _row(pipeline: str, runtime: str, batch: int, p50_ms: float, items_per_s: float) -> Measurement:
    return Measurement(pipeline, f"{pipeline}_encoder", runtime, batch, p50_ms, p50_ms * 2, items_per_s, 100)


def test_targets_are_judged_on_their_own_runtime_and_batch():
    report = Report(gpu={"name": "test"})
    assert [v["verdict"] for v in report.target_verdicts()] == ["not measured", "not measured"]
    report.measurements += [
        _row("text_embed", gpu_check.RUNTIME_TRT, 1, 0.41, 2400.0),
        _row("text_embed", gpu_check.RUNTIME_ORT_CUDA, 1, 0.20, 5000.0),  # another runtime: not the target's
        _row("image_embed", gpu_check.RUNTIME_TRT, 1, 1.5, 650.0),
        _row("image_embed", gpu_check.RUNTIME_TRT, 32, 30.0, 1066.0),  # the best batch counts for throughput
    ]
    minilm, clip = report.target_verdicts()
    assert (minilm["value"], minilm["verdict"]) == (0.41, "met")
    assert (clip["value"], clip["batch"], clip["verdict"]) == (1066.0, 32, "met")
    report.measurements[0] = _row("text_embed", gpu_check.RUNTIME_TRT, 1, 0.61, 1600.0)
    assert report.target_verdicts()[0]["verdict"] == "missed"
    assert "| MiniLM encoder, TensorRT FP16, batch 1: p50 < 0.53 ms | 0.61 (batch 1) | missed |" in report.markdown()


# ---- the gpu-profile export, on this machine ---------------------------------------------------


@pytest.fixture(scope="module")
def exported(tiny_bert: Path, tmp_path_factory) -> tuple[Path, Path]:
    """`gpu_check.sh --export-only` for the text encoder (a tiny BERT stands in for MiniLM: same code path)."""
    base = tmp_path_factory.mktemp("gpu-check")
    result = _script("--export-only", "--encoders", "text", "--text-base", str(tiny_bert),
                     "--out", str(base / "out"), "--workdir", str(base / "work"))
    assert result.returncode == 0, result.stdout + result.stderr
    return base / "out", base / "work" / "repository"


def test_export_only_writes_gpu_configs_that_triton_parses(exported):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    out, repository = exported
    configs = {}
    for path in sorted(repository.glob("*/config.pbtxt")):
        configs[path.parent.name] = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    assert set(configs) == {"text_embed", "text_tokenize", "text_embed_encoder"}

    encoder = configs["text_embed_encoder"]
    assert encoder.backend == "onnxruntime"
    assert [g.kind for g in encoder.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    (accelerator,) = encoder.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    assert configs["text_tokenize"].backend == "python"  # pre-processing is the same in both profiles
    assert configs["text_embed"].platform == "ensemble"
    assert [s.model_name for s in configs["text_embed"].ensemble_scheduling.step] == ["text_tokenize", "text_embed_encoder"]

    report = json.loads((out / "gpu_check.json").read_text())
    assert [(e["product"], e["status"]) for e in report["exports"]] == [("text", "exported")]
    assert "mmserve export text" in (out / "export.log").read_text()


def test_encoder_inputs_and_tensorrt_profiles_come_from_the_pipeline(exported):
    _, repository = exported
    step = gpu_check.encoder_step(repository, "text_embed")
    assert step.encoder == "text_embed_encoder" and step.onnx.is_file()
    assert set(step.input_names) == {"input_ids", "attention_mask"}
    assert step.max_length == 256  # the tokenizer step's truncation bounds the sequence axis

    feeds = gpu_check.encoder_feeds(repository, step, Kind.TEXT_EMBED, batch=4, count=3)
    assert len(feeds) == 3
    lengths = set()
    for feed in feeds:
        assert set(feed) == set(step.input_names)
        assert feed["input_ids"].shape == feed["attention_mask"].shape and feed["input_ids"].shape[0] == 4
        lengths.add(feed["input_ids"].shape[1])
    profile = gpu_check.shape_profile(feeds, step)
    for name in step.input_names:
        low, opt, high = profile[name]
        assert low == (1, 1) and high == (MAX_BATCH_SIZE, 256)
        assert opt == (4, max(lengths))  # tuned for what the real sentences produce



@pytest.mark.skipif(HAS_GPU, reason="this machine has an NVIDIA driver: the engine export may succeed here")
def test_the_export_time_engine_path_is_tried_and_its_failure_reported(tiny_bert: Path, tmp_path: Path):
    """On a GPU the check also runs `export text --profile gpu --fp16 --tensorrt`; here it fails
    at once, before the checkpoint is read, and the report says why (the measurements would stand)."""
    config = parse_args(["--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "work"), "--text-base", str(tiny_bert)])
    report = Report()
    gpu_check.export_with_engines(config, report, deadline=float("inf"))
    (export,) = report.exports
    assert export["product"] == "text --fp16 --tensorrt" and export["status"] == "failed"
    assert ("tensorrt module is not importable" in export["detail"] or "no NVIDIA GPU" in export["detail"]), export
    assert not (tmp_path / "work" / "tensorrt-repository").exists()
    assert "--tensorrt" in (tmp_path / "out" / "export.log").read_text()
