"""The parts of a fine-tuning loop every modality shares.

Seeding, optimizer and schedule, one training epoch with progress bar and TensorBoard
scalars, and the resume state written after every epoch. Models are Hugging Face style:
called with a dict batch that holds `labels`, they return an output with `.loss`.
"""
from __future__ import annotations

import json
import os
import platform
import random
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from mmserve.training.text_checkpoint import ADAPTER_DIR, METRICS_FILE, TRAINING_CONFIG_FILE
from mmserve.training.clip_checkpoint import SETTINGS_FILE as CLIP_SETTINGS_FILE
from mmserve.training.clip_checkpoint import WEIGHTS_FILE as CLIP_WEIGHTS_FILE
from mmserve.training.errors import OutputExistsError, ResumeError
from mmserve.training.files import finish_interrupted, partial_folder, replace_folder, staged_update, write_json

RESUME_DIR = "last"
_RESUME_WEIGHTS = "model.safetensors"
_RESUME_TRAINER = "trainer.pt"
_RESUME_META = "state.json"


@dataclass(frozen=True)
class TrainResult:
    """What a training run hands back: the best checkpoint folder, its metrics and report."""

    checkpoint: Path
    metrics: dict[str, Any]
    report: str


def configure_runtime() -> None:
    """Use every core this process may run on; keep the tokenizers' own pool out of the way."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(cores or 1)


def seed_everything(seed: int) -> None:
    """Seed every RNG a run touches (head init, LoRA init, dropout)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """RNG states in a form `torch.load(weights_only=True)` accepts."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.01) -> torch.optim.AdamW:
    """AdamW over trainable parameters; no weight decay on biases and norm weights."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.1):
    """Linear warm-up over the first `warmup_ratio` of steps, then linear decay to zero."""
    return get_linear_schedule_with_warmup(optimizer, int(total_steps * warmup_ratio), total_steps)


def train_one_epoch(
    model: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    n_batches: int,
    optimizer: torch.optim.Optimizer,
    scheduler,
    writer: SummaryWriter,
    step: int,
    desc: str,
    log_every: int = 10,
    max_grad_norm: float = 1.0,
) -> tuple[float, int]:
    """One pass over `batches`; returns (mean training loss, global step after the epoch)."""
    model.train()
    total, window = 0.0, []
    with tqdm(total=n_batches, desc=desc, unit="batch", dynamic_ncols=True) as bar:
        for batch in batches:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            total += loss.item()
            window.append(loss.item())
            if len(window) == log_every:
                writer.add_scalar("train/loss", sum(window) / len(window), step)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
                window.clear()
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            bar.update()
    return total / max(n_batches, 1), step


def library_versions() -> dict[str, str]:
    """Versions recorded next to a checkpoint, so a result can be reproduced."""
    import peft
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def save_resume_state(
    out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, meta: Mapping[str, Any]
) -> None:
    """Write OUT/last/ (weights, optimizer, schedule, RNG, JSON meta), replaced as a whole."""
    partial = partial_folder(out / RESUME_DIR)
    save_model(model, str(partial / _RESUME_WEIGHTS))
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
        partial / _RESUME_TRAINER,
    )
    write_json(partial / _RESUME_META, meta)
    replace_folder(partial, out / RESUME_DIR)


def read_resume_meta(out: Path) -> dict[str, Any] | None:
    """The JSON meta of OUT/last/, or None when there is nothing to resume."""
    path = out / RESUME_DIR / _RESUME_META
    return json.loads(path.read_text()) if path.is_file() else None


