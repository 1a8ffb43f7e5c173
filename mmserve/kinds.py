"""The kind table: everything the project knows about each pipeline kind, in one place.

A kind (``mmserve.pipelines.Kind``) is what a pipeline does; several products share one.
Its public tensors live in ``mmserve.pipelines`` (the contract); this table adds what
every *consumer* needs -- the client method that calls it, the console's title and
example, the gateway's route, the bench's and soak's inputs, the headline metric of its
product card, its partner kind -- the way optimum's ``TasksManager`` and infinity's
capabilities describe tasks.

Consumers dispatch on the table's *capabilities* (``KindInfo.input``, ``KindInfo.answer``,
``KindInfo.modality``), never on a kind's name: adding a kind is one row here plus that
kind's own sibling files (docs/adding-a-product-line.md), and
``tests/test_kind_table.py`` fails when a consumer lacks an entry for a row.

Pure Python (no numpy, no tritonclient), so the client, the exporters, the gateway and
the console all import it.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from mmserve.pipelines import PIPELINES, Kind, PipelineSpec


class Modality(str, Enum):
    """The product line a kind belongs to; the console groups products by it."""

    TEXT = "text"
    VISION_TEXT = "vision_text"
    SPEECH = "speech"

    @property
    def title(self) -> str:
        return _MODALITY_TITLES[self]


_MODALITY_TITLES = {Modality.TEXT: "Text", Modality.VISION_TEXT: "Vision and text", Modality.SPEECH: "Speech"}


class InputShape(str, Enum):
    """What one item of a request is: decides how a caller's data becomes the contract's tensors."""

    TEXT = "text"  # TEXT: one UTF-8 string
    IMAGE = "image"  # IMAGE: one encoded image
    IMAGE_AND_LABELS = "image_and_labels"  # IMAGE + LABELS: an image and its candidate labels
    AUDIO = "audio"  # AUDIO + SAMPLE_RATE: mono PCM and its rate


class AnswerShape(str, Enum):
    """What one item of an answer is: decides how outputs are read and shown."""

    EMBEDDING = "embedding"  # EMBEDDING: a vector
    CLASSIFICATION = "classification"  # PROBS over the product's labels + LABEL
    ZERO_SHOT = "zero_shot"  # PROBS over the caller's LABELS
    ENTITIES = "entities"  # ENTITIES: spans with labels


@dataclass(frozen=True)
class KindInfo:
    """One row of the kind table."""

    kind: Kind
    modality: Modality
    title: str  # what people call it (console, gateway docs)
    input: InputShape
    answer: AnswerShape
    client_method: str  # the typed client's method for it (``mmserve.client.Client``; any of the same shapes, called with pipeline=)
    route: str  # the gateway's path for it (embeddings: the OpenAI route)
    example: str  # a request a form holds before anyone types (text, or a description of the media)
    headline_metric: str | None  # the card's held-out figure that says most; None: the one training chose
    partner: Kind | None = None  # the kind whose embeddings share its space (CLIP's two towers)
    description: str = ""

    @property
    def spec(self) -> PipelineSpec:
        """The public tensors (the contract)."""
        return PIPELINES[self.kind]

    @property
    def name(self) -> str:
        return self.kind.value


KINDS: dict[Kind, KindInfo] = {
    info.kind: info
    for info in (
        KindInfo(
            Kind.TEXT_CLASSIFY, Modality.TEXT, "Text classification", InputShape.TEXT, AnswerShape.CLASSIFICATION,
            "classify_text", "/v1/classifications",
            "where is my parcel?\nI want to cancel my order\nthis is the best purchase I ever made",
            None, description="a label and its score for each text, from the product's own label set",
        ),
        KindInfo(
            Kind.TEXT_NER, Modality.TEXT, "Named entities", InputShape.TEXT, AnswerShape.ENTITIES,
            "extract_entities", "/v1/entities",
            "Angela Merkel met Emmanuel Macron in Paris on behalf of the European Union.",
            None, description="entity spans (text, label, character offsets, score) in each text",
        ),
        KindInfo(
            Kind.TEXT_EMBED, Modality.TEXT, "Text embeddings", InputShape.TEXT, AnswerShape.EMBEDDING,
            "embed_text", "/v1/embeddings",
            "how do I reset my password?\nI forgot my password\nthe weather is lovely today",
            None, description="an L2-normalised vector per text",
        ),
        KindInfo(
            Kind.ZERO_SHOT_IMAGE, Modality.VISION_TEXT, "Zero-shot image classification", InputShape.IMAGE_AND_LABELS,
            AnswerShape.ZERO_SHOT, "zero_shot", "/v1/zero-shot-classifications",
            "a red circle, a blue square, a green triangle",
            "zero_shot_top1", description="the probability of each candidate label for each image",
        ),
        KindInfo(
            Kind.IMAGE_EMBED, Modality.VISION_TEXT, "Image embeddings", InputShape.IMAGE, AnswerShape.EMBEDDING,
            "embed_images", "/v1/embeddings",
            "a red circle\na blue square",
            "image_to_text_r1", partner=Kind.CLIP_TEXT_EMBED,
            description="a vector per image, in the space of its clip_text_embed partner",
        ),
        KindInfo(
            Kind.CLIP_TEXT_EMBED, Modality.VISION_TEXT, "Text embeddings in the image space", InputShape.TEXT,
            AnswerShape.EMBEDDING, "embed_clip_texts", "/v1/embeddings",
            "a red circle\na blue square",
            "text_to_image_r1", partner=Kind.IMAGE_EMBED,
            description="a vector per text, in the space of its image_embed partner",
        ),
        KindInfo(
            Kind.AUDIO_CLASSIFY, Modality.SPEECH, "Audio classification", InputShape.AUDIO, AnswerShape.CLASSIFICATION,
            "classify_audio", "/v1/audio/classifications",
            "a spoken keyword",
            None, description="a label and its score for each clip, from the product's own label set",
        ),
        KindInfo(
            Kind.AUDIO_EMBED, Modality.SPEECH, "Audio embeddings", InputShape.AUDIO, AnswerShape.EMBEDDING,
            "embed_audio", "/v1/embeddings",
            "a spoken phrase",
            None, description="a vector per clip",
        ),
    )
}


def info(kind: Kind | str) -> KindInfo:
    """The table's row for a kind (its value or the enum)."""
    return KINDS[Kind(kind)]


def by_modality() -> list[tuple[Modality, tuple[KindInfo, ...]]]:
    """The table grouped by product line, in the table's order (the console's sections)."""
    return [(modality, tuple(row for row in KINDS.values() if row.modality is modality)) for modality in Modality]


def partner_of(kind: Kind | str) -> Kind | None:
    return info(kind).partner


def answering(answer: AnswerShape) -> tuple[KindInfo, ...]:
    """The kinds whose answers have this shape (e.g. every embedding kind, for /v1/embeddings)."""
    return tuple(row for row in KINDS.values() if row.answer is answer)


assert set(KINDS) == set(Kind), "every contract kind has a row in the kind table"
