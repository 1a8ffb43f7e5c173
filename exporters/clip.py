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
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmserve.exporters.onnx_export import (
    ExportError,
    OnnxSpec,
    ParityReport,
    check_parity,
    export_onnx,
    require_parity,
)
from mmserve.exporters.quantize import QuantizationReport, quantize_int8
from mmserve.exporters.repository import ENCODER_MODEL_PY, VERSION, ModelFolder, shared_or_own, write_models
from mmserve.exporters.staging import ensure_writable
from mmserve.exporters.versions import DEFAULT_KEEP, Release
from mmserve.exporters.triton_config import (
    DECODER_INSTANCES,
    EncoderTuning,
    Step,
    Tensor,
    encoder_config,
    ensemble_config,
    onnx_tensors,
    python_model_config,
)
from mmserve.pipelines import EMBEDDING, IMAGE, LABELS, PROBS, TEXT, Kind

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
IMAGE_OUTPUT = "image_embeds"  # not "embedding": that name clashes inside dynamo exports
TEXT_OUTPUT = "text_embeds"
SUPPORTED_TOKENIZERS = ("SimpleTokenizer",)


@dataclass(frozen=True)
class ClipExportResult:
    pipelines: tuple[str, str, str]  # image embed, text embed, zero-shot
    models: tuple[str, ...]
    image_parity: ParityReport
    text_parity: ParityReport
    tokenizer_texts: int
    image_quantization: QuantizationReport | None
    text_quantization: QuantizationReport | None
    image_onnx_bytes: int
    text_onnx_bytes: int
    logit_scale: float
    embed_dim: int
    seconds: float
    version: int | None = None  # the product version written (exporters/versions.py)

    def summary(self) -> str:
        lines = [
            f"pipelines {', '.join(self.pipelines)} version {self.version} (embedding width {self.embed_dim}, logit_scale {self.logit_scale:.2f})",
            f"  models: {', '.join(self.models)}",
            f"  image tower parity fp32: {self.image_parity}",
            f"  text tower parity fp32:  {self.text_parity}",
            f"  tokenizer: ids equal to open_clip's on {self.tokenizer_texts} texts",
            f"  ONNX image tower {self.image_onnx_bytes / 1e6:.1f} MB, text tower {self.text_onnx_bytes / 1e6:.1f} MB, "
            f"export {self.seconds:.1f} s",
        ]
        if self.image_quantization:
            lines.append(f"  int8 image tower: {self.image_quantization}")
        if self.text_quantization:
            lines.append(f"  int8 text tower: {self.text_quantization}")
        return "\n".join(lines)


# The kinds of the three pipelines of one CLIP product, in pipeline_names' order.
PIPELINE_KINDS = (Kind.IMAGE_EMBED, Kind.CLIP_TEXT_EMBED, Kind.ZERO_SHOT_IMAGE)


def pipeline_names(name: str | None) -> tuple[str, str, str]:
    """The three pipelines of one CLIP product: the contract's names, or NAME_<contract name>."""
    return tuple(k.value if not name else f"{name}_{k.value}" for k in PIPELINE_KINDS)  # type: ignore[return-value]


# --- graphs -----------------------------------------------------------------------------------


def tower_graphs(model):
    """(image graph, text graph): encode + L2 normalise, in eval mode."""
    import torch
    import torch.nn.functional as F

    class ImageTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.model.encode_image(pixel_values), dim=-1)

    class TextTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.model.encode_text(input_ids), dim=-1)

    return ImageTower().eval(), TextTower().eval()


IMAGE_SPEC = OnnxSpec(
    input_names=("pixel_values",),
    output_names=(IMAGE_OUTPUT,),
    dynamic_axes={"pixel_values": {0: "batch"}, IMAGE_OUTPUT: {0: "batch"}},
)
TEXT_SPEC = OnnxSpec(
    input_names=("input_ids",),
    output_names=(TEXT_OUTPUT,),
    dynamic_axes={"input_ids": {0: "batch"}, TEXT_OUTPUT: {0: "batch"}},
)


def parity_images(size: int = 224) -> list:
    """Decoded pictures of different sizes and content (drawn scenes, photos-like noise, gradients)."""
    import random

    from PIL import Image

    from mmserve.training.shapes import all_scenes, render

    rng = random.Random(0)
    nprng = np.random.default_rng(0)
    images = [render(scene, rng, size=rng.choice([48, 64, 96, 160])) for scene in rng.sample(all_scenes(), 10)]
    for width, height in [(320, 240), (240, 320), (97, 61), (1, 1), (500, 120)]:
        yy, xx = np.mgrid[0:height, 0:width]
        gradient = np.stack([xx * 255 / max(width - 1, 1), yy * 255 / max(height - 1, 1), np.full_like(xx, 128)], -1)
        noisy = np.clip(gradient + nprng.normal(0, 30, gradient.shape), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(noisy))
    return images


