"""Write an export into a Triton repository as a new product version, atomically.

The product's ensemble(s) and private steps (encoder, post-processing) get version
V = newest + 1 beside the versions already there; shared pre-processing models stay one
shared folder (`shared_model`). Everything is staged inside the repository (same
filesystem: a volume or tmpfs repository works) and committed by renames; a failed export
leaves the repository, and the server reading it, as they were (exporters/staging.py).
The version scheme, the card and switching versions are exporters/versions.py.
"""
from __future__ import annotations

import filecmp
import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping, Sequence

from tritonclient.grpc.model_config_pb2 import ModelConfig

from mmserve.exporters.onnx_export import ExportError
from mmserve.exporters.staging import RepositoryError, Staging, ensure_writable, staging
from mmserve.exporters.triton_config import (
    ENSEMBLE,
    LABELS_FILE,
    EncoderTuning,
    copy_config,
    encoder_config,
    print_config,
    read_config,
)
from mmserve.repository_layout import Layout, ProductParameters
from mmserve.exporters.versions import (
    CARD_FILE,
    CONFIG_FILE,
    DEFAULT_KEEP,
    MODEL_ROOT,
    Release,
    active_version,
    build_card,
    next_version,
    pin_steps,
    plan_activation,
    policy_versions,
    private_steps,
    product_versions,
    read_card,
    set_policy,
    version_folders,
)

# The version folder the model builders fill; a product-private model's files are
# renumbered to the export's version when written.
VERSION = "1"


def python_model_py(module: str, model_class: str, what: str) -> str:
    """A Python step's model.py: one import of its class from mmserve.serving.

    Every line of code that runs inside tritonserver lives in mmserve/serving/ (tested and
    versioned with the package); the repository holds only this pointer, so two exports of
    the same step write byte-identical files and can share one model folder.
    """
    return (
        f'"""{what} (mmserve.serving.{module})."""\n'
        f"from mmserve.serving.{module} import {model_class} as TritonPythonModel  # noqa: F401\n"
    )


# An encoder's model.py: the shared runner is the whole model.
ENCODER_MODEL_PY = python_model_py("encoder_model", "OnnxEncoderModel", "An encoder of the cpu profile: the shared ONNX runner")

# Each Python step the exporters write -> its model.py (module, class, what it is).
PYTHON_MODELS: dict[str, str] = {
    step: python_model_py(module, model_class, what)
    for step, (module, model_class, what) in {
        "text_tokenize": ("text", "TextTokenizeModel", "Tokenise UTF-8 text for a BERT-family encoder"),
        "text_classify_postprocess": ("text", "ClassifyPostprocessModel", "Class probabilities -> PROBS and LABEL"),
        "text_ner_postprocess": ("text", "NerPostprocessModel", "Per-token BIO scores -> entity spans"),
        "image_preprocess": ("image", "ImagePreprocessModel", "Decode and pre-process images as open_clip"),
        "clip_tokenize": ("clip_text", "ClipTokenizeModel", "Tokenise UTF-8 text as open_clip"),
        "zero_shot_classify": ("clip_text", "ZeroShotClassifyModel", "Image embedding + label names -> PROBS"),
        "audio_preprocess": ("audio", "AudioPreprocessModel", "Validate, resample and featurise PCM audio"),
    }.items()
}


@dataclass
class ModelFolder:
    """One model of the repository: its config and the files of its folder.

    `shared`: a pre-processing model other products call too (one unversioned folder);
    every other model belongs to the product version being written. `pipeline`: a model
    that serves a whole pipeline on its own (the fused layout, exporters/fused.py).
    """

    name: str
    config: ModelConfig
    files: dict[str, Path | bytes | str] = field(default_factory=dict)  # path in the folder -> content
    shared: bool = False
    pipeline: bool = False

    def add_python_model(self, step: str) -> "ModelFolder":
        """Make this model run the Python step `step` (a PYTHON_MODELS key): its one-line model.py."""
        self.files[f"{VERSION}/model.py"] = PYTHON_MODELS[step]
        return self

    @property
    def is_ensemble(self) -> bool:
        return self.config.platform == ENSEMBLE

    @property
    def is_pipeline(self) -> bool:
        """A pipeline of the contract (a product's ensemble or fused model), not a step."""
        return self.is_ensemble or self.pipeline

    def write(self, folder: Path) -> None:
        """The whole model folder, as a shared model is kept (config at the root, version 1)."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / VERSION).mkdir(exist_ok=True)
        (folder / CONFIG_FILE).write_text(print_config(self.config))
        for relative, content in self.files.items():
            _put(content, folder / relative)

    def write_version(self, folder: Path, config: ModelConfig) -> None:
        """One version's folder: the version files renumbered into it, the model-root files
        (labels.txt) and `config` under model_root/, to be copied up when it is served."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MODEL_ROOT).mkdir()
        (folder / MODEL_ROOT / CONFIG_FILE).write_text(print_config(config))
        for relative, content in self.files.items():
            parts = PurePosixPath(relative).parts
            if len(parts) > 1 and parts[0] == VERSION:
                _put(content, folder.joinpath(*parts[1:]))
            else:
                _put(content, folder / MODEL_ROOT / relative)


