"""`mmserve export text` details that the served pipelines don't show directly."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from mmserve.exporters.text import export_text


CHECKED_IN_REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"


def test_exporting_into_the_checked_in_layout_uses_the_shared_tokenizer(tmp_path: Path, tiny_bert: Path):
    repository = tmp_path / "model_repository"
    shutil.copytree(CHECKED_IN_REPOSITORY, repository, ignore=lambda folder, names: [n for n in names if n != "README.md"])
    result = export_text(tiny_bert, repository, layout="ensemble")
    assert result.models == ("text_tokenize", "text_embed_encoder", "text_embed")
    assert (repository / "text_tokenize" / "config.pbtxt").exists()
    assert (repository / "text_tokenize" / "1" / "tokenizer.json").exists()
    # the step's code is the package's: its model.py is one import from mmserve.serving
    model_py = (repository / "text_tokenize" / "1" / "model.py").read_text().splitlines()
    assert model_py[-1].startswith("from mmserve.serving.text import TextTokenizeModel as TritonPythonModel")


def test_the_cpu_default_is_one_fused_model_per_pipeline(tmp_path: Path, tiny_bert: Path):
    result = export_text(tiny_bert, tmp_path / "repo")
    assert result.models == ("text_embed",)
    version = tmp_path / "repo" / "text_embed" / "1"
    assert (version / "pipeline.json").is_file() and (version / "steps" / "text_tokenize" / "1" / "tokenizer.json").is_file()
    assert json.loads((version / "card.json").read_text())["layout"] == "fused"


def test_int8_export_reports_its_drift(tmp_path: Path, tiny_bert: Path, text_checkpoints):
    result = export_text(text_checkpoints["classify"], tmp_path / "repo", int8=True, layout="ensemble")
    quantization = result.graphs["encoder"].quantization
    assert quantization is not None and 0.5 < quantization.min_cosine <= 1.0001
    # scored on the split training held out (dev.jsonl beside the checkpoint)
    assert 0 <= quantization.fp32_accuracy <= 1 and 0 <= quantization.int8_accuracy <= 1
    assert (tmp_path / "repo" / "text_classify_encoder" / "1" / "model.int8.onnx").exists()
    assert 'string_value: "model.int8.onnx"' in (tmp_path / "repo" / "text_classify_encoder" / "config.pbtxt").read_text()
