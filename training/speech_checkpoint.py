"""Speech models: built from a base (pretrained folder or config), saved and loaded as checkpoints.

Two families, one interface:
- **whisper**: `WhisperForAudioClassification` over log-mel features in a fixed window.
  The encoder's positional table is cut to the window (1 s -> 50 positions), so a
  keyword model computes 1 s, not Whisper's 30 s.
- **waveform**: Wav2Vec2 / HuBERT / WavLM / Data2VecAudio via
  `AutoModelForAudioClassification`, raw normalised samples + attention mask.

A checkpoint folder loads with plain `from_pretrained` and carries what serving needs:
`preprocessor_config.json` (the feature extractor), `labels.txt` in output order and
`training_config.json`. LoRA runs store merged weights, the adapter in `adapter/`.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmserve.training.text_checkpoint import TRAINING_CONFIG_FILE, checked_labels
from mmserve.training.errors import CheckpointError, TrainingError
from mmserve.training.files import read_json_if_present
from mmserve.training.quiet import load_pretrained

PREPROCESSOR_FILE = "preprocessor_config.json"
WHISPER, WAVEFORM = "whisper", "waveform"
WAVEFORM_MODEL_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "sew", "sew-d", "unispeech", "unispeech-sat")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# Whisper's encoder: 100 mel frames per second, halved by its strided convolution.
WHISPER_POSITIONS_PER_SECOND = 50


@dataclass
class SpeechCheckpoint:
    """A loaded speech model ready for inference (eval mode)."""

    model: torch.nn.Module
    feature_extractor: Any  # transformers WhisperFeatureExtractor | Wav2Vec2FeatureExtractor
    labels: list[str]
    task: str  # "classify" | "embed"
    family: str  # WHISPER | WAVEFORM
    path: Path

    @property
    def sampling_rate(self) -> int:
        return int(self.feature_extractor.sampling_rate)

    @property
    def window_samples(self) -> int | None:
        """Whisper's fixed window in samples; None for waveform models (any length)."""
        return int(self.feature_extractor.n_samples) if self.family == WHISPER else None

    @property
    def min_samples(self) -> int:
        """The fewest samples the model can take (waveform models' convolutional receptive field)."""
        return min_samples(self.model.config) if self.family == WAVEFORM else 1


def family_of(config) -> str:
    if config.model_type == "whisper":
        return WHISPER
    if config.model_type in WAVEFORM_MODEL_TYPES:
        return WAVEFORM
    raise TrainingError(
        f"model type {config.model_type!r} is not a supported speech encoder; "
        f"use whisper or one of {', '.join(WAVEFORM_MODEL_TYPES)}"
    )


def min_samples(config) -> int:
    """Shortest input giving one frame out of the convolutional feature encoder."""
    length = 1
    for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride))):
        length = (length - 1) * stride + kernel
    return length


def read_base(base: str | Path) -> tuple[Any, Path | None, bool]:
    """(config, folder or None, has weights) for a model folder or a config.json file."""
    from transformers import AutoConfig

    base = Path(base)
    if base.is_dir():
        if not (base / "config.json").is_file():
            raise CheckpointError(f"{base}: no config.json, not a Hugging Face model folder")
        has_weights = any((base / name).is_file() for name in _WEIGHT_FILES)
        return AutoConfig.from_pretrained(base), base, has_weights
    if base.is_file() and base.suffix == ".json":
        config_dict = json.loads(base.read_text())
        model_type = config_dict.pop("model_type", None)
        if not model_type:
            raise CheckpointError(f"{base}: the config has no model_type (e.g. 'whisper' or 'wav2vec2')")
        return AutoConfig.for_model(model_type, **config_dict), None, False
    raise CheckpointError(f"{base}: neither a model folder nor a config .json file")


