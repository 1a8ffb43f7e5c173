"""The one in-process runner of a pipeline: its steps called one after the other in this
process, each through ``PythonStep.answer_batch`` with :class:`LocalRequest`s.

Three callers, one runner:

- the fused model (mmserve/serving/fused.py) runs its pipeline.json inside tritonserver;
- the bench's in-process baseline (mmserve/bench/inprocess.py) runs an ensemble's steps
  (from its config) or a fused pipeline's (from its pipeline.json) in the bench's process,
  with the ``on_step`` hook timing each step and capturing its inputs;
- the GPU check (mmserve/bench/gpu) runs the steps before an encoder (``stop_before``) to
  get that encoder's real inputs: :func:`load_pipeline` then :meth:`PipelineRunner.run`::

      backend_stub.install()  # outside tritonserver
      steps = load_pipeline(fused_sources(served_version_folder), instances=0, stop_before=encoder)
      runner = PipelineRunner(steps, outputs=list(encoder_input_map.values()))
      (tensors,) = runner.run([batch], [runner.outputs])  # or the step's own exception

A bad request fails alone with its step's own message, and a step that no requested output
needs does not run (as Triton prunes an ensemble). Loading a step is what Triton does: its
``model.py`` imported, its class initialised with the ``args`` built from its
``config.pbtxt``. Outside tritonserver, call ``mmserve.serving.backend_stub.install()`` first
(the bench does) so a step's ``triton_python_backend_utils`` import resolves.
"""
from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmserve.repository_layout import CONFIG_FILE, MODEL_PY, PIPELINE_FILE, STEP_VERSION, STEPS_FOLDER
from mmserve.serving.runtime import LocalRequest, Outputs

# (step model, the requests it was just asked, seconds its answer_batch took): timing and capture.
StepHook = Callable[[str, Sequence[LocalRequest], float], None]


@dataclass(frozen=True)
class PipelineStep:
    """One step of a pipeline, loaded: the object that answers, and how it is wired."""

    model: str
    step: Any  # a PythonStep: answer_batch(requests) -> one Outputs or exception per request
    input_map: Mapping[str, str]  # the step's input name -> the pipeline tensor it reads
    output_map: Mapping[str, str]  # the step's output name -> the pipeline tensor it writes


@dataclass(frozen=True)
class StepSource:
    """Where a step is and how the pipeline wires it, before it is loaded."""

    model: str
    folder: Path  # the step's model folder (config.pbtxt, <version>/model.py, labels.txt...)
    version: str
    input_map: Mapping[str, str]
    output_map: Mapping[str, str]


class PipelineRunner:
    """A pipeline's steps run in order over a batch of requests, in this process."""

    def __init__(self, steps: Sequence[PipelineStep], outputs: Sequence[str], on_step: StepHook | None = None) -> None:
        self.steps = list(steps)
        self.outputs = list(outputs)
        self.on_step = on_step
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
            started = time.perf_counter()
            results = step.step.answer_batch(calls)
            if self.on_step is not None:
                self.on_step(step.model, calls, time.perf_counter() - started)
            for i, result in zip(batch, results):
                if isinstance(result, Exception):
                    errors[i] = result
                else:
                    tensors[i].update({outer: result[inner] for inner, outer in step.output_map.items() if inner in result})
        return [
            error if error is not None else {name: tensors[i][name] for name in self.outputs if name in wanted[i]}
            for i, error in enumerate(errors)
        ]

    def finalize(self) -> None:
        """Each loaded step's finalize(), once (a step the pipeline calls twice is one object)."""
        for step in {id(s.step): s.step for s in self.steps}.values():
            finalize = getattr(step, "finalize", None)
            if finalize is not None:
                finalize()


# --- loading steps as Triton would ----------------------------------------------------------


def step_args(folder: Path, model: str, version: str = STEP_VERSION, instance_kind: str = "CPU",
              instances: int | None = None) -> dict[str, str]:
    """The `args` Triton would give the step's initialize(), from its folder's config.pbtxt.

    `instances`: the instance count the step takes (an encoder splits the cores by it): the
    fused pipeline's own, so its config.pbtxt retunes its steps; 0 drops the config's instance
    groups, so one step in this process gets every core (the bench's in-process baseline)."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc.model_config_pb2 import ModelConfig

    config = text_format.Parse((folder / CONFIG_FILE).read_text(encoding="utf-8"), ModelConfig())
    if instances is not None:
        del config.instance_group[:]
        if instances > 0:
            config.instance_group.add(count=instances)
    return {
        "model_config": json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)),
        "model_repository": str(folder),
        "model_version": str(version),
        "model_name": model,
        "model_instance_name": f"{model}_0",
        "model_instance_kind": instance_kind,
        "model_instance_device_id": "0",
    }


def load_step_class(model_py: Path) -> type:
    """The TritonPythonModel class of a step's model.py, loaded as Triton loads it."""
    spec = importlib.util.spec_from_file_location(f"mmserve_step_{model_py.parent.parent.name}_{model_py.parent.name}",
                                                  model_py)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {model_py}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TritonPythonModel


def load_step(source: StepSource, instance_kind: str = "CPU", instances: int | None = None) -> Any:
    """One step's model object, initialised from its folder as Triton would."""
    step = load_step_class(source.folder / source.version / MODEL_PY)()
    if not callable(getattr(step, "answer_batch", None)):
        raise TypeError(f"{source.model} ({source.folder / source.version / MODEL_PY}) has no answer_batch: "
                        "a pipeline step is a mmserve.serving.runtime.PythonStep")
    if hasattr(step, "initialize"):
        step.initialize(step_args(source.folder, source.model, source.version, instance_kind, instances))
    return step


def load_pipeline(sources: Sequence[StepSource], instance_kind: str = "CPU", instances: int | None = None,
                  stop_before: str | None = None) -> list[PipelineStep]:
    """The steps, each loaded once (a model the pipeline calls twice is one object), in call
    order; with `stop_before`, only the steps before that model (which is not loaded)."""
    loaded: dict[tuple[Path, str], Any] = {}
    steps = []
    for source in sources:
        if source.model == stop_before:
            break
        key = (source.folder, source.version)
        if key not in loaded:
            loaded[key] = load_step(source, instance_kind, instances)
        steps.append(PipelineStep(source.model, loaded[key], dict(source.input_map), dict(source.output_map)))
    return steps


def fused_sources(version_folder: Path) -> list[StepSource]:
    """A fused pipeline's steps as its pipeline.json lists them, each from steps/<model>/."""
    plan = json.loads((version_folder / PIPELINE_FILE).read_text(encoding="utf-8"))
    return [
        StepSource(entry["model"], version_folder / STEPS_FOLDER / entry["model"], STEP_VERSION,
                   dict(entry["input_map"]), dict(entry["output_map"]))
        for entry in plan["steps"]
    ]