def _image_feeds(preprocess, batch_size: int = 4) -> list[dict[str, np.ndarray]]:
    import torch

    pixels = torch.stack([preprocess(image) for image in parity_images()]).numpy().astype(np.float32)
    return [{"pixel_values": pixels[i : i + batch_size]} for i in range(0, len(pixels), batch_size)]


def _text_feeds(tokenizer, texts, batch_size: int = 4) -> list[dict[str, np.ndarray]]:
    ids = tokenizer(list(texts)).numpy().astype(np.int64)
    return [{"input_ids": ids[i : i + batch_size]} for i in range(0, len(ids), batch_size)]


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
    int8: bool = False,
    profile: str = "cpu",
    tuning: EncoderTuning = EncoderTuning(),
    max_pixels: int | None = None,
    max_labels: int = DEFAULT_MAX_LABELS,
    keep: int = DEFAULT_KEEP,
) -> ClipExportResult:
    """Checkpoint -> two parity-checked ONNX towers -> the three pipelines, written atomically."""
    from mmserve.serving.image import DEFAULT_MAX_PIXELS, ImageTransform
    from mmserve.training.clip_checkpoint import load_clip_checkpoint

    started = time.perf_counter()
    repository = ensure_writable(repository)  # a read-only target fails before the slow work
    loaded = load_clip_checkpoint(checkpoint)
    tokenizer_json = clip_tokenizer_json(loaded.tokenizer)
    prompt_texts = [t.format(c) for c in (loaded.classes or ["dog", "red circle"])[:16] for t in loaded.templates]
    tokenizer_texts = check_tokenizer(loaded.tokenizer, tokenizer_json, list(PARITY_TEXTS) + prompt_texts)
    transform = ImageTransform.from_config(loaded.preprocess_cfg)
    image_graph, text_graph = tower_graphs(loaded.model)
    image_feeds = _image_feeds(loaded.preprocess)
    text_feeds = _text_feeds(loaded.tokenizer, list(PARITY_TEXTS) + prompt_texts)
    pipelines = pipeline_names(name)

    with tempfile.TemporaryDirectory(prefix="mmserve-export-") as scratch:
        scratch = Path(scratch)
        image_onnx = export_onnx(image_graph, (_torch(image_feeds[0]["pixel_values"][:2]),), IMAGE_SPEC, scratch / "image" / "model.onnx")
        image_parity = require_parity(check_parity(image_graph, image_onnx, image_feeds, IMAGE_OUTPUT), f"{pipelines[0]} image tower")
        text_onnx = export_onnx(text_graph, (_torch(text_feeds[0]["input_ids"][:2]),), TEXT_SPEC, scratch / "text" / "model.onnx")
        text_parity = require_parity(check_parity(text_graph, text_onnx, text_feeds, TEXT_OUTPUT), f"{pipelines[1]} text tower")
        image_quantization = text_quantization = None
        if int8:
            image_onnx, image_quantization = quantize_int8(image_onnx, image_feeds, IMAGE_OUTPUT)
            text_onnx, text_quantization = quantize_int8(text_onnx, text_feeds, TEXT_OUTPUT)
        models = _pipeline_models(
            repository, name, pipelines, image_onnx, text_onnx, tokenizer_json, loaded, transform,
            max_pixels or DEFAULT_MAX_PIXELS, max_labels, profile, tuning,
        )
        quantized = {"image_tower": image_quantization, "text_tower": text_quantization}
        release = Release(checkpoint, dict(zip(pipelines, PIPELINE_KINDS)), profile,
                          {"image_tower": image_parity, "text_tower": text_parity},
                          {tower: report for tower, report in quantized.items() if report})
        written = write_models(repository, models, release, keep)
        image_bytes, text_bytes = image_onnx.stat().st_size, text_onnx.stat().st_size
        embed_dim = onnx_tensors(image_onnx)[1][0].dims[0]

    return ClipExportResult(
        pipelines=pipelines,
        models=tuple(m.name for m in models),
        image_parity=image_parity,
        text_parity=text_parity,
        tokenizer_texts=tokenizer_texts,
        image_quantization=image_quantization,
        text_quantization=text_quantization,
        image_onnx_bytes=image_bytes,
        text_onnx_bytes=text_bytes,
        logit_scale=loaded.logit_scale,
        embed_dim=embed_dim,
        seconds=time.perf_counter() - started,
        version=written.version,
    )


def _torch(array: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(array))