def build_feature_extractor(config, folder: Path | None, clip_seconds: int | None):
    """The base's own feature extractor if it has one, else the family's default; Whisper's window set."""
    from transformers import AutoFeatureExtractor, Wav2Vec2FeatureExtractor, WhisperFeatureExtractor

    family = family_of(config)
    extractor = None
    if folder is not None and (folder / PREPROCESSOR_FILE).is_file():
        extractor = AutoFeatureExtractor.from_pretrained(folder)
    if family == WHISPER:
        seconds = clip_seconds or _whisper_seconds(config)
        kwargs = extractor.to_dict() if extractor is not None else {}
        for key in ("n_samples", "nb_max_frames", "mel_filters", "feature_extractor_type", "processor_class"):
            kwargs.pop(key, None)
        kwargs.update(feature_size=config.num_mel_bins, chunk_length=int(seconds))
        return WhisperFeatureExtractor(**kwargs)
    if extractor is None:
        extractor = Wav2Vec2FeatureExtractor(
            feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
            return_attention_mask=getattr(config, "feat_extract_norm", "layer") == "layer",
        )
    return extractor


def _whisper_seconds(config) -> int:
    return max(1, config.max_source_positions // WHISPER_POSITIONS_PER_SECOND)


def truncate_whisper_positions(model, positions: int) -> None:
    """Keep the first `positions` rows of the encoder's positional table (clip-length input)."""
    encoder = model.encoder if hasattr(model, "encoder") else model
    table = encoder.embed_positions
    if positions > table.num_embeddings:
        raise TrainingError(
            f"the base encoder has {table.num_embeddings} positions "
            f"({table.num_embeddings / WHISPER_POSITIONS_PER_SECOND:g} s); cannot widen it to {positions}"
        )
    if positions == table.num_embeddings:
        return
    new = torch.nn.Embedding(positions, table.embedding_dim)
    new.weight.data.copy_(table.weight.data[:positions])
    new.requires_grad_(False)
    encoder.embed_positions = new
    encoder.max_source_positions = positions
    encoder.config.max_source_positions = positions
    model.config.max_source_positions = positions


def build_speech_model(base: str | Path, labels: Sequence[str], clip_seconds: int | None, lora: bool):
    """(model with a fresh head for `labels`, feature extractor, whether weights were pretrained)."""
    from transformers import AutoModelForAudioClassification, WhisperForAudioClassification

    config, folder, pretrained = read_base(base)
    family = family_of(config)
    head = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }
    extractor = build_feature_extractor(config, folder, clip_seconds)
    if family == WHISPER:
        positions = int(extractor.nb_max_frames) // 2
        if pretrained:
            model = load_pretrained(WhisperForAudioClassification, folder, **head, ignore_mismatched_sizes=True)
        else:
            config.update({**head, "max_source_positions": positions})
            model = WhisperForAudioClassification(config)
        truncate_whisper_positions(model, positions)
    else:
        if pretrained:
            model = load_pretrained(AutoModelForAudioClassification, folder, **head, ignore_mismatched_sizes=True)
        else:
            config.update(head)
            model = AutoModelForAudioClassification.from_config(config)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.1,
            target_modules=["q_proj", "v_proj"], modules_to_save=["projector", "classifier"],
        ))
    return model, extractor, pretrained


def load_speech_checkpoint(path: str | Path) -> SpeechCheckpoint:
    """A fine-tuned classifier (training_config.json) or a bare encoder folder (embed)."""
    from transformers import AutoModel, AutoModelForAudioClassification, WhisperForAudioClassification

    path = Path(path)
    config, folder, pretrained = read_base(path)
    if not pretrained:
        raise CheckpointError(f"{path}: no model weights (expected one of {', '.join(_WEIGHT_FILES)})")
    family = family_of(config)
    extractor = build_feature_extractor(config, folder, None)
    training_config = _read_training_config(path)
    if training_config is None:  # a base encoder: served as embeddings
        if family == WHISPER:
            model = WhisperForAudioClassification.from_pretrained(path)
        else:
            model = AutoModel.from_pretrained(path)
        return SpeechCheckpoint(model.eval(), extractor, [], "embed", family, path)
    labels = checked_labels(path, config)
    cls = WhisperForAudioClassification if family == WHISPER else AutoModelForAudioClassification
    model = cls.from_pretrained(path)
    return SpeechCheckpoint(model.eval(), extractor, labels, "classify", family, path)


def _read_training_config(path: Path) -> dict[str, Any] | None:
    file = path / TRAINING_CONFIG_FILE
    config = read_json_if_present(file)
    if config is None:
        return None
    if config.get("kind") != "speech":
        raise CheckpointError(f"{file}: not a speech checkpoint (kind={config.get('kind')!r})")
    return config
