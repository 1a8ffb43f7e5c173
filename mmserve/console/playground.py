"""Playground: one form per product, answered through the typed client.

What a form asks for and how its answer is drawn come from the kind table
(:mod:`mmserve.kinds`): the form from the kind's input shape (texts, images, images and
candidate labels, audio), the client call from its ``client_method``, the view from its
answer shape (bars, highlighted entities, a similarity matrix), and an embedding kind
with a partner (CLIP's two towers) as images × texts. No kind is named here. The
client's typed errors are shown as they are: they carry the server's own message.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmserve import kinds
from mmserve.client import Client, Entity, InvalidInputError
from mmserve.client.media import open_image
from mmserve.kinds import AnswerShape, InputShape, KindInfo
from mmserve.pipelines import Kind


def by_modality(products: Sequence[Any]) -> list[tuple[str, list[Any]]]:
    """Products (anything with ``.kind``) grouped by the kind table's modalities, kinds in
    the table's order."""
    groups = []
    for modality, rows in kinds.by_modality():
        order = [row.kind for row in rows]
        members = sorted((p for p in products if p.kind in order), key=lambda p: (order.index(p.kind), p.name))
        if members:
            groups.append((modality.title, members))
    return groups


def kind_title(kind: Kind | str) -> str:
    return kinds.info(kind).title


MAX_TEXTS = 16  # a playground, not a batch job
MAX_FILES = 8
TOP_K = 3  # classes drawn per input; the rest are counted


@dataclass(frozen=True)
class Bar:
    label: str
    value: float  # probability in [0, 1]
    best: bool

    @property
    def percent(self) -> str:
        return f"{100 * self.value:.1f}"


@dataclass(frozen=True)
class Classified:
    """One input's answer: its label, that label's probability, its top classes as bars."""

    source: str  # the text, or the file's name
    label: str
    score: float
    bars: tuple[Bar, ...]  # the TOP_K most probable, best first
    preview: str | None = None  # a data: URL thumbnail of an uploaded image
    more: int = 0  # classes not drawn


@dataclass(frozen=True)
class Segment:
    text: str
    entity: Entity | None = None


@dataclass(frozen=True)
class EntityText:
    text: str
    segments: tuple[Segment, ...]
    entities: tuple[Entity, ...]


@dataclass(frozen=True)
class Similarity:
    """Cosine similarities: rows × columns, shown as a shaded table."""

    title: str
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    values: tuple[tuple[float, ...], ...]
    dimension: int
    row_previews: tuple[str | None, ...] = ()  # thumbnails of the row images, if any

    def shade(self, value: float) -> int:
        """0..10 for the cell's CSS class (no inline styles under our CSP), relative to this
        table's range: embeddings of one model often all sit within a few tenths of each
        other, and the contrast inside the table is what a reader looks for."""
        flat = [v for row in self.values for v in row]
        low, high = min(flat), max(flat)
        if high - low < 1e-6:
            return 10
        return int(round((value - low) / (high - low) * 10))


@dataclass(frozen=True)
class Upload:
    """A file from the form: its name and bytes."""

    name: str
    data: bytes


@dataclass(frozen=True)
class Result:
    kind: Kind
    classified: tuple[Classified, ...] = ()
    entity_texts: tuple[EntityText, ...] = ()
    similarity: Similarity | None = None
    answered_by: str = ""  # the version(s) of the product that answered, e.g. "v2"


def split_lines(text: str, what: str = "texts") -> list[str]:
    """One item per non-blank line; a form with nothing in it still sends one (empty) item,
    so the server's own message explains what is missing."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > MAX_TEXTS:
        raise InvalidInputError(f"{len(lines)} {what}: the playground takes at most {MAX_TEXTS}")
    return lines or [text]


def bars(probs: np.ndarray, labels: Sequence[str], top_k: int = TOP_K) -> tuple[Bar, ...]:
    """The ``top_k`` most probable classes as bars, best first (marked). Labels missing from
    the card show as #i."""
    best = int(np.argmax(probs)) if len(probs) else -1
    names = [labels[i] if i < len(labels) else f"#{i}" for i in range(len(probs))]
    order = sorted(range(len(probs)), key=lambda i: -float(probs[i]))[:top_k]
    return tuple(Bar(names[i], float(probs[i]), i == best) for i in order)


def classified(source: str, label: str, score: float, probs: np.ndarray, labels: Sequence[str],
               preview: str | None = None) -> Classified:
    drawn = bars(probs, labels)
    return Classified(source, label, score, drawn, preview, more=max(0, len(probs) - len(drawn)))


def highlight(text: str, entities: Sequence[Entity]) -> tuple[Segment, ...]:
    """The text cut into plain and entity segments by the entities' character offsets."""
    segments: list[Segment] = []
    cursor = 0
    for entity in sorted(entities, key=lambda e: (e.start, -e.end)):
        if entity.start < cursor or entity.end > len(text) or entity.start >= entity.end:
            continue  # overlapping or out of range: list it below the text, do not draw it
        if entity.start > cursor:
            segments.append(Segment(text[cursor : entity.start]))
        segments.append(Segment(text[entity.start : entity.end], entity))
        cursor = entity.end
    if cursor < len(text):
        segments.append(Segment(text[cursor:]))
    return tuple(segments)


