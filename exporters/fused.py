"""The fused cpu layout: each pipeline written as one Python model that runs its steps in
one process (mmserve/serving/fused.py), instead of an ensemble of step models.

Built from the ensemble a product line describes, so every line gets both layouts from
one description: the steps are the same model folders (same model.py, ONNX, tokenizer,
labels), written inside the pipeline's version folder as a small repository of their
own, and the pipeline keeps the ensemble's name, inputs and outputs (the public
contract). Why the cpu profile defaults to it: docs/architecture.md, "Layouts".
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Sequence

from tritonclient.grpc.model_config_pb2 import ModelConfig, ModelDynamicBatching, ModelInstanceGroup

from mmserve.exporters.onnx_export import ExportError
from mmserve.exporters.repository import ENCODER_MODEL_PY, VERSION, ModelFolder, python_model_py
from mmserve.exporters.triton_config import EncoderTuning, copy_config, print_config
from mmserve.serving.fused import PLAN_FILE, STEP_CONFIG, STEP_VERSION, STEPS_FOLDER
from mmserve.repository_layout import ONNX_FILE_PARAMETER, Layout, OnnxStepParameters

FUSED = Layout.FUSED.value
ENSEMBLE_LAYOUT = Layout.ENSEMBLE.value
LAYOUTS = (FUSED, ENSEMBLE_LAYOUT)
# The cpu profile's default, chosen by measurement (docs/benchmarks.md); the gpu profile
# defaults to an ensemble (its encoders on Triton's native backends, the NGC image) and
# may be fused (its encoders on onnxruntime's GPU providers in Python: gpu_encoder_steps).
DEFAULT_LAYOUT = FUSED

FUSED_MODEL_PY = python_model_py("fused", "FusedPipelineModel", "A whole pipeline in one Python model (the fused cpu layout)")


# `--profile gpu --layout fused`: the encoder steps run onnxruntime's TensorRT execution
# provider (CUDA for what TensorRT does not take) inside the fused Python model, so the
# Triton of the nvidia-pytriton wheel (Python backend only, CUDA runtime linked) serves on
# a GPU machine with no NGC image. The encoder refuses to load where its first provider is
# missing (mmserve/serving/runtime.py: session_providers): no silent CPU fallback.
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def _onnx_file(config: ModelConfig) -> str:
    """The graph an ONNX step's config names; "" for a step that names none."""
    return OnnxStepParameters.read(config).onnx_file if ONNX_FILE_PARAMETER in config.parameters else ""


def check_layout(layout: str, profile: str) -> None:
    """A clear error for a layout this export cannot write."""
    if layout not in LAYOUTS:
        raise ExportError(f"unknown layout {layout!r}: use {' or '.join(LAYOUTS)}")
    if profile not in ("cpu", "gpu"):
        raise ExportError(f"unknown profile {profile!r}: use 'cpu' or 'gpu'")


def gpu_encoder_steps(models: Sequence[ModelFolder], profiles: dict) -> list[ModelFolder]:
    """The cpu-profile step models with each ONNX encoder step set to run on GPU_PROVIDERS.

    `profiles`: an encoder's ONNX file (the Path its folder is written from) -> the TensorRT
    shape profile of its product's limits (tensorrt.export_profile), written as the TensorRT
    provider's trt_profile_*_shapes so no request waits for an engine rebuild.
    """
    from mmserve.exporters.triton_config import trt_profile_options

    result = []
    for model in models:
        onnx_name = _onnx_file(model.config)
        source = model.files.get(f"{VERSION}/{onnx_name}") if onnx_name else None
        if model.files.get(f"{VERSION}/model.py") != ENCODER_MODEL_PY or source is None:
            result.append(model)
            continue
        config = copy_config(model.config)
        tensorrt = {"trt_fp16_enable": "True", "trt_engine_cache_enable": "True", "trt_max_workspace_size": str(4 << 30)}
        profile = profiles.get(source)
        if profile:
            tensorrt.update(trt_profile_options(profile))
        step = OnnxStepParameters.read(config)
        dataclasses.replace(step, providers=GPU_PROVIDERS,
                            provider_options=json.dumps({GPU_PROVIDERS[0]: tensorrt}, sort_keys=True)).write(config)
        result.append(dataclasses.replace(model, config=config))
    return result


