"""Head mode's held-out accuracy over several draws of N examples per label (docs/products.md).

The intents set's held-out part is fixed (the demo's 15% per label, scripts/products_quality_data.py);
each draw picks N training examples per label from the rest. The embeddings come from the
repository's served text_embed (the real MiniLM), computed once.

    python scripts/products_head_draws.py REPOSITORY --per-label 8 16 32 --draws 8
"""
from __future__ import annotations

import argparse
import csv
import random
import statistics
import warnings
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repository", type=Path)
    parser.add_argument("--per-label", type=int, nargs="+", default=[8])
    parser.add_argument("--draws", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    from mmserve.kinds import info
    from mmserve.products.head import EncoderEmbeddings, train_head
    from mmserve.training.defaults import embedded_data

    rows = list(csv.DictReader(embedded_data("intents").open(encoding="utf-8")))
    vectors = EncoderEmbeddings(args.repository, "text_embed", info("text_classify"))([r["text"] for r in rows])
    by_label: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_label.setdefault(row["label"], []).append(i)
    split = random.Random(42)
    held, pool = [], {}
    for label in sorted(by_label):
        items = by_label[label][:]
        split.shuffle(items)
        n_held = round(len(items) * 0.15)
        held += items[:n_held]
        pool[label] = items[n_held:]
    classes = sorted(by_label)
    gold = np.array([rows[i]["label"] for i in held])
    for per_label in args.per_label:
        results: dict[str, list[float]] = {"logreg": [], "centroid": []}
        for draw in range(args.draws):
            rng = random.Random(1000 + draw)
            train = [i for label in classes for i in rng.sample(pool[label], per_label)]
            labels = [rows[i]["label"] for i in train]
            for method in results:
                head = train_head(vectors[train], labels, classes, method)
                predicted = np.array(classes)[head.probabilities(vectors[held]).argmax(axis=1)]
                results[method].append(float((predicted == gold).mean()))
        for method, values in results.items():
            print(f"{method}: mean {100 * statistics.mean(values):.1f}%, min {100 * min(values):.1f}%, "
                  f"max {100 * max(values):.1f}% over {len(values)} draws of {per_label} per label "
                  f"({len(held)} held out): {', '.join(f'{100 * v:.1f}' for v in values)}", flush=True)


if __name__ == "__main__":
    main()
