"""CLIP evaluation metrics on L2-normalised embeddings: zero-shot top-1 and retrieval recall@k.

numpy only, so the same functions score torch features during training and
served embeddings in the demo.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np


def class_embeddings(prompt_embeddings: np.ndarray, n_classes: int, n_templates: int) -> np.ndarray:
    """Per class: the mean of its (normalised) prompt embeddings, normalised again.

    `prompt_embeddings` is [n_classes * n_templates, D] ordered class-major, as
    `prompts(classes, templates)` lists them (open_clip's zero-shot classifier).
    """
    grouped = prompt_embeddings.reshape(n_classes, n_templates, -1).mean(axis=1)
    return grouped / np.linalg.norm(grouped, axis=-1, keepdims=True).clip(min=1e-12)


def prompts(classes: Sequence[str], templates: Sequence[str]) -> list[str]:
    return [template.format(name) for name in classes for template in templates]


def zero_shot_probs(image_embeddings: np.ndarray, classifier: np.ndarray, logit_scale: float) -> np.ndarray:
    """softmax(logit_scale * cosine) over classes, per image."""
    logits = logit_scale * image_embeddings @ classifier.T
    logits -= logits.max(axis=-1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=-1, keepdims=True)


def zero_shot_accuracy(image_embeddings: np.ndarray, classifier: np.ndarray, labels: Sequence[int], k: int = 1) -> float:
    """Top-k accuracy of the nearest class embedding."""
    scores = image_embeddings @ classifier.T
    top = np.argsort(-scores, axis=-1)[:, :k]
    return float(np.mean([label in row for label, row in zip(labels, top)]))


def retrieval_metrics(
    image_embeddings: np.ndarray, text_embeddings: np.ndarray, captions: Sequence[str], ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Image->text and text->image recall@k for paired rows (image i goes with caption i).

    Identical caption strings are one text (synthetic and web data repeat captions):
    an image is matched by any row with its exact caption, a caption by any of the
    images it describes. Without this, ties between equal texts would make recall
    depend on row order.
    """
    unique: dict[str, int] = {}
    for caption in captions:
        unique.setdefault(caption, len(unique))
    caption_ids = np.array([unique[c] for c in captions])
    first_row = np.zeros(len(unique), dtype=np.int64)
    for row, cid in reversed(list(enumerate(caption_ids))):
        first_row[cid] = row
    texts = text_embeddings[first_row]  # one embedding per distinct caption
    images_of: dict[int, set[int]] = defaultdict(set)
    for row, cid in enumerate(caption_ids):
        images_of[cid].add(row)

    similarity = image_embeddings @ texts.T  # [images, distinct captions]
    metrics = {}
    image_rank = np.argsort(-similarity, axis=1)
    text_rank = np.argsort(-similarity.T, axis=1)
    for k in ks:
        metrics[f"image_to_text_r{k}"] = float(np.mean([caption_ids[i] in image_rank[i, :k] for i in range(len(captions))]))
        metrics[f"text_to_image_r{k}"] = float(
            np.mean([bool(images_of[c] & set(text_rank[c, :k].tolist())) for c in range(len(unique))])
        )
    return metrics
