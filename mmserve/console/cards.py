"""A product card (``card.json`` of one version, read by the lifecycle core) as a person
reads it: a few labelled facts instead of the whole record.

Presentation only: which keys a card has is the exporters' business
(:mod:`mmserve.exporters.versions`); anything missing is simply not shown, and the
product page offers the full card as JSON beside these facts.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import PurePath
from typing import Any

# Held-out figures worth a headline, in this order, with the names people use.
_FIGURES = {
    "accuracy": "accuracy",
    "macro_f1": "macro F1",
    "f1": "F1",
    "precision": "precision",
    "recall": "recall",
    "zero_shot_top1": "zero-shot top-1",
    "image_to_text_r1": "image→text R@1",
    "text_to_image_r1": "text→image R@1",
}
_MAX_FIGURES = 3


@dataclass(frozen=True)
class Fact:
    label: str
    text: str
    title: str = ""  # the full value, shown on hover
    bad: bool = False  # a failed check: drawn in red


def card_facts(card: Mapping[str, Any]) -> list[Fact]:
    """Base model, data, held-out metrics, parity, INT8 and export time, where the card has them."""
    facts: list[Fact] = []
    base = card.get("base_model")
    if base:
        lora = " + LoRA" if card.get("lora") else ""
        facts.append(Fact("Base model", f"{base_name(base)}{lora}", str(base)))
    data = card.get("training_data")
    if isinstance(data, Mapping) and data.get("path"):
        rows = [f"{data[key]} {what}" for key, what in (("train_rows", "train"), ("held_out_rows", "held-out"))
                if isinstance(data.get(key), int)]
        facts.append(Fact("Data", " · ".join([_short_path(data["path"]), " / ".join(rows)] if rows else [_short_path(data["path"])]),
                          str(data["path"])))
    figures = held_out_figures(card.get("metrics"))
    if figures:
        facts.append(Fact("Held-out", ", ".join(f"{name} {value}" for name, value in figures)))
    parity = card.get("parity")
    if isinstance(parity, Mapping) and parity:
        facts.append(_parity_fact(parity))
    if "int8" in card or "parity" in card:
        facts.append(_int8_fact(card.get("int8")))
    if card.get("exported_at"):
        profile = f" · {card['profile']} profile" if card.get("profile") else ""
        facts.append(Fact("Exported", f"{when(card['exported_at'], seconds=False)}{profile}", str(card.get("checkpoint", ""))))
    return facts


def held_out_figures(metrics: Any) -> list[tuple[str, str]]:
    """The held-out split's headline figures, as (name, formatted value)."""
    if not isinstance(metrics, Mapping):
        return []
    figures = next((metrics[key] for key in ("dev_metrics", "val_metrics") if isinstance(metrics.get(key), Mapping)), {})
    shown = []
    for key, name in _FIGURES.items():
        value = figures.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            shown.append((name, _fraction(value)))
    return shown[:_MAX_FIGURES]


def _parity_fact(parity: Mapping[str, Any]) -> Fact:
    """ONNX against the framework model, per exported graph: passed when within tolerance.
    The figures go to the hover text; the fact itself stays one word per graph."""
    verdicts, details, failed = [], [], False
    for graph, report in parity.items():
        if not isinstance(report, Mapping):
            continue
        diff, tolerance = report.get("max_abs_diff"), report.get("tolerance")
        cosine, required = report.get("min_cosine"), report.get("min_cosine_required")
        ok = (diff is None or tolerance is None or diff <= tolerance) and (
            cosine is None or required is None or cosine >= required)
        failed = failed or not ok
        verdicts.append((graph, "passed" if ok else "FAILED"))
        figures = ", ".join(x for x in (
            f"max |Δ| {diff:.1e} (tolerance {tolerance:g})" if isinstance(diff, (int, float)) and tolerance else "",
            f"min cosine {cosine:.6f}" if isinstance(cosine, (int, float)) else "",
        ) if x)
        details.append(f"{graph}: {figures}")
    if len({v for _, v in verdicts}) == 1:  # one verdict for all graphs: say it once
        text = verdicts[0][1] + (f" ({len(verdicts)} graphs)" if len(verdicts) > 1 else "")
    else:
        text = "; ".join(f"{graph} {verdict}" for graph, verdict in verdicts)
    return Fact("ONNX parity", text, "; ".join(details), bad=failed)


def _int8_fact(int8: Any) -> Fact:
    if not isinstance(int8, Mapping) or not int8:
        return Fact("INT8", "no (FP32 weights)")
    sizes, details = [], []
    for graph, report in int8.items():
        if not isinstance(report, Mapping):
            continue
        bits = []
        if isinstance(report.get("int8_bytes"), int) and isinstance(report.get("fp32_bytes"), int):
            sizes.append(f"{_megabytes(report['int8_bytes'])} (FP32 {_megabytes(report['fp32_bytes'])})")
        if isinstance(report.get("min_cosine"), (int, float)):
            bits.append(f"min cosine to FP32 {report['min_cosine']:.4f}")
        before, after = report.get("fp32_accuracy"), report.get("int8_accuracy")
        if isinstance(before, (int, float)) and isinstance(after, (int, float)):
            bits.append(f"held-out accuracy {_fraction(before)} → {_fraction(after)}")
        details.append(f"{graph}: " + ", ".join(bits))
    return Fact("INT8", "yes" + (f", {' + '.join(sizes)}" if sizes else ""), "; ".join(details))


def card_json(card: Mapping[str, Any]) -> str:
    return json.dumps(card, indent=2, ensure_ascii=False, default=str)


def when(value: Any, seconds: bool = True) -> str:
    """ISO 8601 or Unix seconds -> 'YYYY-MM-DD HH:MM[:SS] UTC'; anything else as given."""
    if value is None or value == "":
        return "—"
    try:
        moment = datetime.fromtimestamp(float(value), timezone.utc)
    except (TypeError, ValueError):
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            return str(value)
        moment = moment.replace(tzinfo=moment.tzinfo or timezone.utc).astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")


# Folder names that say where a model sits, not which model it is ("…/all-MiniLM-L6-v2/model").
_GENERIC_PARTS = {"model", "models", "checkpoint", "checkpoints", "ckpt", "best", "final", "last", "export",
                  "exported", "pretrained", "hf", "weights", "snapshots", "main", "base", "encoder", "tokenizer"}
_HF_CACHE = re.compile(r"^models--(.+)$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def base_name(value: Any) -> str:
    """A base model as people name it: a hub id as it is, a Hugging Face cache folder as its
    hub id, a local path as its most telling folder (not "model" or a commit hash)."""
    text = str(value)
    if "/" not in text and "\\" not in text:
        return text
    if text.count("/") == 1 and not text.startswith(("/", ".", "~")):  # a hub id: org/name
        return text
    parts = [p for p in PurePath(text.replace("\\", "/")).parts if p not in ("/", "")]
    for part in reversed(parts):
        cached = _HF_CACHE.match(part)
        if cached:
            return cached.group(1).replace("--", "/")
        if part.lower() not in _GENERIC_PARTS and not _COMMIT.match(part):
            return part
    return parts[-1] if parts else text


def _short_path(value: Any) -> str:
    """A path's last part (the model or file name); other strings as they are."""
    text = str(value)
    return PurePath(text).name or text if "/" in text or "\\" in text else text


def _fraction(value: float) -> str:
    return f"{100 * value:.1f}%" if 0.0 <= value <= 1.0 else f"{value:.3g}"


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
