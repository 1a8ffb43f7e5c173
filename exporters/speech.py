"""Export a speech checkpoint (classify or embed) into a pipeline of the repository.

audio_preprocess (shared; validate, resample, features) -> encoder (ONNX, softmax or
mean-pool + L2 norm inside the graph) -> post-processing (label names, classify only)
-> ensemble named as the product, with DESIGN's tensor names (AUDIO, SAMPLE_RATE ->
PROBS, LABEL | EMBEDDING). The export itself (parity gate, INT8, versioned atomic
write) is exporters/driver.py.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmserve.exporters.classification import classification_tail
from mmserve.exporters.driver import ExportOptions, ExportResult, Feeds, Graph, Product, export_product
from mmserve.exporters.onnx_export import ExportError, OnnxSpec
from mmserve.exporters.repository import VERSION, ModelFolder, encoder_model, shared_model
from mmserve.exporters.triton_config import DECODER_INSTANCES, EncoderTuning, Tensor, ensemble_config, ensemble_step
from mmserve.exporters.triton_config import onnx_tensors, python_model_config
from mmserve.pipelines import (
    ATTENTION_MASK,
    AUDIO,
    AUDIO_EMBEDDING,
    EMBEDDING,
    ENCODER_PROBS,
    INPUT_FEATURES,
    INPUT_VALUES,
    SAMPLE_RATE,
    Kind,
)
from mmserve.serving.audio import DEFAULT_MAX_SECONDS, FeatureConfig, FeatureExtractor

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+; the NGC image runs 3.10 (annotations stay strings)
    from typing_extensions import Unpack

PREPROCESS_MODEL = "audio_preprocess"
PREPROCESSOR_FILE = "preprocessor_config.json"
TASK_KINDS = {"classify": Kind.AUDIO_CLASSIFY, "embed": Kind.AUDIO_EMBED}
_ONNX_OUTPUT = {"classify": ENCODER_PROBS, "embed": AUDIO_EMBEDDING}


def features(loaded: Any) -> tuple[dict, FeatureConfig]:
    """The checkpoint's feature extractor as the server's pre-processing reads it: its
    preprocessor_config.json (mel filters left out, recomputed on the server) and settings."""
    fe_dict = loaded.feature_extractor.to_dict()
    fe_dict.pop("mel_filters", None)
    return fe_dict, FeatureConfig.from_preprocessor_config(fe_dict, min_samples=loaded.min_samples)


def serving_graphs(loaded: Any, task: str) -> dict[str, Any]:
    """The graphs a speech pipeline serves, by name: its encoder, with softmax (classify) or
    masked mean-pool + L2 norm (embed) inside ONNX."""
    import torch

    model, family = loaded.model, loaded.family
    passes_mask = ATTENTION_MASK in features(loaded)[1].output_names
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

    return {"encoder": (WhisperGraph() if family == "whisper" else WaveformGraph()).eval()}


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


def feature_feeds(extractor: FeatureExtractor, clips: list[np.ndarray], batch_size: int = 4) -> list[Feeds]:
    """The encoder's inputs for `clips`, as the server's pre-processing step makes them."""
    return [extractor(clips[start : start + batch_size]) for start in range(0, len(clips), batch_size)]


def export_speech(
    checkpoint: Path,
    repository: Path,
    name: str | None = None,
    task: str | None = None,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    **options: Unpack[ExportOptions],
) -> ExportResult:
    """A speech checkpoint as the pipeline `name` serving `task` (default: the checkpoint's);
    clips longer than `max_seconds` are refused; `options` are every line's (int8, profile,
    tuning, keep)."""
    checkpoint = Path(checkpoint)

    def plan() -> Product:
        from mmserve.training.speech_checkpoint import load_speech_checkpoint

        loaded = load_speech_checkpoint(checkpoint)
        chosen = task or loaded.task
        if chosen not in TASK_KINDS:
            raise ExportError(f"task must be 'classify' or 'embed', got {chosen!r}")
        if chosen == "classify" and loaded.task != "classify":
            raise ExportError(
                f"{checkpoint}: not a fine-tuned classifier (no training_config.json/labels.txt); export it with task 'embed'"
            )
        pipeline = name or TASK_KINDS[chosen].value
        fe_dict, feature_config = features(loaded)
        extractor = FeatureExtractor(feature_config)
        output = _ONNX_OUTPUT[chosen]
        input_names = feature_config.output_names
        if loaded.family == "whisper":  # the window is fixed by the positional table
            axes = {INPUT_FEATURES: {0: "batch"}}
        else:
            axes = {n: {0: "batch", 1: "samples"} for n in input_names}
        spec = OnnxSpec(input_names, (output,), {**axes, output: {0: "batch"}})
        rate = feature_config.sampling_rate

        def dev_set() -> tuple[list[Feeds], list[int]] | None:
            clips, labels = _dev_clips(checkpoint, rate, limit=0)
            return (feature_feeds(extractor, clips, 16), [loaded.labels.index(x) for x in labels]) if labels else None

        encoder = Graph(
            "encoder", serving_graphs(loaded, chosen)["encoder"], spec,
            feature_feeds(extractor, parity_clips(rate) + _dev_clips(checkpoint, rate)[0]),
            dev_set=dev_set if chosen == "classify" else None,
            # shorter clips are padded to min_samples, longer ones refused (whisper: no such axis)
            axis_limits={"samples": (feature_config.min_samples, int(max_seconds * rate))},
        )

        def models(repository: Path, onnx: dict[str, Path], profile: str, tuning: EncoderTuning) -> list[ModelFolder]:
            return pipeline_models(
                repository, pipeline, chosen, onnx["encoder"], fe_dict, feature_config, max_seconds, loaded.labels,
                profile, tuning,
            )

        return Product(checkpoint, {pipeline: TASK_KINDS[chosen]}, f"{chosen}, {loaded.family}", [encoder], models)

    return export_product(repository, plan, **options)


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
        outputs = [Tensor(INPUT_FEATURES, "TYPE_FP32", (feature_config.n_mels, frames))]
    else:
        outputs = [Tensor(INPUT_VALUES, "TYPE_FP32", (-1,))]
        if ATTENTION_MASK in feature_config.output_names:
            outputs.append(Tensor(ATTENTION_MASK, "TYPE_INT64", (-1,)))

    def config_for(name: str):
        return python_model_config(
            name,
            [Tensor(AUDIO.name, AUDIO.config_dtype, AUDIO.dims, ragged=True), Tensor.from_spec(SAMPLE_RATE)],
            outputs,
            parameters,
            instances=DECODER_INSTANCES,
        )

    return shared_model(repository, PREPROCESS_MODEL, f"{pipeline}_preprocess", config_for, files)


def pipeline_models(
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
    """The models of one speech pipeline: pre-processing, encoder, post-processing, ensemble."""
    preprocess = preprocess_model(repository, pipeline, fe_dict, feature_config, max_seconds)
    classify = task == "classify"
    encoder = encoder_model(
        f"{pipeline}_encoder", onnx_path, profile, tuning, labels if classify else (),
        labelled_output=ENCODER_PROBS if classify else None,
    )
    _, (encoder_output,) = onnx_tensors(onnx_path)
    feature_map = {n: n for n in feature_config.output_names}
    preprocess_step = ensemble_step(
        preprocess.name, {AUDIO.name: AUDIO.name, SAMPLE_RATE.name: SAMPLE_RATE.name}, feature_map
    )
    inputs = [Tensor.from_spec(AUDIO), Tensor.from_spec(SAMPLE_RATE)]

    if not classify:
        steps = [preprocess_step, ensemble_step(encoder.name, feature_map, {_ONNX_OUTPUT[task]: EMBEDDING.name})]
        ensemble = ensemble_config(pipeline, inputs, [Tensor.from_spec(EMBEDDING, encoder_output.dims)], steps)
        return [preprocess, encoder, ModelFolder(pipeline, ensemble)]

    post, classify_steps, outputs = classification_tail(pipeline, encoder.name, feature_map, encoder_output, labels)
    ensemble = ensemble_config(pipeline, inputs, outputs, [preprocess_step, *classify_steps])
    return [preprocess, encoder, post, ModelFolder(pipeline, ensemble)]
