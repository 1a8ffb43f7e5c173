"""The public contract: each pipeline kind's tensor names, dtypes and shapes.

Production apps depend on these names (DESIGN.md, "The public contract"). This is
the one module that knows them: the repository writer, the client, the bench
and the tests all read them from here. Pure Python, so the client can import it.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Kind(str, Enum):
    """What a pipeline does; several named pipelines can share a kind (product matrix)."""

    TEXT_EMBED = "text_embed"
    TEXT_CLASSIFY = "text_classify"
    TEXT_NER = "text_ner"
    IMAGE_EMBED = "image_embed"
    CLIP_TEXT_EMBED = "clip_text_embed"
    ZERO_SHOT_IMAGE = "zero_shot_image"
    AUDIO_CLASSIFY = "audio_classify"
    AUDIO_EMBED = "audio_embed"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    triton_dtype: str  # as Triton's protocol spells it: "BYTES", "FP32", "INT32"
    dims: tuple[int, ...]  # per item, without the batch dimension; -1 = variable

    @property
    def config_dtype(self) -> str:
        """The dtype as config.pbtxt spells it."""
        return "TYPE_STRING" if self.triton_dtype == "BYTES" else f"TYPE_{self.triton_dtype}"


@dataclass(frozen=True)
class PipelineSpec:
    kind: Kind
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)


TEXT = TensorSpec("TEXT", "BYTES", (1,))
IMAGE = TensorSpec("IMAGE", "BYTES", (1,))
LABELS = TensorSpec("LABELS", "BYTES", (-1,))
AUDIO = TensorSpec("AUDIO", "FP32", (-1,))
SAMPLE_RATE = TensorSpec("SAMPLE_RATE", "INT32", (1,))
EMBEDDING = TensorSpec("EMBEDDING", "FP32", (-1,))
PROBS = TensorSpec("PROBS", "FP32", (-1,))
LABEL = TensorSpec("LABEL", "BYTES", (1,))
ENTITIES = TensorSpec("ENTITIES", "BYTES", (1,))

PIPELINES: dict[Kind, PipelineSpec] = {
    Kind.TEXT_EMBED: PipelineSpec(Kind.TEXT_EMBED, (TEXT,), (EMBEDDING,)),
    Kind.TEXT_CLASSIFY: PipelineSpec(Kind.TEXT_CLASSIFY, (TEXT,), (PROBS, LABEL)),
    Kind.TEXT_NER: PipelineSpec(Kind.TEXT_NER, (TEXT,), (ENTITIES,)),
    Kind.IMAGE_EMBED: PipelineSpec(Kind.IMAGE_EMBED, (IMAGE,), (EMBEDDING,)),
    Kind.CLIP_TEXT_EMBED: PipelineSpec(Kind.CLIP_TEXT_EMBED, (TEXT,), (EMBEDDING,)),
    Kind.ZERO_SHOT_IMAGE: PipelineSpec(Kind.ZERO_SHOT_IMAGE, (IMAGE, LABELS), (PROBS,)),
    Kind.AUDIO_CLASSIFY: PipelineSpec(Kind.AUDIO_CLASSIFY, (AUDIO, SAMPLE_RATE), (PROBS, LABEL)),
    Kind.AUDIO_EMBED: PipelineSpec(Kind.AUDIO_EMBED, (AUDIO, SAMPLE_RATE), (EMBEDDING,)),
}

# Largest batch a pipeline accepts in one request; the first dimension of every tensor.
MAX_BATCH_SIZE = 64

# ---- Internal tensors: what a pipeline's steps pass each other, never seen by callers ----
# Their names are not part of the contract, but the exporters (ONNX graph inputs/outputs,
# configs, ensemble wiring), the Python models (mmserve/serving) and the bench must agree
# on every one of them, so they live here too (tests/test_tensor_names.py keeps it so).

# Pre-processing outputs, which are the encoders' ONNX inputs.
INPUT_IDS = "input_ids"  # token ids (BERT-family and CLIP text towers)
ATTENTION_MASK = "attention_mask"  # 1 for real tokens / samples, 0 for padding
TOKEN_OFFSETS = "offsets"  # [tokens, 2] character span of each token in the input text
WORD_IDS = "word_ids"  # the word each token belongs to (-1: special token)
PIXEL_VALUES = "pixel_values"  # normalised [3, H, W] image, as open_clip's transform makes it
INPUT_FEATURES = "input_features"  # Whisper-family log-mel features, a fixed window
INPUT_VALUES = "input_values"  # Wav2Vec2-family normalised waveform

# Encoder outputs (the ONNX graphs' outputs; softmax / pooling / L2 norm inside ONNX).
SENTENCE_EMBEDDING = "sentence_embedding"  # text embed encoder
ENCODER_PROBS = "probs"  # a classifier's class probabilities, before post-processing
TOKEN_PROBS = "token_probs"  # NER's per-token BIO probabilities
AUDIO_EMBEDDING = "audio_embedding"  # speech embed encoder
IMAGE_EMBEDS = "image_embeds"  # CLIP image tower (not "embedding": that clashes in dynamo exports)
TEXT_EMBEDS = "text_embeds"  # CLIP text tower

INTERNAL_TENSORS: tuple[str, ...] = (
    INPUT_IDS, ATTENTION_MASK, TOKEN_OFFSETS, WORD_IDS, PIXEL_VALUES, INPUT_FEATURES, INPUT_VALUES,
    SENTENCE_EMBEDDING, ENCODER_PROBS, TOKEN_PROBS, AUDIO_EMBEDDING, IMAGE_EMBEDS, TEXT_EMBEDS,
)
PUBLIC_TENSORS: tuple[TensorSpec, ...] = (TEXT, IMAGE, LABELS, AUDIO, SAMPLE_RATE, EMBEDDING, PROBS, LABEL, ENTITIES)


def spec(kind: Kind | str) -> PipelineSpec:
    return PIPELINES[Kind(kind)]
