"""Text pre- and post-processing run inside the server: pure functions, unit-tested.

The tokenizer is HF `tokenizers` (the fast Rust one) loaded from the checkpoint's
tokenizer.json, so the server tokenises exactly as training did.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmserve.pipelines import (
    ATTENTION_MASK,
    ENCODER_PROBS,
    ENTITIES,
    INPUT_IDS,
    LABEL,
    PROBS,
    TEXT,
    TOKEN_OFFSETS,
    TOKEN_PROBS,
    WORD_IDS,
)
from mmserve.repository_layout import LABELS_FILE
from mmserve.serving.runtime import (
    InputError,
    Outputs,
    PythonStep,
    bytes_array,
    input_array,
    model_folder,
    model_parameters,
)

# A token is never longer than this many characters in practice; cutting the text
# first keeps a 10 MB request from costing a full tokenisation it would truncate anyway.
_CHARS_PER_TOKEN_BOUND = 64
# Largest TEXT item a tokenizer step accepts (its config parameter `max_text_bytes`).
# The encoders read a few hundred tokens (a few KB); up to this size a text is truncated
# as the contract says, beyond it the request is refused before it is decoded: a
# megabyte of text is a client sending the wrong thing, not a sentence.
DEFAULT_MAX_TEXT_BYTES = 1 << 20


def decode_texts(items: np.ndarray, input_name: str = TEXT.name, max_bytes: int | None = None) -> list[str]:
    """BYTES items -> str, refusing what no model can answer meaningfully.

    `max_bytes`: refuse an item longer than this many bytes (None: no limit; the
    pipeline's first step enforces it, later steps see only what it let through)."""
    texts = []
    for index, item in enumerate(np.asarray(items, dtype=np.object_).reshape(-1)):
        size = len(item.encode("utf-8")) if isinstance(item, str) else len(item)
        if max_bytes is not None and size > max_bytes:
            raise InputError(
                f"{input_name}[{index}] is {size:,} bytes, above this server's limit of {max_bytes:,} bytes "
                "per text; the model reads only the first few hundred tokens: cut or split the text before sending"
            )
        if isinstance(item, str):
            text = item
        else:
            try:
                text = bytes(item).decode("utf-8")
            except UnicodeDecodeError as error:
                raise InputError(
                    f"{input_name}[{index}] is not valid UTF-8 (byte {error.start}); send text encoded as UTF-8"
                ) from None
        if not text.strip():
            raise InputError(f"{input_name}[{index}] is empty or only whitespace; send at least one word")
        texts.append(text)
    return texts


@dataclass(frozen=True)
class TokenizedBatch:
    input_ids: np.ndarray  # [N, L] int64
    attention_mask: np.ndarray  # [N, L] int64
    offsets: np.ndarray  # [N, L, 2] int32, character offsets into each text; (0, 0) for special/pad
    word_ids: np.ndarray  # [N, L] int32, -1 for special/pad tokens


class TextTokenizer:
    def __init__(self, tokenizer_file: Path, max_length: int, length_bucket: int = 0):
        """`length_bucket` > 0 (the gpu profile): pad to a multiple of it, so requests of
        similar length share a shape and Triton's batcher can merge them."""
        from tokenizers import Tokenizer

        self.max_length = max_length
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.enable_truncation(max_length=max_length)
        multiple = length_bucket if length_bucket > 0 and max_length % length_bucket == 0 else None
        self.tokenizer.enable_padding(pad_id=self._pad_id(), pad_token=self._pad_token(), pad_to_multiple_of=multiple)

    def _pad_token(self) -> str:
        padding = self.tokenizer.padding
        if padding:
            return padding["pad_token"]
        for candidate in ("[PAD]", "<pad>", "<|endoftext|>"):
            if self.tokenizer.token_to_id(candidate) is not None:
                return candidate
        return "[PAD]"

    def _pad_id(self) -> int:
        return self.tokenizer.token_to_id(self._pad_token()) or 0

    def __call__(self, texts: Sequence[str]) -> TokenizedBatch:
        bound = self.max_length * _CHARS_PER_TOKEN_BOUND
        encodings = self.tokenizer.encode_batch([t[:bound] for t in texts])
        return TokenizedBatch(
            input_ids=np.array([e.ids for e in encodings], dtype=np.int64),
            attention_mask=np.array([e.attention_mask for e in encodings], dtype=np.int64),
            offsets=np.array([e.offsets for e in encodings], dtype=np.int32).reshape(len(texts), -1, 2),
            word_ids=np.array(
                [[-1 if w is None else w for w in e.word_ids] for e in encodings], dtype=np.int32
            ),
        )


def top_labels(probs: np.ndarray, labels: Sequence[str]) -> list[str]:
    """The most probable label per row."""
    if probs.shape[-1] != len(labels):
        raise ValueError(f"the model scores {probs.shape[-1]} classes but labels.txt names {len(labels)}")
    return [labels[i] for i in np.argmax(probs, axis=-1)]


def classification_outputs(probs: np.ndarray, labels: Sequence[str], requested: Sequence[str]) -> dict[str, np.ndarray]:
    """The classifier's outputs a request names: PROBS (the probabilities as they came) and
    LABEL (the most probable name), both when it names none.

    Answering only what is named keeps this step working under an older config that
    declares LABEL alone (a repository exported before PROBS was passed through here).
    """
    answers = {PROBS.name: probs, LABEL.name: bytes_array(top_labels(probs, labels))}
    return {name: answers[name] for name in (requested or answers)}


def decode_entities(
    text: str,
    offsets: np.ndarray,
    word_ids: np.ndarray,
    token_probs: np.ndarray,
    labels: Sequence[str],
) -> list[dict]:
    """Per-token BIO scores -> entity spans with character offsets into `text`.

    A word's tag is its first sub-token's (as training labelled it). An I-X that
    follows O or another type starts a new entity rather than being dropped.
    """
    words: list[tuple[int, int, str, float]] = []  # (start, end, tag, score)
    previous_word = -1
    for token, word in enumerate(word_ids):
        if word < 0:
            continue
        start, end = int(offsets[token][0]), int(offsets[token][1])
        if word == previous_word:
            words[-1] = (words[-1][0], end, words[-1][2], words[-1][3])
            continue
        previous_word = word
        best = int(np.argmax(token_probs[token]))
        words.append((start, end, labels[best], float(token_probs[token][best])))

    entities: list[dict] = []
    current: dict | None = None
    scores: list[float] = []

    def close() -> None:
        if current is not None:
            current["text"] = text[current["start"] : current["end"]]
            current["score"] = round(float(np.mean(scores)), 6)
            entities.append(current)

    for start, end, tag, score in words:
        prefix, _, entity_type = tag.partition("-")
        if tag == "O" or not entity_type:
            close()
            current, scores = None, []
        elif prefix == "I" and current is not None and current["label"] == entity_type:
            current["end"] = end
            scores.append(score)
        else:
            close()
            current, scores = {"text": "", "label": entity_type, "start": start, "end": end, "score": 0.0}, [score]
    close()
    return [{key: e[key] for key in ("text", "label", "start", "end", "score")} for e in entities]


def read_labels(path: Path) -> list[str]:
    labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not labels:
        raise ValueError(f"{path} names no labels; it must list one label per line in output order")
    return labels


# ---- the Triton Python models (each exported model.py is one line importing one of them) ----


class TextTokenizeModel(PythonStep):
    """`text_tokenize`: raw UTF-8 TEXT -> a BERT-family encoder's inputs, exactly as training did.

    Shared by every text pipeline whose tokenizer.json and maximum length are the same
    (text_embed, text_classify, text_ner, sentiment, ...). Over-long text is truncated up to
    `max_text_bytes` per item (config parameter, default 1 MiB) and refused beyond it; empty
    or non-UTF-8 text is INVALID_ARG.
    """

    def initialize(self, args: dict[str, str]) -> None:
        parameters = model_parameters(args)
        self.tokenizer = TextTokenizer(
            model_folder(args) / parameters.get("tokenizer_file", "tokenizer.json"),
            max_length=int(parameters["max_length"]),
            length_bucket=int(parameters.get("length_bucket", "0")),
        )
        self.max_text_bytes = int(parameters.get("max_text_bytes", DEFAULT_MAX_TEXT_BYTES))

    def answer(self, request: Any) -> Outputs:
        batch = self.tokenizer(decode_texts(input_array(request, TEXT.name), TEXT.name, self.max_text_bytes))
        return {
            INPUT_IDS: batch.input_ids,
            ATTENTION_MASK: batch.attention_mask,
            TOKEN_OFFSETS: batch.offsets,
            WORD_IDS: batch.word_ids,
        }


class ClassifyPostprocessModel(PythonStep):
    """`<pipeline>_postprocess` of a classifier (text or speech): the encoder's probabilities
    -> PROBS (passed through) and LABEL, the most probable name in labels.txt.

    The pipeline's outputs all come from this last step: Triton prunes an ensemble output that
    also feeds a later step when a caller names a subset of the outputs (the reason is in
    exporters/classification.py).
    """

    def initialize(self, args: dict[str, str]) -> None:
        self.labels = read_labels(model_folder(args).parent / LABELS_FILE)

    def answer(self, request: Any) -> Outputs:
        return classification_outputs(input_array(request, ENCODER_PROBS), self.labels, request.requested_output_names())


class NerPostprocessModel(PythonStep):
    """`<pipeline>_postprocess` of NER: per-token BIO scores -> entity spans (JSON) with
    character offsets into the input text."""

    def initialize(self, args: dict[str, str]) -> None:
        self.labels = read_labels(model_folder(args).parent / LABELS_FILE)

    def answer(self, request: Any) -> Outputs:
        texts = decode_texts(input_array(request, TEXT.name), TEXT.name)
        offsets = input_array(request, TOKEN_OFFSETS)
        word_ids = input_array(request, WORD_IDS)
        token_probs = input_array(request, TOKEN_PROBS)
        documents = [
            json.dumps(
                decode_entities(text, offsets[i], word_ids[i], token_probs[i], self.labels),
                ensure_ascii=False,
            )
            for i, text in enumerate(texts)
        ]
        return {ENTITIES.name: bytes_array(documents)}
