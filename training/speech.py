"""Fine-tuning speech encoders for audio classification (keyword spotting, full or LoRA).

`train_speech` is what `mmserve train speech` runs: it reads folders of audio per
label (or a CSV), fine-tunes a Whisper encoder (`WhisperForAudioClassification`, its
positional table cut to the clip window) or a Wav2Vec2-family model from a local
checkpoint or from a config (random init), with additive noise, time shift, gain and
speed augmentation, evaluates on a dev split every epoch and keeps the best epoch.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmserve.training.text_checkpoint import save_hf_checkpoint
from mmserve.training import distributed
from mmserve.training.errors import DataError, TrainingError
from mmserve.training.defaults import absolute_data_paths, base_model_name
from mmserve.training.files import write_text_atomic
from mmserve.training.loop import (
    EpochScore,
    RunLedger,
    TrainResult,
    configure_runtime,
    library_versions,
    make_optimizer,
    make_scheduler,
    open_writer,
    seed_everything,
    train_one_epoch,
)
from mmserve.training.metrics import classification_metrics
from mmserve.training.quiet import quiet_libraries
from mmserve.training.speech_checkpoint import (
    WHISPER,
    build_speech_model,
    family_of,
    load_speech_checkpoint,
    min_samples,
    read_base,
)
from mmserve.training.speech_data import (
    AudioExample,
    Augmentation,
    audio_labels,
    augment,
    load_clips,
    place_in_window,
    read_audio_examples,
)
from mmserve.training.text_data import check_labels_known, split_dev

FULL_LR = 1e-4
LORA_LR = 1e-3
EVAL_BATCH_SIZE = 32
DEV_FILE = "dev.csv"  # the dev split's files, for the exporter's parity inputs


@dataclass(frozen=True)
class SpeechTrainConfig:
    base: str  # local HF model folder (pretrained) or folder/config .json (random init)
    data: str  # DIR/<label>/*.wav|flac|ogg or CSV (path,label)
    out: str
    dev_data: str | None = None  # else a stratified dev split of `data`
    dev_fraction: float = 0.15
    lora: bool = False
    epochs: int = 4
    lr: float | None = None  # None: FULL_LR, or LORA_LR with lora
    batch_size: int = 16
    clip_seconds: int = 1  # Whisper's window (its positional table is cut to it)
    augment: bool = True
    seed: int = 42
    resume: bool = False
    overwrite: bool = False  # replace a checkpoint already in `out` (else training refuses)
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.log_every < 1:
            raise ValueError("epochs, batch_size and log_every must be at least 1")
        if not 0 < self.dev_fraction < 1:
            raise ValueError(f"dev_fraction must be between 0 and 1, got {self.dev_fraction}")
        if not 1 <= self.clip_seconds <= 30:
            raise ValueError(f"clip_seconds must be a whole number of seconds in 1..30, got {self.clip_seconds}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return LORA_LR if self.lora else FULL_LR


@dataclass(frozen=True)
class EvalResult:
    metrics: dict[str, float]
    report: str


class Featurizer:
    """Clips at the model's rate -> model batches, through the checkpoint's HF feature extractor.

    Whisper clips are placed in the fixed window first (randomly while training, the
    loudest window otherwise, as the server does); waveform clips are padded to the
    receptive field, then to the batch's longest with an attention mask.
    """

    def __init__(self, feature_extractor, family: str, min_length: int, passes_mask: bool):
        self.fe = feature_extractor
        self.family = family
        self.min_length = min_length
        self.passes_mask = passes_mask
        self.rate = int(feature_extractor.sampling_rate)

    def __call__(self, clips: Sequence[np.ndarray], rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        if self.family == WHISPER:
            window = int(self.fe.n_samples)
            clips = [place_in_window(x, window, rng) for x in clips]
            features = self.fe(clips, sampling_rate=self.rate, return_tensors="np").input_features
            return {"input_features": torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))}
        clips = [np.pad(x, (0, max(0, self.min_length - x.shape[0]))) for x in clips]
        encoded = self.fe(
            clips, sampling_rate=self.rate, padding=True, return_attention_mask=True, return_tensors="np"
        )
        batch = {"input_values": torch.from_numpy(encoded.input_values.astype(np.float32))}
        if self.passes_mask:
            batch["attention_mask"] = torch.from_numpy(encoded.attention_mask.astype(np.int64))
        return batch


@distributed.data_parallel()
@quiet_libraries()
def train_speech(cfg: SpeechTrainConfig) -> TrainResult:
    """Fine-tune, keep the best epoch in `cfg.out`, print and return its dev report."""
    configure_runtime()
    out = Path(cfg.out)
    base = str(Path(cfg.base).resolve())
    train_items, dev_items, labels = _load_data(cfg)
    identity = {"task": "classify", "labels": labels, "base": base, "lora": cfg.lora, "clip_seconds": cfg.clip_seconds}

    ledger = RunLedger.open(out, identity, cfg.epochs, cfg.resume, cfg.overwrite)
    if (done := ledger.finished_result()) is not None:
        return done

    seed_everything(cfg.seed)
    model, extractor, pretrained = build_speech_model(base, labels, cfg.clip_seconds, cfg.lora)
    model = model.to(distributed.device())
    config = read_base(base)[0]
    family = family_of(config)
    if not pretrained:
        print(f"{cfg.base}: no weights, training {config.model_type} from random initialisation")
    featurize = Featurizer(
        extractor, family, min_samples(config) if family != WHISPER else 1,
        passes_mask=bool(getattr(extractor, "return_attention_mask", True)),
    )
    rate = featurize.rate
    started_loading = time.perf_counter()
    train_clips = load_clips(train_items, rate)
    dev_clips = load_clips(dev_items, rate)
    print(f"loaded {len(train_clips)} training and {len(dev_clips)} dev clips at {rate} Hz "
          f"in {time.perf_counter() - started_loading:.1f}s")
    train_y = np.array([labels.index(e.label) for e in train_items])
    aug = Augmentation() if cfg.augment else Augmentation.none()
    if family == WHISPER:  # the window placement is the time shift
        aug = dataclasses.replace(aug, shift_seconds=0.0)
    dev_batches = [
        {**featurize([dev_clips[i] for i in idx]), "labels": torch.tensor([labels.index(dev_items[i].label) for i in idx])}
        for idx in _chunks(len(dev_clips), EVAL_BATCH_SIZE)
    ]

    global_batch = cfg.batch_size * distributed.world_size()  # --batch-size is per process
    n_batches = -(-len(train_clips) // global_batch)
    optimizer = make_optimizer(model, cfg.learning_rate)
    scheduler = make_scheduler(optimizer, cfg.epochs * n_batches)
    ledger.restore(model, optimizer, scheduler)
    training_config = {
        **absolute_data_paths(asdict(cfg)), "kind": "speech", "task": "classify", "base": base,
        "base_name": base_model_name(base), "family": family,
        "model_type": config.model_type, "pretrained": pretrained, "sampling_rate": rate,
        "learning_rate": cfg.learning_rate, "versions": library_versions(),
    }

    def summary(best: dict[str, Any]) -> dict[str, Any]:
        return {
            "task": "classify", "metric": "accuracy", "dev_accuracy": best["accuracy"],
            "dev_macro_f1": best["macro_f1"], "dev_metrics": best, "n_train": len(train_items), "n_dev": len(dev_items),
        }

    def write_checkpoint(folder: Path) -> None:
        save_hf_checkpoint(folder, model, extractor, labels, training_config)
        _write_dev_file(folder, dev_items)

    trained = distributed.wrap(model, find_unused_parameters=cfg.lora)
    step = ledger.epochs_done * n_batches
    with open_writer(out) as writer:
        for epoch in range(ledger.epochs_done, cfg.epochs):
            t0 = time.perf_counter()
            rng = np.random.default_rng(cfg.seed + epoch)
            batches = _train_batches(train_clips, train_y, global_batch, rng, featurize, aug, rate)
            train_loss, step = train_one_epoch(
                trained, batches, n_batches, optimizer, scheduler, writer, step,
                desc=f"epoch {epoch + 1}/{cfg.epochs}", log_every=cfg.log_every,
            )
            dev, report = _evaluate(model, labels, dev_batches)
            writer.add_scalar("dev/accuracy", dev["accuracy"], step)
            writer.add_scalar("dev/loss", dev["loss"], step)
            writer.add_text("dev/report", f"<pre>{report}</pre>", step)
            score = EpochScore(  # the per-class report is in TensorBoard (dev/report) and printed once at the end
                history={"train_loss": train_loss, "dev_loss": dev["loss"],
                         "dev_accuracy": dev["accuracy"], "dev_macro_f1": dev["macro_f1"]},
                score=dev["accuracy"], headline=f"dev accuracy {dev['accuracy']:.4f}", metrics=dev,
                progress=f"train loss {train_loss:.4f}, dev loss {dev['loss']:.4f}, dev accuracy {dev['accuracy']:.4f}",
                report=report,
            )
            ledger.end_epoch(score, time.perf_counter() - t0, summary, write_checkpoint, model, optimizer, scheduler)
    return ledger.result()


@quiet_libraries()
def evaluate_speech(checkpoint: str | Path, data: str | Path, batch_size: int = EVAL_BATCH_SIZE) -> EvalResult:
    """Score a saved classifier on labelled audio (e.g. the held-out voices' test split)."""
    configure_runtime()
    ckpt = load_speech_checkpoint(checkpoint)
    if ckpt.task != "classify":
        raise TrainingError(f"{checkpoint}: an embedding model has no labels to evaluate against")
    items = read_audio_examples(data)
    check_labels_known(ckpt.labels, {e.label for e in items}, data)
    featurize = Featurizer(
        ckpt.feature_extractor, ckpt.family, ckpt.min_samples,
        passes_mask=bool(getattr(ckpt.feature_extractor, "return_attention_mask", True)),
    )
    clips = load_clips(items, ckpt.sampling_rate)
    batches = [
        {**featurize([clips[i] for i in idx]), "labels": torch.tensor([ckpt.labels.index(items[i].label) for i in idx])}
        for idx in _chunks(len(clips), batch_size)
    ]
    metrics, report = _evaluate(ckpt.model, ckpt.labels, batches)
    return EvalResult(metrics, report)


def _chunks(n: int, size: int) -> Iterator[list[int]]:
    for start in range(0, n, size):
        yield list(range(start, min(n, start + size)))


def _train_batches(
    clips: Sequence[np.ndarray], y: np.ndarray, batch_size: int, rng: np.random.Generator,
    featurize: Featurizer, aug: Augmentation, rate: int,
) -> Iterator[dict[str, torch.Tensor]]:
    order = rng.permutation(len(clips))
    for start in range(0, len(order), batch_size):
        idx = np.array(distributed.shard(order[start : start + batch_size]))
        augmented = [augment(clips[i], rate, rng, aug) for i in idx]
        yield {**featurize(augmented, rng), "labels": torch.from_numpy(y[idx])}


def _load_data(cfg: SpeechTrainConfig) -> tuple[list[AudioExample], list[AudioExample], list[str]]:
    items = read_audio_examples(cfg.data)
    if cfg.dev_data:
        train, dev = items, read_audio_examples(cfg.dev_data)
    else:
        train, dev = split_dev(items, cfg.dev_fraction, cfg.seed, key=lambda e: e.label)
    labels = audio_labels(train)
    check_labels_known(labels, {e.label for e in dev}, cfg.dev_data or f"{cfg.data} (dev split)")
    if len(labels) < 2:
        raise DataError(f"{cfg.data}: classification needs at least two labels, found {labels}")
    return train, dev, labels


def _write_dev_file(out: Path, dev: Sequence[AudioExample]) -> None:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["path", "label"])
    writer.writerows([str(e.path.resolve()), e.label] for e in dev)
    write_text_atomic(out / DEV_FILE, text.getvalue())


@torch.inference_mode()
def _evaluate(model: torch.nn.Module, labels: Sequence[str], batches: Sequence[dict[str, torch.Tensor]]):
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gold, predicted = [], []
    loss_sum = 0.0
    for batch in batches:
        batch = dict(batch)
        y = batch.pop("labels")
        logits = model(**{key: value.to(device) for key, value in batch.items()}).logits.cpu()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        gold += y.tolist()
        predicted += logits.argmax(-1).tolist()
    model.train(was_training)
    metrics, report = classification_metrics(gold, predicted, labels)
    return {**metrics, "loss": loss_sum / max(len(gold), 1)}, report
