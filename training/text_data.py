"""Reading text training data: (text, label) files for classification, CoNLL for NER.

Pure Python (no torch, no tokenizer) so loaders are cheap to test and their errors
point at the exact file and line a user has to fix.
"""
from __future__ import annotations

import csv
import json
import random
import re
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from mmserve.training.errors import DataError

T = TypeVar("T")

CLASSIFICATION_SUFFIXES = (".csv", ".jsonl")
_TAG = re.compile(r"^(?:O|[BI]-\S+)$")
IGNORE_INDEX = -100  # label id that cross-entropy skips (sub-tokens, special tokens, padding)


@dataclass(frozen=True)
class TextExample:
    text: str
    label: str


@dataclass(frozen=True)
class TaggedSentence:
    """One CoNLL sentence: words and their BIO tags (same length)."""

    tokens: tuple[str, ...]
    tags: tuple[str, ...]


def read_classification(path: str | Path) -> list[TextExample]:
    """Read (text, label) examples from a CSV (header with text,label) or a JSONL file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CLASSIFICATION_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix or '(none)'!r}; use .csv (text,label) or .jsonl")
    try:
        examples = _read_csv(path) if suffix == ".csv" else _read_jsonl(path)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte offset {exc.start})") from exc
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def _read_csv(path: Path) -> list[TextExample]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in ("text", "label") if c not in header]
        if missing:
            raise DataError(f"{path}:1: header must name columns 'text' and 'label' (missing {missing}, got {header})")
        examples = []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row:
                raise DataError(f"{where}: more fields than the header has (quote texts that contain commas)")
            if row["text"] is None or row["label"] is None:
                raise DataError(f"{where}: fewer fields than the header has")
            examples.append(_example(row["text"], row["label"], where))
    return examples


def _read_jsonl(path: Path) -> list[TextExample]:
    examples = []
    with path.open(encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON ({exc.msg})") from exc
            if not isinstance(row, dict) or "text" not in row or "label" not in row:
                raise DataError(f'{where}: expected an object like {{"text": ..., "label": ...}}')
            label = row["label"]
            if isinstance(label, int) and not isinstance(label, bool):
                label = str(label)
            if not isinstance(row["text"], str) or not isinstance(label, str):
                raise DataError(f"{where}: 'text' must be a string and 'label' a string or integer")
            examples.append(_example(row["text"], label, where))
    return examples


def _example(text: str, label: str, where: str) -> TextExample:
    text, label = text.strip(), label.strip()
    if not text:
        raise DataError(f"{where}: empty text")
    if not label:
        raise DataError(f"{where}: empty label")
    return TextExample(text, label)


def read_conll(path: str | Path) -> list[TaggedSentence]:
    """Read a CoNLL-2003 style file: `token ... tag` per line, blank line between sentences.

    The tag is the last column; `-DOCSTART-` lines are skipped; IOB1 tags are converted
    to BIO so the model always learns one scheme.
    """
    path = Path(path)
    sentences: list[TaggedSentence] = []
    tokens: list[str] = []
    tags: list[str] = []

    def flush() -> None:
        if tokens:
            sentences.append(TaggedSentence(tuple(tokens), tuple(iob1_to_bio(tags))))
            tokens.clear()
            tags.clear()

    try:
        with path.open(encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, 1):
                fields = line.split()
                if not fields:
                    flush()
                    continue
                if fields[0] == "-DOCSTART-":
                    flush()
                    continue
                if len(fields) < 2:
                    raise DataError(f"{path}:{lineno}: expected 'token ... tag', got one column {line.strip()!r}")
                if not _TAG.match(fields[-1]):
                    raise DataError(f"{path}:{lineno}: tag {fields[-1]!r} is not O, B-TYPE or I-TYPE")
                tokens.append(fields[0])
                tags.append(fields[-1])
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte offset {exc.start})") from exc
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    flush()
    if not sentences:
        raise DataError(f"{path}: no sentences")
    return sentences


def iob1_to_bio(tags: Sequence[str]) -> list[str]:
    """IOB1 -> BIO: an I-X that starts an entity (after O or another type) becomes B-X.

    Already-BIO input comes back unchanged, so this is applied to every file.
    """
    out = []
    previous_type = None
    for tag in tags:
        if tag == "O":
            previous_type = None
            out.append(tag)
            continue
        prefix, entity_type = tag.split("-", 1)
        if prefix == "I" and entity_type != previous_type:
            tag = f"B-{entity_type}"
        previous_type = entity_type
        out.append(tag)
    return out


def classification_labels(examples: Sequence[TextExample]) -> list[str]:
    """Label list in model output order: sorted alphabetically."""
    return sorted({e.label for e in examples})


def ner_labels(sentences: Sequence[TaggedSentence]) -> list[str]:
    """Tag list in model output order: "O", then B-/I- for each entity type, types sorted."""
    types = sorted({tag[2:] for s in sentences for tag in s.tags if tag != "O"})
    return ["O"] + [f"{prefix}-{t}" for t in types for prefix in "BI"]


def check_labels_known(labels: Sequence[str], found: Sequence[str], path: str | Path) -> None:
    """Labels in evaluation data must be ones the model can predict."""
    unknown = sorted(set(found) - set(labels))
    if unknown:
        raise DataError(f"{path}: labels {unknown} do not occur in the training data (known: {list(labels)})")


def split_dev(
    items: Sequence[T], fraction: float, seed: int, key: Callable[[T], Hashable] | None = None
) -> tuple[list[T], list[T]]:
    """Seeded split into (train, dev); stratified by `key` so every class keeps its share.

    A class with at least two items keeps at least one in each part, so no dev label is
    unseen in training.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"dev fraction must be between 0 and 1, got {fraction}")
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        groups[key(item) if key else None].append(i)
    rng = random.Random(seed)
    dev_idx: set[int] = set()
    for group_key in sorted(groups, key=repr):
        members = groups[group_key]
        rng.shuffle(members)
        n_dev = round(len(members) * fraction)
        if len(members) >= 2:
            n_dev = min(max(n_dev, 1), len(members) - 1)
        dev_idx.update(members[:n_dev])
    if not dev_idx or len(dev_idx) == len(items):
        raise DataError(f"cannot split {len(items)} examples into train and dev with fraction {fraction}")
    train = [item for i, item in enumerate(items) if i not in dev_idx]
    dev = [item for i, item in enumerate(items) if i in dev_idx]
    return train, dev


def align_word_labels(word_ids: Sequence[int | None], word_label_ids: Sequence[int]) -> list[int]:
    """Per-sub-token labels: a word's label on its first sub-token, IGNORE_INDEX elsewhere.

    `word_ids` is a fast tokenizer's `word_ids()` (None for special tokens). The server
    decodes entities by the first sub-token too, so training and serving agree.
    """
    labels = []
    previous = None
    for word_id in word_ids:
        if word_id is None or word_id == previous:
            labels.append(IGNORE_INDEX)
        else:
            labels.append(word_label_ids[word_id])
        previous = word_id
    return labels
