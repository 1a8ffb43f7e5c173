"""The CLIP line of the demo: a tiny open_clip ViT trained on generated shapes, served as
image_embed, clip_text_embed and zero_shot_image.

No CLIP weights are reachable offline, so the demo trains its own small model from
scratch (a few minutes on a CPU) on pictures `mmserve.training.clip_shapes` draws, and
measures zero-shot accuracy on held-out pictures of attribute combinations that
training never saw, first with open_clip in-process, then through the server.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mmserve.demo.common import DemoContext, banner, latency_ms

CHECKPOINT = "clip-shapes"
# The embedded default: trained from scratch, see training/clip.py (TINY_ARCH_CONFIG).
TRAINING = {"epochs": 20, "batch_size": 64, "lr": 1e-3}


def _data(context: DemoContext):
    from mmserve.training.clip_shapes import write_dataset

    return write_dataset(context.workdir / "data" / "shapes")


def prepare(context: DemoContext) -> None:
    from mmserve.exporters.clip import export_clip
    from mmserve.training.clip import TINY_ARCH, ClipTrainConfig, evaluate_clip, train_clip

    banner("CLIP: training a tiny open_clip ViT from scratch on generated shapes (CPU)")
    data = _data(context)
    checkpoint = context.checkpoint(CHECKPOINT)
    print(f"data: {data.folder} (train {data.train.name}, validation {data.val.name}, held-out {data.test.name})")
    stale = _stale_reason(checkpoint)
    if context.needs_training(CHECKPOINT) or stale:
        if stale and not context.fresh:
            print(f"-- retraining {checkpoint}: {stale}")
        train_clip(ClipTrainConfig(
            arch=TINY_ARCH, data=str(data.train), val_data=str(data.val), classes=str(data.classes),
            templates=str(data.templates), out=str(checkpoint), overwrite=True, **TRAINING,  # retraining decided above
        ))
    else:
        print(f"-- reusing {checkpoint} (pass --fresh to retrain)")

    metrics = json.loads((checkpoint / "metrics.json").read_text())
    held_out = _cached_evaluation(checkpoint, "test", lambda: evaluate_clip(checkpoint, data.test))
    unseen = _cached_evaluation(checkpoint, "unseen_pairs", lambda: evaluate_clip(checkpoint, data.unseen_pairs))
    val = metrics["val_metrics"]
    context.summary += [
        f"CLIP training: {metrics['train_time_seconds']:.0f} s on this CPU, best epoch {metrics['best_epoch']} "
        f"of {len(metrics['history'])}",
        f"CLIP zero-shot top-1 (open_clip, in-process): validation {100 * val['zero_shot_top1']:.1f}%, "
        f"held-out unseen attribute combinations {100 * held_out['zero_shot_top1']:.1f}%, "
        f"unseen colour-shape pairs {100 * unseen['zero_shot_top1']:.1f}%",
        f"CLIP retrieval on held-out images: image->text R@1 {100 * held_out['image_to_text_r1']:.1f}% "
        f"R@5 {100 * held_out['image_to_text_r5']:.1f}%, text->image R@1 {100 * held_out['text_to_image_r1']:.1f}%",
    ]

    banner("CLIP: export both towers to ONNX and the Triton repository")
    if context.needs_export(checkpoint, "zero_shot_image"):
        result = export_clip(checkpoint, context.repository)
        print(result.summary())
        image, text = (result.graphs[tower].parity for tower in ("image_tower", "text_tower"))
        context.summary.append(
            f"CLIP parity: image tower max diff {image.max_abs_diff:.1e} / min cosine "
            f"{image.min_cosine:.7f}, text tower {text.max_abs_diff:.1e} / {text.min_cosine:.7f}"
        )
    else:
        print(f"-- image_embed, clip_text_embed, zero_shot_image are up to date in {context.repository}")


def _stale_reason(checkpoint: Path) -> str | None:
    """Why an existing checkpoint does not match today's default recipe (None: it does)."""
    from mmserve.training.clip import TINY_ARCH_CONFIG

    try:
        settings = json.loads((checkpoint / "mmserve_clip.json").read_text())
        model_cfg = json.loads((checkpoint / "open_clip_config.json").read_text())["model_cfg"]
    except (OSError, ValueError, KeyError):
        return None  # absent or unreadable: needs_training decides
    training = settings.get("training", {})
    changed = [key for key, value in TRAINING.items() if training.get(key) != value]
    if model_cfg != TINY_ARCH_CONFIG:
        changed.append("architecture")
    return f"it was trained with another recipe ({', '.join(changed)})" if changed else None


def _cached_evaluation(checkpoint: Path, split: str, evaluate) -> dict[str, float]:
    """Held-out metrics are kept beside the checkpoint, so a reused checkpoint is not re-scored."""
    path = checkpoint / f"eval_{split}.json"
    marker = checkpoint / "metrics.json"
    if path.exists() and path.stat().st_mtime >= marker.stat().st_mtime:
        return json.loads(path.read_text())
    metrics = evaluate()
    path.write_text(json.dumps(metrics, indent=2))
    return metrics


def show(context: DemoContext, client) -> None:
    from mmserve.training.clip_data import read_classes, read_pairs

    data = _data(context)
    classes = read_classes(data.classes)
    held_out = read_pairs(data.test)

    banner("CLIP: zero_shot_image on held-out generated pictures (30 candidate labels each)")
    for pair in held_out[:6]:
        result = client.zero_shot(pair.image, classes)
        mark = "ok " if result.label == pair.label else "MISS"
        print(f"  {mark} {result.label:<16} {result.score:.2f}   truth: {pair.label:<16} {pair.image.name}")

    results = client.zero_shot([p.image for p in held_out], classes)
    served = float(np.mean([r.label == p.label for r, p in zip(results, held_out)]))
    print(f"  served zero-shot accuracy on {len(held_out)} held-out pictures of unseen combinations: {100 * served:.1f}%")
    context.summary.append(f"CLIP zero-shot accuracy through the server (held-out, {len(held_out)} pictures): {100 * served:.1f}%")

    banner("CLIP: image -> text retrieval (image_embed x clip_text_embed)")
    captions = list(dict.fromkeys(p.caption for p in held_out))[:200]
    text_vectors = client.embed_clip_texts(captions)
    queries = held_out[:4]
    image_vectors = client.embed_images([p.image for p in queries])
    for pair, scores in zip(queries, image_vectors @ text_vectors.T):
        print(f"  {pair.image.name} (truth: {pair.caption})")
        for index in np.argsort(-scores)[:3]:
            print(f"      {scores[index]:.3f}  {captions[index]}")

    banner("CLIP: latency per call through gRPC (batch of 1, p50 / p90)")
    image_bytes = queries[0].image.read_bytes()
    calls = {
        "image_embed": lambda: client.embed_images(image_bytes),
        "clip_text_embed": lambda: client.embed_clip_texts("a photo of a small red circle"),
        "zero_shot_image (30 labels, cached)": lambda: client.zero_shot(image_bytes, classes),
    }
    for pipeline, call in calls.items():
        p50, p90 = latency_ms(call)
        print(f"  {pipeline:<36} p50 {p50:6.2f} ms   p90 {p90:6.2f} ms")
        context.summary.append(f"{pipeline.split()[0]}: p50 {p50:.2f} ms per call (batch 1)")
