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
ensemble).
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from mmserve.repository_layout import CONFIG_FILE, MODEL_PY, PIPELINE_FILE, STEP_VERSION, STEPS_FOLDER
from mmserve.serving.runtime import LocalRequest, Outputs, PythonStep, instance_count, model_folder, triton_response

PLAN_FILE = PIPELINE_FILE  # the names' home: mmserve/repository_layout.py
STEP_CONFIG = CONFIG_FILE


@dataclass(frozen=True)
class FusedStep:
    model: str
    step: PythonStep
    input_map: Mapping[str, str]  # the step's input name -> the pipeline tensor it reads
    output_map: Mapping[str, str]  # the step's output name -> the pipeline tensor it writes


def step_args(folder: Path, model: str, instance_kind: str = "CPU", instances: int | None = None) -> dict[str, str]:
    """The `args` Triton would give the step's initialize(), from its folder's config.pbtxt.

    `instances`: the pipeline's own instance count, which the step takes (an encoder splits
    the cores by it), so editing the pipeline's config.pbtxt retunes its steps too."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc.model_config_pb2 import ModelConfig

    config = text_format.Parse((folder / STEP_CONFIG).read_text(encoding="utf-8"), ModelConfig())
    if instances is not None:
        del config.instance_group[:]
        config.instance_group.add(count=instances)
    return {
        "model_config": json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)),
        "model_repository": str(folder),
        "model_version": STEP_VERSION,
        "model_name": model,
        "model_instance_kind": instance_kind,
    }


def load_step_class(model_py: Path) -> type:
    """The TritonPythonModel class of a step's model.py, loaded as Triton loads it."""
    spec = importlib.util.spec_from_file_location(f"mmserve_fused_step_{model_py.parent.parent.name}", model_py)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {model_py}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TritonPythonModel


def load_steps(version_folder: Path, instance_kind: str = "CPU", instances: int | None = None) -> list[FusedStep]:
    """Every step of the pipeline.json in `version_folder`, initialised, in call order."""
    plan = json.loads((version_folder / PLAN_FILE).read_text(encoding="utf-8"))
    loaded: dict[str, PythonStep] = {}  # a model the pipeline calls twice is loaded once
    steps = []
    for entry in plan["steps"]:
        model = entry["model"]
        if model not in loaded:
            folder = version_folder / STEPS_FOLDER / model
            loaded[model] = load_step_class(folder / STEP_VERSION / MODEL_PY)()
            loaded[model].initialize(step_args(folder, model, instance_kind, instances))
        steps.append(FusedStep(model, loaded[model], dict(entry["input_map"]), dict(entry["output_map"])))
    return steps


class FusedPipeline:
    """The steps of one pipeline run in order over a batch of requests, in this process."""

    def __init__(self, steps: Sequence[FusedStep], outputs: Sequence[str]) -> None:
        self.steps = list(steps)
        self.outputs = list(outputs)
        self._plans: dict[frozenset[str], dict[int, list[str]]] = {}

    def plan(self, wanted: frozenset[str]) -> dict[int, list[str]]:
        """The steps (by index) that the `wanted` outputs need, each with the outputs asked of it."""
        if wanted not in self._plans:
            needed: set[str] = set(wanted)
            plan: dict[int, list[str]] = {}
            for index in reversed(range(len(self.steps))):
                step = self.steps[index]
                produced = [inner for inner, outer in step.output_map.items() if outer in needed]
                if produced:
                    plan[index] = produced
                    needed.update(step.input_map.values())
            self._plans[wanted] = plan
        return self._plans[wanted]

    def run(self, inputs: Sequence[Outputs], requested: Sequence[Sequence[str]]) -> list[Outputs | Exception]:
        """Each request's outputs (the ones it asked for; all when none) or its error."""
        wanted = [frozenset(names or self.outputs) for names in requested]
        plans = [self.plan(names) for names in wanted]
        tensors = [dict(request_inputs) for request_inputs in inputs]
        errors: list[Exception | None] = [None] * len(inputs)
        for index, step in enumerate(self.steps):
            batch = [i for i in range(len(inputs)) if errors[i] is None and index in plans[i]]
            if not batch:
                continue
            calls = [
                LocalRequest({inner: tensors[i][outer] for inner, outer in step.input_map.items() if outer in tensors[i]},
                             plans[i][index])
                for i in batch
            ]
            for i, result in zip(batch, step.step.answer_batch(calls)):
                if isinstance(result, Exception):
                    errors[i] = result
                else:
                    tensors[i].update({outer: result[inner] for inner, outer in step.output_map.items() if inner in result})
        return [
            error if error is not None else {name: tensors[i][name] for name in self.outputs if name in wanted[i]}
            for i, error in enumerate(errors)
        ]


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
        for step in {id(fused.step): fused.step for fused in self.pipeline.steps}.values():
            finalize = getattr(step, "finalize", None)
            if finalize is not None:
                finalize()
