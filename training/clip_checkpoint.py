"""CLIP checkpoints: the folder layout `mmserve train clip` writes and the exporter reads.

The folder is open_clip's own local model format, so plain open_clip loads it
(`open_clip.create_model_and_transforms("local-dir:PATH")`,
`open_clip.get_tokenizer("local-dir:PATH")`), plus what serving needs:

    open_clip_config.json        {"model_cfg": ..., "preprocess_cfg": ...}: architecture,
                                 image size, mean, std, interpolation, resize mode
    open_clip_model.safetensors  weights (LoRA runs: merged; the adapter is in adapter/)
    mmserve_clip.json            kind, tokenizer settings (type, context length, clean),
                                 prompt templates, classes, training config, versions
    classes.txt                  the zero-shot class list, when training had one
    metrics.json                 per-epoch zero-shot accuracy and retrieval recall
"""
from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmserve.training.errors import CheckpointError
from mmserve.training.files import write_json, write_text_atomic

OPEN_CLIP_CONFIG = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
SETTINGS_FILE = "mmserve_clip.json"
CLASSES_FILE = "classes.txt"
METRICS_FILE = "metrics.json"
ADAPTER_DIR = "adapter"
LOCAL_DIR = "local-dir:"


@dataclass
class ClipCheckpoint:
    """A loaded CLIP model ready for inference (eval mode) and what serving needs to know."""

    path: Path
    model: torch.nn.Module
    preprocess: Any  # open_clip's inference transform (PIL -> tensor)
    tokenizer: Any  # open_clip's tokenizer (texts -> [N, context_length] ids)
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]
    settings: dict[str, Any]

    @property
    def context_length(self) -> int:
        return int(self.settings["tokenizer"]["context_length"])

    @property
    def templates(self) -> list[str]:
        return list(self.settings.get("prompt_templates") or ["a photo of a {}."])

    @property
    def classes(self) -> list[str]:
        return list(self.settings.get("classes") or [])

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())


def tokenizer_settings(tokenizer: Any, model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What the server needs to tokenise like open_clip: type, context length, clean function."""
    text_cfg = model_cfg.get("text_cfg", {})
    kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
    return {
        "type": type(tokenizer).__name__,
        "context_length": int(getattr(tokenizer, "context_length", text_cfg.get("context_length", 77))),
        "clean": kwargs.get("clean", "lower"),
        "reduction_mask": kwargs.get("reduction_mask", ""),
        "hf_tokenizer_name": text_cfg.get("hf_tokenizer_name", ""),
    }


def save_clip_checkpoint(
    out: Path,
    model: torch.nn.Module,
    model_cfg: Mapping[str, Any],
    preprocess_cfg: Mapping[str, Any],
    settings: Mapping[str, Any],
) -> None:
    """Write the folder; a peft model is saved as adapter/ plus merged full weights.

    Training writes it into a staging folder (`RunLedger.commit`), so the run's folder changes
    all at once; the settings may hold paths (the training config): `write_json` stores them.
    """
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):
        model.save_pretrained(str(out / ADAPTER_DIR))
        model = copy.deepcopy(model).merge_and_unload()
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE))
    write_json(out / OPEN_CLIP_CONFIG, {"model_cfg": dict(model_cfg), "preprocess_cfg": _jsonable(dict(preprocess_cfg))})
    write_json(out / SETTINGS_FILE, _jsonable(dict(settings)))
    classes: Sequence[str] = settings.get("classes") or []
    if classes:
        write_text_atomic(out / CLASSES_FILE, "".join(f"{c}\n" for c in classes))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def is_clip_checkpoint(path: str | Path) -> bool:
    return (Path(path) / OPEN_CLIP_CONFIG).is_file() and (Path(path) / SETTINGS_FILE).is_file()


def load_clip_checkpoint(path: str | Path) -> ClipCheckpoint:
    """Load a checkpoint folder with open_clip itself (`local-dir:`), in eval mode."""
    import open_clip

    path = Path(path).resolve()
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a folder")
    for name in (OPEN_CLIP_CONFIG, WEIGHTS_FILE, SETTINGS_FILE):
        if not (path / name).is_file():
            raise CheckpointError(
                f"{path}: no {name}; a CLIP checkpoint is the folder `mmserve train clip --out` writes"
            )
    try:
        config = json.loads((path / OPEN_CLIP_CONFIG).read_text())
        settings = json.loads((path / SETTINGS_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc.msg})") from exc
    if settings.get("kind") != "clip":
        raise CheckpointError(f"{path / SETTINGS_FILE}: not a CLIP checkpoint (kind={settings.get('kind')!r})")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(LOCAL_DIR + str(path))
        tokenizer = open_clip.get_tokenizer(LOCAL_DIR + str(path))
    except (RuntimeError, ValueError, FileNotFoundError, KeyError) as exc:
        raise CheckpointError(f"{path}: open_clip cannot load it: {exc}") from exc
    model.eval()
    return ClipCheckpoint(
        path=path,
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        model_cfg=config["model_cfg"],
        preprocess_cfg=dict(model.visual.preprocess_cfg),
        settings=settings,
    )
