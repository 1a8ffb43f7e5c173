"""Contrastive training of open_clip models: fine-tuning (full, LoRA, locked tower) or from scratch.

`train_clip` is what `mmserve train clip` runs. Everything model-specific goes
through open_clip itself: `create_model_and_transforms` builds the model (a
built-in name such as ViT-B-32 with `--pretrained FILE`, or an architecture
JSON in open_clip's model_configs format, registered with
`open_clip.add_model_config`), `get_tokenizer` tokenises, `open_clip.loss.ClipLoss`
(SigLipLoss for models with a logit bias) is the objective. Images are decoded
by the server's own decoder (`mmserve.serving.image.decode_image`) so training
and serving see the same pixels.

Each epoch is evaluated on a validation split: zero-shot top-1 accuracy over a
class list (prompt templates averaged per class, as open_clip's zero-shot
classifier) when the rows carry labels, and image->text / text->image
recall@1/@5. The best epoch is kept as a checkpoint folder that plain open_clip
can load (see `training/clip_checkpoint.py`); `--resume` continues from OUT/last.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mmserve.training.clip_threads import LARGE_MODEL_PARAMETERS, configure_threads, threads_by_trial
from mmserve.training.clip_checkpoint import (
    load_clip_checkpoint,
    save_clip_checkpoint,
    tokenizer_settings,
)
from mmserve.training.clip_data import (
    DEFAULT_TEMPLATES,
    ImageText,
    check_labels_known,
    check_templates,
    read_classes,
    read_pairs,
    read_templates,
    split_val,
)
from mmserve.training.clip_eval import class_embeddings, prompts, retrieval_metrics, zero_shot_accuracy
from mmserve.training import distributed
from mmserve.training.errors import DataError, TrainingError
from mmserve.training.defaults import absolute_data_paths
from mmserve.training.loop import (
    EpochScore,
    RunLedger,
    TrainResult,
    available_cores,
    configure_runtime,
    library_versions,
    make_optimizer,
    make_scheduler,
    open_writer,
    seed_everything,
    train_one_epoch,
)
from mmserve.training.quiet import quiet_libraries

# From scratch a tiny model wants a large step; fine-tuning real weights a small one.
SCRATCH_LR = 1e-3
FINETUNE_LR = 1e-5
ADAPTER_LR = 1e-4  # LoRA or one tower locked
EVAL_BATCH_SIZE = 256
MAX_LOGIT_SCALE = math.log(100)  # open_clip's trainer clamps the temperature here

# The embedded default: a small ViT that learns the synthetic shapes data on a CPU in
# minutes. Registered under this name through open_clip.add_model_config.
TINY_ARCH = "mmserve-tiny-vit"
TINY_ARCH_CONFIG: dict[str, Any] = {
    "embed_dim": 96,
    "vision_cfg": {
        "image_size": 32, "patch_size": 8, "width": 96, "layers": 3, "head_width": 32,
        # small-data ViT choices: mean-pooled patch tokens and fixed 2-D sin-cos positions
        "pool_type": "avg", "pos_embed_type": "sin_cos_2d",
    },
    "text_cfg": {"context_length": 20, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@dataclass(frozen=True)
class ClipTrainConfig:
    arch: str  # open_clip model name (ViT-B-32, ...), mmserve-tiny-vit, or a model-config JSON path
    data: str  # CSV/TSV/JSONL of (image, caption[, label])
    out: str
    pretrained: str | None = None  # weights file for the architecture (e.g. open_clip_pytorch_model.bin)
    val_data: str | None = None  # else a random split of `data`
    val_fraction: float = 0.1
    classes: str | None = None  # class list for zero-shot evaluation; else the labels found in the data
    templates: str | None = None  # prompt templates file (JSON list or one per line)
    lora: bool = False
    lock_image: bool = False
    lock_text: bool = False
    lora_rank: int = 8
    epochs: int = 10
    lr: float | None = None
    batch_size: int = 128
    weight_decay: float = 0.1
    warmup_ratio: float = 0.1
    seed: int = 42
    resume: bool = False
    overwrite: bool = False  # replace a checkpoint already in `out` (else training refuses)
    workers: int | None = None  # data loader processes; None: 1 when there are 2+ cores, else 0
    log_every: int = 10

    def __post_init__(self) -> None:
        if sum((self.lora, self.lock_image, self.lock_text)) > 1:
            raise ValueError("choose at most one of lora, lock_image, lock_text")
        if self.epochs < 1 or self.batch_size < 2 or self.log_every < 1:
            raise ValueError("epochs and log_every must be at least 1, batch_size at least 2 (contrastive pairs)")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")

    @property
    def loader_workers(self) -> int:
        if self.workers is not None:
            return max(0, self.workers)
        return 1 if available_cores() >= 2 else 0

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        if self.lora or self.lock_image or self.lock_text:
            return ADAPTER_LR
        return FINETUNE_LR if self.pretrained else SCRATCH_LR


class RankBatches(torch.utils.data.Sampler):
    """The global batches of `batches`, each cut to this rank's part (whole in a single process)."""

    def __init__(self, batches: torch.utils.data.BatchSampler):
        self.batches = batches

    def __iter__(self):
        return (distributed.shard(batch) for batch in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class EpochSampler(torch.utils.data.Sampler):
    """A seeded shuffle per epoch (seed + epoch): resumable, and one loader serves every epoch."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist())

    def __len__(self) -> int:
        return self.size


# --- architecture -------------------------------------------------------------------------


def resolve_arch(arch: str) -> tuple[str, dict[str, Any]]:
    """(open_clip model name, model config) for a built-in name or a model-config JSON file.

    A JSON file (open_clip's model_configs format, optionally wrapped as
    {"model_cfg": ...}) is registered with `open_clip.add_model_config` under its
    file name, so the rest of open_clip (factory, tokenizer) sees a normal model.
    """
    import open_clip

    if arch == TINY_ARCH:
        return _register(TINY_ARCH, TINY_ARCH_CONFIG), dict(TINY_ARCH_CONFIG)
    path = Path(arch)
    if path.suffix.lower() == ".json" or path.is_file():
        if not path.is_file():
            raise TrainingError(f"architecture file {path} does not exist")
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise TrainingError(f"{path}: invalid JSON ({exc.msg})") from exc
        config = config.get("model_cfg", config) if isinstance(config, dict) else config
        missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if not isinstance(config, dict) or k not in config]
        if missing:
            raise TrainingError(f"{path}: not an open_clip model config (missing {missing}); see open_clip/model_configs/*.json")
        return _register(path.stem, config), config
    config = open_clip.get_model_config(arch)
    if config is None:
        raise TrainingError(
            f"unknown architecture {arch!r}: pass an open_clip model name (e.g. ViT-B-32; open_clip.list_models() "
            f"lists them), {TINY_ARCH}, or a model-config JSON file"
        )
    return arch, config


def _register(name: str, config: dict[str, Any]) -> str:
    """Write the config where open_clip's registry reads it (one file per name and content)."""
    import hashlib

    import open_clip

    text = json.dumps(config, sort_keys=True)
    folder = Path(tempfile.gettempdir()) / "mmserve-open-clip-configs" / hashlib.sha256(text.encode()).hexdigest()[:16]
    path = folder / f"{name}.json"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{name}.json.partial"
        partial.write_text(text)
        partial.replace(path)
    open_clip.add_model_config(path)
    return name


def build_model(cfg: ClipTrainConfig):
    """(model, train transform, eval transform, tokenizer, model_cfg) through open_clip."""
    import open_clip

    name, model_cfg = resolve_arch(cfg.arch)
    if cfg.pretrained and not Path(cfg.pretrained).is_file():
        raise TrainingError(f"--pretrained {cfg.pretrained}: no such file (no model hub is reachable; pass a local file)")
    try:
        model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
            name, pretrained=cfg.pretrained or None, output_dict=True
        )
        tokenizer = open_clip.get_tokenizer(name)
    except RuntimeError as exc:
        raise TrainingError(f"open_clip could not build {cfg.arch!r}: {exc}") from exc
    model_cfg = open_clip.get_model_config(name) or model_cfg
    return model, preprocess_train, preprocess_val, tokenizer, model_cfg


