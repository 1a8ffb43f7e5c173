"""The CLIP exporter without a server: what it writes, INT8, and that a failed gate writes nothing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lines_clip import tiny_clip_checkpoint
from mmserve.exporters.onnx_export import ExportError, ParityError, ParityReport
from mmserve.exporters.triton_config import read_config


def test_session_export_wrote_configs_logit_scale_and_templates(repository: Path, workdir: Path):
    settings = json.loads((tiny_clip_checkpoint(workdir) / "mmserve_clip.json").read_text())
    classify = repository / "zero_shot_classify"
    config = (classify / "config.pbtxt").read_text()
    assert 'key: "logit_scale"' in config and 'key: "max_labels"' in config
    clip = json.loads((classify / "1" / "clip.json").read_text())
    assert clip["prompt_templates"] == settings["prompt_templates"] and clip["logit_scale"] > 1
    assert (classify / "1" / "model.onnx").is_file() and (classify / "1" / "tokenizer.json").is_file()
    ensemble = (repository / "zero_shot_image" / "config.pbtxt").read_text()
    assert ensemble.count("model_name") == 3 and 'platform: "ensemble"' in ensemble
    preprocess = read_config(repository / "image_preprocess" / "config.pbtxt")
    assert list(preprocess.output[0].dims) == [3, 32, 32] and "max_pixels" in preprocess.parameters
    summary = (workdir / "clip-export-ensemble.txt").read_text()  # tests/lines_clip.py, the session's repository
    assert "image tower parity fp32" in summary and "ids equal to open_clip's" in summary


def test_int8_export_reports_its_cost(workdir: Path, tmp_path: Path):
    from mmserve.exporters.clip import export_clip

    result = export_clip(tiny_clip_checkpoint(workdir), tmp_path / "repo", int8=True, name="small", layout="ensemble")
    assert result.pipelines == ("small_image_embed", "small_clip_text_embed", "small_zero_shot_image")
    image_quantization, text_quantization = (result.graphs[g].quantization for g in ("image_tower", "text_tower"))
    assert image_quantization is not None and text_quantization is not None
    assert text_quantization.min_cosine > 0.9
    encoder = tmp_path / "repo" / "small_clip_text_encoder"
    assert (encoder / "1" / "model.int8.onnx").is_file() and 'string_value: "model.int8.onnx"' in (encoder / "config.pbtxt").read_text()
    assert (tmp_path / "repo" / "small_zero_shot_classify" / "1" / "model.int8.onnx").is_file()


def test_failed_parity_gate_leaves_the_repository_untouched(workdir: Path, tmp_path: Path, monkeypatch):
    import mmserve.exporters.clip as clip_exporter
    import mmserve.exporters.driver as export_driver

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "keep.txt").write_text("untouched")
    monkeypatch.setattr(export_driver, "check_parity", lambda *a, **k: ParityReport(0.5, 0.7, 4, 1e-4, 0.9999))
    with pytest.raises(ParityError, match="does not match torch"):
        clip_exporter.export_clip(tiny_clip_checkpoint(workdir), repo)
    assert sorted(p.name for p in repo.iterdir()) == ["keep.txt"]
    assert not list(repo.glob(".mmserve-staging-*"))  # staging lives inside the repository


def test_unsupported_tokenizer_is_refused():
    from mmserve.exporters.clip import clip_tokenizer_json

    class HFTokenizer:  # what open_clip returns for hf_tokenizer_name configs
        pass

    with pytest.raises(ExportError, match="HFTokenizer"):
        clip_tokenizer_json(HFTokenizer())


def test_not_a_checkpoint_is_a_clear_error(tmp_path: Path):
    from mmserve.exporters.clip import export_clip
    from mmserve.training.errors import CheckpointError

    with pytest.raises(CheckpointError, match="open_clip_config.json"):
        export_clip(tmp_path, tmp_path / "repo")
