"""Tokenised features and padded batches for the text trainers.

Everything is tokenised once up front (no padding); each batch is padded to its own
longest item, which on CPU is most of the speed.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from mmserve.training.errors import CheckpointError
from mmserve.training.text_data import IGNORE_INDEX, TaggedSentence, TextExample, align_word_labels


@dataclass(frozen=True)
class Feature:
    """One tokenised example.

    `label` is a class id (classify) or per-sub-token ids (ner); `word_starts[i]` is the
    position of word i's first sub-token, or -1 where truncation dropped the word.
    """

    inputs: Mapping[str, Sequence[int]]
    label: int | Sequence[int]
    word_starts: tuple[int, ...] = ()


def _require_fast(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise CheckpointError("a fast (Rust) tokenizer is needed; the model folder has no tokenizer.json")


def _inputs(encoding, i: int) -> dict[str, list[int]]:
    return {k: encoding[k][i] for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoding}


def encode_classification(
    tokenizer, examples: Sequence[TextExample], label2id: Mapping[str, int], max_length: int
) -> list[Feature]:
    _require_fast(tokenizer)
    enc = tokenizer([e.text for e in examples], truncation=True, max_length=max_length)
    return [Feature(_inputs(enc, i), label2id[e.label]) for i, e in enumerate(examples)]


def encode_ner(
    tokenizer, sentences: Sequence[TaggedSentence], label2id: Mapping[str, int], max_length: int
) -> list[Feature]:
    """Tokenise pre-split words; each word's tag goes on its first sub-token only."""
    _require_fast(tokenizer)
    enc = tokenizer([list(s.tokens) for s in sentences], is_split_into_words=True, truncation=True, max_length=max_length)
    features = []
    for i, sentence in enumerate(sentences):
        word_ids = enc.word_ids(i)
        starts = [-1] * len(sentence.tokens)
        for position, word_id in enumerate(word_ids):
            if word_id is not None and starts[word_id] == -1:
                starts[word_id] = position
        labels = align_word_labels(word_ids, [label2id[t] for t in sentence.tags])
        features.append(Feature(_inputs(enc, i), labels, tuple(starts)))
    return features


def collate(features: Sequence[Feature], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest item; token labels are padded with IGNORE_INDEX."""
    width = max(len(f.inputs["input_ids"]) for f in features)
    batch: dict[str, torch.Tensor] = {}
    for key in features[0].inputs:
        pad = pad_token_id if key == "input_ids" else 0
        batch[key] = torch.tensor([list(f.inputs[key]) + [pad] * (width - len(f.inputs[key])) for f in features])
    if isinstance(features[0].label, int):
        batch["labels"] = torch.tensor([f.label for f in features])
    else:
        batch["labels"] = torch.tensor([list(f.label) + [IGNORE_INDEX] * (width - len(f.label)) for f in features])
    return batch


def batch_indices(n: int, batch_size: int, shuffle_seed: int | None = None) -> Iterator[list[int]]:
    """Index batches; shuffled by a private generator so the order depends only on the seed."""
    if shuffle_seed is None:
        order = list(range(n))
    else:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed)).tolist()
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]
