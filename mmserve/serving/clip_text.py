"""CLIP text in the server: open_clip's tokenizer, label lists and zero-shot scoring.

open_clip's default tokenizer (`open_clip.tokenizer.SimpleTokenizer`) cleans the
text with ftfy + HTML unescaping, lower-cases it, splits it with a regex and
applies byte-level BPE with an end-of-word suffix. The server reproduces it with:

* `clean_text`: ftfy's `fix_text` character fixes (HTML entities, C1 controls,
  Latin ligatures, full/half-width forms, curly quotes, line breaks, terminal
  escapes, control characters, NFC) done with the standard library, then
  open_clip's own cleaning. ftfy's mojibake repair (re-decoding text such as
  "cafÃ©" that was decoded with the wrong codec) is a heuristic that is not
  reproduced: such text tokenises as received.
* `ClipTokenizer`: the BPE as a HF `tokenizers` model (tokenizer.json written
  by the exporter from open_clip's own vocabulary and merges), then
  <start_of_text> ... <end_of_text>, truncated to the context length with the
  end token kept, zero-padded, exactly as `SimpleTokenizer.__call__`.
Tests compare token ids with open_clip's tokenizer on many texts.
"""
from __future__ import annotations

import html
import html.entities
import json
import re
import string
import unicodedata
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mmserve.pipelines import IMAGE_EMBEDS, INPUT_IDS, LABELS, PROBS, TEXT
from mmserve.repository_layout import OnnxStepParameters
from mmserve.serving.runtime import (
    InputError,
    OnnxRunner,
    Outputs,
    PythonStep,
    RunnerSettings,
    input_array,
    instance_count,
    model_folder,
    model_parameters,
)
from mmserve.serving.text import DEFAULT_MAX_TEXT_BYTES, decode_texts

# --- ftfy.fix_text, the character-level fixes (ftfy 6.x order) -------------------------

