"""Reference vectors from sentence-transformers, computed in the peer environment.

Every embedding server in the side-by-side is checked against these before it
is timed (a fast wrong answer is no baseline):

    python peer_reference.py --model FOLDER --texts texts.json --out reference.npy
"""
from __future__ import annotations

import argparse
import json

import numpy as np
from sentence_transformers import SentenceTransformer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--texts", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    texts = json.load(open(args.texts, encoding="utf-8"))
    model = SentenceTransformer(args.model, device="cpu")
    vectors = model.encode(texts, normalize_embeddings=True, batch_size=16)
    np.save(args.out, np.asarray(vectors, dtype=np.float32))


if __name__ == "__main__":
    main()
