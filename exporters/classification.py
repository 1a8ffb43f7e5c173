"""The classification tail every classifier pipeline shares (text, speech): probs -> PROBS, LABEL.

Why PROBS comes from the post-processing step and not straight from the encoder: when a
request names only some outputs, Triton's ensemble scheduler prunes the steps no named
output needs, walking back from the outputs left out. That walk (Triton 2.51) treats every
ensemble output as a leaf: an ensemble output that also feeds a later step is either
pruned together with the step it feeds (only PROBS named), or pruned away from under that
step (only LABEL named), and the request fails with "unexpected deadlock, at least one
output is not set". So the encoder's probabilities stay an internal tensor (`probs`), and
the last step answers both PROBS (passed through) and LABEL; `ensemble_config` refuses
any pipeline built the other way.

PROBS carries `label_filename` on the step that produces it: Triton's classification
extension (`class_count`) names classes with the labels of the model that produced the
tensor, so a caller gets "score:index:label" from the pipeline itself.
"""
from __future__ import annotations

from typing import Mapping

from tritonclient.grpc.model_config_pb2 import ModelEnsembling

from mmserve.exporters.repository import ModelFolder, labels_txt
from mmserve.exporters.triton_config import LABELS_FILE, Tensor, ensemble_step, python_model_config
from mmserve.pipelines import ENCODER_PROBS, LABEL, PROBS

POSTPROCESS_STEP = "text_classify_postprocess"  # its model.py: exporters.repository.PYTHON_MODELS


def classification_tail(
    pipeline: str, encoder: str, encoder_inputs: Mapping[str, str], probs: Tensor, labels: list[str]
) -> tuple[ModelFolder, list[ModelEnsembling.Step], list[Tensor]]:
    """The post-processing model, the encoder and post-processing steps, and the ensemble's outputs.

    `probs` is the encoder's output as onnx_tensors reads it (its dims are the class count);
    `encoder_inputs` maps the encoder's inputs to the ensemble tensors that feed them.
    """
    name = f"{pipeline}_postprocess"
    config = python_model_config(
        name,
        [Tensor(ENCODER_PROBS, probs.data_type, probs.dims)],
        [
            Tensor(PROBS.name, PROBS.config_dtype, probs.dims, label_filename=LABELS_FILE),
            Tensor.from_spec(LABEL),
        ],
    )
    postprocess = ModelFolder(name, config, {LABELS_FILE: labels_txt(labels)}).add_python_model(POSTPROCESS_STEP)
    steps = [
        ensemble_step(encoder, encoder_inputs, {probs.name: ENCODER_PROBS}),
        ensemble_step(name, {ENCODER_PROBS: ENCODER_PROBS}, {PROBS.name: PROBS.name, LABEL.name: LABEL.name}),
    ]
    return postprocess, steps, [Tensor.from_spec(PROBS, probs.dims), Tensor.from_spec(LABEL)]
