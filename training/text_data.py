"""Reading text training data: (text, label) files for classification, CoNLL for NER.

Pure Python (no torch, no tokenizer) so loaders are cheap to test and their errors
point at the exact file and line a user has to fix.
"""
from __future__ import annotations

import csv
import json
import logging
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
_LINES_LISTED = 10  # line numbers a data warning lists before "..."

log = logging.getLogger(__name__)


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

    The tag is the last column and every token line has the same number of columns (a
    line that differs is an error naming it: a tag column dropped or added by hand would
    otherwise be read silently). `-DOCSTART-` lines are skipped. An I-X that starts an
    entity (after O or another type: IOB1, or a slip) is read as B-X, so the model always
    learns BIO; one warning per file says how many and where (see `iob1_to_bio`).
    """
    path = Path(path)
    sentences: list[TaggedSentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    tag_lines: list[int] = []
    starts_inside: list[tuple[int, str]] = []  # (line, tag) of each I-X read as B-X
    columns: tuple[int, int] | None = None  # (columns, first line with them)

    def flush() -> None:
        if tokens:
            starts_inside.extend((tag_lines[i], tags[i]) for i in inside_starts(tags))
            sentences.append(TaggedSentence(tuple(tokens), tuple(iob1_to_bio(tags))))
            tokens.clear()
            tags.clear()
            tag_lines.clear()

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
                if columns is None:
                    columns = (len(fields), lineno)
                elif len(fields) != columns[0]:
                    raise DataError(
                        f"{path}:{lineno}: {len(fields)} columns, but line {columns[1]} has {columns[0]}; "
                        f"every token line needs the same columns (token ... tag, tag last): {line.strip()!r}"
                    )
                if not _TAG.match(fields[-1]):
                    raise DataError(f"{path}:{lineno}: tag {fields[-1]!r} is not O, B-TYPE or I-TYPE")
                tokens.append(fields[0])
                tags.append(fields[-1])
                tag_lines.append(lineno)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte offset {exc.start})") from exc
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    flush()
    if not sentences:
        raise DataError(f"{path}: no sentences")
    if starts_inside:
        _warn_inside_starts(path, starts_inside)
    return sentences


def inside_starts(tags: Sequence[str]) -> list[int]:
    """Positions of I-X tags not preceded by B-X or I-X: entities that start with I-."""
    positions = []
    previous_type = None
    for i, tag in enumerate(tags):
        entity_type = None if tag == "O" else tag.split("-", 1)[1]
        if tag.startswith("I-") and entity_type != previous_type:
            positions.append(i)
        previous_type = entity_type
    return positions


def _warn_inside_starts(path: Path, found: Sequence[tuple[int, str]]) -> None:
    first_line, first_tag = found[0]
    entity_type = first_tag[2:]
    more = [line for line, _ in found[1:]]
    shown = ", ".join(map(str, more[:_LINES_LISTED])) + (", ..." if len(more) > _LINES_LISTED else "")
    log.warning(
        "%s:%d: warning: %s with no B-%s or I-%s before it; read as B-%s (a new entity), as seqeval's default "
        "mode scores it and the server decodes it. %d such tag%s in this file%s; if the file is BIO, "
        "check those entities' first words",
        path, first_line, first_tag, entity_type, entity_type, entity_type, len(found),
        "s" if len(found) != 1 else "", f" (also lines {shown})" if more else "",
    )


def iob1_to_bio(tags: Sequence[str]) -> list[str]:
    """IOB1 -> BIO: an I-X that starts an entity (after O or another type) becomes B-X.

    Already-BIO input comes back unchanged, so this is applied to every file. It is the
    reading seqeval's default (non-strict) mode and the server's entity decoder give such
    a tag, so training, scoring and serving agree.
    """
    out = list(tags)
    for i in inside_starts(tags):
        out[i] = "B-" + tags[i][2:]
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
