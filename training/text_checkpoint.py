"""Text checkpoints: the folder layout training writes and exporters read.

A checkpoint folder always loads with plain `from_pretrained` (LoRA runs store merged
weights; the adapter sits in `adapter/` beside them) and carries what serving needs:
tokenizer files, `labels.txt` in model output order and `training_config.json`.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from mmserve.training.errors import CheckpointError
from mmserve.training.files import read_json_if_present, write_json, write_text_atomic

LABELS_FILE = "labels.txt"
TRAINING_CONFIG_FILE = "training_config.json"
METRICS_FILE = "metrics.json"
ADAPTER_DIR = "adapter"
TEXT_TASKS = ("classify", "ner")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
_MODEL_CLASSES = {"classify": AutoModelForSequenceClassification, "ner": AutoModelForTokenClassification}


@dataclass
class TextCheckpoint:
    """A loaded text model ready for inference (eval mode)."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    labels: list[str]
    task: str  # "classify" | "ner" | "embed"
    max_length: int


def save_hf_checkpoint(
    out: Path,
    model: torch.nn.Module,
    processor: Any,
    labels: Sequence[str],
    training_config: Mapping[str, Any],
) -> None:
    """Write a Hugging Face checkpoint folder (text and speech): weights, the tokenizer or feature
    extractor, labels.txt, training_config.json; a peft model is saved as adapter/ plus merged weights.

    Training calls this on a staging folder (`RunLedger.commit`), so the run's folder changes
    all at once; the config may hold paths (e.g. a `--dev-data` Path): `write_json` stores them.
    """
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):
        model.save_pretrained(out / ADAPTER_DIR)
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    write_text_atomic(out / LABELS_FILE, "".join(f"{label}\n" for label in labels))
    write_json(out / TRAINING_CONFIG_FILE, training_config)


def read_labels(path: Path) -> list[str]:
    return [line for line in (path / LABELS_FILE).read_text(encoding="utf-8").splitlines() if line]


def checked_labels(path: Path, config: Any) -> list[str]:
    """A classifier checkpoint's labels.txt, refused unless it names the model's classes
    (config.json id2label) in output order: a mismatch would serve wrong label names."""
    if not (path / LABELS_FILE).is_file():
        raise CheckpointError(f"{path}: no {LABELS_FILE} (one label per line, in model output order)")
    labels = read_labels(path)
    config_labels = [config.id2label[i] for i in range(config.num_labels)]
    if labels != config_labels:
        raise CheckpointError(f"{path}: {LABELS_FILE} {labels} does not match config.json id2label {config_labels}")
    return labels


def load_text_checkpoint(path: str | Path) -> TextCheckpoint:
    """Load a fine-tuned checkpoint (classify/ner) or a raw encoder folder (embed).

    A folder without training_config.json is treated as an embedding model loaded with
    AutoModel, e.g. the MiniLM base itself.
    """
    path = Path(path)
    _check_files(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not tokenizer.is_fast:
        raise CheckpointError(f"{path}: the tokenizer is not a fast tokenizer; tokenizer.json is needed")
    config = AutoConfig.from_pretrained(path)
    training_config = _read_training_config(path)
    if training_config is None:
        model = AutoModel.from_pretrained(path)
        return TextCheckpoint(model.eval(), tokenizer, [], "embed", _embed_max_length(path, tokenizer, config))

    task = training_config["task"]
    labels = checked_labels(path, config)
    model = _MODEL_CLASSES[task].from_pretrained(path)
    return TextCheckpoint(model.eval(), tokenizer, labels, task, int(training_config["max_length"]))


def _check_files(path: Path) -> None:
    """Name the first missing piece, so a broken folder gets an actionable message."""
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a folder")
    if not (path / "config.json").is_file():
        hint = "; it holds a LoRA adapter only, load its parent folder (merged weights)" if (
            path / "adapter_config.json"
        ).is_file() else ""
        raise CheckpointError(f"{path}: no config.json, not a Hugging Face model folder{hint}")
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        raise CheckpointError(f"{path}: no model weights (expected one of {', '.join(_WEIGHT_FILES)})")
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise CheckpointError(f"{path}: no tokenizer (expected {' or '.join(_TOKENIZER_FILES)})")


def _read_training_config(path: Path) -> dict[str, Any] | None:
    file = path / TRAINING_CONFIG_FILE
    config = read_json_if_present(file)
    if config is None:
        return None
    if config.get("kind") != "text" or config.get("task") not in TEXT_TASKS:
        raise CheckpointError(
            f"{file}: not a text checkpoint (kind={config.get('kind')!r}, task={config.get('task')!r}; "
            f"expected kind 'text' and task one of {TEXT_TASKS})"
        )
    if not isinstance(config.get("max_length"), int):
        raise CheckpointError(f"{file}: no integer 'max_length'")
    return config


def _embed_max_length(path: Path, tokenizer: PreTrainedTokenizerBase, config) -> int:
    """sentence-transformers' max_seq_length when present (MiniLM: 256), else the model limit."""
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        return int(json.loads(st_config.read_text())["max_seq_length"])
    return int(min(tokenizer.model_max_length, getattr(config, "max_position_embeddings", 512)))