def default_layout(profile: str) -> str:
    return DEFAULT_LAYOUT if profile == "cpu" else ENSEMBLE_LAYOUT


def fuse_pipelines(
    models: Sequence[ModelFolder], tuning: EncoderTuning, examples: Mapping[Path, Mapping[str, Any]] | None = None
) -> list[ModelFolder]:
    """Each ensemble of `models` as one fused model; the step models are folded into them.
    `examples`: an encoder's ONNX file -> real inputs of it (the parity feeds), to time it by."""
    by_name = {model.name: model for model in models}
    fused = [fused_pipeline(model, by_name, tuning, examples) for model in models if model.is_ensemble]
    if not fused:
        raise ExportError("nothing to fuse: the export describes no pipeline (ensemble)")
    return fused


def fused_instances(
    steps: Sequence[ModelFolder], tuning: EncoderTuning, examples: Mapping[Path, Mapping[str, Any]] | None = None
) -> int:
    """How many instances of a fused pipeline run: as many as its busiest step asks for.

    A decoder (image_preprocess, audio_preprocess) holds the GIL for most of a request and
    asks for DECODER_INSTANCES: its pipeline then runs that many instances, each with its
    share of the cores. A text pipeline runs one instance whose encoder spins (see
    _step_files): measured on 2 cores, 1 instance spinning beat 2 instances of 1 thread
    at concurrency 1 and matched them at 8 (docs/benchmarks.md). A pipeline whose encoder
    is real-size (LARGE_ENCODER_MS, measured here) runs one instance whatever its decoder asks.
    """
    asked = [group.count for step in steps for group in step.config.instance_group]
    if tuning.instances == 1 and max(asked, default=1) > 1:
        slowest = max((encoder_ms(step, examples) or 0.0 for step in steps), default=0.0)
        if slowest >= LARGE_ENCODER_MS:
            return 1  # one instance, every core on a lone request, batches at load (see LARGE_ENCODER_MS)
    return max([tuning.instances, *asked])


# A real-size encoder (ViT-B-32, BERT-base, Whisper-base) takes this long or more on one core
# for one request. There, 2 instances of 1 thread (DECODER_INSTANCES) give a lone request
# half the machine (ViT-B-32 image_embed: 2.05x its in-process latency, issue 23), while the
# decoder they overlap costs a few ms against the encoder's tens: one instance whose encoder
# uses every core, with dynamic batching under load, loses at most ~10% of the overlap at
# concurrency 8 and halves the latency at 1. Measured per product at export (encoder_ms) on
# the exporting machine; the pipeline's config.pbtxt `count` stays the operator's knob.
LARGE_ENCODER_MS = 40.0


def encoder_ms(step: ModelFolder, examples: Mapping[Path, Mapping[str, Any]] | None = None, runs: int = 3) -> float | None:
    """One request's CPU time through an ONNX encoder step on one thread (median of `runs`); None
    for a step that is not an ONNX encoder of this export. Its input: the first item of its
    `examples` (the export's parity inputs); without them zeros, symbolic axes 128 (a long
    sentence) or 16000 (a second of audio samples)."""
    import time

    import numpy as np
    import onnxruntime as ort

    onnx_name = _onnx_file(step.config)
    source = step.files.get(f"{VERSION}/{onnx_name}") if onnx_name else None
    if step.files.get(f"{VERSION}/model.py") != ENCODER_MODEL_PY or not isinstance(source, Path):
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    types = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


    def zeros(value: Any) -> np.ndarray:
        dtype = types.get(value.type, np.float32)
        other = 128 if np.issubdtype(dtype, np.integer) else 16000  # tokens; samples (1 s of 16 kHz audio)
        return np.zeros([d if isinstance(d, int) and d > 0 else (1 if n == 0 else other)
                         for n, d in enumerate(value.shape)], dtype=dtype)

    example = (examples or {}).get(source)
    feeds = {i.name: np.asarray(example[i.name])[:1] if example is not None and i.name in example else zeros(i)
             for i in session.get_inputs()}
    times = []
    try:
        session.run(None, feeds)
        for _ in range(runs):  # this thread's CPU time: a busy machine does not make an encoder "large"
            started = time.thread_time()
            session.run(None, feeds)
            times.append(time.thread_time() - started)
    except Exception:  # noqa: BLE001 - inputs this guess cannot shape: not measured, the default stays
        return None
    return 1000 * float(np.median(times))


