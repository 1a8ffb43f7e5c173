"""One copy of each encoder's weights per machine, whatever the number of processes using it.

Every Triton Python model is its own process, and a pipeline runs as many as its instance
count: loaded from a plain ONNX file, each onnxruntime session parses the weights onto its
own heap and prepacks them there, so the CLIP trio held the ViT-B-32 image tower four times
and a second instance doubled an encoder's memory (issue 23).

Instead, the first process that loads an encoder on a machine has onnxruntime write the
graph it would run — optimised, with every weight *prepacked for this CPU's kernels* — as an
ONNX file plus an external data file (`session.save_external_prepacked_constant_initializers`),
into a cache keyed by the source's content, the onnxruntime version and the CPU. Every
session then loads that file: onnxruntime memory-maps external data read-only, so all
processes share the same page-cache pages (proportional memory, PSS, counts each once), and
no weight is copied or packed again. Two pipelines whose steps hold the same ONNX bytes (the
image tower of image_embed and zero_shot_image) share one entry even when the repository
holds two copies. Measured on ViT-B-32 (docs/benchmarks.md): the second process adds ~70 MB
(activations, runtime) instead of ~450 MB; latency as with heap weights (prepacked), where
`session.disable_prepacking` alone kept the weights shareable but cost ~40% latency.

The cache folder: MMSERVE_ORT_CACHE, else $XDG_CACHE_HOME/mmserve/onnxruntime, else
~/.cache/mmserve/onnxruntime (a per-user folder under the temp dir when home is not
writable); `MMSERVE_ORT_CACHE=off` loads the plain file. A folder that another user owns or
may write into is never used (its files would be run as our models). Entries unused for
PRUNE_AFTER_DAYS are removed when a new one is written. Any failure falls back to loading the
plain file, with the reason on stderr.
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import platform
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

CACHE_ENV = "MMSERVE_ORT_CACHE"
DISABLED = ("off", "0", "false", "no")
PREPARED_MODEL = "model.onnx"
PREPARED_DATA = "model.data"
DONE_FILE = "prepared.json"  # written last: a folder without it is never loaded
RECIPE = "ort-all+prepacked-external-v1"  # bump when the preparation changes
PRUNE_AFTER_DAYS = 14
_CHUNK = 1 << 22


def cache_root() -> Path | None:
    """The folder prepared models live in, created private to this user; None when disabled or unsafe."""
    setting = os.environ.get(CACHE_ENV, "").strip()
    if setting.lower() in DISABLED:
        return None
    if setting:
        candidates = [Path(setting)]
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        candidates = [Path(xdg) / "mmserve" / "onnxruntime"] if xdg else []
        candidates += [Path.home() / ".cache" / "mmserve" / "onnxruntime",
                       Path(tempfile.gettempdir()) / f"mmserve-{os.getuid()}" / "onnxruntime"]
    for folder in candidates:
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError:
            continue
        if _private(folder):
            return folder
        _warn(f"not sharing encoder weights through {folder}: it must be owned by this user and not writable "
              f"by others (set {CACHE_ENV} to a private folder)")
        if setting:
            return None
    return None


def _private(folder: Path) -> bool:
    info = folder.stat()
    return info.st_uid == os.getuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def cache_key(onnx_path: Path) -> str:
    """Content of the model (and of its external data files), onnxruntime's version and this CPU."""
    import onnxruntime

    digest = hashlib.sha256()
    for path in [onnx_path, *_external_files(onnx_path)]:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)
    digest.update(f"\0{onnxruntime.__version__}\0{RECIPE}\0{cpu_signature()}".encode())
    return digest.hexdigest()[:40]


def _external_files(onnx_path: Path) -> list[Path]:
    """Files beside the model named after it (model.onnx.data, model.onnx_data): its external weights."""
    return sorted(p for p in onnx_path.parent.iterdir()
                  if p != onnx_path and p.name.startswith(onnx_path.name) and p.is_file())


def cpu_signature() -> str:
    """What the prepacked layouts depend on: the machine and its instruction-set flags."""
    flags = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line.split(":", 1)[1].strip()
                break
    return f"{platform.machine()}:{hashlib.sha256(flags.encode()).hexdigest()[:16]}"


def prepared_model(onnx_path: Path) -> Path | None:
    """The shareable copy of `onnx_path` (prepared now when this machine has none); None: use the plain file."""
    root = cache_root()
    if root is None:
        return None
    try:
        folder = root / cache_key(onnx_path)
        if not (folder / DONE_FILE).is_file():
            with _locked(root / f"{folder.name}.lock"):  # one process prepares, the others wait for it
                if not (folder / DONE_FILE).is_file():
                    shutil.rmtree(folder, ignore_errors=True)  # left half-written by a crash
                    _prepare(onnx_path, folder)
                    _prune(root, keep=folder)
        os.utime(folder / DONE_FILE)  # last use, for pruning
        return folder / PREPARED_MODEL
    except Exception as error:  # noqa: BLE001 - sharing is an optimisation: the plain file always works
        _warn(f"loading {onnx_path} without shared weights: {type(error).__name__}: {error}")
        return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _prepare(onnx_path: Path, folder: Path) -> None:
    """onnxruntime's optimised graph of `onnx_path` with its prepacked weights in an external file."""
    import onnxruntime as ort

    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix=".preparing-", dir=folder.parent))
    try:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = 1
        options.log_severity_level = 3  # the "hardware specific" warning: this copy never leaves this CPU (key)
        options.optimized_model_filepath = str(scratch / PREPARED_MODEL)
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", PREPARED_DATA)
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        options.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        del session
        _release_heap()  # the preparing session's weights were on this process's heap
        if not (scratch / PREPARED_MODEL).is_file():
            raise RuntimeError("onnxruntime wrote no optimised model")
        info = {"source": str(onnx_path), "recipe": RECIPE, "seconds": round(time.perf_counter() - started, 2),
                "bytes": sum(p.stat().st_size for p in scratch.iterdir())}
        (scratch / DONE_FILE).write_text(json.dumps(info), encoding="utf-8")
        os.replace(scratch, folder)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)


def _release_heap() -> None:
    """Give the freed weights back to the system (glibc keeps freed heap otherwise)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _prune(root: Path, keep: Path) -> None:
    """Remove entries no process has loaded for PRUNE_AFTER_DAYS (their last use is DONE_FILE's mtime)."""
    oldest = time.time() - PRUNE_AFTER_DAYS * 86400
    for entry in root.iterdir():
        done = entry / DONE_FILE
        with contextlib.suppress(OSError):
            if entry != keep and entry.is_dir() and done.is_file() and done.stat().st_mtime < oldest:
                shutil.rmtree(entry)
                (root / f"{entry.name}.lock").unlink(missing_ok=True)


def load_failed(onnx_path: Path, prepared: Path, error: Exception) -> None:
    """onnxruntime refused the prepared copy: say so; the caller loads the plain file."""
    _warn(f"loading {onnx_path} without shared weights: its prepared copy {prepared.parent} did not load "
          f"({type(error).__name__}: {error}); delete that folder to prepare it again")


def _warn(message: str) -> None:
    print(f"mmserve: {message}", file=sys.stderr, flush=True)
