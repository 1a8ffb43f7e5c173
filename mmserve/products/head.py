"""`--mode head`: a classifier over a shared encoder product's embeddings, trained in seconds.

The embeddings come from the encoder product exactly as the repository serves it (its
served version's own models, run in this process by mmserve.bench.inprocess), so the head
learns on the vectors it will see in production. The head is linear on the L2-normalised
embedding followed by a softmax -- logistic regression (the default: measured best, see
docs/products.md) or class centroids (cosine to each label's mean, scaled) -- so both
are the same two arrays at serving time (mmserve/serving/head.py).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from mmserve.kinds import InputShape, KindInfo
from mmserve.serving.head import HEAD_FILE, save_head

HEADS = ("logreg", "centroid")
DEFAULT_HEAD = "logreg"
CENTROID_SCALE = 20.0  # cosine similarities span ~[-1, 1]: scaled so the softmax is not flat
TEXT_BATCH = 32


class EncoderEmbeddings:
    """The served version of an embedding product, run in this process, item by item or in batches."""

    def __init__(self, repository: Path, encoder: str, kind: KindInfo) -> None:
        from mmserve.bench.inprocess import InProcessPipeline

        self.kind = kind
        self.pipeline = InProcessPipeline(Path(repository), encoder)

    def __call__(self, items: Sequence[str]) -> np.ndarray:
        from mmserve.pipelines import AUDIO, EMBEDDING, SAMPLE_RATE, TEXT

        parts = []
        if self.kind.input is InputShape.TEXT:
            for start in range(0, len(items), TEXT_BATCH):
                batch = np.array([[t.encode("utf-8")] for t in items[start:start + TEXT_BATCH]], dtype=np.object_)
                parts.append(self.pipeline({TEXT.name: batch})[EMBEDDING.name])
        else:  # one clip per call: clips differ in length, and padding would change their embedding
            for path in items:
                samples, rate = read_clip(Path(path))
                request = {AUDIO.name: samples[None, :], SAMPLE_RATE.name: np.array([[rate]], dtype=np.int32)}
                parts.append(self.pipeline(request)[EMBEDDING.name])
        return np.concatenate(parts).astype(np.float32)


def read_clip(path: Path) -> tuple[np.ndarray, int]:
    """A clip as mono float32 PCM and its rate, as a client sends it."""
    import soundfile

    samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return samples.mean(axis=1).astype(np.float32), int(rate)


def normalised(embeddings: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.maximum(norms, 1e-12)


@dataclass(frozen=True)
class TrainedHead:
    weight: np.ndarray  # [D, C]
    bias: np.ndarray  # [C]
    method: str
    detail: str  # e.g. the regularisation chosen
    seconds: float

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        logits = normalised(embeddings) @ self.weight + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def save(self, folder: Path) -> Path:
        return save_head(folder / HEAD_FILE, self.weight, self.bias)


def train_head(embeddings: np.ndarray, labels: Sequence[str], classes: Sequence[str], method: str = DEFAULT_HEAD,
               seed: int = 42) -> TrainedHead:
    """A head over `embeddings` (rows) for `labels`; output order `classes`."""
    if method not in HEADS:
        raise ValueError(f"unknown head {method!r}: use {' or '.join(HEADS)}")
    started = time.perf_counter()
    x = normalised(np.asarray(embeddings, dtype=np.float64))
    y = np.array([list(classes).index(label) for label in labels])
    if method == "centroid":
        centroids = normalised(np.stack([x[y == c].mean(axis=0) for c in range(len(classes))]))
        weight, bias, detail = CENTROID_SCALE * centroids.T, np.zeros(len(classes)), f"scale {CENTROID_SCALE:g}"
    else:
        weight, bias, detail = _logistic_regression(x, y, len(classes), seed)
    return TrainedHead(weight.astype(np.float32), bias.astype(np.float32), method, detail, time.perf_counter() - started)


def _logistic_regression(x: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Multinomial logistic regression; its regularisation chosen by stratified cross-validation
    on the training examples when each label has at least 3 (else a fixed C that did well)."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    smallest = int(np.bincount(y, minlength=n_classes).min())
    with warnings.catch_warnings():  # scikit-learn 1.9 announces default changes that do not touch this use
        warnings.simplefilter("ignore", FutureWarning)
        if smallest >= 3:
            model = LogisticRegressionCV(Cs=[1.0, 10.0, 100.0], cv=min(4, smallest), max_iter=2000, random_state=seed,
                                         scoring="accuracy")
            model.fit(x, y)
            chosen = float(np.atleast_1d(model.C_)[0])
        else:
            chosen = 10.0
            model = LogisticRegression(C=chosen, max_iter=2000, random_state=seed).fit(x, y)
    coef, intercept = model.coef_, model.intercept_
    if n_classes == 2 and coef.shape[0] == 1:  # sklearn's binary form: one row for class 1
        coef = np.vstack([-coef / 2, coef / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    return coef.T, intercept, f"C={chosen:g}"
