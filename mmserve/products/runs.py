"""Where a product being made lives until it is published: one folder per run.

    RUNS/products/<run id>/
        request.json     what was asked (name, kind, mode, data, encoder, options)
        status.json      state, stage, progress (epoch, loss, dev metric), error, published version
        train.csv        the examples trained on; heldout.csv the ones measured on
        report.json/.md  the report (mmserve/products/report.py), confusion.png
        head.npz         (head) the classifier; labels.txt its output order
        checkpoint/      (finetune) the training run's folder (resumable); train.log its output

RUNS is $MMSERVE_RUNS (else ./runs), as for `mmserve serve`'s logs. status.json is replaced
atomically (write, then rename), so a reader -- the console, `mmserve jobs` -- never sees
half of it.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmserve.server import runs_root

REQUEST_FILE = "request.json"
STATUS_FILE = "status.json"
MODES = ("head", "finetune")
# A run's states, in the order they happen; failed and cancelled end a run early.
QUEUED, RUNNING, REPORTED, PUBLISHED, FAILED, CANCELLED = "queued", "running", "reported", "published", "failed", "cancelled"
FINAL_STATES = (REPORTED, PUBLISHED, FAILED, CANCELLED)
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


def products_root() -> Path:
    return runs_root() / "products"


@dataclass(frozen=True)
class CreateRequest:
    """What `mmserve products create` (or the console's New product page) asks for."""

    name: str
    kind: str  # a classification kind of the kind table (text_classify, audio_classify)
    data: str
    mode: str  # head | finetune
    repository: str
    heldout: str | None = None
    encoder: str | None = None  # head: the embedding product (default: the kind's, e.g. text_embed)
    head: str = "logreg"  # head: logreg | centroid
    lora: bool = False  # finetune: LoRA adapters instead of every weight
    base: str | None = None  # finetune: the base model (default: the training command's)
    epochs: int | None = None  # finetune: default the training command's
    seed: int = 42
    actor: str | None = None  # who asked (the audit log's actor at publish)

    def check(self) -> None:
        if not NAME_PATTERN.match(self.name) or "__v" in self.name:
            raise ValueError(f"product name {self.name!r}: use letters, digits, '_' or '-', starting with a letter "
                             "(it becomes a Triton model name and a URL path)")
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r}: use {' or '.join(MODES)}")


@dataclass
class Status:
    state: str
    stage: str = ""  # what is happening now, in words
    epoch: int = 0
    epochs: int = 0
    train_loss: float | None = None
    dev_metric: str | None = None
    dev_value: float | None = None
    error: str | None = None
    pid: int | None = None  # the worker running it (a dead one means a crash: resumed)
    published_version: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    updated: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Run:
    folder: Path

    @property
    def id(self) -> str:
        return self.folder.name

    @property
    def request(self) -> CreateRequest:
        return CreateRequest(**json.loads((self.folder / REQUEST_FILE).read_text(encoding="utf-8")))

    def status(self) -> Status:
        try:
            return Status(**json.loads((self.folder / STATUS_FILE).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return Status(FAILED, error=f"{self.folder / STATUS_FILE} is missing or unreadable")

    def set_status(self, **changes: Any) -> Status:
        status = self.status() if (self.folder / STATUS_FILE).exists() else Status(QUEUED)
        for key, value in changes.items():
            setattr(status, key, value)
        status.updated = time.time()
        write_json_atomic(self.folder / STATUS_FILE, asdict(status))
        return status

    def path(self, name: str) -> Path:
        return self.folder / name


def write_json_atomic(path: Path, value: Any) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(value, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def new_run(request: CreateRequest, root: Path | None = None) -> Run:
    """A fresh run folder for `request`, named so runs list in creation order."""
    request.check()
    root = root or products_root()
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    for suffix in ("", *(f"-{i}" for i in range(1, 1000))):
        folder = root / f"{stamp}{suffix}-{request.name}"
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        write_json_atomic(folder / REQUEST_FILE, asdict(request))
        run = Run(folder)
        run.set_status(state=QUEUED if request.mode == "finetune" else RUNNING, stage="checking the data")
        return run
    raise RuntimeError(f"no free run folder under {root}")


def all_runs(root: Path | None = None) -> list[Run]:
    """Every run, oldest first."""
    root = root or products_root()
    if not root.is_dir():
        return []
    return [Run(p) for p in sorted(root.iterdir()) if (p / REQUEST_FILE).is_file()]


def find_run(run_id: str, root: Path | None = None) -> Run:
    root = root or products_root()
    folder = root / run_id
    if "/" in run_id or run_id.startswith(".") or not (folder / REQUEST_FILE).is_file():
        known = ", ".join(r.id for r in all_runs(root)[-5:]) or "none"
        raise LookupError(f"no run {run_id!r} under {root}; recent runs: {known} (`mmserve jobs --all` lists them)")
    return Run(folder)