_HTML_ENTITY = re.compile(r"&#?[0-9A-Za-z]{1,24};")
_ANSI = re.compile("\033\\[((?:\\d|;)*)([a-zA-Z])")
_SINGLE_QUOTES = re.compile("[\u02bc\u2018-\u201b]")
_DOUBLE_QUOTES = re.compile("[\u201c-\u201f]")
_C1 = re.compile(r"[\x80-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_MAX_SEGMENT = 1_000_000


def _html_entities() -> dict[str, str]:
    entities = {}
    for name, char in html.entities.html5.items():
        if name.endswith(";"):
            entities["&" + name] = char
            if name == name.lower():
                upper = "&" + name.upper()
                if html.unescape(upper) == upper:
                    entities[upper] = char.upper()
    return entities


_ENTITIES = _html_entities()
_LIGATURES = {
    ord(k): v
    for k, v in {
        "Ĳ": "IJ", "ĳ": "ij", "ŉ": "ʼn", "Ǳ": "DZ", "ǲ": "Dz", "ǳ": "dz", "Ǆ": "DŽ", "ǅ": "Dž", "ǆ": "dž",
        "Ǉ": "LJ", "ǈ": "Lj", "ǉ": "lj", "Ǌ": "NJ", "ǋ": "Nj", "ǌ": "nj",
        "ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "ſt", "ﬆ": "st",
    }.items()
}
_WIDTH = {0x3000: " "}
for _code in range(0xFF01, 0xFFF0):
    _alternate = unicodedata.normalize("NFKC", chr(_code))
    if _alternate != chr(_code):
        _WIDTH[_code] = _alternate
_CONTROL = {
    code: None
    for code in [*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F, *range(0x206A, 0x2070), 0xFEFF, *range(0xFFF9, 0xFFFD)]
}


def _unescape_entity(match: re.Match) -> str:
    text = match.group(0)
    if text in _ENTITIES:
        return _ENTITIES[text]
    if text.startswith("&#"):
        unescaped = html.unescape(text)
        return text if ";" in unescaped else unescaped
    return text


def _c1_as_windows_1252(match: re.Match) -> str:
    byte = match.group(0).encode("latin-1")
    try:
        return byte.decode("windows-1252")
    except UnicodeDecodeError:  # ftfy's "sloppy" codec keeps the 5 undefined bytes as Latin-1
        return match.group(0)


def _surrogate_pair(match: re.Match) -> str:
    pair = match.group(0)
    return chr(0x10000 + (ord(pair[0]) - 0xD800) * 0x400 + (ord(pair[1]) - 0xDC00))


def _fix_segment(text: str, unescape: bool) -> str:
    while True:
        original = text
        if unescape:
            text = _HTML_ENTITY.sub(_unescape_entity, text)
        text = _C1.sub(_c1_as_windows_1252, text)
        text = text.translate(_LIGATURES).translate(_WIDTH)
        text = _SINGLE_QUOTES.sub("'", _DOUBLE_QUOTES.sub('"', text))
        text = (
            text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n")
            .replace("\u0085", "\n")
        )
        if _SURROGATE.search(text):
            text = _SURROGATE.sub("\ufffd", _SURROGATE_PAIR.sub(_surrogate_pair, text))
        text = _ANSI.sub("", text)
        text = text.translate(_CONTROL)
        text = unicodedata.normalize("NFC", text)
        if text == original:
            return text


def fix_text(text: str) -> str:
    """ftfy.fix_text's character fixes, segment by segment as ftfy does (no mojibake repair)."""
    out, position, unescape = [], 0, True
    while position < len(text):
        end = text.find("\n", position) + 1 or len(text)
        end = min(end, position + _MAX_SEGMENT)
        segment = text[position:end]
        if "<" in segment:  # ftfy's unescape_html="auto": looks like HTML, leave entities alone
            unescape = False
        out.append(_fix_segment(segment, unescape))
        position = end
    return "".join(out)


def clean_text(text: str, clean: str = "lower") -> str:
    """open_clip's `basic_clean` + its clean function ("lower", "whitespace" or "canonicalize")."""
    text = html.unescape(html.unescape(fix_text(text))).strip()
    if clean == "canonicalize":
        text = text.replace("_", " ").translate(str.maketrans("", "", string.punctuation)).lower()
        return " ".join(text.split()).strip()
    text = " ".join(text.split()).strip()
    if clean == "lower":
        return text.lower()
    if clean == "whitespace":
        return text
    raise ValueError(f"unknown clean function {clean!r}: expected lower, whitespace or canonicalize")


# --- the tokenizer -----------------------------------------------------------------------

# A BPE token covers at least one character; cutting the text first keeps a 10 MB
# request from costing a full tokenisation that is truncated to 77 tokens anyway.
_CHARS_PER_TOKEN_BOUND = 64


class ClipTokenizer:
    """open_clip SimpleTokenizer semantics over a `tokenizers` BPE (tokenizer.json)."""

    def __init__(self, tokenizer_file: Path, context_length: int, clean: str = "lower",
                 sot_token: str = "<start_of_text>", eot_token: str = "<end_of_text>"):
        from tokenizers import Tokenizer

        if context_length < 2:
            raise ValueError(f"context_length must be at least 2, got {context_length}")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.context_length = context_length
        self.clean = clean
        sot, eot = self.tokenizer.token_to_id(sot_token), self.tokenizer.token_to_id(eot_token)
        if sot is None or eot is None:
            raise ValueError(f"{tokenizer_file} has no {sot_token} / {eot_token} tokens; was it written by mmserve?")
        self.sot_id, self.eot_id = sot, eot
        clean_text("", clean)  # validates `clean`

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """[N, context_length] int64 ids: SOT, BPE ids, EOT, zeros; over-long texts truncated, EOT kept."""
        bound = self.context_length * _CHARS_PER_TOKEN_BOUND
        cleaned = [clean_text(t[:bound], self.clean) for t in texts]
        encodings = self.tokenizer.encode_batch(cleaned, add_special_tokens=False)
        ids = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            tokens = [self.sot_id, *encoding.ids[: self.context_length - 2], self.eot_id]
            ids[row, : len(tokens)] = tokens
        return ids


# --- labels and zero-shot scoring ----------------------------------------------------------

DEFAULT_MAX_LABELS = 256
_MAX_LABEL_CHARS = 1000


def decode_labels(items: np.ndarray, input_name: str = LABELS.name, max_labels: int = DEFAULT_MAX_LABELS) -> list[str]:
    """One request item's candidate labels: BYTES [K] -> K non-empty UTF-8 strings."""
    flat = np.asarray(items, dtype=np.object_).reshape(-1)
    if flat.size == 0:
        raise InputError(f"{input_name} is empty; send at least one candidate label")
    if flat.size > max_labels:
        raise InputError(f"{input_name} has {flat.size} labels, above this server's limit of {max_labels} per image")
    labels = []
    for index, item in enumerate(flat):
        if isinstance(item, str):
            label = item
        else:
            try:
                label = bytes(item).decode("utf-8")
            except UnicodeDecodeError as error:
                raise InputError(f"{input_name}[{index}] is not valid UTF-8 (byte {error.start})") from None
        if not label.strip():
            raise InputError(f"{input_name}[{index}] is empty or only whitespace; every label needs a name")
        if len(label) > _MAX_LABEL_CHARS:
            raise InputError(f"{input_name}[{index}] is {len(label)} characters long; labels are names, at most {_MAX_LABEL_CHARS}")
        labels.append(label)
    return labels


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=-1, keepdims=True)