def _pipeline_models(
    repository: Path,
    name: str | None,
    pipelines: tuple[str, str, str],
    image_onnx: Path,
    text_onnx: Path,
    tokenizer_json: str,
    loaded,
    transform,
    max_pixels: int,
    max_labels: int,
    profile: str,
    tuning: EncoderTuning,
) -> list[ModelFolder]:
    prefix = f"{name}_" if name else ""
    context_length = loaded.context_length
    clean = _clean_name(loaded.tokenizer)
    _, (image_embeds,) = onnx_tensors(image_onnx)
    (input_ids,), (text_embeds,) = onnx_tensors(text_onnx)
    pixel_values = Tensor("pixel_values", "TYPE_FP32", (3, *transform.size))

    # image_preprocess: bytes -> normalised pixels, shared by products with the same transform
    preprocess_parameters = {"preprocess": json.dumps(transform.to_config()), "max_pixels": str(max_pixels)}
    preprocess_name, preprocess_config = shared_or_own(
        repository, PREPROCESS_MODEL, f"{prefix or 'clip_'}{PREPROCESS_MODEL}",
        lambda n: python_model_config(n, [Tensor.from_spec(IMAGE)], [pixel_values], preprocess_parameters,
                                      instances=DECODER_INSTANCES),
        {},
    )
    preprocess = ModelFolder(preprocess_name, preprocess_config, shared=preprocess_name == PREPROCESS_MODEL)
    preprocess.add_template(PREPROCESS_MODEL)

    # clip_tokenize: text -> ids, shared by products with the same tokenizer
    tokenizer_files = {f"{VERSION}/tokenizer.json": tokenizer_json}
    tokenize_parameters = {"tokenizer_file": "tokenizer.json", "context_length": str(context_length), "clean": clean}
    tokenize_name, tokenize_config = shared_or_own(
        repository, TOKENIZE_MODEL, f"{prefix or 'clip_'}{TOKENIZE_MODEL}",
        lambda n: python_model_config(n, [Tensor.from_spec(TEXT)], [Tensor("input_ids", "TYPE_INT64", input_ids.dims)], tokenize_parameters),
        tokenizer_files,
    )
    tokenize = ModelFolder(tokenize_name, tokenize_config, dict(tokenizer_files), shared=tokenize_name == TOKENIZE_MODEL)
    tokenize.add_template(TOKENIZE_MODEL)

    def encoder(model_name: str, onnx_path: Path) -> ModelFolder:
        files: dict[str, Path | bytes | str] = {f"{VERSION}/{onnx_path.name}": onnx_path}
        if profile == "cpu":
            files[f"{VERSION}/model.py"] = ENCODER_MODEL_PY
        return ModelFolder(model_name, encoder_config(model_name, onnx_path, profile, tuning=tuning), files)

    image_encoder = encoder(f"{prefix}clip_image_encoder", image_onnx)
    text_encoder = encoder(f"{prefix}clip_text_encoder", text_onnx)

    # zero_shot_classify: image embedding + label names -> probabilities (text tower + label cache inside)
    classify_name = f"{prefix}zero_shot_classify"
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
            [Tensor(IMAGE_OUTPUT, "TYPE_FP32", image_embeds.dims), Tensor.from_spec(LABELS)],
            [Tensor.from_spec(PROBS)],
            {
                "onnx_file": text_onnx.name,
                "tokenizer_file": "tokenizer.json",
                "clip_file": "clip.json",
                "logit_scale": f"{loaded.logit_scale:.6f}",
                "context_length": str(context_length),
                "max_labels": str(max_labels),
                "cache_size": str(LABEL_CACHE_SIZE),
            },
        ),
        {
            f"{VERSION}/{text_onnx.name}": text_onnx,
            f"{VERSION}/tokenizer.json": tokenizer_json,
            f"{VERSION}/clip.json": json.dumps(clip_settings, indent=2, ensure_ascii=False),
        },
    ).add_template("zero_shot_classify")

    image_pipeline, text_pipeline, zero_shot_pipeline = pipelines
    embedding = Tensor.from_spec(EMBEDDING, image_embeds.dims)
    image_steps = [
        Step(preprocess_name, {IMAGE.name: IMAGE.name}, {"pixel_values": "pixel_values"}),
        Step(image_encoder.name, {"pixel_values": "pixel_values"}, {IMAGE_OUTPUT: EMBEDDING.name}),
    ]
    text_steps = [
        Step(tokenize_name, {TEXT.name: TEXT.name}, {"input_ids": "input_ids"}),
        Step(text_encoder.name, {"input_ids": "input_ids"}, {TEXT_OUTPUT: EMBEDDING.name}),
    ]
    zero_shot_steps = [
        Step(preprocess_name, {IMAGE.name: IMAGE.name}, {"pixel_values": "pixel_values"}),
        Step(image_encoder.name, {"pixel_values": "pixel_values"}, {IMAGE_OUTPUT: IMAGE_OUTPUT}),
        Step(classify_name, {IMAGE_OUTPUT: IMAGE_OUTPUT, LABELS.name: LABELS.name}, {PROBS.name: PROBS.name}),
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
