"""The runtime table: torch eager vs onnxruntime fp32 vs onnxruntime INT8, per encoder.

Inputs are what the encoder really receives: the pipeline's own pre-processing
(run in-process) turns the bench's requests into encoder feeds at batch 1 and 8.
ORT fp32 is the repository's ONNX through the serving runner's session options;
INT8 is the exporter's own dynamic quantization of that file; torch eager is
the checkpoint wrapped exactly as the exporter wraps it (pooling / softmax
inside), where the checkpoint is known. Next to each speed: drift against
torch (or fp32 when there is no torch source) and, for classifiers whose
checkpoint records its dev split, accuracy on that split.
"""
from __future__ import annotations

import json
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mmserve.bench.inprocess import InProcessPipeline, time_calls
from mmserve.bench.inputs import Request, stack
from mmserve.exporters.similarity import drift
from mmserve import kinds
from mmserve.kinds import AnswerShape, InputShape, Modality
from mmserve.pipelines import TEXT, Kind
from mmserve.repository_layout import LABELS_FILE

Feeds = dict[str, np.ndarray]
Forward = Callable[[Feeds], np.ndarray]

@dataclass
class RuntimeRow:
    encoder: str
    pipeline: str
    runtime: str  # "torch eager" | "ORT fp32" | "ORT INT8"
    b1_ms: float
    b8_ms: float
    b8_items_per_s: float
    max_abs_diff: float | None  # against the reference runtime
    min_cosine: float | None
    reference: str
    accuracy: float | None = None  # dev accuracy (classifiers with a known dev split)
    accuracy_items: int | None = None


@dataclass
class RuntimeTable:
    rows: list[RuntimeRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"rows": [asdict(r) for r in self.rows], "notes": self.notes}


# ---- torch sources per kind: (checkpoint, kind, encoder input names) -> forward on encoder feeds ----
def _text_torch(checkpoint: Path, kind: Kind, input_names: Sequence[str]) -> Forward:
    from mmserve.exporters.text import serving_graphs  # the exact graph the exporter traces
    from mmserve.training.text_checkpoint import load_text_checkpoint

    return _torch_forward(serving_graphs(load_text_checkpoint(checkpoint))["encoder"], input_names)


def _speech_torch(checkpoint: Path, kind: Kind, input_names: Sequence[str]) -> Forward:
    from mmserve.exporters.speech import serving_graphs  # the exact graph the exporter traces
    from mmserve.training.speech_checkpoint import load_speech_checkpoint

    task = "classify" if kinds.info(kind).answer is AnswerShape.CLASSIFICATION else "embed"
    return _torch_forward(serving_graphs(load_speech_checkpoint(checkpoint), task)["encoder"], input_names)


def _torch_forward(graph: Any, input_names: Sequence[str]) -> Forward:
    """The graph called on encoder feeds, positionally in the ONNX graph's input order."""
    import torch

    def forward(feeds: Feeds) -> np.ndarray:
        with torch.inference_mode():
            return graph(*(torch.from_numpy(feeds[name]) for name in input_names)).numpy()

    return forward


# One source per product line (the kind table's modality); a product line adds its own here or
# in WITHOUT_TORCH_SOURCE (tests/test_kind_table.py checks every modality is in one of them).
TORCH_SOURCES: dict[Modality, Callable[[Path, Kind, Sequence[str]], Forward]] = {
    Modality.TEXT: _text_torch,
    Modality.SPEECH: _speech_torch,
}
WITHOUT_TORCH_SOURCE = frozenset({Modality.VISION_TEXT})  # CLIP towers: ORT rows only
TEXT_KINDS = tuple(row.kind for row in kinds.KINDS.values() if row.modality is Modality.TEXT)


def torch_source(kind: Kind) -> Callable[[Path, Kind, Sequence[str]], Forward] | None:
    """The torch-eager wrapper of a kind's checkpoint, None when its product line has none."""
    return TORCH_SOURCES.get(kinds.info(kind).modality)