class LabelEmbeddings:
    """Class embeddings for label names: prompt templates -> text tower -> mean -> L2 norm.

    `embed_texts` maps prompts to L2-normalised text embeddings ([N, D]); results are
    kept per label in an LRU cache, since production traffic repeats its label sets.
    This is open_clip's zero-shot classifier (`build_zero_shot_classifier`).
    """

    def __init__(self, embed_texts: Callable[[list[str]], np.ndarray], templates: Sequence[str], capacity: int = 4096):
        if not templates or any(t.count("{}") != 1 for t in templates):
            raise ValueError(f"prompt templates must each contain '{{}}' once, got {list(templates)}")
        self.embed_texts = embed_texts
        self.templates = list(templates)
        self.capacity = capacity
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __call__(self, labels: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(label for label in labels if label not in self._cache))
        self.hits += len(labels) - len(missing)
        self.misses += len(missing)
        fresh = {}
        if missing:
            prompts = [template.format(label) for label in missing for template in self.templates]
            embeddings = np.asarray(self.embed_texts(prompts), dtype=np.float32)
            grouped = embeddings.reshape(len(missing), len(self.templates), -1).mean(axis=1)
            grouped /= np.linalg.norm(grouped, axis=-1, keepdims=True).clip(min=1e-12)
            fresh = dict(zip(missing, grouped))
        result = np.stack([fresh[label] if label in fresh else self._cache[label] for label in labels])
        for label in labels:
            self._cache[label] = fresh.get(label, self._cache.get(label))
            self._cache.move_to_end(label)
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return result


def zero_shot_probs(image_embedding: np.ndarray, class_embeddings: np.ndarray, logit_scale: float) -> np.ndarray:
    """softmax(logit_scale * cosine) over the labels, in their order; embeddings are normalised."""
    return softmax(np.float32(logit_scale) * (class_embeddings @ image_embedding)).astype(np.float32)


# ---- the Triton Python models (each exported model.py is one line importing one of them) ----


