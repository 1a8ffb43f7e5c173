"""Playground: one form per product kind, answered through the typed client.

Each kind turns the form's fields into one client call and the answer into a small
view (bars, highlighted entities, a similarity matrix) that the templates draw. The
client's typed errors are shown as they are: they carry the server's own message.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmserve.client import Client, Entity, InvalidInputError
from mmserve.pipelines import Kind

# What the playground can try, per kind, and how the page names it.
KIND_TITLES: dict[Kind, str] = {
    Kind.TEXT_CLASSIFY: "Text classification",
    Kind.TEXT_NER: "Named entities",
    Kind.TEXT_EMBED: "Text embeddings",
    Kind.ZERO_SHOT_IMAGE: "Zero-shot image classification",
    Kind.IMAGE_EMBED: "Image embeddings",
    Kind.CLIP_TEXT_EMBED: "Text embeddings in the image space",
    Kind.AUDIO_CLASSIFY: "Audio classification",
    Kind.AUDIO_EMBED: "Audio embeddings",
}
# How the pages group products: by what they take in.
MODALITIES: tuple[tuple[str, tuple[Kind, ...]], ...] = (
    ("Text", (Kind.TEXT_CLASSIFY, Kind.TEXT_NER, Kind.TEXT_EMBED)),
    ("Vision and text", (Kind.ZERO_SHOT_IMAGE, Kind.IMAGE_EMBED, Kind.CLIP_TEXT_EMBED)),
    ("Speech", (Kind.AUDIO_CLASSIFY, Kind.AUDIO_EMBED)),
)


def by_modality(products: Sequence[Any]) -> list[tuple[str, list[Any]]]:
    """Products (anything with ``.kind``) grouped as MODALITIES says, kinds in that order."""
    groups = []
    for title, kinds in MODALITIES:
        members = sorted((p for p in products if p.kind in kinds), key=lambda p: (kinds.index(p.kind), p.name))
        if members:
            groups.append((title, members))
    return groups


# What a form holds before anyone types: one click shows an answer.
EXAMPLES: dict[str, str] = {
    Kind.TEXT_CLASSIFY.value: "where is my parcel?\nI want to cancel my order\nthis is the best purchase I ever made",
    Kind.TEXT_NER.value: "Angela Merkel met Emmanuel Macron in Paris on behalf of the European Union.",
    Kind.TEXT_EMBED.value: "how do I reset my password?\nI forgot my password\nthe weather is lovely today",
    Kind.ZERO_SHOT_IMAGE.value: "a red circle, a blue square, a green triangle",
    Kind.IMAGE_EMBED.value: "a red circle\na blue square",
    Kind.CLIP_TEXT_EMBED.value: "a red circle\na blue square",
}
MAX_TEXTS = 16  # a playground, not a batch job
MAX_FILES = 8


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
    """One input's answer: its label, that label's probability, every class as a bar."""

    source: str  # the text, or the file's name
    label: str
    score: float
    bars: tuple[Bar, ...]
    preview: str | None = None  # a data: URL thumbnail of an uploaded image


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


def split_lines(text: str, what: str = "texts") -> list[str]:
    """One item per non-blank line; a form with nothing in it still sends one (empty) item,
    so the server's own message explains what is missing."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > MAX_TEXTS:
        raise InvalidInputError(f"{len(lines)} {what}: the playground takes at most {MAX_TEXTS}")
    return lines or [text]


def bars(probs: np.ndarray, labels: Sequence[str]) -> tuple[Bar, ...]:
    """Bars in label order; the best one marked. Labels missing from the card show as #i."""
    best = int(np.argmax(probs)) if len(probs) else -1
    names = [labels[i] if i < len(labels) else f"#{i}" for i in range(len(probs))]
    return tuple(Bar(names[i], float(p), i == best) for i, p in enumerate(probs))


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

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > 40_000_000:
                return None  # the server refuses it too; no decoding here
            picture = image.convert("RGB")
            picture.thumbnail((size, size))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
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

    ``labels`` are the product's class names (for its bars); ``partner`` is the other
    tower of an image-text pair (the clip_text_embed product for an image_embed one
    and the other way round).
    """
    text = str(fields.get("text", ""))
    if kind == Kind.TEXT_CLASSIFY:
        texts = split_lines(text)
        answers = client.classify_text(texts, pipeline=product)
        return Result(kind, classified=tuple(
            Classified(t, a.label, a.score, bars(a.probs, labels)) for t, a in zip(texts, answers)
        ))
    if kind == Kind.TEXT_NER:
        texts = split_lines(text)
        found = client.extract_entities(texts, pipeline=product)
        return Result(kind, entity_texts=tuple(
            EntityText(t, highlight(t, e), tuple(e)) for t, e in zip(texts, found)
        ))
    if kind == Kind.TEXT_EMBED:
        texts = split_lines(text)
        vectors = client.embed_text(texts, pipeline=product)
        return Result(kind, similarity=similarity("Cosine similarity between the texts", texts, texts, vectors, vectors))
    if kind == Kind.ZERO_SHOT_IMAGE:
        images = _files(uploads, "images")
        candidates = [c.strip() for c in str(fields.get("labels", "")).replace("\n", ",").split(",") if c.strip()]
        answers = client.zero_shot([u.data for u in images], candidates, pipeline=product)
        return Result(kind, classified=tuple(
            Classified(u.name, a.label, a.score, bars(a.probs, a.labels), thumbnail(u.data))
            for u, a in zip(images, answers)
        ))
    if kind in (Kind.IMAGE_EMBED, Kind.CLIP_TEXT_EMBED):
        image_product, text_product = (product, partner) if kind == Kind.IMAGE_EMBED else (partner, product)
        if not image_product or not text_product:
            raise InvalidInputError(
                "image-text similarity needs an image_embed and a clip_text_embed product; "
                "export a CLIP checkpoint (mmserve export clip) to get both"
            )
        images = _files(uploads, "images")
        texts = split_lines(text)
        image_vectors = client.embed_images([u.data for u in images], pipeline=image_product)
        text_vectors = client.embed_clip_texts(texts, pipeline=text_product)
        return Result(kind, similarity=similarity(
            f"Cosine similarity: images ({image_product}) × texts ({text_product})",
            [u.name for u in images], texts, image_vectors, text_vectors, [thumbnail(u.data) for u in images],
        ))
    if kind == Kind.AUDIO_CLASSIFY:
        clips = _files(uploads, "audio clips")
        answers = client.classify_audio([c.data for c in clips], pipeline=product)
        return Result(kind, classified=tuple(
            Classified(c.name, a.label, a.score, bars(a.probs, labels)) for c, a in zip(clips, answers)
        ))
    if kind == Kind.AUDIO_EMBED:
        clips = _files(uploads, "audio clips")
        vectors = client.embed_audio([c.data for c in clips], pipeline=product)
        names = [c.name for c in clips]
        return Result(kind, similarity=similarity("Cosine similarity between the clips", names, names, vectors, vectors))
    raise InvalidInputError(f"the playground has no form for kind {kind.value}")


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