def classify_dev_set(checkpoint: Path) -> tuple[list[str], list[str]] | None:
    """(texts, labels) of the dev split a classifier was selected on: its dev.jsonl, else rebuilt from its config."""
    dev_file = checkpoint / "dev.jsonl"
    config_file = checkpoint / "training_config.json"
    if dev_file.exists() and config_file.exists() and json.loads(config_file.read_text()).get("task") == "classify":
        records = [json.loads(line) for line in dev_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [r["text"] for r in records], [r["label"] for r in records]
    if not config_file.exists():
        return None
    config = json.loads(config_file.read_text())
    if config.get("task") != "classify":
        return None
    from mmserve.training.text_data import read_classification, split_dev

    if config.get("dev_data"):
        dev = read_classification(config["dev_data"])
    else:
        items = read_classification(config["data"])
        _, dev = split_dev(items, config.get("dev_fraction", 0.15), config.get("seed", 42), key=lambda e: e.label)
    return [e.text for e in dev], [e.label for e in dev]


def _ort_forward(onnx_path: Path, output: str) -> Forward:
    from mmserve.serving.runtime import OnnxRunner, RunnerSettings

    session = OnnxRunner(onnx_path, RunnerSettings.for_instances(1)).session
    names = [i.name for i in session.get_inputs()]
    return lambda feeds: session.run([output], {n: feeds[n] for n in names})[0]


def _feeds(pipeline: InProcessPipeline, encoder: str, requests: Sequence[Request], batch: int, count: int) -> list[Feeds]:
    feeds = []
    for start in range(0, batch * count, batch):
        pipeline(stack([requests[(start + k) % len(requests)] for k in range(batch)]))
        feeds.append({k: np.array(v) for k, v in pipeline.captured[encoder].items()})
    return feeds


def measure_runtimes(
    repository: Path,
    pipelines: Sequence[tuple[str, Kind]],
    requests: dict[str, Sequence[Request]],
    checkpoints: dict[str, Path],
    workdir: Path,
    seconds: float = 2.0,
    progress: Callable[[str], None] | None = None,
    batches: tuple[int, int] = (8, 4),
    min_calls: int = 10,
) -> RuntimeTable:
    """One block of rows per encoder (an encoder shared by two pipelines is measured once)."""
    from mmserve.exporters.quantize import INT8_FILE, quantize_int8

    try:
        import torch

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(cores)  # the same cores as onnxruntime gets
    except ImportError:
        torch = None
    table = RuntimeTable()
    seen: set[str] = set()
    for name, kind in pipelines:
        pipeline = InProcessPipeline(repository, name)
        for encoder in pipeline.encoder_steps():
            if encoder in seen:
                continue
            seen.add(encoder)
            if progress:
                progress(f"runtimes {encoder}")
            onnx_path = pipeline.onnx_path(encoder)  # the served version's
            output = pipeline.models[encoder].runner.output_names[0]
            b1 = _feeds(pipeline, encoder, requests[name], 1, batches[0])  # batches of 1 and of 8 items
            b8 = _feeds(pipeline, encoder, requests[name], 8, batches[1])

            forwards: dict[str, Forward] = {}
            checkpoint = checkpoints.get(name)
            input_names = pipeline.models[encoder].runner.input_names
            source = torch_source(kind)
            if torch is not None and checkpoint is not None and source is not None and checkpoint.exists():
                forwards["torch eager"] = source(checkpoint, kind, input_names)
            elif source is None:
                table.notes.append(f"{encoder}: no torch source registered for {kind.value}; ORT rows only")
            else:
                table.notes.append(f"{encoder}: checkpoint unknown (--checkpoint {name}=PATH); ORT rows only")
            forwards["ORT fp32"] = _ort_forward(onnx_path, output)
            int8_path, _ = quantize_int8(onnx_path, b8, output, target=workdir / "int8" / encoder / INT8_FILE)
            forwards["ORT INT8"] = _ort_forward(int8_path, output)

            reference_name = next(iter(forwards))
            reference = forwards[reference_name]
            references = [reference(f) for f in b8 + b1]
            row = kinds.info(kind)
            reads_text_labels = row.input is InputShape.TEXT and row.answer is AnswerShape.CLASSIFICATION
            dev = classify_dev_set(checkpoint) if checkpoint is not None and reads_text_labels else None
            dev_feeds, gold = _dev_feeds(pipeline, encoder, dev) if dev else ([], None)
            for runtime, forward in forwards.items():
                t1 = time_calls(forward, b1, seconds / 2, min_calls=min_calls)
                t8 = time_calls(forward, b8, seconds / 2, min_calls=max(1, min_calls // 2))
                errors = drift([forward(f) for f in b8 + b1], references) if runtime != reference_name else (0.0, 1.0)
                accuracy = None
                if gold is not None:
                    predictions = np.concatenate([forward(f).argmax(-1) for f in dev_feeds])
                    accuracy = float((predictions == gold).mean())
                table.rows.append(
                    RuntimeRow(
                        encoder=encoder, pipeline=name, runtime=runtime,
                        b1_ms=1e3 * statistics.median(t1), b8_ms=1e3 * statistics.median(t8),
                        b8_items_per_s=8 * len(t8) / sum(t8),
                        max_abs_diff=errors[0], min_cosine=errors[1], reference=reference_name,
                        accuracy=accuracy, accuracy_items=len(gold) if gold is not None else None,
                    )
                )
    return table


def _dev_feeds(pipeline: InProcessPipeline, encoder: str, dev: tuple[list[str], list[str]]) -> tuple[list[Feeds], np.ndarray]:
    """The dev texts through the pipeline's own pre-processing, 32 at a time; gold label indices."""
    texts, labels = dev
    label_file = pipeline.step_root / encoder / LABELS_FILE
    names = [line.strip() for line in label_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    feeds = []
    for start in range(0, len(texts), 32):
        chunk = texts[start : start + 32]
        batch = {TEXT.name: np.array([[t.encode("utf-8")] for t in chunk], dtype=np.object_)}
        pipeline(batch)
        feeds.append({k: np.array(v) for k, v in pipeline.captured[encoder].items()})
    return feeds, np.array([names.index(label) for label in labels])