class ClipTokenizeModel(PythonStep):
    """`clip_tokenize`: raw UTF-8 TEXT -> a CLIP text tower's ids, exactly as open_clip's tokenizer.

    Shared by every CLIP product whose tokenizer.json, context length and cleaning are the
    same. Over-long text is truncated (end token kept) up to `max_text_bytes` per item
    (config parameter, default 1 MiB) and refused beyond it; empty or non-UTF-8 text is
    INVALID_ARG.
    """

    def initialize(self, args: dict[str, str]) -> None:
        parameters = model_parameters(args)
        self.tokenizer = ClipTokenizer(
            model_folder(args) / parameters.get("tokenizer_file", "tokenizer.json"),
            context_length=int(parameters["context_length"]),
            clean=parameters.get("clean", "lower"),
        )
        self.max_text_bytes = int(parameters.get("max_text_bytes", DEFAULT_MAX_TEXT_BYTES))

    def answer(self, request: Any) -> Outputs:
        texts = decode_texts(input_array(request, TEXT.name), TEXT.name, self.max_text_bytes)
        return {INPUT_IDS: self.tokenizer(texts)}


# Prompts per text-tower call when label embeddings are computed.
_TEXT_BATCH = 64


class ZeroShotClassifyModel(PythonStep):
    """`zero_shot_classify`: an image embedding and the request's own label names -> PROBS.

    Each label becomes the checkpoint's prompt templates ("a photo of a {}."), runs through
    the CLIP text tower (this folder's ONNX, the shared OnnxRunner), and the prompt
    embeddings are averaged per label and normalised (open_clip's zero-shot classifier).
    Label embeddings are kept in an LRU cache: production traffic asks about the same labels
    again and again, so the text tower rarely runs. PROBS is softmax(logit_scale * cosine)
    in the order of LABELS. An empty label list, an empty or non-UTF-8 label, or more labels
    than `max_labels` is INVALID_ARG naming LABELS.
    """

    def initialize(self, args: dict[str, str]) -> None:
        parameters = model_parameters(args)
        folder = model_folder(args)
        settings = json.loads((folder / parameters.get("clip_file", "clip.json")).read_text(encoding="utf-8"))
        step = OnnxStepParameters.from_values(parameters)
        threads = None if step.intra_op_threads is None else str(step.intra_op_threads)
        self.runner = OnnxRunner(folder / step.onnx_file, RunnerSettings.for_instances(instance_count(args), threads))
        self.tokenizer = ClipTokenizer(
            folder / parameters.get("tokenizer_file", "tokenizer.json"),
            context_length=int(parameters.get("context_length", settings["context_length"])),
            clean=settings.get("clean", "lower"),
        )
        self.logit_scale = float(parameters.get("logit_scale", settings["logit_scale"]))
        self.max_labels = int(parameters.get("max_labels", DEFAULT_MAX_LABELS))
        self.labels = LabelEmbeddings(
            self._embed_prompts, settings["prompt_templates"], capacity=int(parameters.get("cache_size", 4096))
        )

    def _embed_prompts(self, prompts: list[str]) -> np.ndarray:
        ids = self.tokenizer(prompts)
        chunks = [ids[start : start + _TEXT_BATCH] for start in range(0, len(ids), _TEXT_BATCH)]
        answers = self.runner.run([{INPUT_IDS: chunk} for chunk in chunks])
        return np.concatenate([answer[self.runner.output_names[0]] for answer in answers])

    def answer(self, request: Any) -> Outputs:
        images = input_array(request, IMAGE_EMBEDS)
        labels = input_array(request, LABELS.name)
        if labels.ndim < 2 or labels.shape[0] != images.shape[0]:
            raise InputError(f"{LABELS.name} has shape {list(labels.shape)}; send one row of labels per image")
        probs = []
        for row in range(images.shape[0]):
            where = LABELS.name if images.shape[0] == 1 else f"{LABELS.name}[{row}]"
            names = decode_labels(labels[row], where, self.max_labels)
            probs.append(zero_shot_probs(images[row], self.labels(names), self.logit_scale))
        return {PROBS.name: np.stack(probs).astype(np.float32)}

    def finalize(self) -> None:
        self.runner = None
