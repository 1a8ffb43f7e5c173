"""The report a new product version gets before anything is served: held-out accuracy and
macro-F1, per-label precision and recall, a confusion-matrix plot, and the same figures of
the product's current version on the same held-out examples when there is one.

Written as report.json (what the console and `--json` read), report.md (what a person
reads) and confusion.png (matplotlib, no display needed).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
CONFUSION_PNG = "confusion.png"


@dataclass(frozen=True)
class LabelScore:
    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Scores:
    accuracy: float
    macro_f1: float
    n: int
    per_label: tuple[LabelScore, ...]
    confusion: tuple[tuple[int, ...], ...]  # rows: gold label, columns: predicted, in `labels` order
    labels: tuple[str, ...]


def score(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> Scores:
    """Accuracy, macro-F1 over `labels`, per-label precision/recall/F1 and the confusion matrix."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    for g, p in zip(gold, predicted):
        if g in index and p in index:
            matrix[index[g], index[p]] += 1
    per_label = []
    for i, label in enumerate(labels):
        tp = matrix[i, i]
        predicted_n, support = matrix[:, i].sum(), matrix[i, :].sum()
        precision = tp / predicted_n if predicted_n else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label.append(LabelScore(label, float(precision), float(recall), float(f1), int(support)))
    measured = [s for s in per_label if s.support]
    accuracy = float(np.mean([g == p for g, p in zip(gold, predicted)])) if gold else 0.0
    macro = float(np.mean([s.f1 for s in measured])) if measured else 0.0
    return Scores(accuracy, macro, len(gold), tuple(per_label), tuple(tuple(int(v) for v in row) for row in matrix),
                  tuple(labels))


@dataclass
class Report:
    product: str
    kind: str
    mode: str  # head | finetune
    method: str  # "logreg head over text_embed", "full fine-tune", "LoRA fine-tune"
    scores: Scores
    train_examples: int
    seconds: dict[str, float] = field(default_factory=dict)  # what each stage took
    current: dict[str, Any] | None = None  # the served version on the same held-out set
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / REPORT_JSON).write_text(json.dumps(self.as_dict(), indent=2) + "\n", encoding="utf-8")
        plot_confusion(self.scores, folder / CONFUSION_PNG, f"{self.product}: {self.method}")
        (folder / REPORT_MD).write_text(self.markdown(), encoding="utf-8")

    def headline(self) -> str:
        s = self.scores
        line = f"held-out accuracy {100 * s.accuracy:.1f}%, macro-F1 {100 * s.macro_f1:.1f} ({s.n} examples)"
        if self.current:
            line += (f"; current version {self.current['version']}: accuracy {100 * self.current['accuracy']:.1f}%, "
                     f"macro-F1 {100 * self.current['macro_f1']:.1f}")
        return line

    def markdown(self) -> str:
        s = self.scores
        lines = [
            f"# {self.product}: {self.method}", "",
            f"- kind {self.kind}, mode {self.mode}, {self.train_examples} training examples, {len(s.labels)} labels",
            f"- {self.headline()}",
        ]
        if self.seconds:
            lines.append("- time: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()))
        lines += [f"- {note}" for note in self.notes]
        lines += ["", "| label | precision | recall | F1 | held-out |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {p.label} | {p.precision:.2f} | {p.recall:.2f} | {p.f1:.2f} | {p.support} |" for p in s.per_label]
        lines += ["", f"![confusion matrix]({CONFUSION_PNG})", ""]
        return "\n".join(lines)


def read_report(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / REPORT_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def plot_confusion(scores: Scores, path: Path, title: str) -> Path:
    """The confusion matrix as a PNG: counts per (gold, predicted) pair, the diagonal correct."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(scores.labels)
    size = max(5.5, 0.45 * n + 2.5)
    figure, axes = plt.subplots(figsize=(size, size * 0.9), dpi=100)
    matrix = np.array(scores.confusion)
    axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(n), scores.labels, rotation=60, ha="right", fontsize=8)
    axes.set_yticks(range(n), scores.labels, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true label")
    top = matrix.max() or 1
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                axes.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                          color="white" if matrix[i, j] > top / 2 else "black")
    axes.set_title(f"{title}\naccuracy {100 * scores.accuracy:.1f}%, macro-F1 {100 * scores.macro_f1:.1f}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
