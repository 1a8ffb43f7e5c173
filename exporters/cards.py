"""The product card: what a product version is, where it came from, how good it is (written
beside each version by the repository writer; read with version_reading.read_card)."""
from __future__ import annotations

import importlib.metadata
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from mmserve.pipelines import Kind
from mmserve.repository_layout import Layout

if TYPE_CHECKING:
    from mmserve.exporters.fp16 import Fp16Report
    from mmserve.exporters.onnx_export import ParityReport
    from mmserve.exporters.quantize import QuantizationReport

# --- the product card ----------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    """What an export knows about the version it writes: the facts of its product card."""

    checkpoint: Path
    kinds: Mapping[str, Kind]  # each pipeline (ensemble) of the export -> its kind
    profile: str
    parity: Mapping[str, ParityReport]  # graph ("encoder", "image_tower"...) -> parity figures
    quantization: Mapping[str, QuantizationReport] = field(default_factory=dict)  # when --int8
    layout: str = Layout.FUSED.value  # how the pipelines are served (a Layout; the cpu default is fused)
    fp16: Mapping[str, Fp16Report] = field(default_factory=dict)  # when --fp16: FP16 against FP32
    tensorrt: Mapping[str, Any] = field(default_factory=dict)  # when --tensorrt: each engine's record


def build_card(
    release: Release | None, product: str, version: int, pipelines: Sequence[str], steps: list[dict[str, Any]]
) -> dict[str, Any]:
    """The card of one product version: what it is, where it came from, how good it is."""
    card: dict[str, Any] = {
        "product": product,
        "kind": None,
        "version": version,
        "pipelines": list(pipelines),
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mmserve_version": _mmserve_version(),
        "steps": steps,
    }
    if release is None:
        return card
    kind = release.kinds.get(product)
    card.update(
        kind=kind.value if kind is not None else None,
        profile=release.profile,
        layout=release.layout,
        **checkpoint_facts(Path(release.checkpoint)),
        parity={name: asdict(report) for name, report in release.parity.items()},
        int8={name: asdict(report) for name, report in release.quantization.items()} or None,
        fp16={name: asdict(report) for name, report in release.fp16.items()} or None,
        tensorrt=dict(release.tensorrt) or None,  # per graph: tensorrt.engine_record (profile, built by, parity)
    )
    return card


def checkpoint_facts(checkpoint: Path) -> dict[str, Any]:
    """Base model, training data and held-out metrics, as the checkpoint recorded them."""
    from mmserve.training.text_checkpoint import METRICS_FILE, TRAINING_CONFIG_FILE
    from mmserve.training.clip_checkpoint import SETTINGS_FILE as CLIP_SETTINGS_FILE
    from mmserve.training.defaults import base_model_name

    checkpoint = checkpoint.resolve()
    clip_settings = _read_json(checkpoint / CLIP_SETTINGS_FILE) or {}
    training = _read_json(checkpoint / TRAINING_CONFIG_FILE) or clip_settings.get("training") or {}
    metrics = _read_json(checkpoint / METRICS_FILE)
    if training:
        base = training.get("base") or training.get("pretrained") or training.get("arch")
    else:  # a pretrained encoder exported as it is
        base = str(checkpoint)
    # the base as people name it (training records it; older runs: read from the folder)
    name = training.get("base_name") or (base_model_name(base) if base and Path(str(base)).is_dir() else base)
    data = None
    if training.get("data"):
        metrics_or_empty = metrics or {}
        data = {
            "path": str(training["data"]),
            "held_out_path": _text(training.get("dev_data") or training.get("val_data")),
            "train_rows": metrics_or_empty.get("n_train"),
            "held_out_rows": metrics_or_empty.get("n_dev", metrics_or_empty.get("n_val")),
        }
    return {
        "checkpoint": str(checkpoint),
        "base_model": _text(name),  # e.g. sentence-transformers/all-MiniLM-L6-v2
        "base_model_path": _text(base) if base != name else None,  # the folder it was read from
        "lora": training.get("lora"),
        "training_data": data,
        "metrics": metrics,
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _mmserve_version() -> str:
    try:
        return importlib.metadata.version("mmserve")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