def cosine(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    rows = np.atleast_2d(rows).astype(np.float64)
    columns = np.atleast_2d(columns).astype(np.float64)
    rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    columns = columns / np.maximum(np.linalg.norm(columns, axis=1, keepdims=True), 1e-12)
    return rows @ columns.T


def similarity(
    title: str, rows: Sequence[str], columns: Sequence[str], a: np.ndarray, b: np.ndarray,
    row_previews: Sequence[str | None] = (),
) -> Similarity:
    matrix = cosine(a, b)
    return Similarity(
        title, tuple(rows), tuple(columns),
        tuple(tuple(round(float(v), 3) for v in row) for row in matrix), int(np.atleast_2d(a).shape[1]),
        tuple(row_previews),
    )


def thumbnail(data: bytes, size: int = 96) -> str | None:
    """A small PNG data: URL of an uploaded image, or None when Pillow cannot read it
    (the server's answer then says what is wrong with it)."""
    import base64

    try:  # the contract's formats only, its size checked before any pixel is decoded
        with open_image(data) as image:
            picture = image.convert("RGB")
            picture.thumbnail((size, size))
    except (InvalidInputError, OSError, ValueError):
        return None
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def _files(uploads: Sequence[Upload], what: str) -> list[Upload]:
    if len(uploads) > MAX_FILES:
        raise InvalidInputError(f"{len(uploads)} {what}: the playground takes at most {MAX_FILES}")
    if not uploads:
        raise InvalidInputError(f"no {what} chosen: pick at least one file")
    return list(uploads)


def run(
    client: Client,
    kind: Kind,
    product: str,
    fields: dict[str, Any],
    uploads: Sequence[Upload],
    labels: Sequence[str] = (),
    partner: str | None = None,
) -> Result:
    """One playground request for ``product`` of ``kind``.

    ``labels`` are the product's class names (for its bars); ``partner`` is the product of
    the kind's partner kind (the other tower of an image-text pair), checked by the caller
    against the products served.
    """
    row = kinds.info(kind)
    call = getattr(client, row.client_method)
    if row.partner is not None:
        return _pair(client, row, product, fields, uploads, partner)
    items, names, previews = _inputs(row, fields, uploads)
    if row.input is InputShape.IMAGE_AND_LABELS:
        candidates = [c.strip() for c in str(fields.get("labels", "")).replace("\n", ",").split(",") if c.strip()]
        answers = call(items, candidates, pipeline=product)
    else:
        answers = call(items, pipeline=product)
    if row.answer in (AnswerShape.CLASSIFICATION, AnswerShape.ZERO_SHOT):
        return Result(kind, classified=tuple(
            classified(n, a.label, a.score, a.probs, labels if row.answer is AnswerShape.CLASSIFICATION else a.labels, p)
            for n, a, p in zip(names, answers, previews)
        ))
    if row.answer is AnswerShape.ENTITIES:
        return Result(kind, entity_texts=tuple(EntityText(t, highlight(t, e), tuple(e)) for t, e in zip(items, answers)))
    if row.answer is AnswerShape.EMBEDDING:
        what = {InputShape.TEXT: "texts", InputShape.AUDIO: "clips"}.get(row.input, "inputs")
        return Result(kind, similarity=similarity(f"Cosine similarity between the {what}", names, names,
                                                  answers, answers, previews if any(previews) else ()))
    raise InvalidInputError(f"the playground has no view for answers shaped {row.answer.value}")


def _inputs(row: KindInfo, fields: dict[str, Any], uploads: Sequence[Upload]) -> tuple[list[Any], list[str], list[str | None]]:
    """What the form holds for the kind's input shape: the items to send, their names as
    shown, and thumbnails of images."""
    if row.input is InputShape.TEXT:
        texts = split_lines(str(fields.get("text", "")))
        return texts, texts, [None] * len(texts)
    if row.input in (InputShape.IMAGE, InputShape.IMAGE_AND_LABELS):
        images = _files(uploads, "images")
        return [u.data for u in images], [u.name for u in images], [thumbnail(u.data) for u in images]
    clips = _files(uploads, "audio clips")
    return [c.data for c in clips], [c.name for c in clips], [None] * len(clips)


def _pair(client: Client, row: KindInfo, product: str, fields: dict[str, Any], uploads: Sequence[Upload],
          partner: str | None) -> Result:
    """Images × texts for a kind with a partner: whichever of the two takes images sends them."""
    if not partner:
        raise InvalidInputError(
            f"{row.title} needs a {row.partner.value if row.partner else 'partner'} product to compare with; "
            "export a CLIP checkpoint (mmserve export clip) to get both towers"
        )
    other = kinds.info(row.partner) if row.partner else row
    image_row, text_row = (row, other) if row.input is InputShape.IMAGE else (other, row)
    image_product, text_product = (product, partner) if row.input is InputShape.IMAGE else (partner, product)
    images = _files(uploads, "images")
    texts = split_lines(str(fields.get("text", "")))
    image_vectors = getattr(client, image_row.client_method)([u.data for u in images], pipeline=image_product)
    text_vectors = getattr(client, text_row.client_method)(texts, pipeline=text_product)
    return Result(row.kind, similarity=similarity(
        f"Cosine similarity: images ({image_product}) × texts ({text_product})",
        [u.name for u in images], texts, image_vectors, text_vectors, [thumbnail(u.data) for u in images],
    ))


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM WAV of mono float samples: used by tests and the README screenshots."""
    import wave

    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    out = io.BytesIO()
    with wave.open(out, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm)
    return out.getvalue()