def load_resume_state(out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> None:
    """Restore weights, optimizer, schedule position and RNG states written by save_resume_state."""
    folder = out / RESUME_DIR
    load_model(model, str(folder / _RESUME_WEIGHTS))
    trainer = torch.load(folder / _RESUME_TRAINER, weights_only=True)
    optimizer.load_state_dict(trainer["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    set_rng_state(trainer["rng"])


# What a run leaves in its folder besides the best checkpoint; a fresh run clears them.
_RUN_LEFTOVERS = (RESUME_DIR, ADAPTER_DIR, "runs")
# Any of these in --out means a checkpoint (or a run that can be resumed) is there.
_CHECKPOINT_SIGNS = (
    METRICS_FILE, RESUME_DIR, TRAINING_CONFIG_FILE, CLIP_SETTINGS_FILE, "model.safetensors", CLIP_WEIGHTS_FILE,
)


def existing_checkpoint(out: Path) -> list[str]:
    """The names in `out` that show a checkpoint or a resumable run is there (empty: none)."""
    return [f"{name}/" if (out / name).is_dir() else name for name in _CHECKPOINT_SIGNS if (out / name).exists()]


@dataclass
class RunLedger:
    """An epoch loop's bookkeeping, shared by every trainer: history, best epoch, time spent.

    Opened fresh or from `--resume` (checked against the run's identity: labels, base,
    LoRA... must match), updated once per epoch, saved with the optimizer state so an
    interrupted run continues where it stopped. A fresh run refuses a folder that already
    holds a checkpoint unless told to overwrite it: one mistyped --out must not cost a
    finished model.
    """

    out: Path
    identity: dict[str, Any]
    epochs: int
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("-inf")
    best: dict[str, Any] = field(default_factory=dict)  # the trainer's record of its best epoch (metrics, report)
    elapsed: float = 0.0
    resumed: bool = False

    @classmethod
    def open(cls, out: Path, identity: dict[str, Any], epochs: int, resume: bool, overwrite: bool = False) -> "RunLedger":
        finish_interrupted(out, swapped=(RESUME_DIR,))
        meta = read_resume_meta(out) if resume else None
        if meta is None:
            found = existing_checkpoint(out)
            if found and not overwrite:
                what = f"a checkpoint ({', '.join(found)})"
                if resume:
                    raise OutputExistsError(
                        f"{out} holds {what} but no resume state ({RESUME_DIR}/{_RESUME_META}); "
                        "pass --overwrite to train a new model in its place, or choose another --out"
                    )
                raise OutputExistsError(
                    f"{out} already holds {what}; pass --resume to continue that run, "
                    "--overwrite to train a new model in its place, or choose another --out"
                )
            if resume:
                print(f"{out}: no saved state in {RESUME_DIR}/, starting from scratch")
            # a fresh run must not mix with an earlier run's state, adapter, curves or result
            for leftover in _RUN_LEFTOVERS:
                shutil.rmtree(out / leftover, ignore_errors=True)
            (out / METRICS_FILE).unlink(missing_ok=True)
            return cls(out, identity, epochs)
        for key, value in identity.items():
            if meta.get(key) != value:
                raise ResumeError(
                    f"{out / RESUME_DIR} was written for {key}={meta.get(key)!r}, this run has {key}={value!r}; "
                    "use another --out, or drop --resume and pass --overwrite to start over"
                )
        ledger = cls(out, identity, epochs, meta["history"], meta["best_epoch"], meta["best_score"],
                     elapsed=meta["train_time_seconds"], resumed=True)
        # state written before the ledger kept its best epoch's record: metrics.json holds it
        ledger.best = meta.get("best") or ledger.saved_metrics()
        return ledger

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    def finished_result(self) -> TrainResult | None:
        """The saved result when a resumed run has nothing left to train."""
        if not self.resumed or self.epochs_done < self.epochs:
            return None
        metrics = self.saved_metrics()
        print(f"{self.out}: training already completed ({self.epochs_done} epochs); the saved result:")
        print(metrics["report"])
        return TrainResult(self.out, metrics, metrics["report"])

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> None:
        """Continue a resumed run's weights, optimizer, schedule and RNG; nothing for a fresh run."""
        if self.resumed:
            load_resume_state(self.out, model, optimizer, scheduler)
            print(f"{self.out}: resuming after epoch {self.epochs_done} of {self.epochs}")

    def saved_metrics(self) -> dict[str, Any]:
        """metrics.json as the last finished epoch wrote it."""
        return json.loads((self.out / METRICS_FILE).read_text())

    def record(self, row: dict[str, Any], score: float, seconds: float, best: dict[str, Any]) -> bool:
        """One finished epoch; True when it is the best so far (then `best` becomes the kept record)."""
        self.elapsed += seconds
        self.history.append({"epoch": self.epochs_done + 1, **row, "seconds": round(seconds, 2)})
        improved = score > self.best_score
        if improved:
            self.best_epoch, self.best_score, self.best = self.epochs_done, score, best
        return improved

    def commit(
        self,
        metrics: Mapping[str, Any],
        write_checkpoint: Callable[[Path], None] | None,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
    ) -> None:
        """End an epoch on disk: the new best checkpoint (when `write_checkpoint` is given) and
        metrics.json land together, then the resume state. A kill at any point leaves the
        previous epoch's consistent folder, and --resume replays at most this epoch."""
        if write_checkpoint is None:
            write_json(self.out / METRICS_FILE, metrics)
        else:
            with staged_update(self.out, move_last=(METRICS_FILE,)) as staging:
                write_checkpoint(staging)
                write_json(staging / METRICS_FILE, metrics)
        save_resume_state(self.out, model, optimizer, scheduler, {
            **self.identity, "epochs_done": self.epochs_done, "history": self.history,
            "best_epoch": self.best_epoch, "best_score": self.best_score, "best": self.best,
            "train_time_seconds": self.elapsed,
        })
