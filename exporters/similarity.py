"""How far one model's outputs are from another's: the figures the parity gate, the INT8
report and the bench all give (max absolute difference, cosine per item).

Each item (row) is flattened and compared in float64, so a token-level output (NER) is
judged as one vector per text, and float32 rounding does not show up as drift.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The cosine between each item of `a` and the same item of `b` (first axis: items)."""
    a = np.asarray(a).reshape(len(a), -1).astype(np.float64)
    b = np.asarray(b).reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def drift(outputs: Iterable[np.ndarray], references: Iterable[np.ndarray]) -> tuple[float, float]:
    """(max |output - reference|, min cosine) over batches of outputs and their references."""
    worst, cosine = 0.0, 1.0
    for output, reference in zip(outputs, references, strict=True):
        worst = max(worst, float(np.abs(output - reference).max()))
        cosine = min(cosine, float(row_cosines(output, reference).min()))
    return worst, cosine