def _prepare_trainable(model: torch.nn.Module, cfg: ClipTrainConfig) -> torch.nn.Module:
    if cfg.lock_image:
        model.lock_image_tower(unlocked_groups=0, freeze_bn_stats=True)
    if cfg.lock_text:
        model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
    if not cfg.lora:
        return model
    from peft import LoraConfig, get_peft_model

    # The MLP projections of every transformer block in both towers; attention stays
    # frozen (torch's fused MultiheadAttention bypasses wrapped projection layers).
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank, lora_dropout=0.05, target_modules=["c_fc", "c_proj"])
    wrapped = get_peft_model(model, lora)
    for name, param in wrapped.named_parameters():
        if name.endswith("logit_scale"):
            param.requires_grad = True  # the temperature is cheap and worth learning
    return wrapped


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """The shared AdamW grouping (no decay on biases, norms, logit_scale), fused on CPU.

    A CLIP text tower's token embedding (49408 x width) is updated densely every step;
    the fused kernel makes that 5x cheaper than the default implementation.
    """
    groups = [
        {"params": group["params"], "weight_decay": group["weight_decay"]}
        for group in make_optimizer(model, lr, weight_decay).param_groups
        if group["params"]
    ]
    return torch.optim.AdamW(groups, lr=lr, fused=True)


