"""Export a text checkpoint (embed, classify or NER) into a pipeline of the repository.

tokenize (shared) -> encoder (ONNX, with pooling / softmax inside the graph) ->
post-processing (label names, entity spans) -> ensemble named as the product.
The export itself (parity gate, INT8, versioned atomic write) is exporters/driver.py.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmserve.exporters.classification import classification_tail
from mmserve.exporters.driver import DevSet, ExportOptions, ExportResult, Feeds, Graph, Product, export_product
from mmserve.exporters.onnx_export import OnnxSpec
from mmserve.exporters.repository import VERSION, ModelFolder, encoder_model, labels_txt, shared_model
from mmserve.exporters.triton_config import LABELS_FILE, EncoderTuning, Tensor, ensemble_config, ensemble_step
from mmserve.exporters.triton_config import onnx_tensors, python_model_config
from mmserve.pipelines import (
    ATTENTION_MASK,
    EMBEDDING,
    ENCODER_PROBS,
    ENTITIES,
    INPUT_IDS,
    SENTENCE_EMBEDDING,
    TEXT,
    TOKEN_OFFSETS,
    TOKEN_PROBS,
    WORD_IDS,
    Kind,
)

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+; the NGC image runs 3.10 (annotations stay strings)
    from typing_extensions import Unpack

# Real sentences of varied length and script for the parity gate.
PARITY_TEXTS = (
    "Where is my order? I placed it three days ago and the tracking page shows nothing.",
    "hi",
    "Please cancel the subscription on my account, I no longer need it.",
    "Shares of Northwind Bank rose 4% after the quarterly results beat expectations.",
    "Angela Merkel met executives from Siemens in Berlin on Tuesday.",
    "我想查询一下我的订单状态",
    "The new phone's battery lasts two days 🔋👍 but the camera is mediocre.",
    " ".join(["A deliberately long text that exceeds the usual length of a request."] * 12),
)

TOKENIZE_MODEL = "text_tokenize"
# One truncation length for every text product, so they can share one tokenizer
# model; models fine-tuned on shorter inputs still read 256 positions (MiniLM's
# sentence-transformers limit), and customer messages rarely need more.
SERVING_MAX_LENGTH = 256

TASK_KINDS = {"embed": Kind.TEXT_EMBED, "classify": Kind.TEXT_CLASSIFY, "ner": Kind.TEXT_NER}
_ONNX_OUTPUT = {"embed": SENTENCE_EMBEDDING, "classify": ENCODER_PROBS, "ner": TOKEN_PROBS}
_TOKEN_INPUTS = (INPUT_IDS, ATTENTION_MASK)


def serving_graphs(loaded: Any) -> dict[str, Any]:
    """The graphs a text pipeline serves, by name: its encoder, with pooling + L2 norm
    (embed) or softmax (classify, NER) inside ONNX (one hop fewer)."""
    import torch

    model, task = loaded.model, loaded.task

    class TextEncoderGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            outputs = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
            )
            if task == "embed":
                hidden = outputs.last_hidden_state
                weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
                return torch.nn.functional.normalize(pooled, p=2.0, dim=-1)
            return torch.softmax(outputs.logits, dim=-1)

    return {"encoder": TextEncoderGraph().eval()}


def token_feeds(tokenizer: Any, texts: Any, max_length: int, batch_size: int = 4) -> list[Feeds]:
    """The encoder's inputs for `texts`, as the server's tokenizer step makes them."""
    feeds = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(
            list(texts[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="np",
        )
        feeds.append({name: encoded[name].astype(np.int64) for name in _TOKEN_INPUTS})
    return feeds


def export_text(
    checkpoint: Path,
    repository: Path,
    name: str | None = None,
    max_length: int = SERVING_MAX_LENGTH,
    **options: Unpack[ExportOptions],
) -> ExportResult:
    """A text checkpoint as the pipeline `name` (default: its task's contract name); texts are
    truncated to `max_length` tokens; `options` are every line's (int8, profile, tuning, keep)."""

    def plan() -> Product:
        from mmserve.training.text_checkpoint import load_text_checkpoint

        loaded = load_text_checkpoint(checkpoint)
        task = loaded.task
        length = min(max_length, int(getattr(loaded.model.config, "max_position_embeddings", max_length)))
        pipeline = name or TASK_KINDS[task].value
        output = _ONNX_OUTPUT[task]
        axes = {n: {0: "batch", 1: "sequence"} for n in _TOKEN_INPUTS}
        spec = OnnxSpec(_TOKEN_INPUTS, (output,), {**axes, output: {0: "batch", **({1: "sequence"} if task == "ner" else {})}})
        texts = PARITY_TEXTS + tuple(_dev_texts(checkpoint)[:24])
        encoder = Graph(
            "encoder", serving_graphs(loaded)["encoder"], spec, token_feeds(loaded.tokenizer, texts, length),
            dev_set=lambda: _classify_dev_set(loaded, checkpoint, length),
            axis_limits={"sequence": length},  # the tokenizer truncates there
        )
        tokenizer_json = _tokenizer_json(loaded.tokenizer)

        def models(repository: Path, onnx: dict[str, Path], profile: str, tuning: EncoderTuning) -> list[ModelFolder]:
            encoder = onnx["encoder"]
            return pipeline_models(repository, pipeline, task, encoder, tokenizer_json, length, loaded.labels, profile, tuning)

        return Product(Path(checkpoint), {pipeline: TASK_KINDS[task]}, task, [encoder], models)

    return export_product(repository, plan, **options)


def _dev_texts(checkpoint: Path) -> list[str]:
    """Texts of the checkpoint's own dev split, when training left it (dev.jsonl)."""
    dev = Path(checkpoint) / "dev.jsonl"
    if not dev.exists():
        return []
    texts = []
    for line in dev.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            texts.append(record["text"] if "text" in record else " ".join(record["tokens"]))
    return texts


def _tokenizer_json(tokenizer: Any) -> str:
    """tokenizer.json without the call-time truncation/padding state HF leaves in it."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state["truncation"] = None
    state["padding"] = None
    return json.dumps(state, ensure_ascii=False, sort_keys=True)


def _classify_dev_set(loaded: Any, checkpoint: Path, max_length: int) -> DevSet | None:
    """A classifier's dev split (dev.jsonl), to score what INT8 costs; None for other tasks."""
    dev = Path(checkpoint) / "dev.jsonl"
    if loaded.task != "classify" or not dev.exists():
        return None
    records = [json.loads(line) for line in dev.read_text(encoding="utf-8").splitlines() if line.strip()]
    feeds = token_feeds(loaded.tokenizer, [r["text"] for r in records], max_length, batch_size=32)
    return feeds, [loaded.labels.index(r["label"]) for r in records]


# On the gpu profile the tokenizer pads each text to a multiple of this many tokens: Triton's
# onnxruntime backend batches only requests of one shape, and texts padded to their own
# length rarely share one; in buckets of 16, requests of similar length do.
GPU_LENGTH_BUCKET = 16


def _tokenize_model(repository: Path, pipeline: str, tokenizer_json: str, max_length: int, profile: str = "cpu") -> ModelFolder:
    """The shared tokenizer when this checkpoint tokenises the same way, else the pipeline's own."""
    parameters = {"tokenizer_file": "tokenizer.json", "max_length": str(max_length)}
    if profile == "gpu" and max_length % GPU_LENGTH_BUCKET == 0:
        parameters["length_bucket"] = str(GPU_LENGTH_BUCKET)

    def config_for(name: str):
        return python_model_config(
            name,
            [Tensor.from_spec(TEXT)],
            [
                Tensor(INPUT_IDS, "TYPE_INT64", (-1,)),
                Tensor(ATTENTION_MASK, "TYPE_INT64", (-1,)),
                Tensor(TOKEN_OFFSETS, "TYPE_INT32", (-1, 2)),
                Tensor(WORD_IDS, "TYPE_INT32", (-1,)),
            ],
            parameters,
        )

    files = {f"{VERSION}/tokenizer.json": tokenizer_json}
    return shared_model(repository, TOKENIZE_MODEL, f"{pipeline}_tokenize", config_for, files)


def pipeline_models(
    repository: Path,
    pipeline: str,
    task: str,
    onnx_path: Path,
    tokenizer_json: str,
    max_length: int,
    labels: list[str],
    profile: str,
    tuning: EncoderTuning,
) -> list[ModelFolder]:
    """The models of one text pipeline: tokenizer, encoder, post-processing, ensemble."""
    tokenize = _tokenize_model(repository, pipeline, tokenizer_json, max_length, profile)
    encoder = encoder_model(
        f"{pipeline}_encoder", onnx_path, profile, tuning, labels, labelled_output=ENCODER_PROBS if task == "classify" else None
    )
    output_name = _ONNX_OUTPUT[task]
    _, (encoder_output,) = onnx_tensors(onnx_path)
    token_inputs = {n: n for n in _TOKEN_INPUTS}
    tokenize_step = ensemble_step(tokenize.name, {TEXT.name: TEXT.name}, token_inputs)

    if task == "embed":
        steps = [tokenize_step, ensemble_step(encoder.name, token_inputs, {output_name: EMBEDDING.name})]
        ensemble = ensemble_config(
            pipeline, [Tensor.from_spec(TEXT)], [Tensor.from_spec(EMBEDDING, encoder_output.dims)], steps
        )
        return [tokenize, encoder, ModelFolder(pipeline, ensemble)]

    if task == "classify":
        post, classify_steps, outputs = classification_tail(pipeline, encoder.name, token_inputs, encoder_output, labels)
        ensemble = ensemble_config(pipeline, [Tensor.from_spec(TEXT)], outputs, [tokenize_step, *classify_steps])
        return [tokenize, encoder, post, ModelFolder(pipeline, ensemble)]

    post_name = f"{pipeline}_postprocess"
    post = ModelFolder(
        post_name,
        python_model_config(
            post_name,
            [
                Tensor.from_spec(TEXT),
                Tensor(TOKEN_OFFSETS, "TYPE_INT32", (-1, 2), ragged=True),
                Tensor(WORD_IDS, "TYPE_INT32", (-1,), ragged=True),
                Tensor(TOKEN_PROBS, "TYPE_FP32", encoder_output.dims, ragged=True),
            ],
            [Tensor.from_spec(ENTITIES)],
        ),
        {LABELS_FILE: labels_txt(labels)},
    ).add_python_model("text_ner_postprocess")
    spans = {TOKEN_OFFSETS: TOKEN_OFFSETS, WORD_IDS: WORD_IDS}
    steps = [
        ensemble_step(tokenize.name, {TEXT.name: TEXT.name}, {**token_inputs, **spans}),
        ensemble_step(encoder.name, token_inputs, {output_name: TOKEN_PROBS}),
        ensemble_step(post_name, {TEXT.name: TEXT.name, **spans, TOKEN_PROBS: TOKEN_PROBS}, {ENTITIES.name: ENTITIES.name}),
    ]
    ensemble = ensemble_config(pipeline, [Tensor.from_spec(TEXT)], [Tensor.from_spec(ENTITIES)], steps)
    return [tokenize, encoder, post, ModelFolder(pipeline, ensemble)]
