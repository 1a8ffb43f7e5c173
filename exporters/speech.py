"""Export a speech checkpoint (classify or embed) into a pipeline of the repository.

audio_preprocess (shared; validate, resample, features) -> encoder (ONNX, softmax or
mean-pool + L2 norm inside the graph) -> post-processing (label names, classify only)
-> ensemble named as the product, with DESIGN's tensor names (AUDIO, SAMPLE_RATE ->
PROBS, LABEL | EMBEDDING).
"""
from __future__ import annotations

import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from mmserve.exporters.classification import classification_tail, labels_txt
from mmserve.exporters.onnx_export import (
    ExportError,
    OnnxSpec,
    check_parity,
    export_onnx,
    require_parity,
)
from mmserve.exporters.quantize import quantize_int8
from mmserve.exporters.repository import (
    ENCODER_MODEL_PY,
    VERSION,
    ModelFolder,
    shared_or_own,
    write_models,
)
from mmserve.exporters.staging import ensure_writable
from mmserve.exporters.versions import DEFAULT_KEEP, Release
from mmserve.exporters.result import EncoderExportResult
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
from mmserve.pipelines import AUDIO, EMBEDDING, SAMPLE_RATE, Kind
from mmserve.serving.audio import DEFAULT_MAX_SECONDS, FeatureConfig, FeatureExtractor

PREPROCESS_MODEL = "audio_preprocess"
PREPROCESSOR_FILE = "preprocessor_config.json"
_TASK_KIND = {"classify": Kind.AUDIO_CLASSIFY, "embed": Kind.AUDIO_EMBED}
_ONNX_OUTPUT = {"classify": "probs", "embed": "audio_embedding"}
PARITY_RATE = 16_000


def _wrap(model, family: str, task: str, passes_mask: bool):
    """The graph a pipeline serves: softmax, or masked mean-pool + L2 norm, inside ONNX."""
    import torch

    base = getattr(model, model.base_model_prefix, model) if family == "waveform" else model.encoder

    class WhisperGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_features: torch.Tensor) -> torch.Tensor:
            if task == "classify":
                return torch.softmax(self.model(input_features=input_features).logits, dim=-1)
            hidden = self.model.encoder(input_features).last_hidden_state
            return torch.nn.functional.normalize(hidden.mean(dim=1), p=2.0, dim=-1)

    class WaveformGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
            mask = attention_mask if passes_mask else None
            if task == "classify":
                return torch.softmax(self.model(input_values, attention_mask=mask).logits, dim=-1)
            hidden = base(input_values, attention_mask=mask).last_hidden_state
            if mask is None:
                pooled = hidden.mean(dim=1)
            else:
                frames = self.model._get_feature_vector_attention_mask(hidden.shape[1], mask).unsqueeze(-1)
                frames = frames.to(hidden.dtype)
                pooled = (hidden * frames).sum(1) / frames.sum(1).clamp(min=1.0)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=-1)

    return (WhisperGraph() if family == "whisper" else WaveformGraph()).eval()


