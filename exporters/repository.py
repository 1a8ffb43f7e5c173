"""Write models into a Triton repository atomically.

Everything is staged next to the repository first; only when every model is
complete are the folders swapped in by rename. A failed export leaves the
repository, and the server reading it, as they were.
"""
from __future__ import annotations

import filecmp
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from mmserve.exporters.triton_config import to_pbtxt

# The checked-in Python models (tokenizers, post-processing) this writer copies.
TEMPLATES = Path(__file__).resolve().parent.parent / "model_repository"
VERSION = "1"

# An encoder's model.py: the shared runner is the whole model.
ENCODER_MODEL_PY = (
    '"""An encoder of the cpu profile: the shared ONNX runner (mmserve.serving.encoder_model)."""\n'
    "from mmserve.serving.encoder_model import OnnxEncoderModel as TritonPythonModel  # noqa: F401\n"
)


@dataclass
class ModelFolder:
    """One model of the repository: its config and the files of its folder."""

    name: str
    config: Mapping[str, Any]
    files: dict[str, Path | bytes | str] = field(default_factory=dict)  # path in the folder -> content

    def add_template(self, template: str) -> "ModelFolder":
        """Copy a checked-in Python model's code (model.py) into version 1."""
        source = TEMPLATES / template / VERSION / "model.py"
        if not source.exists():
            raise FileNotFoundError(f"template {source} is missing; is this a complete mmserve checkout?")
        self.files[f"{VERSION}/model.py"] = source
        return self

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / VERSION).mkdir(exist_ok=True)
        (folder / "config.pbtxt").write_text(to_pbtxt(self.config))
        for relative, content in self.files.items():
            target = folder / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copy2(content, target)
            elif isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content, encoding="utf-8")


def write_models(repository: Path, models: list[ModelFolder]) -> list[Path]:
    """Stage every model, then swap each folder in; returns the written folders."""
    repository = repository.resolve()
    repository.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{repository.name}.staging-", dir=repository.parent))
    try:
        for model in models:
            model.write(staging / model.name)
        written = []
        for model in models:
            target = repository / model.name
            retired = staging / f"{model.name}.retired"
            if target.exists():
                target.rename(retired)
            (staging / model.name).rename(target)
            written.append(target)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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


def shared_or_own(
    repository: Path,
    shared: str,
    own: str,
    config_for: Callable[[str], Mapping[str, Any]],
    files: Mapping[str, Path | bytes | str],
) -> tuple[str, Mapping[str, Any]]:
    """The shared pre-processing model's name and config when it is absent or identical,
    else this product's own: products that tokenise/decode the same way share one model."""
    existing = repository / shared / "config.pbtxt"
    config = config_for(shared)
    if not existing.is_file():  # absent, or only the checked-in template (the default repository)
        return shared, config
    if _same_computation(existing.read_text(), config) and same_files(repository / shared, files):
        return shared, config  # rewritten with this export's scheduling (instances, batching delay)
    return own, config_for(own)


# How a model is scheduled, not what it computes: a newer export may retune these in place.
_SCHEDULING_FIELDS = ("instance_group", "dynamic_batching")


def _same_computation(existing_pbtxt: str, config: Mapping[str, Any]) -> bool:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    def parse(text: str) -> Any:
        message = text_format.Parse(text, model_config_pb2.ModelConfig())
        for name in _SCHEDULING_FIELDS:
            message.ClearField(name)
        return message

    try:
        return parse(existing_pbtxt) == parse(to_pbtxt(config))
    except text_format.ParseError:
        return False  # not a config this tool wrote: leave it alone
