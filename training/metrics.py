"""Evaluation metrics and printable reports, one function per task."""
from __future__ import annotations

from collections.abc import Sequence

from seqeval.metrics import classification_report as entity_report
from seqeval.metrics import f1_score as entity_f1
from sklearn.metrics import accuracy_score, f1_score
from sklearn.metrics import classification_report as class_report


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]
) -> tuple[dict[str, float], str]:
    """Accuracy and macro/weighted F1 plus sklearn's per-class report."""
    ids = list(range(len(labels)))
    metrics = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=ids, average="weighted", zero_division=0)),
    }
    report = class_report(y_true, y_pred, labels=ids, target_names=list(labels), digits=4, zero_division=0)
    return metrics, report


def ner_metrics(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]]) -> tuple[dict[str, float], str]:
    """Entity-level (seqeval) micro F1 — a partly found entity counts as wrong — plus macro F1."""
    y_true, y_pred = [list(s) for s in y_true], [list(s) for s in y_pred]
    metrics = {
        "f1": float(entity_f1(y_true, y_pred, average="micro", zero_division=0)),
        "macro_f1": float(entity_f1(y_true, y_pred, average="macro", zero_division=0)),
    }
    return metrics, entity_report(y_true, y_pred, digits=4, zero_division=0)
