"""Export a CLIP checkpoint (open_clip) into the three vision-text pipelines of the repository.

    image_embed      IMAGE -> image_preprocess -> clip_image_encoder -> EMBEDDING
    clip_text_embed  TEXT  -> clip_tokenize    -> clip_text_encoder  -> EMBEDDING
    zero_shot_image  IMAGE -> image_preprocess -> clip_image_encoder -> image_embeds
                     (image_embeds, LABELS)    -> zero_shot_classify -> PROBS

Both towers are exported as ONNX graphs with a dynamic batch axis and the L2
normalisation inside (`normalize(model.encode_image(x))`, likewise for text), so
EMBEDDINGs of both pipelines are unit vectors in one space and a dot product is
the cosine open_clip's zero-shot classifier uses. Each graph passes the parity
gate against open_clip on real images and texts before anything is written.

`zero_shot_classify` is a Python model holding the text tower (the same ONNX,
through the shared `OnnxRunner`), the checkpoint's prompt templates, its
`logit_scale` and an LRU cache of label embeddings: a request's labels are
looked up (or embedded once: templates -> text tower -> mean -> L2 norm), and
the answer is softmax(logit_scale * cosine) in the order of LABELS. Labels
repeat in production traffic, so the text tower rarely runs on the hot path.

The server's CLIP tokenizer is open_clip's BPE rebuilt as a `tokenizers`
tokenizer.json from open_clip's own vocabulary and merges; the export refuses
to write unless its ids equal open_clip's on the parity texts.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmserve.exporters.fp16 import fp32_graph
from mmserve.exporters.driver import ExportOptions, ExportResult, Feeds, Graph, Product, export_product
from mmserve.exporters.onnx_export import ExportError, OnnxSpec
from mmserve.exporters.repository import VERSION, ModelFolder, encoder_model, shared_model
from mmserve.exporters.triton_config import DECODER_INSTANCES, EncoderTuning, Tensor, ensemble_config, ensemble_step
from mmserve.repository_layout import ONNX_FILE_PARAMETER
from mmserve.exporters.triton_config import onnx_tensors, python_model_config
from mmserve.pipelines import EMBEDDING, IMAGE, IMAGE_EMBEDS, INPUT_IDS, LABELS, PIXEL_VALUES, PROBS, TEXT, TEXT_EMBEDS, Kind

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+; the NGC image runs 3.10 (annotations stay strings)
    from typing_extensions import Unpack

# Real texts of varied length and script for the parity gates (tokenizer and text tower).
PARITY_TEXTS = (
    "a photo of a small red circle",
    "A black-and-white photo of a dog catching a frisbee in the park.",
    "hi",
    "Un chat noir assis sur le rebord de la fenêtre, au soleil.",
    "我想查询一下我的订单状态",
    "The new phone's battery lasts two days 🔋👍 but the camera is mediocre.",
    "It's “quoted” text with &amp; entities, ﬁ ligatures and ＦＵＬＬＷＩＤＴＨ letters",
    " ".join(["A deliberately long caption that runs past the context length of the text tower."] * 8),
)

PREPROCESS_MODEL = "image_preprocess"
TOKENIZE_MODEL = "clip_tokenize"
DEFAULT_MAX_LABELS = 256
LABEL_CACHE_SIZE = 4096
SUPPORTED_TOKENIZERS = ("SimpleTokenizer",)

# The kinds of the three pipelines of one CLIP product, in pipeline_names' order.
PIPELINE_KINDS = (Kind.IMAGE_EMBED, Kind.CLIP_TEXT_EMBED, Kind.ZERO_SHOT_IMAGE)


def pipeline_names(name: str | None) -> tuple[str, str, str]:
    """The three pipelines of one CLIP product: the contract's names, or NAME_<contract name>."""
    return tuple(k.value if not name else f"{name}_{k.value}" for k in PIPELINE_KINDS)  # type: ignore[return-value]


# --- graphs -----------------------------------------------------------------------------------


def serving_graphs(loaded: Any) -> dict[str, Any]:
    """The graphs a CLIP product serves, by name: each tower encodes and L2-normalises."""
    import torch

    class Tower(torch.nn.Module):
        def __init__(self, encode: str) -> None:
            super().__init__()
            self.model = loaded.model
            self.encode = encode  # open_clip's encode_image or encode_text

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.normalize(getattr(self.model, self.encode)(inputs), dim=-1)

    return {"image_tower": Tower("encode_image").eval(), "text_tower": Tower("encode_text").eval()}


