"""Real encoder inputs: a fused pipeline's steps before its encoder, run in this process
by the project's one in-process runner (mmserve/serving/pipeline.py: `stop_before` loads
only those steps; the encoder itself, onnxruntime on GPU providers whose TensorRT engine
takes minutes to build, is what the check measures, elsewhere).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmserve.repository_layout import CONFIG_FILE, ONNX_FILE_PARAMETER, PIPELINE_FILE, STEP_VERSION, STEPS_FOLDER

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class EncoderStep:
    pipeline: str
    encoder: str  # the step model that runs the ONNX graph
    onnx: Path  # the graph it serves
    config: Path  # its config.pbtxt (the providers and their options with --profile gpu)
    input_map: dict[str, str]  # graph input -> pipeline tensor
    max_length: int | None  # a tokenizer step's truncation length (the sequence axis' bound)


def _served_version(repository: Path, pipeline: str) -> Path:
    from mmserve.exporters.versions import active_version

    version = active_version(repository, pipeline)
    if version is None:
        raise ValueError(f"{repository / pipeline} has no version folder")
    return repository / pipeline / str(version)


def _plan(repository: Path, pipeline: str) -> tuple[Path, list[dict[str, Any]]]:
    served = _served_version(repository, pipeline)
    if not (served / PIPELINE_FILE).is_file():
        raise ValueError(f"{pipeline} is not a fused pipeline ({served / PIPELINE_FILE} missing): export it with --layout fused")
    return served / STEPS_FOLDER, json.loads((served / PIPELINE_FILE).read_text(encoding="utf-8"))["steps"]


def encoder_step(repository: Path, pipeline: str) -> EncoderStep:
    """The first step of the pipeline that serves an ONNX graph whose every input the pipeline feeds it."""
    from mmserve.bench.inprocess import model_config

    steps_root, plan = _plan(repository, pipeline)
    max_length = None
    for entry in plan:
        parameters = model_config(steps_root, entry["model"]).parameters
        if "max_length" in parameters:
            max_length = int(parameters["max_length"].string_value)
        if ONNX_FILE_PARAMETER in parameters:
            onnx = steps_root / entry["model"] / STEP_VERSION / parameters[ONNX_FILE_PARAMETER].string_value
            config = steps_root / entry["model"] / CONFIG_FILE
            return EncoderStep(pipeline, entry["model"], onnx, config, dict(entry["input_map"]), max_length)
    raise ValueError(f"{pipeline}: no ONNX encoder step in its pipeline.json")


def preprocess(repository: Path, step: EncoderStep, batches: Sequence[Sequence[dict[str, np.ndarray]]]) -> list[Feeds]:
    """Each batch of requests through the steps before `step.encoder`: the encoder's inputs."""
    from mmserve.bench.inputs import stack
    from mmserve.serving import backend_stub
    from mmserve.serving.pipeline import PipelineRunner, fused_sources, load_pipeline

    backend_stub.install()  # outside tritonserver: the steps' triton_python_backend_utils
    steps = load_pipeline(fused_sources(_served_version(repository, step.pipeline)), instances=0, stop_before=step.encoder)
    runner = PipelineRunner(steps, outputs=list(step.input_map.values()))
    try:
        feeds = []
        for requests in batches:
            (tensors,) = runner.run([dict(stack(list(requests)))], [runner.outputs])
            if isinstance(tensors, Exception):
                raise RuntimeError(f"{step.pipeline}: a step before {step.encoder} failed: {tensors}")
            feeds.append({name: np.ascontiguousarray(tensors[outer]) for name, outer in step.input_map.items()})
        return feeds
    finally:
        runner.finalize()
