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
import tempfile
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

from mmserve.training import distributed
from mmserve.training.clip_checkpoint import SETTINGS_FILE as CLIP_SETTINGS_FILE
from mmserve.training.clip_checkpoint import WEIGHTS_FILE as CLIP_WEIGHTS_FILE
from mmserve.training.errors import OutputExistsError, ResumeError
from mmserve.training.files import finish_interrupted, partial_folder, replace_folder, staged_update, write_json
from mmserve.training.text_checkpoint import ADAPTER_DIR, METRICS_FILE, TRAINING_CONFIG_FILE

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


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, else the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def configure_runtime() -> None:
    """Use every core this process may run on (its share when torchrun starts several on one
    machine); keep the tokenizers' own pool out of the way."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(max(1, available_cores() // distributed.local_world_size()))


class _NoWriter:
    """Stands in for TensorBoard's writer on ranks other than 0: one set of curves per run."""

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def add_text(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> "_NoWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def open_writer(out: Path) -> SummaryWriter | _NoWriter:
    """TensorBoard curves in OUT/runs, written by rank 0 only."""
    return SummaryWriter(str(out / "runs")) if distributed.is_main() else _NoWriter()


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
    loss_of: Callable[[Any], torch.Tensor] | None = None,
    after_step: Callable[[], None] | None = None,
    log_extra: Callable[[SummaryWriter, int], None] | None = None,
) -> tuple[float, int]:
    """One pass over `batches`; returns (mean training loss over all ranks, global step after the epoch).

    The one epoch loop of every line (text, speech, CLIP). `loss_of(batch)`: the batch's loss
    (default: a Hugging Face model called on the batch's tensors, moved to its device);
    `after_step()`: runs after each optimizer step (CLIP clamps its logit scale); `log_extra(
    writer, step)`: more scalars beside the loss and learning rate, every `log_every` steps."""
    model.train()
    total, window = 0.0, []
    with tqdm(total=n_batches, desc=desc, unit="batch", dynamic_ncols=True, disable=not distributed.is_main()) as bar:
        if loss_of is None:
            device = next(model.parameters()).device

            def loss_of(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
                return model(**{key: value.to(device) for key, value in batch.items()}).loss

        for batch in batches:
            loss = loss_of(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if after_step is not None:
                after_step()
            step += 1
            total += loss.item()
            window.append(loss.item())
            if len(window) == log_every:
                writer.add_scalar("train/loss", sum(window) / len(window), step)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
                if log_extra is not None:
                    log_extra(writer, step)
                window.clear()
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            bar.update()
    return distributed.mean(total / max(n_batches, 1)), step


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
    """Restore weights, optimizer, schedule position and RNG states written by save_resume_state.

    Under torchrun rank 0 reads the files and every rank loads the same bytes, so the
    other nodes need no copy of OUT."""
    folder = out / RESUME_DIR
    if distributed.world_size() == 1:
        trainer = _load_resume_files(folder, model)
    else:
        names = (_RESUME_WEIGHTS, _RESUME_TRAINER)
        files = distributed.from_main(lambda: {name: (folder / name).read_bytes() for name in names})
        with tempfile.TemporaryDirectory(prefix="mmserve-resume-") as tmp:
            for name, data in files.items():
                (Path(tmp) / name).write_bytes(data)
            trainer = _load_resume_files(Path(tmp), model)
    optimizer.load_state_dict(trainer["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    set_rng_state(trainer["rng"])


def _load_resume_files(folder: Path, model: torch.nn.Module) -> dict[str, Any]:
    """The weights loaded into `model`; the optimizer, schedule and RNG states returned."""
    load_model(model, str(folder / _RESUME_WEIGHTS))
    return torch.load(folder / _RESUME_TRAINER, weights_only=True)


# What a run leaves in its folder besides the best checkpoint; a fresh run clears them.
_RUN_LEFTOVERS = (RESUME_DIR, ADAPTER_DIR, "runs")
# Any of these in --out means a checkpoint (or a run that can be resumed) is there.
_CHECKPOINT_SIGNS = (
    METRICS_FILE, RESUME_DIR, TRAINING_CONFIG_FILE, CLIP_SETTINGS_FILE, "model.safetensors", CLIP_WEIGHTS_FILE,
)


def existing_checkpoint(out: Path) -> list[str]:
    """The names in `out` that show a checkpoint or a resumable run is there (empty: none)."""
    return [f"{name}/" if (out / name).is_dir() else name for name in _CHECKPOINT_SIGNS if (out / name).exists()]


@dataclass(frozen=True)
class EpochScore:
    """What a trainer measured at the end of one epoch, handed to `RunLedger.end_epoch`."""

    history: dict[str, Any]  # the epoch's row in metrics.json's history (losses, dev scores)
    score: float  # what picks the best epoch: higher is better
    headline: str  # the score in words, e.g. "dev accuracy 0.9375"
    metrics: dict[str, Any]  # the whole evaluation, kept for the best epoch
    progress: str  # the epoch's line on the console (losses and scores)
    report: str = ""  # a longer report (a per-class table), kept for the best epoch


def _best_record(saved: Mapping[str, Any]) -> dict[str, Any]:
    """The best epoch's record from resume state; state (or metrics.json) written before the
    ledger kept `metrics`/`headline` holds the evaluation as dev_metrics or val_metrics."""
    if "metrics" in saved:
        return dict(saved)
    return {"metrics": saved.get("dev_metrics") or saved.get("val_metrics") or {}, "headline": "",
            "report": saved.get("report", "")}


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
    best: dict[str, Any] = field(default_factory=dict)  # the best epoch's metrics, headline and report
    elapsed: float = 0.0
    resumed: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)  # metrics.json as the last epoch wrote it

    @classmethod
    def open(cls, out: Path, identity: dict[str, Any], epochs: int, resume: bool, overwrite: bool = False) -> "RunLedger":
        """The ledger of a fresh run (clearing an earlier run's leftovers) or of the run to resume.

        The folder is checked and cleared by rank 0 alone; every rank gets the same ledger."""
        saved = distributed.from_main(lambda: _open_folder(out, identity, resume, overwrite))
        if saved is None:
            return cls(out, identity, epochs)
        meta, best = saved
        return cls(out, identity, epochs, meta["history"], meta["best_epoch"], meta["best_score"], best,
                   elapsed=meta["train_time_seconds"], resumed=True)

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    def finished_result(self) -> TrainResult | None:
        """The saved result when a resumed run has nothing left to train."""
        if not self.resumed or self.epochs_done < self.epochs:
            return None
        metrics = distributed.from_main(self.saved_metrics)
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

    def record(self, epoch: EpochScore, seconds: float) -> bool:
        """One finished epoch in the history; True when it is the best so far (then it becomes `best`)."""
        self.elapsed += seconds
        self.history.append({"epoch": self.epochs_done + 1, **epoch.history, "seconds": round(seconds, 2)})
        improved = epoch.score > self.best_score
        if improved:
            self.best_epoch, self.best_score = self.epochs_done, epoch.score
            self.best = {"metrics": epoch.metrics, "headline": epoch.headline, "report": epoch.report}
        return improved

    def best_report(self) -> str:
        """The best epoch in one line (which epoch, its score), then the trainer's longer report."""
        head = f"best epoch {self.best_epoch} of {self.epochs}: {self.best.get('headline', '')}".rstrip(": ")
        return f"{head}\n{self.best['report']}" if self.best.get("report") else head

    def end_epoch(
        self,
        epoch: EpochScore,
        seconds: float,
        summary: Callable[[Mapping[str, Any]], dict[str, Any]],
        write_checkpoint: Callable[[Path], None],
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
    ) -> bool:
        """Everything an epoch ends with, the same for every trainer: the history row, the best
        epoch so far, metrics.json (`summary(best metrics)` plus the ledger's own fields), the
        checkpoint when this epoch is the new best, the resume state and the progress line.
        Returns whether this epoch is the new best."""
        improved = self.record(epoch, seconds)
        self.metrics = {
            **summary(self.best["metrics"]), "best_epoch": self.best_epoch, "history": self.history,
            "train_time_seconds": round(self.elapsed, 2), "report": self.best_report(),
        }
        self.commit(self.metrics, write_checkpoint if improved else None, model, optimizer, scheduler)
        tqdm.write(f"epoch {self.epochs_done}: {epoch.progress}{' (best)' if improved else ''}, {seconds:.1f}s")
        return improved

    def result(self) -> TrainResult:
        """The finished run: the best epoch's metrics as written to metrics.json, its report printed once."""
        print(self.metrics["report"])
        return TrainResult(self.out, self.metrics, self.metrics["report"])

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
        previous epoch's consistent folder, and --resume replays at most this epoch.
        Rank 0 writes; the other ranks wait for it to finish (or fail)."""
        distributed.from_main(lambda: self._write(metrics, write_checkpoint, model, optimizer, scheduler))

    def _write(
        self,
        metrics: Mapping[str, Any],
        write_checkpoint: Callable[[Path], None] | None,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
    ) -> None:
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


def _open_folder(
    out: Path, identity: dict[str, Any], resume: bool, overwrite: bool
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """--out made ready for a run: None for a fresh run (after refusing a checkpoint there unless
    told to overwrite, and clearing an earlier run's leftovers), else the resume meta and the
    best epoch's record, checked against this run's identity."""
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
        return None
    for key, value in identity.items():
        if meta.get(key) != value:
            raise ResumeError(
                f"{out / RESUME_DIR} was written for {key}={meta.get(key)!r}, this run has {key}={value!r}; "
                "use another --out, or drop --resume and pass --overwrite to start over"
            )
    best = meta.get("best") or json.loads((out / METRICS_FILE).read_text())
    return meta, _best_record(best)