def _put(content: Path | bytes | str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, Path):
        _copy_once(content, target)
    elif isinstance(content, bytes):
        target.write_bytes(content)
    else:
        target.write_text(content, encoding="utf-8")


# A source file (its path, size and mtime) -> the first copy written of it. Pipelines that
# carry the same encoder (the CLIP trio's towers, each fused pipeline's steps) hold one
# file on disk: every later copy is a hard link to the first (repository files are never
# changed in place: exports stage and rename). Where a link cannot be made (another
# filesystem, a link limit) the file is copied.
_WRITTEN: dict[tuple[str, int, int], Path] = {}


def _copy_once(source: Path, target: Path) -> None:
    info = source.stat()
    key = (str(source.resolve()), info.st_size, info.st_mtime_ns)
    first = _WRITTEN.get(key)
    if first is not None and first.is_file() and first.stat().st_size == info.st_size:
        try:
            os.link(first, target)
            return
        except OSError:
            pass
    shutil.copy2(source, target)
    _WRITTEN[key] = target


@dataclass(frozen=True)
class WrittenVersion:
    """What write_models changed: the version written (None: shared models only)."""

    version: int | None
    models: tuple[str, ...]
    ensembles: tuple[str, ...]
    removed_versions: tuple[int, ...] = ()


def write_models(
    repository: Path, models: list[ModelFolder], release: Release | None = None, keep: int = DEFAULT_KEEP
) -> WrittenVersion:
    """Write the export's models as a new version V of its product(s) and make V the
    served version on disk; keep the newest `keep` versions (and the served ones).

    A running server keeps serving what it loaded until it loads the ensembles again
    (`versions.reload_order`); see exporters/versions.py for why that is failure-free.
    """
    if keep < 1:
        raise ExportError(f"--keep must be at least 1 (the version being written), got {keep}")
    repository = ensure_writable(repository)
    with staging(repository) as stage:
        versioned = [m for m in models if not m.shared]
        version = next_version(repository, [m.name for m in versioned])
        ensembles = [m.name for m in versioned if m.is_pipeline]
        private = [m.name for m in versioned if not m.is_pipeline]
        snapshots: dict[str, Path] = {}
        for model in versioned:
            config = copy_config(model.config)
            if model.is_ensemble:
                pin_steps(config, set(private), version)
            if model.is_pipeline and release is not None and model.name in release.kinds:
                ProductParameters(release.kinds[model.name], Layout(release.layout)).write(config)
            set_policy(config, [version])
            folder = stage.stage(model.name, str(version))
            model.write_version(folder, config)
            if model.is_pipeline:
                card = build_card(release, model.name, version, ensembles, _card_steps(config, set(private), version))
                (folder / CARD_FILE).write_text(_card_json(card), encoding="utf-8")
            snapshots[model.name] = folder / MODEL_ROOT
            stage.replace(folder, repository / model.name / str(version))
        for model in models:
            if model.shared and not _unchanged(repository / model.name, model):
                folder = stage.stage(model.name)
                model.write(folder)
                stage.replace(folder, repository / model.name)
        plan_activation(repository, stage, ensembles, private, version, snapshots.__getitem__)
        stage.commit()
        removed = _remove_old_versions(repository, stage, ensembles, keep)
    return WrittenVersion(version if versioned else None, tuple(m.name for m in models), tuple(ensembles), removed)


def _card_json(card: Mapping[str, Any]) -> str:
    return json.dumps(card, indent=2, ensure_ascii=False, default=str) + "\n"


def _card_steps(ensemble: ModelConfig, private: set[str], version: int) -> list[dict[str, Any]]:
    """The ensemble's steps in call order: private ones at `version`, shared ones unversioned."""
    steps: list[dict[str, Any]] = []
    for step in ensemble.ensemble_scheduling.step:
        if all(s["model"] != step.model_name for s in steps):
            shared = step.model_name not in private
            steps.append({"model": step.model_name, "version": None if shared else version, "shared": shared})
    return steps


def _unchanged(folder: Path, model: ModelFolder) -> bool:
    """A shared model already written exactly so: left alone, so a server need not reload it."""
    existing = read_config(folder / CONFIG_FILE)
    return existing is not None and existing == model.config and same_files(folder, model.files)