def fused_pipeline(
    ensemble: ModelFolder, models: dict[str, ModelFolder], tuning: EncoderTuning,
    examples: Mapping[Path, Mapping[str, Any]] | None = None,
) -> ModelFolder:
    """One pipeline as a Python model with the ensemble's name, inputs and outputs."""
    steps = ensemble.config.ensemble_scheduling.step
    step_models = []  # each model the ensemble calls, once, in call order
    for name in dict.fromkeys(step.model_name for step in steps):
        model = models.get(name)
        if model is None or f"{VERSION}/model.py" not in model.files:
            raise ExportError(f"pipeline {ensemble.name}: step {name} is not a Python model of this export; it cannot be fused")
        step_models.append(model)
    instances = fused_instances(step_models, tuning, examples)
    config = ModelConfig(
        name=ensemble.config.name,
        backend="python",
        max_batch_size=ensemble.config.max_batch_size,
        input=ensemble.config.input,
        output=ensemble.config.output,
        dynamic_batching=ModelDynamicBatching(max_queue_delay_microseconds=tuning.max_queue_delay_us),
        instance_group=[ModelInstanceGroup(count=instances, kind=ModelInstanceGroup.KIND_CPU)],
    )
    for tensor in config.input:
        # The Python backend hands each request over on its own, so requests of any shape
        # may share a batch (audio of different lengths, say).
        tensor.allow_ragged_batch = True
    files: dict = {f"{VERSION}/model.py": FUSED_MODEL_PY}
    files.update({name: content for name, content in ensemble.files.items() if not name.startswith(f"{VERSION}/")})
    for model in step_models:
        files.update(_step_files(model, instances))
    plan = [
        {"model": step.model_name, "input_map": dict(step.input_map), "output_map": dict(step.output_map)}
        for step in steps
    ]
    files[f"{VERSION}/{PLAN_FILE}"] = json.dumps({"steps": plan}, indent=2) + "\n"
    files.update(_carry_labels(config, steps, models))
    return ModelFolder(config.name, config, files, pipeline=True)


def _carry_labels(config: ModelConfig, steps: Sequence[Any], models: dict[str, ModelFolder]) -> dict:
    """An output whose producing step names a label file (PROBS) names it on the pipeline too,
    with the file at the pipeline's root, so Triton's classification (`class_count`) answers
    `score:index:label` as through the ensemble."""
    files = {}
    for output in config.output:
        for step in steps:
            inner = next((i for i, outer in step.output_map.items() if outer == output.name), None)
            if inner is None:
                continue
            model = models[step.model_name]
            label_file = next((o.label_filename for o in model.config.output if o.name == inner), "")
            if label_file:
                output.label_filename = label_file
                files[label_file] = model.files[label_file]
    return files


def _step_files(model: ModelFolder, instances: int) -> dict:
    """A step's folder inside the pipeline's version: steps/<model>/{config.pbtxt, 1/..., labels.txt}.

    Its instance count is the pipeline's, so an encoder splits the cores as the pipeline's
    instances share them. With one instance the encoder's onnxruntime threads spin between
    parallel sections instead of sleeping: on a VM every wake-up is an interrupt to the
    hypervisor, and on 2 cores spinning took MiniLM from 8.3 to 6.4 ms at concurrency 1 and
    191 to 248 infer/s at 8. (The ensemble layout cannot: its spinning encoder starves the
    tokenizer's and post-processing's processes.)
    """
    base = PurePosixPath(VERSION, STEPS_FOLDER, model.name)
    config = copy_config(model.config)
    del config.instance_group[:]
    config.instance_group.add(count=instances, kind=ModelInstanceGroup.KIND_CPU)
    if instances == 1 and model.files.get(f"{VERSION}/model.py") == ENCODER_MODEL_PY:
        dataclasses.replace(OnnxStepParameters.read(config), allow_spinning=True).write(config)
    files: dict = {str(base / STEP_CONFIG): print_config(config)}
    for relative, content in model.files.items():
        parts = PurePosixPath(relative).parts
        inner = PurePosixPath(STEP_VERSION, *parts[1:]) if parts[0] == VERSION else PurePosixPath(*parts)
        files[str(base / inner)] = content
    return files
