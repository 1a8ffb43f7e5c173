"""A product's examples, checked before anything is trained: read, validated, split.

Text classification takes a CSV `text,label`; audio classification a folder (or a zip)
with one sub-folder of clips per label, or a CSV `path,label`. Every problem found is
reported at once, each with where it is and what to do, so a user fixes a file in one
pass: too few examples of a label, duplicate rows, one text under two labels, empty
cells, unreadable clips, held-out rows that are also training rows.

The split is stratified and seeded: each label keeps its share in the held-out part and
at least MIN_TRAIN_PER_LABEL examples for training. Both parts are written as CSVs the
training commands read (`mmserve train text|speech --data ... --dev-data ...`).
"""
from __future__ import annotations

import csv
import hashlib
import io
import random
import shutil
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

from mmserve.kinds import InputShape, KindInfo

MIN_TRAIN_PER_LABEL = 2  # a classifier needs at least two examples of a class to learn it
MIN_HELDOUT_PER_LABEL = 1  # every label is measured
HELDOUT_FRACTION = 0.2
MAX_TEXT_CHARS = 20_000  # a training text longer than this is a pasted document, not an example
MAX_ZIP_BYTES = 2 << 30  # what a zip of clips may unpack to (bounded before it is unpacked)
MAX_ZIP_MEMBERS = 100_000
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
PROBLEMS_SHOWN = 12


class DataProblem(ValueError):
    """The examples cannot become a product as they are; the message lists every problem."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        shown = "\n  - ".join(self.problems[:PROBLEMS_SHOWN])
        more = f"\n  ... and {len(self.problems) - PROBLEMS_SHOWN} more" if len(self.problems) > PROBLEMS_SHOWN else ""
        super().__init__(f"{source}: {len(self.problems)} problem(s) to fix before training:\n  - {shown}{more}")


@dataclass(frozen=True)
class Example:
    item: str  # the text, or the clip's path
    label: str
    where: str  # "file:line" or the clip's path, for messages
    key: str  # what makes two examples the same (normalised text, clip content hash)


@dataclass(frozen=True)
class Examples:
    train: tuple[Example, ...]
    heldout: tuple[Example, ...]
    labels: tuple[str, ...]  # sorted: the classifier's output order

    def counts(self) -> dict[str, tuple[int, int]]:
        """Per label: (train, held-out) examples."""
        train, heldout = Counter(e.label for e in self.train), Counter(e.label for e in self.heldout)
        return {label: (train[label], heldout[label]) for label in self.labels}


def read_examples(kind: KindInfo, data: Path, unpack_to: Path) -> list[Example]:
    """Every example of `data` for `kind`, or DataProblem listing what is wrong with it."""
    data = Path(data)
    if not data.exists():
        raise DataProblem(str(data), ["no such file or folder"])
    if kind.input is InputShape.TEXT:
        return _read_text_csv(data)
    if kind.input is InputShape.AUDIO:
        return _read_clips(data, unpack_to)
    raise DataProblem(str(data), [f"{kind.title} products cannot be made from examples yet (text or audio classification can)"])


def prepare(
    kind: KindInfo, data: Path, folder: Path, heldout: Path | None = None, seed: int = 42,
    fraction: float = HELDOUT_FRACTION,
) -> Examples:
    """Read and check `data` (and `heldout`), split when no held-out file is given, and write
    train.csv and heldout.csv into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    examples = read_examples(kind, data, folder / "clips")
    problems = _problems(examples, str(data))
    if heldout is None:
        counts = Counter(e.label for e in examples)
        needed = MIN_TRAIN_PER_LABEL + MIN_HELDOUT_PER_LABEL
        problems += [
            f"label {label!r} has {n} example(s); it needs at least {needed} ({MIN_TRAIN_PER_LABEL} to train on, "
            f"{MIN_HELDOUT_PER_LABEL} held out to measure it): add examples, or give a held-out file with --heldout"
            for label, n in sorted(counts.items()) if n < needed
        ]
        if problems:
            raise DataProblem(str(data), problems)
        train, held = stratified_split(examples, fraction, seed)
    else:
        held = read_examples(kind, heldout, folder / "heldout-clips")
        problems += _problems(held, str(heldout))
        counts = Counter(e.label for e in examples)
        problems += [
            f"label {label!r} has {n} training example(s); it needs at least {MIN_TRAIN_PER_LABEL}"
            for label, n in sorted(counts.items()) if n < MIN_TRAIN_PER_LABEL
        ]
        unknown = sorted({e.label for e in held} - set(counts))
        if unknown:
            problems.append(f"{heldout}: labels not in the training data: {', '.join(map(repr, unknown))}")
        seen = {e.key: e for e in examples}
        problems += [
            f"{e.where}: also a training example ({seen[e.key].where}); a held-out example must be new to be a measure"
            for e in held if e.key in seen
        ]
        if problems:
            raise DataProblem(f"{data} / {heldout}", problems)
        train = examples
    labels = tuple(sorted({e.label for e in train}))
    if len(labels) < 2:
        raise DataProblem(str(data), [f"only one label ({labels[0] if labels else 'none'}); a classifier needs two or more"])
    result = Examples(tuple(train), tuple(held), labels)
    header = "text" if kind.input is InputShape.TEXT else "path"
    write_csv(folder / "train.csv", header, result.train)
    write_csv(folder / "heldout.csv", header, result.heldout)
    return result


