"""What a product card says of its base model and data, as training records them (pure, fast)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mmserve.exporters.cards import checkpoint_facts
from mmserve.training.defaults import DEFAULT_TEXT_BASE_NAME, absolute_data_paths, base_model_name, default_text_base
from mmserve.training.text_checkpoint import TRAINING_CONFIG_FILE


def test_the_shipped_minilm_is_named_by_its_hub_id_not_its_folder():
    folder = default_text_base()
    assert folder.name == "model"  # what the card said before
    assert base_model_name(folder) == DEFAULT_TEXT_BASE_NAME == "sentence-transformers/all-MiniLM-L6-v2"


@pytest.mark.parametrize("parts, name", [
    (("hub", "models--intfloat--e5-small", "snapshots", "0" * 40), "intfloat/e5-small"),
    (("bases", "my-bert", "model"), "my-bert"),
    (("runs", "sentiment-v3", "checkpoint", "best"), "sentiment-v3"),
    (("tiny-bert",), "tiny-bert"),
])
def test_a_local_folder_is_named_by_its_most_telling_part(tmp_path: Path, parts: tuple[str, ...], name: str):
    assert base_model_name(tmp_path.joinpath(*parts)) == name


def test_data_paths_are_recorded_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    config = absolute_data_paths({"data": "data/train.csv", "dev_data": None, "val_data": "../v.csv", "epochs": 3})
    assert config == {"data": str(tmp_path / "data/train.csv"), "dev_data": None,
                      "val_data": str(tmp_path.parent / "v.csv"), "epochs": 3}


def test_the_card_names_the_base_and_keeps_its_folder(tmp_path: Path):
    """A run that recorded base_name; an older one (no base_name) named from its folder."""
    base = default_text_base()
    for recorded in ({"base_name": DEFAULT_TEXT_BASE_NAME}, {}):
        checkpoint = tmp_path / f"run{len(recorded)}"
        checkpoint.mkdir()
        training = {"base": str(base), "data": os.fspath(tmp_path / "train.csv"), **recorded}
        (checkpoint / TRAINING_CONFIG_FILE).write_text(json.dumps(training))
        facts = checkpoint_facts(checkpoint)
        assert facts["base_model"] == DEFAULT_TEXT_BASE_NAME
        assert facts["base_model_path"] == str(base)
        assert facts["training_data"]["path"] == str(tmp_path / "train.csv")
