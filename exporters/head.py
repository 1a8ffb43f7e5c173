"""Write a classifier head (mmserve/products/head.py) into the repository as a new product version.

A head product is one Python model (mmserve/serving/head.py) with its kind's public tensors,
`head.npz` and the labels; its config names the encoder product it calls. It is written by the
same versioned, atomic writer as every export (exporters/repository.py), so it gets a
product card, a live switch and rollback like any product.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from mmserve.exporters.repository import VERSION, ModelFolder, WrittenVersion, labels_txt, python_model_py, write_models
from mmserve.exporters.onnx_export import ExportError
from mmserve.exporters.triton_config import LABELS_FILE, Tensor, python_model_config, read_config
from mmserve.exporters.versions import CONFIG_FILE, DEFAULT_KEEP, Release
from mmserve.kinds import AnswerShape, KindInfo
from mmserve.pipelines import EMBEDDING, LABEL, PROBS, spec
from mmserve.repository_layout import Layout
from mmserve.serving.head import HEAD_FILE

HEAD_LAYOUT = Layout.HEAD.value  # the card's layout of a head product
HEAD_MODEL_PY = python_model_py("head", "HeadModel", "A classifier head over a shared encoder product (BLS)")
# The head waits while its encoder answers; a short delay lets concurrent requests share one encoder call.
HEAD_QUEUE_DELAY_US = 100


def encoder_kind_for(kind: KindInfo) -> KindInfo:
    """The embedding kind whose vectors a head of `kind` reads: same product line, same input."""
    from mmserve.kinds import answering

    matches = [row for row in answering(AnswerShape.EMBEDDING) if row.input is kind.input and row.modality is kind.modality]
    if kind.answer is not AnswerShape.CLASSIFICATION or not matches:
        raise ExportError(f"{kind.title} has no head mode: a head classifies the embeddings of a product of the same input")
    return matches[0]


def check_encoder(repository: Path, encoder: str, kind: KindInfo) -> None:
    """The encoder product exists in the repository and answers EMBEDDING for the head's inputs."""
    config = read_config(Path(repository) / encoder / CONFIG_FILE)
    wanted = encoder_kind_for(kind)
    if config is None:
        raise ExportError(
            f"head mode needs the embedding product {encoder} ({wanted.title}) in {repository}, which has none; "
            f"export one first (e.g. `mmserve export {'text BASE' if wanted.modality.value == 'text' else 'speech CKPT --task embed'} "
            f"--repository {repository}`) or name another with --encoder")
    inputs = {t.name for t in config.input}
    outputs = {t.name for t in config.output}
    if EMBEDDING.name not in outputs or inputs != {t.name for t in wanted.spec.inputs}:
        raise ExportError(f"{encoder} in {repository} is not a {wanted.title} product (inputs {sorted(inputs)}, "
                          f"outputs {sorted(outputs)}); name an embedding product with --encoder")


def head_model(name: str, kind: KindInfo, encoder: str, head_file: Path, labels: Sequence[str]) -> ModelFolder:
    """The head product's model folder."""
    contract = spec(kind.kind)
    config = python_model_config(
        name,
        [Tensor.from_spec(t) for t in contract.inputs],
        [Tensor(PROBS.name, PROBS.config_dtype, (len(labels),), label_filename=LABELS_FILE), Tensor.from_spec(LABEL)],
        {"encoder": encoder, "head_file": HEAD_FILE},
        max_queue_delay_us=HEAD_QUEUE_DELAY_US,
    )
    for tensor in config.input:
        tensor.allow_ragged_batch = True  # audio of different lengths may share a batch; the head splits it
    files = {f"{VERSION}/model.py": HEAD_MODEL_PY, f"{VERSION}/{HEAD_FILE}": head_file, LABELS_FILE: labels_txt(labels)}
    return ModelFolder(name, config, files, pipeline=True)


def export_head(
    repository: Path, name: str, kind: KindInfo, encoder: str, head_file: Path, labels: Sequence[str],
    facts_folder: Path, keep: int = DEFAULT_KEEP,
) -> WrittenVersion:
    """Write the head as product `name`'s new version (active on disk; a server serves it after a reload).
    `facts_folder` holds the card's facts as a checkpoint would (training_config.json, metrics.json)."""
    check_encoder(repository, encoder, kind)
    release = Release(Path(facts_folder), {name: kind.kind}, "cpu", {}, layout=HEAD_LAYOUT)
    return write_models(Path(repository), [head_model(name, kind, encoder, Path(head_file), labels)], release, keep)
