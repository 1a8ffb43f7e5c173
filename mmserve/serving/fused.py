"""A whole pipeline in one Triton Python model: the fused cpu layout.

The ensemble layout runs each step (tokenizer, encoder, post-processing) as its own
Triton model, and every hop between them crosses the Python backend's shared memory
and the ensemble scheduler. The fused model runs the same steps — the same classes,
the same files — one after the other inside one process: one hop per request. Why the
cpu profile defaults to it is measured in docs/benchmarks.md and explained in
docs/architecture.md ("Layouts").

The model's version folder holds:

    model.py            one line importing FusedPipelineModel
    pipeline.json       {"steps": [{"model", "input_map", "output_map"}, ...]} in call order,
                        the maps exactly as the ensemble's steps name them
    steps/<model>/      each step as a model folder of a Triton repository: config.pbtxt,
                        1/ (model.py, ONNX, tokenizer...), labels.txt

Each step is initialised from its own config and folder, as Triton would, and answers
through `PythonStep.answer_batch`, so a bad request fails alone, with the step's own
message, and a step that no requested output needs does not run (as Triton prunes an
ensemble): the project's one in-process runner, mmserve/serving/pipeline.py.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmserve.repository_layout import CONFIG_FILE, PIPELINE_FILE, STEP_VERSION, STEPS_FOLDER  # noqa: F401 - re-exported
from mmserve.serving.pipeline import PipelineRunner, PipelineStep, fused_sources, load_pipeline
from mmserve.serving.runtime import instance_count, model_folder, triton_response

PLAN_FILE = PIPELINE_FILE  # the names' home: mmserve/repository_layout.py
STEP_CONFIG = CONFIG_FILE

# The fused model runs its steps with the project's one in-process runner (mmserve/serving/pipeline.py).
FusedStep = PipelineStep
FusedPipeline = PipelineRunner


def load_steps(version_folder: Path, instance_kind: str = "CPU", instances: int | None = None) -> list[PipelineStep]:
    """Every step of the pipeline.json in `version_folder`, initialised, in call order."""
    return load_pipeline(fused_sources(version_folder), instance_kind, instances)


class FusedPipelineModel:
    """The Triton Python model of a fused pipeline (its model.py is one line importing it)."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        kind = args.get("model_instance_kind", "CPU")
        instances = instance_count(args)
        self.pipeline = FusedPipeline(load_steps(model_folder(args), kind, instances), [o["name"] for o in config["output"]])

    def execute(self, requests: list[Any]) -> list[Any]:
        inputs = [{tensor.name(): tensor.as_numpy() for tensor in request.inputs()} for request in requests]
        requested = [request.requested_output_names() for request in requests]
        try:
            results = self.pipeline.run(inputs, requested)
        except Exception as error:  # noqa: BLE001 - a server never crashes on a batch
            results = [error] * len(requests)
        return [triton_response(result) for result in results]

    def finalize(self) -> None:
        self.pipeline.finalize()
