"""TensorRT engines on this CPU machine: how an FP16 engine is asked of TensorRT 8, 10 and 11
(strongly typed networks), the record that refuses a plan built elsewhere, the parity gate an
engine passes before it goes live, and the repository check of the GPU pod's init step. The
builds themselves need TensorRT and a GPU (scripts/gpu_check.sh)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mmserve.exporters.engines import check_repository, load_parity_inputs, save_parity_inputs
from mmserve.exporters.fp16 import convert_fp16
from mmserve.exporters.onnx_export import ExportError, OnnxSpec, export_onnx
from mmserve.exporters.tensorrt import (
    ENGINE_RECORD,
    EngineMismatch,
    check_engine_record,
    engine_key,
    engine_parity,
    engine_record,
    graph_is_fp16,
    network_flags,
)
from mmserve.exporters.triton_config import PLAN_FILE, TENSORRT_PLAN, Tensor, print_config, tensorrt_plan_config

# ---- FP16 on TensorRT 8, 10 and 11 -----------------------------------------------------------------


def _trt(major: int) -> SimpleNamespace:
    """The enum members each TensorRT generation has (11 removed BuilderFlag.FP16; 8 has no strong typing)."""
    creation = {"EXPLICIT_BATCH": 0} if major < 11 else {}
    if major >= 10:
        creation["STRONGLY_TYPED"] = 1
    builder = {"FP16": "FP16"} if major < 11 else {}
    return SimpleNamespace(NetworkDefinitionCreationFlag=SimpleNamespace(**creation), BuilderFlag=SimpleNamespace(**builder))


@pytest.mark.parametrize("major", [10, 11])
def test_tensorrt_10_and_11_build_strongly_typed_networks_without_the_fp16_flag(major: int):
    """Defect 2: TensorRT 11 has no BuilderFlag.FP16; 10 and 11 build the same strongly typed
    network, whose precision is the graph's (an FP16 engine from the --fp16 graph)."""
    for fp16_graph in (True, False):
        assert network_flags(_trt(major), fp16_graph) == (1 << 1, [])


def test_a_tensorrt_without_strong_typing_gets_the_fp16_flag_only_for_an_fp16_graph():
    assert network_flags(_trt(8), fp16_graph=True) == (1 << 0, ["FP16"])
    assert network_flags(_trt(8), fp16_graph=False) == (1 << 0, [])


def test_the_precision_of_a_graph_is_read_from_its_weights(tmp_path: Path):
    spec = OnnxSpec(("x",), ("y",), {"x": {0: "batch"}, "y": {0: "batch"}})
    fp32 = export_onnx(torch.nn.Linear(8, 4).eval(), (torch.ones(2, 8),), spec, tmp_path / "model.onnx")
    assert not graph_is_fp16(fp32)
    assert graph_is_fp16(convert_fp16(fp32))


# ---- the record: a plan loads only where it was built ---------------------------------------------

PROFILE = {"input_ids": ((1, 1), (16, 32), (64, 256))}


def test_an_engine_is_keyed_by_tensorrt_version_and_compute_capability():
    assert engine_key("10.13.2.6", "9.0") == "trt10.13.2.6-sm90"
    record = engine_record("10.13.2.6", "9.0", PROFILE, {"min_cosine": 0.9995})
    assert record["key"] == "trt10.13.2.6-sm90"
    assert record["profile"] == {"input_ids": {"min": [1, 1], "opt": [16, 32], "max": [64, 256]}}
    check_engine_record(record, "10.13.2.6", "9.0", "here")  # the same machine: fine


@pytest.mark.parametrize("tensorrt, capability", [("10.5.0.18", "9.0"), ("10.13.2.6", "8.9")])
def test_a_plan_built_elsewhere_is_refused_with_the_reason_and_the_fix(tensorrt: str, capability: str):
    """Defect 4: a plan built by another TensorRT or for another GPU is refused, naming both and the rebuild."""
    record = engine_record("10.13.2.6", "9.0", PROFILE, None)
    with pytest.raises(EngineMismatch) as refused:
        check_engine_record(record, tensorrt, capability, "repo/text_embed_encoder/1")
    message = str(refused.value)
    assert "built by TensorRT 10.13.2.6 for compute capability 9.0" in message
    assert f"TensorRT {tensorrt} on compute capability {capability}" in message
    assert "python -m mmserve.exporters.engines build" in message