IMAGE_SPEC = OnnxSpec(
    input_names=(PIXEL_VALUES,),
    output_names=(IMAGE_EMBEDS,),
    dynamic_axes={PIXEL_VALUES: {0: "batch"}, IMAGE_EMBEDS: {0: "batch"}},
)
TEXT_SPEC = OnnxSpec(
    input_names=(INPUT_IDS,),
    output_names=(TEXT_EMBEDS,),
    dynamic_axes={INPUT_IDS: {0: "batch"}, TEXT_EMBEDS: {0: "batch"}},
)


def parity_images(size: int = 224) -> list:
    """Decoded pictures of different sizes and content (drawn scenes, photos-like noise, gradients)."""
    import random

    from PIL import Image

    from mmserve.training.clip_shapes import all_scenes, render

    rng = random.Random(0)
    nprng = np.random.default_rng(0)
    images = [render(scene, rng, size=rng.choice([48, 64, 96, 160])) for scene in rng.sample(all_scenes(), 10)]
    for width, height in [(320, 240), (240, 320), (97, 61), (1, 1), (500, 120)]:
        yy, xx = np.mgrid[0:height, 0:width]
        gradient = np.stack([xx * 255 / max(width - 1, 1), yy * 255 / max(height - 1, 1), np.full_like(xx, 128)], -1)
        noisy = np.clip(gradient + nprng.normal(0, 30, gradient.shape), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(noisy))
    return images


def image_feeds(preprocess: Any, batch_size: int = 4) -> list[Feeds]:
    """The image tower's inputs for the parity images, through open_clip's own pre-processing."""
    import torch

    pixels = torch.stack([preprocess(image) for image in parity_images()]).numpy().astype(np.float32)
    return [{PIXEL_VALUES: pixels[i : i + batch_size]} for i in range(0, len(pixels), batch_size)]


def text_feeds(tokenizer: Any, texts: Any, batch_size: int = 4) -> list[Feeds]:
    """The text tower's inputs for `texts`, through open_clip's own tokenizer."""
    ids = tokenizer(list(texts)).numpy().astype(np.int64)
    return [{INPUT_IDS: ids[i : i + batch_size]} for i in range(0, len(ids), batch_size)]


# --- tokenizer ----------------------------------------------------------------------------------


def clip_tokenizer_json(tokenizer) -> str:
    """open_clip's SimpleTokenizer as a `tokenizers` BPE (vocabulary, merges, split regex, specials).

    Cleaning (ftfy, HTML, whitespace, case) is done by `mmserve.serving.clip_text`
    before the BPE; the tokenizer.json does only what follows it in open_clip.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers

    kind = type(tokenizer).__name__
    if kind not in SUPPORTED_TOKENIZERS:
        raise ExportError(
            f"the checkpoint's tokenizer is open_clip's {kind}; the server's CLIP tokenizer implements "
            f"{', '.join(SUPPORTED_TOKENIZERS)} (open_clip's default BPE) only"
        )
    if getattr(tokenizer, "reduction_fn", None) is not None:
        raise ExportError("the tokenizer uses a random reduction mask (training only); export needs plain truncation")
    merges = sorted(tokenizer.bpe_ranks, key=tokenizer.bpe_ranks.get)
    bpe = models.BPE(
        vocab=dict(tokenizer.encoder), merges=list(merges),
        continuing_subword_prefix="", end_of_word_suffix="</w>", fuse_unk=False,
    )
    result = Tokenizer(bpe)
    result.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(tokenizer.pat.pattern), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    specials = [tokenizer.decoder[i] for i in tokenizer.all_special_ids]
    result.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in specials])
    return result.to_str()


def _clean_name(tokenizer) -> str:
    clean = getattr(tokenizer, "clean_fn", None)
    names = {"_clean_lower": "lower", "_clean_whitespace": "whitespace", "_clean_canonicalize": "canonicalize"}
    return names.get(getattr(clean, "__name__", ""), "lower")


def check_tokenizer(tokenizer, tokenizer_json: str, texts) -> int:
    """Refuse an export whose server-side ids differ from open_clip's on `texts`."""
    from mmserve.serving.clip_text import ClipTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "tokenizer.json"
        path.write_text(tokenizer_json, encoding="utf-8")
        ours = ClipTokenizer(
            path, tokenizer.context_length, _clean_name(tokenizer),
            sot_token=tokenizer.decoder[tokenizer.sot_token_id], eot_token=tokenizer.decoder[tokenizer.eot_token_id],
        )(list(texts))
    expected = tokenizer(list(texts)).numpy()
    wrong = [t for t, a, b in zip(texts, expected, ours) if not np.array_equal(a, b)]
    if wrong:
        raise ExportError(f"the server's CLIP tokenizer disagrees with open_clip on {len(wrong)} texts, e.g. {wrong[0]!r}")
    return len(texts)