def parity_clips(rate: int, seed: int = 0) -> list[np.ndarray]:
    """Synthetic signals of varied length and content (tone, chirp, noise, silence, a click)."""
    rng = np.random.default_rng(seed)
    t = np.arange(rate) / rate
    clips = [
        0.5 * np.sin(2 * np.pi * 440 * t),
        0.3 * np.sin(2 * np.pi * (100 + 3000 * t) * t),
        0.1 * rng.standard_normal(rate // 2),
        np.zeros(rate // 3),
        np.pad([0.9], (rate // 10, rate // 4)),
        0.05 * rng.standard_normal(int(1.7 * rate)),
        0.4 * np.sign(np.sin(2 * np.pi * 220 * t[: rate // 5])),
        0.2 * rng.standard_normal(rate // 8) * np.hanning(rate // 8),
    ]
    return [np.asarray(c, dtype=np.float32) for c in clips]


def _dev_clips(checkpoint: Path, rate: int, limit: int = 24) -> tuple[list[np.ndarray], list[str]]:
    """Clips of the checkpoint's own dev split (dev.csv written by training), if present."""
    from mmserve.training.speech_data import load_clip

    dev = checkpoint / "dev.csv"
    if not dev.exists():
        return [], []
    with dev.open(encoding="utf-8") as f:
        rows = [row for row in csv.DictReader(f) if Path(row["path"]).is_file()]
    step = max(1, len(rows) // limit) if limit else 1
    picked = rows[::step][:limit] if limit else rows
    return [load_clip(Path(r["path"]), rate) for r in picked], [r["label"] for r in picked]


def _feeds(extractor: FeatureExtractor, clips: list[np.ndarray], batch_size: int = 4) -> list[dict[str, np.ndarray]]:
    return [extractor(clips[start : start + batch_size]) for start in range(0, len(clips), batch_size)]


def export_speech(
    checkpoint: Path,
    repository: Path,
    name: str | None = None,
    task: str | None = None,
    int8: bool = False,
    profile: str = "cpu",
    tuning: EncoderTuning = EncoderTuning(),
    max_seconds: float = DEFAULT_MAX_SECONDS,
    keep: int = DEFAULT_KEEP,
) -> EncoderExportResult:
    from mmserve.training.speech_checkpoint import load_speech_checkpoint

    started = time.perf_counter()
    checkpoint = Path(checkpoint)
    repository = ensure_writable(repository)  # a read-only target fails before the slow work
    loaded = load_speech_checkpoint(checkpoint)
    task = task or loaded.task
    if task not in _TASK_KIND:
        raise ExportError(f"task must be 'classify' or 'embed', got {task!r}")
    if task == "classify" and loaded.task != "classify":
        raise ExportError(f"{checkpoint}: not a fine-tuned classifier (no training_config.json/labels.txt); export it with task 'embed'")
    pipeline = name or _TASK_KIND[task].value
    fe_dict = loaded.feature_extractor.to_dict()
    fe_dict.pop("mel_filters", None)  # recomputed from the parameters on the server
    feature_config = FeatureConfig.from_preprocessor_config(fe_dict, min_samples=loaded.min_samples)
    passes_mask = "attention_mask" in feature_config.output_names
    extractor = FeatureExtractor(feature_config)
    graph = _wrap(loaded.model, loaded.family, task, passes_mask)
    output_name = _ONNX_OUTPUT[task]
    input_names = feature_config.output_names
    if loaded.family == "whisper":  # the window is fixed by the positional table
        axes = {"input_features": {0: "batch"}}
    else:
        axes = {n: {0: "batch", 1: "samples"} for n in input_names}
    spec = OnnxSpec(input_names=input_names, output_names=(output_name,), dynamic_axes={**axes, output_name: {0: "batch"}})

    rate = feature_config.sampling_rate
    dev_clips, dev_labels = _dev_clips(checkpoint, rate)
    parity_feeds = _feeds(extractor, parity_clips(rate) + dev_clips)
    example = _to_torch(parity_feeds[0])
    with tempfile.TemporaryDirectory(prefix="mmserve-export-") as scratch:
        onnx_path = export_onnx(graph, tuple(example[n] for n in input_names), spec, Path(scratch) / "model.onnx")
        parity = require_parity(check_parity(graph, onnx_path, parity_feeds, output_name), f"{pipeline} encoder")
        quantization = None
        if int8:
            evaluation = None
            if task == "classify":
                all_clips, all_labels = _dev_clips(checkpoint, rate, limit=0)
                evaluation = _accuracy(_feeds(extractor, all_clips, 16), [loaded.labels.index(l) for l in all_labels])
            onnx_path, quantization = quantize_int8(onnx_path, parity_feeds, output_name, evaluation=evaluation)
        models = _pipeline_models(
            repository, pipeline, task, onnx_path, fe_dict, feature_config, max_seconds, loaded.labels, profile, tuning
        )
        release = Release(checkpoint, {pipeline: _TASK_KIND[task]}, profile, {"encoder": parity},
                          {"encoder": quantization} if quantization else {})
        written = write_models(repository, models, release, keep)
        onnx_bytes = onnx_path.stat().st_size

    return EncoderExportResult(
        pipeline=pipeline, task=task, family=loaded.family, models=tuple(m.name for m in models),
        parity=parity, quantization=quantization, onnx_bytes=onnx_bytes, seconds=time.perf_counter() - started,
        version=written.version,
    )


def _to_torch(feed: dict[str, np.ndarray]) -> dict:
    import torch

    return {k: torch.from_numpy(v) for k, v in feed.items()}


def _accuracy(feeds: list[dict[str, np.ndarray]], gold: list[int]):
    if not gold:
        return None

    def accuracy(session) -> float:
        predictions = np.concatenate([session.run(["probs"], feed)[0].argmax(-1) for feed in feeds])
        return float((predictions == np.array(gold)).mean())

    return accuracy


def preprocess_model(
    repository: Path, pipeline: str, fe_dict: dict, feature_config: FeatureConfig, max_seconds: float
) -> ModelFolder:
    """The shared `audio_preprocess` when its feature extractor and limits are the same, else the pipeline's own."""
    files = {f"{VERSION}/{PREPROCESSOR_FILE}": json.dumps(fe_dict, indent=2, sort_keys=True) + "\n"}
    parameters = {
        "preprocessor_file": PREPROCESSOR_FILE,
        "max_seconds": f"{max_seconds:g}",
        "min_samples": str(feature_config.min_samples),
    }
    if feature_config.kind == "whisper":
        frames = feature_config.window_samples // feature_config.hop_length
        outputs = [Tensor("input_features", "TYPE_FP32", (feature_config.n_mels, frames))]
    else:
        outputs = [Tensor("input_values", "TYPE_FP32", (-1,))]
        if "attention_mask" in feature_config.output_names:
            outputs.append(Tensor("attention_mask", "TYPE_INT64", (-1,)))

    def build(name: str) -> dict:
        return python_model_config(
            name,
            [Tensor(AUDIO.name, AUDIO.config_dtype, AUDIO.dims, ragged=True), Tensor.from_spec(SAMPLE_RATE)],
            outputs,
            parameters,
            instances=DECODER_INSTANCES,
        )

    name, config = shared_or_own(repository, PREPROCESS_MODEL, f"{pipeline}_preprocess", build, files)
    return ModelFolder(name, config, dict(files), shared=name == PREPROCESS_MODEL).add_template("audio_preprocess")


def _pipeline_models(
    repository: Path,
    pipeline: str,
    task: str,
    onnx_path: Path,
    fe_dict: dict,
    feature_config: FeatureConfig,
    max_seconds: float,
    labels: list[str],
    profile: str,
    tuning: EncoderTuning,
) -> list[ModelFolder]:
    preprocess = preprocess_model(repository, pipeline, fe_dict, feature_config, max_seconds)
    encoder_name = f"{pipeline}_encoder"
    output_name = _ONNX_OUTPUT[task]
    encoder_files: dict[str, Path | bytes | str] = {f"{VERSION}/{onnx_path.name}": onnx_path}
    if profile == "cpu":
        encoder_files[f"{VERSION}/model.py"] = ENCODER_MODEL_PY
    if task == "classify":
        encoder_files["labels.txt"] = labels_txt(labels)
    encoder = ModelFolder(
        encoder_name,
        encoder_config(encoder_name, onnx_path, profile, labels_output="probs" if task == "classify" else None, tuning=tuning),
        encoder_files,
    )
    _, (encoder_output,) = onnx_tensors(onnx_path)
    feature_map = {n: n for n in feature_config.output_names}
    preprocess_step = Step(preprocess.name, {AUDIO.name: AUDIO.name, SAMPLE_RATE.name: SAMPLE_RATE.name}, feature_map)
    inputs = [Tensor.from_spec(AUDIO), Tensor.from_spec(SAMPLE_RATE)]

    if task == "embed":
        steps = [preprocess_step, Step(encoder_name, feature_map, {output_name: EMBEDDING.name})]
        ensemble = ensemble_config(pipeline, inputs, [Tensor.from_spec(EMBEDDING, encoder_output.dims)], steps)
        return [preprocess, encoder, ModelFolder(pipeline, ensemble)]

    post, classify_steps, outputs = classification_tail(pipeline, encoder_name, feature_map, encoder_output, labels)
    ensemble = ensemble_config(pipeline, inputs, outputs, [preprocess_step, *classify_steps])
    return [preprocess, encoder, post, ModelFolder(pipeline, ensemble)]
