"""Small labelled subsets of the embedded CSV data sets, for tests that train on a few rows."""
from __future__ import annotations

import csv
import itertools
from pathlib import Path


def subset_csv(source: Path, target: Path, labels: int, per_label: int, offset: int = 0) -> Path:
    """Rows ``offset .. offset + per_label`` of each of the first ``labels`` labels (sorted), as text,label."""
    with Path(source).open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    chosen_labels = sorted({r["label"] for r in rows})[:labels]
    picked = []
    for label in chosen_labels:
        picked += list(itertools.islice((r for r in rows if r["label"] == label), offset, offset + per_label))
    with target.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(picked)
    return target