# --- export ---------------------------------------------------------------------------------------


def export_clip(
    checkpoint: Path,
    repository: Path,
    name: str | None = None,
    max_pixels: int | None = None,
    max_labels: int = DEFAULT_MAX_LABELS,
    **options: Unpack[ExportOptions],
) -> ExportResult:
    """Checkpoint -> two parity-checked ONNX towers -> the three pipelines (prefixed with
    `name`), written atomically. Images above `max_pixels` and requests with more than
    `max_labels` labels are refused; `options` are every line's (int8, profile, tuning, keep)."""

    def plan() -> Product:
        from mmserve.serving.image import DEFAULT_MAX_PIXELS, ImageTransform
        from mmserve.training.clip_checkpoint import load_clip_checkpoint

        loaded = load_clip_checkpoint(checkpoint)
        tokenizer_json = clip_tokenizer_json(loaded.tokenizer)
        texts = list(PARITY_TEXTS) + [t.format(c) for c in (loaded.classes or ["dog", "red circle"])[:16] for t in loaded.templates]
        checked = check_tokenizer(loaded.tokenizer, tokenizer_json, texts)
        transform = ImageTransform.from_config(loaded.preprocess_cfg)
        graphs = serving_graphs(loaded)
        towers = [
            Graph("image_tower", graphs["image_tower"], IMAGE_SPEC, image_feeds(loaded.preprocess)),
            Graph("text_tower", graphs["text_tower"], TEXT_SPEC, text_feeds(loaded.tokenizer, texts)),
        ]
        pipelines = pipeline_names(name)

        def models(repository: Path, onnx: dict[str, Path], profile: str, tuning: EncoderTuning) -> list[ModelFolder]:
            return pipeline_models(
                repository, name, pipelines, onnx["image_tower"], onnx["text_tower"], tokenizer_json, loaded, transform,
                max_pixels or DEFAULT_MAX_PIXELS, max_labels, profile, tuning,
            )

        details = [f"tokenizer: ids equal to open_clip's on {checked} texts", f"logit_scale {loaded.logit_scale:.2f}"]
        return Product(Path(checkpoint), dict(zip(pipelines, PIPELINE_KINDS)), "CLIP towers", towers, models, details)

    return export_product(repository, plan, **options)


