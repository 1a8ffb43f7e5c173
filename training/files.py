"""Crash-safe training output: a kill at any instant leaves the old version or the new one, never a torn file.

Everything a training run writes goes through here:

* one file (metrics.json, dev.jsonl, state.json, ...): written to a temporary name in
  the same folder, flushed and fsynced, then `os.replace`d over the old file (atomic on
  POSIX and Windows) and the folder entry fsynced;
* a checkpoint (several files in the run's folder, which is the layout exporters read):
  written whole into a staging folder inside it, fsynced, marked complete (the commit
  point), then moved in file by file. A run killed during the move finishes it first
  thing next time (`finish_interrupted`), so the folder never mixes two epochs;
* a folder replaced as a whole (the resume state `last/`): the new one is written
  beside it, the old one is renamed away and the new one renamed in; a kill between
  the two renames is repaired by putting the old one back.

JSON is written by `write_json`, which also knows the values configs hold (paths), so
a `Path` where a config says `str` can never crash a run after its first epoch.
Standard library only: importing this costs nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import Any

STAGING_DIR = ".incoming"  # a checkpoint being written, inside the run's folder
_COMPLETE_MARKER = ".complete"  # present once every staged file is on disk: the commit point
_OLD_SUFFIX = ".old"
_PARTIAL_SUFFIX = ".partial"


def json_value(value: Any) -> Any:
    """`json.dumps(default=...)`: paths as strings, sets as sorted lists, numpy scalars as numbers."""
    if isinstance(value, PurePath):
        return os.fspath(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable: {value!r}")


def dumps_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=json_value) + "\n"


def read_json_if_present(file: Path) -> Any | None:
    """A JSON file a checkpoint may hold (its training config): None when absent, a
    CheckpointError naming the file when it is not valid JSON."""
    from mmserve.training.errors import CheckpointError

    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file}: invalid JSON ({exc.msg})") from exc


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically: readers and a later run see the old bytes or the new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would differ from what write_text gives
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json(path: Path, value: Any) -> None:
    """Atomically write `value` as indented UTF-8 JSON (paths become strings)."""
    write_text_atomic(path, dumps_json(value))


def fsync_folder(folder: Path) -> None:
    """Make renames and new entries in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows: folders cannot be opened; NTFS journals the rename itself
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file below `folder`, then every folder (libraries' save_pretrained does not)."""
    folders = [folder]
    for path in folder.rglob("*"):
        if path.is_dir():
            folders.append(path)
        elif path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    for each in folders:
        fsync_folder(each)


@contextmanager
def staged_update(target: Path, move_last: Sequence[str] = ()) -> Iterator[Path]:
    """Yield an empty staging folder; when the block succeeds its files replace `target`'s.

    Files named in `move_last` (e.g. metrics.json, which readers take as "this checkpoint
    is finished") are moved in after the others. If the block raises, nothing changes.
    """
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    staging = target / STAGING_DIR
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_tree(staging)
    write_bytes_atomic(staging / _COMPLETE_MARKER, b"\n".join(name.encode() for name in move_last))
    _move_in(staging, target)


def finish_interrupted(target: Path, swapped: Sequence[str] = ()) -> None:
    """Complete a staged update that reached its commit point; discard one that did not.

    Also repairs the folders named in `swapped` (see `replace_folder`): one killed between
    its two renames gets its old version back, an unfinished replacement is removed; and
    removes the temporary files of single-file writes killed before their rename.
    """
    target = Path(target)
    staging = target / STAGING_DIR
    if staging.is_dir():
        if (staging / _COMPLETE_MARKER).is_file():
            _move_in(staging, target)
        else:
            shutil.rmtree(staging, ignore_errors=True)
    for temporary in target.glob(".*.partial"):  # a `write_bytes_atomic` killed before its rename
        if temporary.is_file():
            temporary.unlink(missing_ok=True)
    for name in swapped:
        current = target / name
        old = current.with_name(name + _OLD_SUFFIX)
        if old.is_dir() and not current.exists():
            os.replace(old, current)
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(current.with_name(name + _PARTIAL_SUFFIX), ignore_errors=True)


def _move_in(staging: Path, target: Path) -> None:
    marker = staging / _COMPLETE_MARKER
    last = set(marker.read_text(encoding="utf-8").split()) if marker.is_file() else set()
    files = [p for p in staging.rglob("*") if p.is_file() and p != marker]
    files.sort(key=lambda p: (p.name in last, str(p)))
    touched = {target}
    for path in files:
        destination = target / path.relative_to(staging)
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, destination)
        touched.add(destination.parent)
    for folder in touched:
        fsync_folder(folder)
    shutil.rmtree(staging, ignore_errors=True)  # the marker last: until here a restart rolls forward
    fsync_folder(target)


def partial_folder(target: Path) -> Path:
    """An empty folder beside `target` to write its replacement into (see `replace_folder`)."""
    partial = target.with_name(target.name + _PARTIAL_SUFFIX)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def replace_folder(partial: Path, target: Path) -> None:
    """Put the fully written folder `partial` in place of `target` (see `finish_interrupted`)."""
    fsync_tree(partial)
    old = target.with_name(target.name + _OLD_SUFFIX)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(partial, target)
    fsync_folder(target.parent)
    shutil.rmtree(old, ignore_errors=True)