def _remove_old_versions(repository: Path, stage: Staging, ensembles: list[str], keep: int) -> tuple[int, ...]:
    """Retire all but the newest `keep` versions of the product(s) just written, never one a
    config serves (the active version, the previous one loaded beside it).

    Runs after the export is committed: a failure here is a warning, not a failed export.
    """
    if not ensembles:
        return ()
    numbers = sorted({v for name in ensembles for v in product_versions(repository, name)})
    active = active_version(repository, ensembles[0])
    served = {active}
    for step in private_steps(read_card(repository, ensembles[0], active)) if active is not None else ():
        config = read_config(repository / step / CONFIG_FILE)
        served.update(policy_versions(config) if config is not None else ())
    old = [v for v in numbers[:-keep] if v not in served]
    retired: dict[str, set[int]] = {}
    for number in old:
        for name in ensembles:
            for model in [name, *private_steps(read_card(repository, name, number))]:
                folder = repository / model / str(number)
                if folder.is_dir() and number not in retired.setdefault(model, set()):
                    retired[model].add(number)
                    stage.remove(folder)
    for model, numbers_gone in retired.items():
        if model in ensembles:
            continue
        left = [v for v in version_folders(repository / model) if v not in numbers_gone]
        config = read_config(repository / model / CONFIG_FILE)
        listed = policy_versions(config) if config is not None else []
        if not left:
            stage.remove(repository / model)  # a step no kept version calls any more
        elif config is not None and set(listed) & numbers_gone:
            set_policy(config, [v for v in listed if v not in numbers_gone] or left[-1:])
            stage.write_file(repository / model / CONFIG_FILE, print_config(config).encode("utf-8"))
    try:
        stage.commit()
    except RepositoryError as error:
        warnings.warn(f"the export is written, but removing old versions failed: {error}", RuntimeWarning, stacklevel=3)
        return ()
    return tuple(old)


def same_files(folder: Path, files: Mapping[str, Path | bytes | str]) -> bool:
    """Whether an existing model folder already holds exactly these contents (to share it)."""
    for relative, content in files.items():
        existing = folder / relative
        if not existing.exists():
            return False
        if isinstance(content, Path):
            if not filecmp.cmp(existing, content, shallow=False):
                return False
        elif isinstance(content, bytes):
            if existing.read_bytes() != content:
                return False
        elif existing.read_text(encoding="utf-8") != content:
            return False
    return True


def shared_model(
    repository: Path,
    shared: str,
    own: str,
    config_for: Callable[[str], ModelConfig],
    files: Mapping[str, Path | bytes | str],
) -> ModelFolder:
    """A pre-processing model (the Python step named `shared`, e.g. text_tokenize): the
    shared one when it is absent or computes the same, else this product's own `own`.

    Products that tokenise/decode the same way share one model; its files are `files`.
    """
    name = shared
    if (repository / shared / CONFIG_FILE).is_file():  # else absent
        existing = read_config(repository / shared / CONFIG_FILE)  # None: not a config this tool wrote
        if existing is None or not _shareable(repository / shared, existing, config_for(shared), files):
            name = own
    return ModelFolder(name, config_for(name), dict(files), shared=name == shared).add_python_model(shared)


# How a model is scheduled, not what it computes: a newer export may retune these in place.
_SCHEDULING_FIELDS = ("instance_group", "dynamic_batching")


def _shareable(folder: Path, existing: ModelConfig, config: ModelConfig, files: Mapping[str, Path | bytes | str]) -> bool:
    """The existing shared model computes what `config` and `files` describe (its scheduling
    may differ: it is rewritten with this export's instances and batching delay)."""
    existing, config = copy_config(existing), copy_config(config)
    for message in (existing, config):
        for name in _SCHEDULING_FIELDS:
            message.ClearField(name)
    return existing == config and same_files(folder, files)


def labels_txt(labels: Sequence[str]) -> str:
    """labels.txt in Triton's label_filename format: one name per line, in output order."""
    return "".join(f"{label}\n" for label in labels)


def encoder_model(
    name: str,
    onnx_path: Path,
    profile: str,
    tuning: EncoderTuning,
    labels: Sequence[str] = (),
    labelled_output: str | None = None,
) -> ModelFolder:
    """An encoder's folder: the ONNX graph (and, on the cpu profile, the shared runner as its
    model.py), labels.txt when the encoder's outputs index classes (`labelled_output` names
    the output Triton labels from it). With --tensorrt the export driver built an engine beside
    the graph: the folder holds that engine instead, as a tensorrt_plan model."""
    from mmserve.exporters.engines import engine_sources
    from mmserve.exporters.tensorrt import built_plan, engine_data_types

    plan = built_plan(onnx_path) if profile == "gpu" else None
    files: dict[str, Path | bytes | str] = {f"{VERSION}/{(plan or onnx_path).name}": plan or onnx_path}
    if plan:  # the engine's sources, so the serving machine can rebuild it (mmserve.exporters.engines)
        files.update({f"{VERSION}/{p.name}": p for p in engine_sources(onnx_path)})
    if profile == "cpu":
        files[f"{VERSION}/model.py"] = ENCODER_MODEL_PY
    if labels:
        files[LABELS_FILE] = labels_txt(labels)
    engine_types = engine_data_types(plan) if plan else None
    return ModelFolder(name, encoder_config(name, onnx_path, profile, labelled_output, tuning, engine_types), files)
