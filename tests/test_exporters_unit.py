"""Config writing, the atomic repository writer and the parity gate, without a server."""
from pathlib import Path

import numpy as np
import pytest
import torch
from tritonclient.grpc import model_config_pb2

from mmserve.exporters.onnx_export import OnnxSpec, ParityError, check_parity, export_onnx, require_parity
from mmserve.exporters.repository import ModelFolder, write_models
from mmserve.exporters.triton_config import (
    Tensor,
    encoder_config,
    ensemble_config,
    ensemble_step,
    onnx_tensors,
    parse_config,
    print_config,
)
from mmserve.pipelines import EMBEDDING, TEXT


class Scale(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x * 2.0, dim=-1)


class BranchOnSign(torch.nn.Module):
    """Python control flow: tracing freezes one branch, so ONNX disagrees on other inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 if float(x.sum()) > 0 else x * -3.0


SPEC = OnnxSpec(("features",), ("scores",), {"features": {0: "batch"}, "scores": {0: "batch"}})


def _printed_and_parsed(config: model_config_pb2.ModelConfig) -> model_config_pb2.ModelConfig:
    """The config as Triton reads it from config.pbtxt."""
    return parse_config(print_config(config))


def test_encoder_config_is_derived_from_the_graph(tmp_path: Path):
    onnx_path = export_onnx(Scale(), (torch.ones(2, 7),), SPEC, tmp_path / "model.onnx")
    inputs, outputs = onnx_tensors(onnx_path)
    assert (inputs[0].name, inputs[0].dims, outputs[0].dims) == ("features", (7,), (7,))
    cpu = _printed_and_parsed(encoder_config("enc", onnx_path, "cpu", labels_output="scores"))
    assert cpu.backend == "python" and cpu.input[0].allow_ragged_batch
    assert cpu.output[0].label_filename == "labels.txt"
    assert cpu.parameters["onnx_file"].string_value == "model.onnx"
    gpu = _printed_and_parsed(encoder_config("enc", onnx_path, "gpu"))
    assert gpu.backend == "onnxruntime" and gpu.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    accelerator = gpu.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"


def test_ensemble_config_round_trips_through_protobuf():
    config = ensemble_config(
        "text_embed",
        [Tensor.from_spec(TEXT)],
        [Tensor.from_spec(EMBEDDING, (384,))],
        [ensemble_step("tok", {"TEXT": "TEXT"}, {"input_ids": "ids"}), ensemble_step("enc", {"input_ids": "ids"}, {"out": "EMBEDDING"})],
    )
    parsed = _printed_and_parsed(config)
    assert parsed.platform == "ensemble" and parsed.input[0].data_type == model_config_pb2.TYPE_STRING
    assert [s.model_name for s in parsed.ensemble_scheduling.step] == ["tok", "enc"]
    assert parsed.ensemble_scheduling.step[1].output_map["out"] == "EMBEDDING"


def test_parity_gate_passes_a_faithful_export(tmp_path: Path):
    onnx_path = export_onnx(Scale(), (torch.ones(2, 4),), SPEC, tmp_path / "m.onnx")
    feeds = [{"features": np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)}]
    report = require_parity(check_parity(Scale(), onnx_path, feeds, "scores"), "scale")
    assert report.max_abs_diff < 1e-6 and report.samples == 3


def test_parity_gate_refuses_a_wrong_export(tmp_path: Path):
    onnx_path = export_onnx(BranchOnSign(), (torch.ones(2, 4),), SPEC, tmp_path / "m.onnx")
    feeds = [{"features": -np.ones((2, 4), dtype=np.float32)}]
    with pytest.raises(ParityError, match="does not match torch"):
        require_parity(check_parity(BranchOnSign(), onnx_path, feeds, "scores"), "branch")


def test_failed_write_leaves_the_repository_as_it_was(tmp_path: Path):
    repository = tmp_path / "repo"
    write_models(repository, [ModelFolder("m", model_config_pb2.ModelConfig(name="m"), {"1/weights.bin": b"old"})])
    broken = [
        ModelFolder("m", model_config_pb2.ModelConfig(name="m"), {"1/weights.bin": b"new"}),
        ModelFolder("n", model_config_pb2.ModelConfig(name="n"), {"1/weights.bin": tmp_path / "does-not-exist"}),
    ]
    with pytest.raises(FileNotFoundError):
        write_models(repository, broken)
    assert (repository / "m" / "1" / "weights.bin").read_bytes() == b"old"
    assert not (repository / "n").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no staging left behind


def test_a_shared_step_is_reused_when_only_its_scheduling_differs(tmp_path: Path):
    from mmserve.exporters.repository import shared_model
    from mmserve.exporters.triton_config import python_model_config

    def config(name: str, instances: int, max_length: str = "128") -> model_config_pb2.ModelConfig:
        return python_model_config(name, [Tensor.from_spec(TEXT)], [Tensor("input_ids", "TYPE_INT64", (-1,))],
                                   {"max_length": max_length}, instances=instances)

    (tmp_path / "text_tokenize").mkdir()
    (tmp_path / "text_tokenize" / "config.pbtxt").write_text(print_config(config("text_tokenize", 1)))
    # An older export's instance count: the newer export retunes the shared model in place.
    chosen = shared_model(tmp_path, "text_tokenize", "mine_tokenize", lambda n: config(n, 2), {})
    assert chosen.name == "text_tokenize" and chosen.shared and chosen.config.instance_group[0].count == 2
    # A different computation (another maximum length) gets the product's own model.
    own = shared_model(tmp_path, "text_tokenize", "mine_tokenize", lambda n: config(n, 1, "64"), {})
    assert own.name == "mine_tokenize" and not own.shared and own.config.name == "mine_tokenize"
