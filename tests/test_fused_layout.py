"""The fused cpu layout: how an ensemble becomes one model (exporters/fused.py) and how that
model runs its steps (mmserve/serving/fused.py). The served behaviour of both layouts is
tested by the contract, bad-input and client modules (tests/layouts.py); here, what is
particular to fusing.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmserve.exporters.fused import FUSED, check_layout, default_layout, fuse_pipelines
from mmserve.exporters.onnx_export import ExportError
from mmserve.exporters.repository import ModelFolder
from mmserve.exporters.triton_config import EncoderTuning, Tensor, ensemble_config, ensemble_step, python_model_config
from mmserve.pipelines import EMBEDDING, TEXT
from mmserve.serving.fused import FusedPipeline, FusedStep, load_steps
from mmserve.serving.runtime import InputError, LocalRequest, PythonStep, input_array


class Lengths(PythonStep):
    """TEXT -> one number per item: its length; refuses the word 'bad'."""

    def __init__(self) -> None:
        self.calls = 0

    def answer(self, request: LocalRequest) -> dict[str, np.ndarray]:
        self.calls += 1
        texts = [bytes(t).decode() for t in input_array(request, "TEXT").reshape(-1)]
        if "bad" in texts:
            raise InputError(f"TEXT[{texts.index('bad')}] is bad")
        return {"n": np.array([[len(t)] for t in texts], dtype=np.float32)}


class Scale(PythonStep):
    """n -> two outputs, each only when asked for (as a classifier's post-processing)."""

    def __init__(self) -> None:
        self.calls = 0
        self.asked: list[list[str]] = []

    def answer(self, request: LocalRequest) -> dict[str, np.ndarray]:
        self.calls += 1
        self.asked.append(request.requested_output_names())
        n = input_array(request, "n")
        answers = {"double": n * 2, "half": n / 2}
        return {name: answers[name] for name in request.requested_output_names() or answers}


def pipeline() -> tuple[FusedPipeline, Lengths, Scale]:
    lengths, scale = Lengths(), Scale()
    steps = [
        FusedStep("lengths", lengths, {"TEXT": "TEXT"}, {"n": "N"}),
        FusedStep("scale", scale, {"n": "N"}, {"double": "DOUBLE", "half": "HALF"}),
    ]
    return FusedPipeline(steps, ["N", "DOUBLE", "HALF"]), lengths, scale


def text(*items: str) -> dict[str, np.ndarray]:
    return {"TEXT": np.array([[t.encode()] for t in items], dtype=np.object_)}


def test_each_request_gets_its_own_outputs_and_a_bad_one_its_own_error():
    fused, lengths, scale = pipeline()
    answers = fused.run([text("ab"), text("ok", "bad"), text("xyz")], [[], [], []])
    assert answers[0]["DOUBLE"].tolist() == [[4.0]] and answers[2]["HALF"].tolist() == [[1.5]]
    assert isinstance(answers[1], InputError) and str(answers[1]) == "TEXT[1] is bad"
    assert set(answers[0]) == {"N", "DOUBLE", "HALF"}
    assert scale.calls == 2  # the failed request went no further


def test_only_the_steps_the_requested_outputs_need_run_and_are_asked_for_them():
    fused, lengths, scale = pipeline()
    only_n = fused.run([text("abc")], [["N"]])[0]
    assert list(only_n) == ["N"] and scale.calls == 0  # pruned, as Triton prunes an ensemble
    half = fused.run([text("abcd")], [["HALF"]])[0]
    assert list(half) == ["HALF"] and half["HALF"].tolist() == [[2.0]]
    assert scale.asked == [["half"]]


def test_requests_asking_different_outputs_share_one_batch():
    fused, lengths, scale = pipeline()
    answers = fused.run([text("a"), text("bb")], [["N"], ["DOUBLE"]])
    assert list(answers[0]) == ["N"] and list(answers[1]) == ["DOUBLE"]
    assert scale.calls == 1  # only the second needed the second step


def _models() -> list[ModelFolder]:
    """A product like a classifier's: a shared tokenizer, an encoder, a labelled post-processing."""
    ids = Tensor("ids", "TYPE_INT64", (-1,))
    tokenize = python_model_config("text_tokenize", [Tensor.from_spec(TEXT)], [ids])
    encoder = python_model_config("p_encoder", [ids], [Tensor("vec", "TYPE_FP32", (4,))])
    encoder.parameters["onnx_file"].string_value = "model.onnx"
    post = python_model_config("p_post", [Tensor("vec", "TYPE_FP32", (4,))],
                               [Tensor("EMBEDDING", "TYPE_FP32", (4,), label_filename="labels.txt")], instances=2)
    steps = [
        ensemble_step("text_tokenize", {"TEXT": "TEXT"}, {"ids": "ids"}),
        ensemble_step("p_encoder", {"ids": "ids"}, {"vec": "vec"}),
        ensemble_step("p_post", {"vec": "vec"}, {"EMBEDDING": "EMBEDDING"}),
    ]
    from mmserve.exporters.repository import ENCODER_MODEL_PY, PYTHON_MODELS

    return [
        ModelFolder("text_tokenize", tokenize, {"1/model.py": PYTHON_MODELS["text_tokenize"], "1/tokenizer.json": "{}"}, shared=True),
        ModelFolder("p_encoder", encoder, {"1/model.py": ENCODER_MODEL_PY, "1/model.onnx": b"graph"}),
        ModelFolder("p_post", post, {"1/model.py": PYTHON_MODELS["text_classify_postprocess"], "labels.txt": "a\nb\nc\nd\n"}),
        ModelFolder("p", ensemble_config("p", [Tensor.from_spec(TEXT)], [Tensor.from_spec(EMBEDDING, (4,))], steps)),
    ]


def test_an_ensemble_becomes_one_model_with_its_name_tensors_and_steps():
    (fused,) = fuse_pipelines(_models(), EncoderTuning())
    config = fused.config
    assert fused.name == "p" and fused.pipeline and fused.is_pipeline and not fused.is_ensemble
    assert config.backend == "python" and not config.platform and not config.ensemble_scheduling.step
    assert [i.name for i in config.input] == ["TEXT"] and all(i.allow_ragged_batch for i in config.input)
    assert [o.name for o in config.output] == ["EMBEDDING"]
    # the label file of the step that makes an output rides along (class_count)
    assert config.output[0].label_filename == "labels.txt" and fused.files["labels.txt"] == "a\nb\nc\nd\n"
    # as many instances as its busiest step asks for; with more than one, nothing spins
    assert config.instance_group[0].count == 2
    assert "allow_spinning" not in fused.files["1/steps/p_encoder/config.pbtxt"]
    for step in ("text_tokenize", "p_encoder", "p_post"):
        assert f"1/steps/{step}/config.pbtxt" in fused.files and f"1/steps/{step}/1/model.py" in fused.files
    assert fused.files["1/steps/p_encoder/1/model.onnx"] == b"graph"
    assert fused.files["1/steps/p_post/labels.txt"] == "a\nb\nc\nd\n"
    assert "FusedPipelineModel" in fused.files["1/model.py"]


def test_one_instance_lets_the_encoder_spin_and_nothing_else():
    models = _models()
    del models[2].config.instance_group[:]
    models[2].config.instance_group.add(count=1)
    (fused,) = fuse_pipelines(models, EncoderTuning())
    assert fused.config.instance_group[0].count == 1
    assert "allow_spinning" in fused.files["1/steps/p_encoder/config.pbtxt"]
    assert "allow_spinning" not in fused.files["1/steps/text_tokenize/config.pbtxt"]


def test_layouts_the_profiles_take():
    assert default_layout("cpu") == FUSED and default_layout("gpu") == "ensemble"
    check_layout("ensemble", "gpu")
    check_layout("fused", "gpu")  # onnxruntime's GPU providers in the fused model (tests/test_gpu_check.py)
    with pytest.raises(ExportError, match="unknown layout"):
        check_layout("stacked", "cpu")


def test_an_exported_fused_pipeline_loads_its_steps_as_triton_would(fused_repository: Path):
    """The served version's steps/ folder initialises every step from its own config and files."""
    from mmserve.exporters.versions import active_version
    from mmserve.serving import backend_stub

    backend_stub.install()
    version = active_version(fused_repository, "text_classify")
    steps = load_steps(fused_repository / "text_classify" / str(version))
    assert [s.model for s in steps] == ["text_tokenize", "text_classify_encoder", "text_classify_postprocess"]
    fused = FusedPipeline(steps, ["PROBS", "LABEL"])
    labels = (fused_repository / "text_classify" / "labels.txt").read_text().split()
    (answer,) = fused.run([text("where is my parcel?")], [[]])
    assert answer["LABEL"][0][0].decode() in labels and answer["PROBS"].shape == (1, len(labels))
    np.testing.assert_allclose(answer["PROBS"].sum(), 1.0, rtol=1e-5)


def test_the_command_line_refuses_an_unknown_layout_before_reading_anything(tmp_path: Path, capsys):
    from mmserve.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["export", "text", str(tmp_path / "no-checkpoint"), "--repository", str(tmp_path / "repo"),
              "--profile", "gpu", "--layout", "stacked"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "invalid choice: 'stacked'" in err and "Traceback" not in err
    assert not (tmp_path / "repo").exists()