def _core(model: torch.nn.Module) -> torch.nn.Module:
    """The open_clip model under a peft wrapper (LoRA layers are injected in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _loss_fn(model: torch.nn.Module):
    from open_clip.loss import ClipLoss, SigLipLoss

    # under torchrun each rank gathers every rank's features: the loss contrasts the global batch
    world = {"rank": distributed.rank(), "world_size": distributed.world_size()}
    # open_clip's gather calls an all_gather torch marks deprecated; the warning is torch's to open_clip
    warnings.filterwarnings("ignore", "torch.distributed.nn.functional.all_gather is deprecated", FutureWarning)
    if getattr(_core(model), "logit_bias", None) is not None:
        return SigLipLoss(**world)
    return ClipLoss(local_loss=False, gather_with_grad=distributed.world_size() > 1, **world)


# --- data ------------------------------------------------------------------------------------


def load_image(path: Path):
    """An RGB PIL image decoded exactly as the server decodes request bytes."""
    from mmserve.serving.image import decode_image
    from mmserve.serving.runtime import InputError

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        return decode_image(data, input_name=str(path))
    except InputError as exc:
        raise DataError(str(exc).replace(f"{path}[0]", str(path))) from exc


class PairDataset(torch.utils.data.Dataset):
    """(augmented image, caption tokens) pairs; decoded images are kept in memory while they fit.

    Decoding is a third of a step's time for a small model: the first epoch decodes,
    later ones reuse the pixels, up to `cache_bytes` of them (per loader process).
    """

    def __init__(self, pairs: Sequence[ImageText], transform, tokens: torch.Tensor, cache_bytes: int = 512 * 2**20):
        self.pairs, self.transform, self.tokens = list(pairs), transform, tokens
        self.cache: dict[int, Any] = {}
        self.cache_budget = cache_bytes

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        image = self.cache.get(index)
        if image is None:
            image = load_image(self.pairs[index].image)
            size = image.width * image.height * 3
            if size <= self.cache_budget:
                self.cache[index] = image
                self.cache_budget -= size
        return self.transform(image), self.tokens[index]


def _load_data(cfg: ClipTrainConfig) -> tuple[list[ImageText], list[ImageText], list[str], list[str]]:
    """Train rows, val rows, zero-shot classes (maybe empty) and prompt templates."""
    pairs = read_pairs(cfg.data)
    if cfg.val_data:
        train, val = pairs, read_pairs(cfg.val_data)
    else:
        train, val = split_val(pairs, cfg.val_fraction, cfg.seed)
    if len(train) < 2:
        raise DataError(f"{cfg.data}: contrastive training needs at least two rows, found {len(train)}")
    if cfg.classes:
        classes = read_classes(cfg.classes)
    else:
        classes = sorted({p.label for p in train + val if p.label is not None})
    if classes and any(p.label is not None for p in val):
        check_labels_known(val, classes, cfg.val_data or f"{cfg.data} (val split)")
    templates = read_templates(cfg.templates) if cfg.templates else _sibling_templates(cfg) or list(DEFAULT_TEMPLATES)
    return train, val, classes, check_templates(templates)


def _sibling_templates(cfg: ClipTrainConfig) -> list[str] | None:
    """templates.json next to the class list or the data, when present (the shapes data set writes one)."""
    folders = ([Path(cfg.classes).parent] if cfg.classes else []) + [Path(cfg.data).parent]
    for folder in folders:
        if (folder / "templates.json").is_file():
            return read_templates(folder / "templates.json")
    return None


# --- evaluation ------------------------------------------------------------------------------


@torch.inference_mode()
def encode_images(model: torch.nn.Module, images: Sequence[Path], transform, batch_size: int = EVAL_BATCH_SIZE) -> np.ndarray:
    core = _core(model)
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([transform(load_image(p)) for p in images[start : start + batch_size]])
        out.append(core.encode_image(batch.to(_device(core)), normalize=True).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


@torch.inference_mode()
def encode_texts(model: torch.nn.Module, texts: Sequence[str], tokenizer, batch_size: int = EVAL_BATCH_SIZE) -> np.ndarray:
    core = _core(model)
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(list(texts[start : start + batch_size])).to(_device(core))
        out.append(core.encode_text(tokens, normalize=True).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def evaluate(
    model: torch.nn.Module,
    pairs: Sequence[ImageText],
    transform,
    tokenizer,
    classes: Sequence[str],
    templates: Sequence[str],
) -> dict[str, float]:
    """Retrieval recall@1/@5 and, when rows carry labels, zero-shot top-1/top-5 accuracy."""
    was_training = model.training
    model.eval()
    try:
        image_embeddings = encode_images(model, [p.image for p in pairs], transform)
        text_embeddings = encode_texts(model, [p.caption for p in pairs], tokenizer)
        metrics = retrieval_metrics(image_embeddings, text_embeddings, [p.caption for p in pairs])
        if classes and all(p.label is not None for p in pairs):
            prompt_embeddings = encode_texts(model, prompts(classes, templates), tokenizer)
            classifier = class_embeddings(prompt_embeddings, len(classes), len(templates))
            index = {c: i for i, c in enumerate(classes)}
            labels = [index[p.label] for p in pairs]
            metrics["zero_shot_top1"] = zero_shot_accuracy(image_embeddings, classifier, labels, k=1)
            metrics["zero_shot_top5"] = zero_shot_accuracy(image_embeddings, classifier, labels, k=min(5, len(classes)))
    finally:
        model.train(was_training)
    return metrics


def _score(metrics: dict[str, float]) -> float:
    """What picks the best epoch: zero-shot accuracy when measurable, else mean recall@1."""
    if "zero_shot_top1" in metrics:
        return metrics["zero_shot_top1"]
    return (metrics["image_to_text_r1"] + metrics["text_to_image_r1"]) / 2


def format_metrics(metrics: dict[str, float]) -> str:
    parts = []
    if "zero_shot_top1" in metrics:
        parts.append(f"zero-shot top-1 {100 * metrics['zero_shot_top1']:.1f}%")
    parts.append(
        f"image->text R@1 {100 * metrics['image_to_text_r1']:.1f}% R@5 {100 * metrics['image_to_text_r5']:.1f}%, "
        f"text->image R@1 {100 * metrics['text_to_image_r1']:.1f}% R@5 {100 * metrics['text_to_image_r5']:.1f}%"
    )
    return ", ".join(parts)


# --- training --------------------------------------------------------------------------------


@distributed.data_parallel()
@quiet_libraries()
def train_clip(cfg: ClipTrainConfig) -> TrainResult:
    """Train, keep the best epoch in `cfg.out`, return its validation metrics."""
    threads = configure_threads(cfg.loader_workers)
    out = Path(cfg.out)
    train_pairs, val_pairs, classes, templates = _load_data(cfg)
    identity = {
        "kind": "clip", "arch": cfg.arch, "pretrained": cfg.pretrained, "lora": cfg.lora,
        "lock_image": cfg.lock_image, "lock_text": cfg.lock_text, "classes": classes,
    }
    ledger = RunLedger.open(out, identity, cfg.epochs, cfg.resume, cfg.overwrite)
    if (done := ledger.finished_result()) is not None:
        return done

    seed_everything(cfg.seed)
    model, preprocess_train, preprocess_val, tokenizer, model_cfg = build_model(cfg)
    parameters = sum(p.numel() for p in model.parameters())
    threads = configure_threads(cfg.loader_workers, parameters)
    model = _prepare_trainable(model, cfg).to(distributed.device())
    if parameters >= LARGE_MODEL_PARAMETERS:
        threads = threads_by_trial(model, tokenizer, cfg.loader_workers)
    loss_fn = _loss_fn(model)
    tokens = tokenizer([p.caption for p in train_pairs])
    dataset = PairDataset(train_pairs, preprocess_train, tokens)
    global_batch = cfg.batch_size * distributed.world_size()  # --batch-size is per process
    drop_last = len(dataset) > global_batch
    n_batches = len(dataset) // global_batch if drop_last else 1
    optimizer = _optimizer(model, cfg.learning_rate, cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg.epochs * n_batches, cfg.warmup_ratio)

    ledger.restore(model, optimizer, scheduler)
    settings = {
        "kind": "clip",
        "arch": cfg.arch,
        "open_clip_model": resolve_arch(cfg.arch)[0],
        "tokenizer": tokenizer_settings(tokenizer, model_cfg),
        "prompt_templates": templates,
        "classes": classes,
        "training": {**absolute_data_paths(asdict(cfg)), "learning_rate": cfg.learning_rate},
        "versions": {**library_versions(), "open_clip": _open_clip_version()},
    }
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(
        f"{cfg.arch}: {total / 1e6:.2f}M parameters, {trainable / 1e6:.2f}M trainable; "
        f"{len(train_pairs)} training pairs, {len(val_pairs)} validation pairs, {len(classes)} classes, "
        f"{len(templates)} prompt templates; lr {cfg.learning_rate:g}; {threads} torch threads, "
        f"{cfg.loader_workers} loader processes"
    )

    def summary(best: dict[str, Any]) -> dict[str, Any]:
        return {
            "val_metrics": best, "n_train": len(train_pairs), "n_val": len(val_pairs),
            "logit_scale": float(_core(model).logit_scale.exp().item()),
        }

    def write_checkpoint(folder: Path) -> None:
        save_clip_checkpoint(folder, model, model_cfg, _core(model).visual.preprocess_cfg, settings)

    sampler = EpochSampler(len(dataset), cfg.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=RankBatches(torch.utils.data.BatchSampler(sampler, global_batch, drop_last)),
        num_workers=cfg.loader_workers, persistent_workers=cfg.loader_workers > 0,  # keeps each worker's image cache
    )
    trained = distributed.wrap(_core(model), find_unused_parameters=cfg.lora)
    step = ledger.epochs_done * n_batches
    with open_writer(out) as writer:
        for epoch in range(ledger.epochs_done, cfg.epochs):
            t0 = time.perf_counter()
            sampler.set_epoch(epoch)
            train_loss, step = _train_epoch(
                model, trained, loader, n_batches, loss_fn, optimizer, scheduler, writer, step,
                f"epoch {epoch + 1}/{cfg.epochs}", cfg.log_every,
            )
            metrics = evaluate(model, val_pairs, preprocess_val, tokenizer, classes, templates)
            for key, value in metrics.items():
                writer.add_scalar(f"val/{key}", value, step)
            score = EpochScore(
                history={"train_loss": train_loss, **metrics}, score=_score(metrics),
                headline=format_metrics(metrics), metrics=metrics,
                progress=f"train loss {train_loss:.4f}, {format_metrics(metrics)}",
            )
            ledger.end_epoch(score, time.perf_counter() - t0, summary, write_checkpoint, model, optimizer, scheduler)
    return ledger.result()


def _train_epoch(
    model, forward, loader, n_batches, loss_fn, optimizer, scheduler, writer, step, desc, log_every
) -> tuple[float, int]:
    """One epoch of the shared loop (loop.train_one_epoch) with CLIP's contrastive loss;
    `forward` is the open_clip model, DDP-wrapped under torchrun. Returns the mean loss over
    all ranks and the global step."""
    core = _core(model)
    device = distributed.device()

    def loss_of(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        images, texts = batch
        out = forward(images.to(device), texts.to(device))
        extra = (out["logit_bias"],) if "logit_bias" in out else ()
        return loss_fn(out["image_features"], out["text_features"], out["logit_scale"], *extra)

    def clamp_logit_scale() -> None:
        with torch.no_grad():
            core.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    def log_logit_scale(writer: Any, step: int) -> None:  # a SummaryWriter
        writer.add_scalar("train/logit_scale", core.logit_scale.exp().item(), step)

    return train_one_epoch(
        model, loader, n_batches, optimizer, scheduler, writer, step, desc, log_every,
        loss_of=loss_of, after_step=clamp_logit_scale, log_extra=log_logit_scale,
    )


def _open_clip_version() -> str:
    import open_clip

    return open_clip.__version__


# --- evaluating a saved checkpoint -------------------------------------------------------------


def evaluate_clip(
    checkpoint: str | Path, data: str | Path, classes: Sequence[str] | None = None, templates: Sequence[str] | None = None
) -> dict[str, float]:
    """Zero-shot accuracy and retrieval recall of a saved checkpoint on a (labelled) data file."""
    configure_runtime()
    ckpt = load_clip_checkpoint(checkpoint)
    pairs = read_pairs(data)
    classes = list(classes) if classes is not None else ckpt.classes
    if classes and any(p.label is not None for p in pairs):
        check_labels_known(pairs, classes, str(data))
    return evaluate(ckpt.model, pairs, ckpt.preprocess, ckpt.tokenizer, classes, list(templates or ckpt.templates))