def pipeline_models(
    repository: Path,
    name: str | None,
    pipelines: tuple[str, str, str],
    image_onnx: Path,
    text_onnx: Path,
    tokenizer_json: str,
    loaded: Any,
    transform: Any,
    max_pixels: int,
    max_labels: int,
    profile: str,
    tuning: EncoderTuning,
) -> list[ModelFolder]:
    """The models of the three pipelines: pre-processing and tokenizer (shared with products
    that decode and tokenise the same way), both towers, zero-shot classification, ensembles."""
    prefix = f"{name}_" if name else ""
    context_length = loaded.context_length
    clean = _clean_name(loaded.tokenizer)
    _, (image_embeds,) = onnx_tensors(image_onnx)
    (input_ids,), _ = onnx_tensors(text_onnx)
    pixel_values = Tensor(PIXEL_VALUES, "TYPE_FP32", (3, *transform.size))

    # image_preprocess: bytes -> normalised pixels
    preprocess_parameters = {"preprocess": json.dumps(transform.to_config()), "max_pixels": str(max_pixels)}
    preprocess = shared_model(
        repository, PREPROCESS_MODEL, f"{prefix or 'clip_'}{PREPROCESS_MODEL}",
        lambda n: python_model_config(n, [Tensor.from_spec(IMAGE)], [pixel_values], preprocess_parameters,
                                      instances=DECODER_INSTANCES),
        {},
    )
    # clip_tokenize: text -> ids
    tokenize_parameters = {"tokenizer_file": "tokenizer.json", "context_length": str(context_length), "clean": clean}
    tokenize = shared_model(
        repository, TOKENIZE_MODEL, f"{prefix or 'clip_'}{TOKENIZE_MODEL}",
        lambda n: python_model_config(n, [Tensor.from_spec(TEXT)], [Tensor(INPUT_IDS, "TYPE_INT64", input_ids.dims)], tokenize_parameters),
        {f"{VERSION}/tokenizer.json": tokenizer_json},
    )
    image_encoder = encoder_model(f"{prefix}clip_image_encoder", image_onnx, profile, tuning)
    text_encoder = encoder_model(f"{prefix}clip_text_encoder", text_onnx, profile, tuning)

    # zero_shot_classify: image embedding + label names -> probabilities (text tower + label cache inside)
    classify_name = f"{prefix}zero_shot_classify"
    # Its text tower runs on onnxruntime's CPU provider at ORT_ENABLE_ALL (the label cache):
    # always the FP32 graph, never --fp16's, which that provider crashed on (exporters/fp16.py).
    classify_onnx = fp32_graph(text_onnx)
    clip_settings = {
        "logit_scale": loaded.logit_scale,
        "prompt_templates": loaded.templates,
        "context_length": context_length,
        "clean": clean,
        "embed_dim": image_embeds.dims[0],
        "checkpoint": str(loaded.path),
        "classes": loaded.classes,
    }
    classify = ModelFolder(
        classify_name,
        python_model_config(
            classify_name,
            [Tensor(IMAGE_EMBEDS, "TYPE_FP32", image_embeds.dims), Tensor.from_spec(LABELS)],
            [Tensor.from_spec(PROBS)],
            {
                ONNX_FILE_PARAMETER: classify_onnx.name,
                "tokenizer_file": "tokenizer.json",
                "clip_file": "clip.json",
                "logit_scale": f"{loaded.logit_scale:.6f}",
                "context_length": str(context_length),
                "max_labels": str(max_labels),
                "cache_size": str(LABEL_CACHE_SIZE),
            },
        ),
        {
            f"{VERSION}/{classify_onnx.name}": classify_onnx,
            f"{VERSION}/tokenizer.json": tokenizer_json,
            f"{VERSION}/clip.json": json.dumps(clip_settings, indent=2, ensure_ascii=False),
        },
    ).add_python_model("zero_shot_classify")

    image_pipeline, text_pipeline, zero_shot_pipeline = pipelines
    embedding = Tensor.from_spec(EMBEDDING, image_embeds.dims)
    decode = ensemble_step(preprocess.name, {IMAGE.name: IMAGE.name}, {PIXEL_VALUES: PIXEL_VALUES})
    image_steps = [decode, ensemble_step(image_encoder.name, {PIXEL_VALUES: PIXEL_VALUES}, {IMAGE_EMBEDS: EMBEDDING.name})]
    text_steps = [
        ensemble_step(tokenize.name, {TEXT.name: TEXT.name}, {INPUT_IDS: INPUT_IDS}),
        ensemble_step(text_encoder.name, {INPUT_IDS: INPUT_IDS}, {TEXT_EMBEDS: EMBEDDING.name}),
    ]
    zero_shot_steps = [
        decode,
        ensemble_step(image_encoder.name, {PIXEL_VALUES: PIXEL_VALUES}, {IMAGE_EMBEDS: IMAGE_EMBEDS}),
        ensemble_step(classify_name, {IMAGE_EMBEDS: IMAGE_EMBEDS, LABELS.name: LABELS.name}, {PROBS.name: PROBS.name}),
    ]
    ensembles = [
        ModelFolder(image_pipeline, ensemble_config(image_pipeline, [Tensor.from_spec(IMAGE)], [embedding], image_steps)),
        ModelFolder(text_pipeline, ensemble_config(text_pipeline, [Tensor.from_spec(TEXT)], [embedding], text_steps)),
        ModelFolder(
            zero_shot_pipeline,
            ensemble_config(
                zero_shot_pipeline, [Tensor.from_spec(IMAGE), Tensor.from_spec(LABELS)], [Tensor.from_spec(PROBS)], zero_shot_steps
            ),
        ),
    ]
    return [preprocess, tokenize, image_encoder, text_encoder, classify, *ensembles]