def stratified_split(examples: Sequence[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, held-out): per label a seeded `fraction` held out, at least one, leaving at
    least MIN_TRAIN_PER_LABEL to train on."""
    rng = random.Random(seed)
    train: list[Example] = []
    heldout: list[Example] = []
    by_label: dict[str, list[Example]] = {}
    for example in examples:
        by_label.setdefault(example.label, []).append(example)
    for label in sorted(by_label):
        items = by_label[label][:]
        rng.shuffle(items)
        n_held = min(len(items) - MIN_TRAIN_PER_LABEL, max(MIN_HELDOUT_PER_LABEL, round(len(items) * fraction)))
        heldout += items[:n_held]
        train += items[n_held:]
    return train, heldout


def write_csv(path: Path, item_column: str, examples: Sequence[Example]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([item_column, "label"])
        writer.writerows([e.item, e.label] for e in examples)


def read_split(path: Path) -> tuple[list[str], list[str]]:
    """(items, labels) of a train.csv / heldout.csv that `prepare` wrote."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))[1:]
    return [r[0] for r in rows], [r[1] for r in rows]


# --- checks ---------------------------------------------------------------------------------


def _problems(examples: Sequence[Example], source: str) -> list[str]:
    """Duplicates (the same example twice) and conflicts (the same example under two labels)."""
    if not examples:
        return [f"{source} holds no examples"]
    problems = []
    first: dict[str, Example] = {}
    for example in examples:
        earlier = first.setdefault(example.key, example)
        if earlier is example:
            continue
        if earlier.label == example.label:
            problems.append(f"{example.where}: duplicate of {earlier.where} ({example.label!r}); remove one")
        else:
            problems.append(
                f"{example.where}: the same example as {earlier.where} but labelled {example.label!r} there "
                f"{earlier.label!r}; keep the right label only"
            )
    return problems


def _normalised(text: str) -> str:
    return " ".join(text.split()).casefold()


def _read_text_csv(path: Path) -> list[Example]:
    if path.is_dir() or path.suffix.lower() != ".csv":
        raise DataProblem(str(path), ["text classification takes a CSV file with a header `text,label`"])
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataProblem(str(path), [f"not UTF-8 (byte {error.start}); save the file as UTF-8"]) from None
    reader = csv.DictReader(io.StringIO(raw, newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if "text" not in header or "label" not in header:
        raise DataProblem(str(path), [f"line 1: the header must name the columns `text` and `label`, not {header}"])
    reader.fieldnames = header
    examples, problems = [], []
    for row in reader:
        where = f"{path.name}:{reader.line_num}"
        text, label = (row.get("text") or "").strip(), (row.get("label") or "").strip()
        if not text or not label:
            problems.append(f"{where}: empty {'text' if not text else 'label'}; fill it in or remove the row")
        elif len(text) > MAX_TEXT_CHARS:
            problems.append(f"{where}: a text of {len(text):,} characters (at most {MAX_TEXT_CHARS:,}); cut it")
        else:
            examples.append(Example(text, label, where, _normalised(text)))
    if problems:  # with the duplicates and conflicts among the other rows: every problem in one pass
        raise DataProblem(str(path), problems + _problems(examples, str(path)))
    return examples


def _read_clips(source: Path, unpack_to: Path) -> list[Example]:
    if source.is_file() and source.suffix.lower() == ".zip":
        source = _unzip(source, unpack_to)
    if source.is_file() and source.suffix.lower() == ".csv":
        from mmserve.training.speech_data import read_audio_examples

        listed = [(e.path, e.label) for e in read_audio_examples(source)]
    elif source.is_dir():
        listed = _clip_folders(source)
    else:
        raise DataProblem(str(source), ["audio classification takes a folder (or a .zip) with one sub-folder of "
                                        "clips per label, or a CSV `path,label`"])
    examples, problems = [], []
    for path, label in listed:
        problem = _clip_problem(path)
        if problem:
            problems.append(f"{path}: {problem}")
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        examples.append(Example(str(path.resolve()), label, str(path), digest))
    if problems:
        raise DataProblem(str(source), problems)
    return examples


def _clip_folders(root: Path) -> list[tuple[Path, str]]:
    """DIR/<label>/<clip>; a zip whose one top folder holds the label folders is read from there."""
    folders = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith((".", "__"))]
    clips = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES]
    if clips:
        raise DataProblem(str(root), [f"clips directly in the folder ({clips[0].name}, ...): put each in a sub-folder "
                                      "named by its label"])
    if len(folders) == 1 and not any(p.suffix.lower() in AUDIO_SUFFIXES for p in folders[0].iterdir()):
        return _clip_folders(folders[0])
    return [(clip, folder.name) for folder in folders for clip in sorted(folder.iterdir())
            if clip.is_file() and clip.suffix.lower() in AUDIO_SUFFIXES]


def _clip_problem(path: Path) -> str | None:
    """Why a clip cannot be used, or None: it must decode and hold sound."""
    import numpy as np
    import soundfile

    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as error:  # noqa: BLE001 - soundfile raises several types for bad files
        return f"unreadable ({type(error).__name__}: {str(error).strip() or 'not audio'}); re-export it as WAV or FLAC"
    if samples.size == 0:
        return "empty (no samples)"
    if not np.isfinite(samples).all():
        return "holds NaN or infinite samples"
    if rate < 8000:
        return f"sample rate {rate} Hz is below 8 kHz"
    return None


def _unzip(archive: Path, target: Path) -> Path:
    """A zip of clips unpacked into `target`, refusing paths outside it and sizes beyond the bounds
    (checked from the zip's directory before anything is written)."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = [m for m in zipped.infolist() if not m.is_dir()]
            if len(members) > MAX_ZIP_MEMBERS:
                raise DataProblem(str(archive), [f"{len(members):,} files; at most {MAX_ZIP_MEMBERS:,}"])
            total = sum(m.file_size for m in members)
            if total > MAX_ZIP_BYTES:
                raise DataProblem(str(archive), [f"unpacks to {total / 1e9:.1f} GB; at most {MAX_ZIP_BYTES / 1e9:.1f} GB"])
            if target.exists():
                shutil.rmtree(target)
            target.mkdir(parents=True)
            for member in members:
                name = PurePosixPath(member.filename)
                if name.is_absolute() or ".." in name.parts:
                    raise DataProblem(str(archive), [f"{member.filename}: a path outside the archive's folder"])
                if name.parts[0] == "__MACOSX" or name.name.startswith("."):
                    continue
                destination = target.joinpath(*name.parts)
                destination.parent.mkdir(parents=True, exist_ok=True)
                with zipped.open(member) as source, destination.open("wb") as out:
                    shutil.copyfileobj(source, out)
    except zipfile.BadZipFile as error:
        raise DataProblem(str(archive), [f"not a readable zip ({error})"]) from None
    return target
