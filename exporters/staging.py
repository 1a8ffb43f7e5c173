"""Safe changes to a model repository: one writer at a time, every byte written on the
repository's own filesystem first, then committed by renames that are undone on failure.

Why the staging folder lives *inside* the repository: a repository is often its own mount
point (a Docker volume, a Kubernetes PVC, a tmpfs), and rename(2) cannot cross
filesystems (EXDEV, "Invalid cross-device link"), so staging beside it fails there. Its
name starts with a dot and it holds no `config.pbtxt`: mmserve's launcher loads only the
models it names (`--model-control-mode=explicit`) and `repository_models()` skips
dot-folders. Triton 2.51 itself does not skip them: its repository index lists every
sub-folder, and `--model-control-mode=poll|none` would try to load one, so a folder left
by a killed export is removed by the next writer (under the lock, when no writer is left).

Why commit is rename-only: everything that needs space (weights, configs, cards) is
written while staging, so a full disk (ENOSPC) or a read-only mount is met before the
repository changes, and the renames that follow need no data blocks.
"""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from mmserve.exporters.onnx_export import ExportError

LOCK_FILE = ".mmserve.lock"
STAGING_PREFIX = ".mmserve-staging-"

_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}
_FULL = {errno.ENOSPC, errno.EDQUOT}


class RepositoryError(ExportError):
    """The model repository could not be changed; the repository was left as it was."""


class RepositoryNotWritableError(RepositoryError):
    """The repository (or its parent, to create it) is read-only or owned by someone else."""


class RepositoryFullError(RepositoryError):
    """The repository's filesystem ran out of space (or quota) while an export was staged."""


def repository_error(error: OSError, repository: Path, doing: str) -> RepositoryError:
    """A user-facing error for an OSError met while changing `repository`."""
    what = error.strerror or str(error)
    where = f" ({error.filename})" if error.filename else ""
    unchanged = "The repository was not changed."
    if error.errno in _NOT_WRITABLE:
        return RepositoryNotWritableError(
            f"cannot write to the model repository {repository} while {doing}: {what}{where}. "
            f"Export into a writable folder (--repository DIR), or make this one writable "
            f"(a read-only volume or mount, or a folder owned by another user). {unchanged}"
        )
    if error.errno in _FULL:
        return RepositoryFullError(
            f"no space left on the filesystem of the model repository {repository} while {doing}: "
            f"{what}{where}; {_free_space(repository)} free. Free some space (`mmserve export ... --keep N` "
            f"keeps fewer old versions) or export to another --repository. {unchanged}"
        )
    return RepositoryError(f"could not change the model repository {repository} while {doing}: {what}{where}. {unchanged}")


def _free_space(path: Path) -> str:
    try:
        return f"{shutil.disk_usage(path).free / 1e6:.1f} MB"
    except OSError:
        return "unknown"


def ensure_writable(repository: Path) -> Path:
    """Create the repository if needed and prove a file can be written in it.

    Called before any slow work (ONNX export, parity, quantization) so a read-only target
    fails in a second, not after minutes. Returns the resolved path.
    """
    repository = Path(repository).resolve()
    try:
        repository.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".mmserve-probe-", dir=repository)
        try:
            os.write(fd, b"probe")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as error:
        raise repository_error(error, repository, "checking that it is writable") from error
    return repository


@contextmanager
def locked(repository: Path) -> Iterator[None]:
    """One writer (export or version switch) at a time per repository; a second one waits.

    flock is released by the kernel when the process dies, so a killed export never
    leaves the repository locked.
    """
    try:
        fd = os.open(repository / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise repository_error(error, repository, "taking its lock") from error
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@dataclass
class _Move:
    """One planned change: `staged` replaces `target` (None: `target` is removed)."""

    staged: Path | None
    target: Path


@dataclass
class _Done:
    """What a commit did for one move, so it can be reversed."""

    move: _Move
    retired: Path | None = None  # where the previous target went
    placed: bool = False
    created: list[Path] = field(default_factory=list)  # folders made for the target, outermost first


class Staging:
    """A folder inside the repository to build changes in, and the renames that commit them.

    `stage(...)` paths are filled by the caller; `replace`/`remove` plan the renames;
    `commit()` runs them in order and, on any failure, reverses the ones done.
    """

    def __init__(self, repository: Path) -> None:
        self.repository = repository
        try:
            self.root = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=repository))
        except OSError as error:
            raise repository_error(error, repository, "creating its staging folder") from error
        self._moves: list[_Move] = []
        self._count = 0

    def stage(self, *parts: str) -> Path:
        """A fresh path inside the staging folder (its parent exists)."""
        self._count += 1
        path = self.root.joinpath(f"{self._count:04d}", *parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_file(self, target: Path, content: bytes) -> None:
        """Stage `content` now (where the disk can fill up) to replace `target` at commit."""
        staged = self.stage(target.name)
        staged.write_bytes(content)
        self.replace(staged, target)

    def replace(self, staged: Path, target: Path) -> None:
        self._moves.append(_Move(staged, target))

    def remove(self, target: Path) -> None:
        self._moves.append(_Move(None, target))

    @property
    def planned(self) -> int:
        return len(self._moves)

    def commit(self) -> None:
        """Run the planned renames in order; on failure undo them and raise RepositoryError."""
        moves, self._moves = self._moves, []
        done: list[_Done] = []
        try:
            for move in moves:
                step = _Done(move)
                done.append(step)
                if move.target.exists() or move.target.is_symlink():
                    step.retired = self.stage("retired", move.target.name)
                    os.rename(move.target, step.retired)
                if move.staged is not None:
                    step.created = _make_parents(move.target.parent, self.repository)
                    os.rename(move.staged, move.target)
                    step.placed = True
        except BaseException as error:  # an OSError, or Ctrl-C between two renames
            self._undo(done)
            if isinstance(error, OSError):
                raise repository_error(error, self.repository, f"moving {move.target.name} into place") from error
            raise

    def _undo(self, done: list[_Done]) -> None:
        for step in reversed(done):
            try:
                if step.placed and step.move.staged is not None:
                    os.rename(step.move.target, step.move.staged)
                if step.retired is not None:
                    os.rename(step.retired, step.move.target)
                for folder in reversed(step.created):
                    folder.rmdir()
            except OSError:
                continue  # best effort: the remaining steps are still reversed

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _make_parents(folder: Path, repository: Path) -> list[Path]:
    """mkdir -p inside the repository, returning the folders it created (outermost first)."""
    missing = []
    while not folder.exists() and folder != repository:
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir()
    return list(reversed(missing))


@contextmanager
def staging(repository: Path) -> Iterator[Staging]:
    """Lock the repository, clear what killed writers left, and give a Staging that is
    always removed afterwards (committed or not)."""
    with locked(repository):
        for leftover in repository.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        stage = Staging(repository)
        try:
            yield stage
        except OSError as error:
            if not _about_the_repository(error, repository):
                raise  # e.g. a missing source file: the caller's problem, in its own words
            raise repository_error(error, repository, "staging the export") from error
        finally:
            stage.close()


def _about_the_repository(error: OSError, repository: Path) -> bool:
    """A full disk anywhere, or a permission error on a path inside the repository."""
    if error.errno in _FULL:
        return True
    inside = error.filename is not None and Path(os.fsdecode(error.filename)).is_relative_to(repository)
    return error.errno in _NOT_WRITABLE and inside
