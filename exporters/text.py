"""Export a text checkpoint (embed, classify or NER) into a pipeline of the repository.

tokenize (shared) -> encoder (ONNX, with pooling / softmax inside the graph) ->
post-processing (label names, entity spans) -> ensemble named as the product.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from mmserve.exporters.classification import classification_tail, labels_txt
from mmserve.exporters.onnx_export import OnnxSpec, check_parity, export_onnx, require_parity
from mmserve.exporters.quantize import quantize_int8
from mmserve.exporters.repository import ENCODER_MODEL_PY, VERSION, ModelFolder, shared_or_own, write_models
from mmserve.exporters.staging import ensure_writable
from mmserve.exporters.versions import DEFAULT_KEEP, Release
from mmserve.exporters.result import EncoderExportResult
from mmserve.exporters.triton_config import (
    EncoderTuning,
    Step,
    Tensor,
    encoder_config,
    ensemble_config,
    onnx_tensors,
    python_model_config,
)
from mmserve.pipelines import EMBEDDING, ENTITIES, TEXT, Kind

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

TOKENIZER_MODEL = "text_tokenize"
# One truncation length for every text product, so they can share one tokenizer
# model; models fine-tuned on shorter inputs still read 256 positions (MiniLM's
# sentence-transformers limit), and customer messages rarely need more.
SERVING_MAX_LENGTH = 256

_TASK_KIND = {"embed": Kind.TEXT_EMBED, "classify": Kind.TEXT_CLASSIFY, "ner": Kind.TEXT_NER}
_ONNX_OUTPUT = {"embed": "sentence_embedding", "classify": "probs", "ner": "token_probs"}
_ONNX_SPEC_AXES = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}


def _wrap(model, task: str):
    """The graph a pipeline serves: pooling + L2 norm or softmax live inside ONNX (one hop fewer)."""
    import torch

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

    return TextEncoderGraph().eval()


def _feeds(tokenizer, texts, max_length: int, batch_size: int = 4) -> list[dict[str, np.ndarray]]:
    feeds = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(
            list(texts[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="np",
        )
        feeds.append(
            {
                "input_ids": encoded["input_ids"].astype(np.int64),
                "attention_mask": encoded["attention_mask"].astype(np.int64),
            }
        )
    return feeds


def export_text(
    checkpoint: Path,
    repository: Path,
    name: str | None = None,
    int8: bool = False,
    profile: str = "cpu",
    tuning: EncoderTuning = EncoderTuning(),
    max_length: int = SERVING_MAX_LENGTH,
    keep: int = DEFAULT_KEEP,
) -> EncoderExportResult:
    from mmserve.training.checkpoint import load_text_checkpoint

    started = time.perf_counter()
    repository = ensure_writable(repository)  # a read-only target fails before the slow work
    loaded = load_text_checkpoint(checkpoint)
    task = loaded.task
    max_length = min(max_length, int(getattr(loaded.model.config, "max_position_embeddings", max_length)))
    pipeline = name or _TASK_KIND[task].value
    graph = _wrap(loaded.model, task)
    output_name = _ONNX_OUTPUT[task]
    spec = OnnxSpec(
        input_names=("input_ids", "attention_mask"),
        output_names=(output_name,),
        dynamic_axes={**_ONNX_SPEC_AXES, output_name: {0: "batch", **({1: "sequence"} if task == "ner" else {})}},
    )
    dev_texts = _dev_texts(checkpoint)
    parity_feeds = _feeds(loaded.tokenizer, PARITY_TEXTS + tuple(dev_texts[:24]), max_length)

    with tempfile.TemporaryDirectory(prefix="mmserve-export-") as scratch:
        onnx_path = export_onnx(graph, tuple(_to_torch(parity_feeds[0]).values()), spec, Path(scratch) / "model.onnx")
        parity = require_parity(check_parity(graph, onnx_path, parity_feeds, output_name), f"{pipeline} encoder")
        quantization = None
        if int8:
            onnx_path, quantization = quantize_int8(
                onnx_path, parity_feeds, output_name, evaluation=_int8_evaluation(loaded, checkpoint, max_length)
            )
        models = _pipeline_models(
            repository, pipeline, task, onnx_path, _tokenizer_json(loaded.tokenizer), max_length, loaded.labels,
            profile, tuning,
        )
        release = Release(checkpoint, {pipeline: _TASK_KIND[task]}, profile, {"encoder": parity},
                          {"encoder": quantization} if quantization else {})
        written = write_models(repository, models, release, keep)
        onnx_bytes = onnx_path.stat().st_size

    return EncoderExportResult(
        pipeline=pipeline,
        task=task,
        models=tuple(m.name for m in models),
        parity=parity,
        quantization=quantization,
        onnx_bytes=onnx_bytes,
        seconds=time.perf_counter() - started,
        version=written.version,
    )


def _to_torch(feed: dict[str, np.ndarray]) -> dict:
    import torch

    return {k: torch.from_numpy(v) for k, v in feed.items()}


def _dev_texts(checkpoint: Path) -> list[str]:
    """Texts of the checkpoint's own dev split, when training left it (dev.jsonl)."""
    dev = checkpoint / "dev.jsonl"
    if not dev.exists():
        return []
    texts = []
    for line in dev.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            texts.append(record["text"] if "text" in record else " ".join(record["tokens"]))
    return texts


