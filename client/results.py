"""What the client returns: small frozen dataclasses instead of raw tensors.

Arrays are compared by value (``np.array_equal``) so results can be asserted on in
tests; the classes holding arrays are therefore unhashable, like the arrays.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

__all__ = ["Classification", "Entity", "ZeroShotResult", "ModelInfo"]


def _values_equal(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    return a == b


class _ArrayEq:
    """``__eq__`` for dataclasses with ndarray fields (the generated one raises)."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(
            _values_equal(getattr(self, f.name), getattr(other, f.name))
            for f in fields(self)  # type: ignore[arg-type]
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True, eq=False)
class Classification(_ArrayEq):
    """One item's class: the server's ``LABEL``, its probability, and all ``PROBS``."""

    label: str
    score: float
    probs: np.ndarray


@dataclass(frozen=True, slots=True)
class Entity:
    """A named entity; ``start``/``end`` are character offsets into the input text."""

    text: str
    label: str
    start: int
    end: int
    score: float


@dataclass(frozen=True, slots=True, eq=False)
class ZeroShotResult(_ArrayEq):
    """Probabilities over the candidate labels (in their order) and the best one."""

    labels: tuple[str, ...]
    probs: np.ndarray
    label: str
    score: float


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One row of the server's repository index (models and ensembles alike)."""

    name: str
    version: str
    state: str
    reason: str