def _plan_model(repository: Path, name: str, record: dict | None) -> Path:
    folder = repository / name
    (folder / "1").mkdir(parents=True)
    config = tensorrt_plan_config(name, [Tensor("input_ids", "TYPE_INT64", (-1,))], [Tensor("e", "TYPE_FP32", (4,))])
    (folder / "config.pbtxt").write_text(print_config(config))
    (folder / "1" / PLAN_FILE).write_bytes(b"plan")
    if record is not None:
        (folder / "1" / ENGINE_RECORD).write_text(json.dumps(record))
    return folder / "1"


def test_the_init_step_check_names_every_plan_that_cannot_load_here(tmp_path: Path):
    assert TENSORRT_PLAN == "tensorrt_plan"
    here = _plan_model(tmp_path, "built_here", engine_record("10.13.2.6", "9.0", PROFILE, None))
    elsewhere = _plan_model(tmp_path, "built_elsewhere", engine_record("10.13.2.6", "8.0", PROFILE, None))
    unknown = _plan_model(tmp_path, "unknown", None)
    problems = check_repository(tmp_path, "10.13.2.6", "9.0")
    assert len(problems) == 2
    assert not any(str(here) in p for p in problems)
    assert any(str(elsewhere) in p and "compute capability 8.0" in p for p in problems)
    assert any(str(unknown) in p and f"no {ENGINE_RECORD}" in p for p in problems)


def test_the_init_step_without_tensorrt_exits_2_with_the_reason(tmp_path: Path):
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is importable here")
    except ImportError:
        pass
    result = subprocess.run([sys.executable, "-m", "mmserve.exporters.engines", "check", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "tensorrt module is not importable" in result.stderr and "pip install 'tensorrt-cu" in result.stderr


def test_parity_inputs_travel_with_the_plan(tmp_path: Path):
    feeds = [{"input_ids": np.arange(6).reshape(2, 3), "attention_mask": np.ones((2, 3), np.int64)},
             {"input_ids": np.arange(4).reshape(1, 4), "attention_mask": np.ones((1, 4), np.int64)}]
    loaded = load_parity_inputs(save_parity_inputs(feeds, tmp_path / "parity.npz"))
    assert len(loaded) == 2
    for original, back in zip(feeds, loaded):
        assert set(back) == set(original) and all(np.array_equal(back[k], original[k]) for k in original)


# ---- the parity gate before an engine goes live ----------------------------------------------------


def test_an_engine_close_to_its_graph_passes_with_its_figures():
    rng = np.random.default_rng(0)
    graph = [rng.normal(size=(4, 32)).astype(np.float32) for _ in range(3)]
    engine = [g + rng.normal(scale=1e-3, size=g.shape).astype(np.float32) for g in graph]  # FP16-sized error
    figures = engine_parity(engine, graph, "text_embed encoder")
    assert figures["min_cosine"] > 0.999 and figures["samples"] == 12 and figures["max_abs_diff"] < 0.01


def test_an_engine_that_drifts_from_its_graph_is_refused_before_it_goes_live():
    """Defect 10: cosine below 0.999 on the parity inputs (an FP16 overflow, a bad tactic) is refused."""
    rng = np.random.default_rng(1)
    graph = [rng.normal(size=(4, 32)).astype(np.float32)]
    drifted = [graph[0] + rng.normal(scale=0.2, size=graph[0].shape).astype(np.float32)]
    with pytest.raises(ExportError, match=r"text_embed encoder: .*cosine min 0\.\d+ < 0\.999.*refused before it goes live"):
        engine_parity(drifted, graph, "text_embed encoder")
    with pytest.raises(ExportError, match="refused"):  # an overflow to inf/nan is refused too
        engine_parity([np.full((1, 4), np.nan, np.float32)], [np.ones((1, 4), np.float32)], "x")