def _tokenizer_json(tokenizer) -> str:
    """tokenizer.json without the call-time truncation/padding state HF leaves in it."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state["truncation"] = None
    state["padding"] = None
    return json.dumps(state, ensure_ascii=False, sort_keys=True)


def _int8_evaluation(loaded, checkpoint: Path, max_length: int):
    """Dev accuracy of an ONNX classifier, to report what INT8 costs (classify only)."""
    dev = checkpoint / "dev.jsonl"
    if loaded.task != "classify" or not dev.exists():
        return None
    records = [json.loads(line) for line in dev.read_text(encoding="utf-8").splitlines() if line.strip()]
    feeds = _feeds(loaded.tokenizer, [r["text"] for r in records], max_length, batch_size=32)
    gold = np.array([loaded.labels.index(r["label"]) for r in records])

    def accuracy(session) -> float:
        predictions = np.concatenate([session.run(["probs"], feed)[0].argmax(-1) for feed in feeds])
        return float((predictions == gold).mean())

    return accuracy


def _tokenizer_model(repository: Path, pipeline: str, tokenizer_json: str, max_length: int) -> ModelFolder:
    """The shared tokenizer when this checkpoint tokenises the same way, else the pipeline's own."""
    files = {f"{VERSION}/tokenizer.json": tokenizer_json}

    def config_for(name: str) -> dict:
        return python_model_config(
            name,
            [Tensor.from_spec(TEXT)],
            [
                Tensor("input_ids", "TYPE_INT64", (-1,)),
                Tensor("attention_mask", "TYPE_INT64", (-1,)),
                Tensor("offsets", "TYPE_INT32", (-1, 2)),
                Tensor("word_ids", "TYPE_INT32", (-1,)),
            ],
            {"tokenizer_file": "tokenizer.json", "max_length": str(max_length)},
        )

    name, config = shared_or_own(repository, TOKENIZER_MODEL, f"{pipeline}_tokenize", config_for, files)
    return ModelFolder(name, config, dict(files), shared=name == TOKENIZER_MODEL).add_template("text_tokenize")


def _pipeline_models(
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
    tokenize = _tokenizer_model(repository, pipeline, tokenizer_json, max_length)
    encoder_name = f"{pipeline}_encoder"
    output_name = _ONNX_OUTPUT[task]
    labels_file = labels_txt(labels)
    encoder_files: dict[str, Path | bytes | str] = {f"{VERSION}/{onnx_path.name}": onnx_path}
    if profile == "cpu":
        encoder_files[f"{VERSION}/model.py"] = ENCODER_MODEL_PY
    if labels:
        encoder_files["labels.txt"] = labels_file
    encoder = ModelFolder(
        encoder_name,
        encoder_config(encoder_name, onnx_path, profile, labels_output="probs" if task == "classify" else None, tuning=tuning),
        encoder_files,
    )
    _, (encoder_output,) = onnx_tensors(onnx_path)
    token_inputs = {"input_ids": "input_ids", "attention_mask": "attention_mask"}
    tokenize_step = Step(tokenize.name, {"TEXT": "TEXT"}, token_inputs)

    if task == "embed":
        steps = [tokenize_step, Step(encoder_name, token_inputs, {output_name: "EMBEDDING"})]
        ensemble = ensemble_config(
            pipeline, [Tensor.from_spec(TEXT)], [Tensor.from_spec(EMBEDDING, encoder_output.dims)], steps
        )
        return [tokenize, encoder, ModelFolder(pipeline, ensemble)]

    if task == "classify":
        post, classify_steps, outputs = classification_tail(pipeline, encoder_name, token_inputs, encoder_output, labels)
        ensemble = ensemble_config(pipeline, [Tensor.from_spec(TEXT)], outputs, [tokenize_step, *classify_steps])
        return [tokenize, encoder, post, ModelFolder(pipeline, ensemble)]

    post_name = f"{pipeline}_postprocess"
    post = ModelFolder(
        post_name,
        python_model_config(
            post_name,
            [
                Tensor.from_spec(TEXT),
                Tensor("offsets", "TYPE_INT32", (-1, 2), ragged=True),
                Tensor("word_ids", "TYPE_INT32", (-1,), ragged=True),
                Tensor("token_probs", "TYPE_FP32", encoder_output.dims, ragged=True),
            ],
            [Tensor.from_spec(ENTITIES)],
        ),
        {"labels.txt": labels_file},
    ).add_template("text_ner_postprocess")
    tokenize_step = Step(
        tokenize.name, {"TEXT": "TEXT"}, {**token_inputs, "offsets": "offsets", "word_ids": "word_ids"}
    )
    steps = [
        tokenize_step,
        Step(encoder_name, token_inputs, {output_name: "token_probs"}),
        Step(
            post_name,
            {"TEXT": "TEXT", "offsets": "offsets", "word_ids": "word_ids", "token_probs": "token_probs"},
            {"ENTITIES": "ENTITIES"},
        ),
    ]
    ensemble = ensemble_config(pipeline, [Tensor.from_spec(TEXT)], [Tensor.from_spec(ENTITIES)], steps)
    return [tokenize, encoder, post, ModelFolder(pipeline, ensemble)]
