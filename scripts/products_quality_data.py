"""The few-shot sets behind docs/products.md's quality table: N examples per label to train
on and a fixed stratified held-out part, from an embedded intents CSV or a keywords folder.

    python scripts/products_quality_data.py intents OUT --per-label 8
    python scripts/products_quality_data.py keywords OUT --per-label 8 --source KEYWORDS_TRAIN --heldout-source KEYWORDS_TEST
"""
from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path


def intents(out: Path, per_label: int, seed: int) -> None:
    from mmserve.training.defaults import embedded_data

    rows = list(csv.DictReader(embedded_data("intents").open(encoding="utf-8")))
    rng = random.Random(seed)
    by_label: dict[str, list[dict]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    train, heldout = [], []
    for label in sorted(by_label):
        items = by_label[label][:]
        rng.shuffle(items)
        n_held = round(len(items) * 0.15)  # the demo's held-out share
        heldout += items[:n_held]
        train += items[n_held:n_held + per_label]
    write(out / "train.csv", ["text", "label"], [[r["text"], r["label"]] for r in train])
    write(out / "heldout.csv", ["text", "label"], [[r["text"], r["label"]] for r in heldout])


def keywords(out: Path, per_label: int, seed: int, source: Path, heldout_source: Path) -> None:
    import hashlib

    rng = random.Random(seed)
    seen: set[str] = set()  # espeak renders some voice variants byte for byte alike: one of each is kept

    def unique(clips: list[Path]) -> list[Path]:
        kept = []
        for clip in clips:
            digest = hashlib.sha256(clip.read_bytes()).hexdigest()
            if digest not in seen:
                seen.add(digest)
                kept.append(clip)
        return kept

    train = []
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        clips = sorted(folder.glob("*.wav"))
        rng.shuffle(clips)
        train += [[str(c.resolve()), folder.name] for c in unique(clips)[:per_label]]
    heldout = [[str(c.resolve()), f.name] for f in sorted(p for p in heldout_source.iterdir() if p.is_dir())
               for c in unique(sorted(f.glob("*.wav")))]
    write(out / "train.csv", ["path", "label"], train)
    write(out / "heldout.csv", ["path", "label"], heldout)


def write(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    print(f"{path}: {len(rows)} rows")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("set", choices=("intents", "keywords"))
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-label", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--source", type=Path)
    parser.add_argument("--heldout-source", type=Path)
    args = parser.parse_args()
    if args.set == "intents":
        intents(args.out, args.per_label, args.seed)
    else:
        keywords(args.out, args.per_label, args.seed, args.source, args.heldout_source)
