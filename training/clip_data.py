"""Reading vision-text data: (image path, caption[, label]) rows, class lists, prompt templates.

Pure Python plus Pillow (no torch), so the readers are cheap to test and their
errors point at the file and line a user has to fix.

Accepted files:
* CSV or TSV with a header naming an image column (``image``, ``filepath``, ``path``
  or ``file``) and a caption column (``caption``, ``title`` or ``text``) — open_clip's
  trainer uses ``filepath``/``title`` with tabs, so its CSVs work as they are — and
  optionally ``label`` (the class of the image, for zero-shot evaluation).
* JSONL with the same keys per line.
Relative image paths are resolved against the data file's folder.
"""
from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mmserve.training.errors import DataError

IMAGE_KEYS = ("image", "filepath", "path", "file", "image_path")
CAPTION_KEYS = ("caption", "title", "text")
LABEL_KEY = "label"
DEFAULT_TEMPLATES = ("a photo of a {}.",)


@dataclass(frozen=True)
class ImageText:
    image: Path
    caption: str
    label: str | None = None


def read_pairs(path: str | Path, check_files: bool = True) -> list[ImageText]:
    """Every (image, caption[, label]) row of a CSV/TSV/JSONL file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".jsonl"):
        raise DataError(f"{path}: unsupported file type {suffix or '(none)'!r}; use .csv/.tsv (image,caption[,label]) or .jsonl")
    try:
        rows = list(_read_jsonl(path)) if suffix == ".jsonl" else list(_read_table(path))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte offset {exc.start})") from exc
    if not rows:
        raise DataError(f"{path}: no rows")
    pairs = []
    for where, image, caption, label in rows:
        image_path = Path(image)
        if not image_path.is_absolute():
            image_path = path.parent / image_path
        if check_files and not image_path.is_file():
            raise DataError(f"{where}: image file {image_path} does not exist")
        if not caption.strip():
            raise DataError(f"{where}: empty caption")
        pairs.append(ImageText(image_path, caption.strip(), label.strip() if label and label.strip() else None))
    labelled = sum(p.label is not None for p in pairs)
    if 0 < labelled < len(pairs):
        raise DataError(f"{path}: {len(pairs) - labelled} of {len(pairs)} rows have no label; label all rows or none")
    return pairs


def _pick(keys: Sequence[str], header: Sequence[str], what: str, where: str) -> str:
    lowered = {h.strip().lower(): h for h in header if h}
    for key in keys:
        if key in lowered:
            return lowered[key]
    raise DataError(f"{where}: no {what} column (one of {', '.join(keys)}); header is {list(header)}")


def _read_table(path: Path):
    with path.open(newline="", encoding="utf-8-sig") as f:
        first = f.readline()
        f.seek(0)
        delimiter = "\t" if path.suffix.lower() == ".tsv" or first.count("\t") > first.count(",") else ","
        reader = csv.DictReader(f, delimiter=delimiter)
        header = reader.fieldnames or []
        image_key = _pick(IMAGE_KEYS, header, "image", f"{path}:1")
        caption_key = _pick(CAPTION_KEYS, header, "caption", f"{path}:1")
        label_key = next((h for h in header if h and h.strip().lower() == LABEL_KEY), None)
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row:
                raise DataError(f"{where}: more fields than the header has (quote captions that contain the delimiter)")
            if row[image_key] is None or row[caption_key] is None:
                raise DataError(f"{where}: fewer fields than the header has")
            yield where, row[image_key].strip(), row[caption_key], row.get(label_key) if label_key else None


def _read_jsonl(path: Path):
    with path.open(encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected an object with image and caption keys")
            image = next((row[k] for k in IMAGE_KEYS if k in row), None)
            caption = next((row[k] for k in CAPTION_KEYS if k in row), None)
            if not isinstance(image, str) or not isinstance(caption, str):
                raise DataError(f'{where}: expected string fields like {{"image": "a.jpg", "caption": "a cat"}}')
            label = row.get(LABEL_KEY)
            if label is not None and not isinstance(label, str):
                raise DataError(f"{where}: 'label' must be a string")
            yield where, image, caption, label


def read_classes(path: str | Path) -> list[str]:
    """One class name per line (blank lines and '#' comments skipped); order kept, no duplicates."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    classes = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if len(classes) < 2:
        raise DataError(f"{path}: zero-shot evaluation needs at least two classes, found {len(classes)}")
    duplicates = sorted({c for c in classes if classes.count(c) > 1})
    if duplicates:
        raise DataError(f"{path}: duplicate classes {duplicates}")
    return classes


def read_templates(path: str | Path) -> list[str]:
    """Prompt templates with one '{}' each: a JSON list, or one template per line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    if path.suffix.lower() == ".json":
        try:
            templates = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: invalid JSON ({exc.msg})") from exc
        if not isinstance(templates, list) or not all(isinstance(t, str) for t in templates):
            raise DataError(f"{path}: expected a JSON list of strings")
    else:
        templates = [line.strip() for line in text.splitlines() if line.strip()]
    return check_templates(templates, str(path))


def check_templates(templates: Sequence[str], where: str = "templates") -> list[str]:
    templates = list(templates)
    if not templates:
        raise DataError(f"{where}: no prompt templates")
    for template in templates:
        if template.count("{}") != 1:
            raise DataError(f"{where}: template {template!r} must contain '{{}}' exactly once (where the label goes)")
    return templates


def check_labels_known(pairs: Sequence[ImageText], classes: Sequence[str], where: str) -> None:
    unknown = sorted({p.label for p in pairs if p.label is not None} - set(classes))
    if unknown:
        raise DataError(f"{where}: labels {unknown[:10]} are not in the class list ({len(classes)} classes)")


def split_val(pairs: Sequence[ImageText], fraction: float, seed: int) -> tuple[list[ImageText], list[ImageText]]:
    """Seeded random split into (train, val)."""
    if not 0 < fraction < 1:
        raise ValueError(f"val fraction must be between 0 and 1, got {fraction}")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(len(pairs) * fraction)))
    if n_val >= len(pairs):
        raise DataError(f"{len(pairs)} rows are too few to split off a validation set; pass --val-data")
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [pairs[i] for i in train], [pairs[i] for i in val]
