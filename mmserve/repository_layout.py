"""How a model repository is laid out: its file and folder names, the layouts a product is
served in, and the settings mmserve writes into a product's config -- one home for each.

Everyone that reads or writes a repository agrees on these: the exporters write them, the
Python models inside tritonserver (mmserve/serving) and the bench read them, the client
reads a product's kind from its config. ``tests/test_repository_names.py`` fails on any of
these names spelled out elsewhere.

A product's config carries two parameters besides Triton's own (parameters are not
tensors: the public contract is unchanged)::

    parameters { key: "mmserve_kind"   value { string_value: "text_classify" } }
    parameters { key: "mmserve_layout" value { string_value: "fused" } }

so a reader never guesses a product's kind back from its tensors (renaming a tensor
would hide it) or its layout from its platform. Repositories exported before these were
written carry neither: readers fall back to the old guesses (``client/products.kind_of``,
:func:`served_layout`'s platform test) for them only.

Stdlib and the contract only: configs are handled as Triton's ``ModelConfig`` messages
(or their JSON form, inside tritonserver) without importing protobuf here, so the client,
the serving models and the exporters all import this module.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from mmserve.pipelines import Kind

# --- file and folder names -----------------------------------------------------------------

CONFIG_FILE = "config.pbtxt"  # a model's Triton config, at its folder's root
LABELS_FILE = "labels.txt"  # class names, one a line: Triton's `label_filename` of a classifier output
CARD_FILE = "card.json"  # a product version's card (exporters/versions.py): kind, layout, figures
MODEL_ROOT = "model_root"  # <product>/<V>/model_root/: the root files (config, labels) of version V
ONNX_FILE = "model.onnx"  # an ONNX step's graph (the onnxruntime backend's default file name)
MODEL_PY = "model.py"  # a Python model's code (the Python backend's file name)
TENSORRT_PLAN_FILE = "model.plan"  # a TensorRT engine (Triton's default file of a tensorrt_plan model)
PIPELINE_FILE = "pipeline.json"  # a fused pipeline's steps in call order (mmserve/serving/fused.py)
STEPS_FOLDER = "steps"  # a fused version's mini repository of its steps: steps/<model>/
STEP_VERSION = "1"  # each step's one version folder inside steps/<model>/

ENSEMBLE_PLATFORM = "ensemble"  # Triton's `platform` of an ensemble model (not a Layout)


class Layout(str, Enum):
    """How a product is served; its card and its config say which."""

    FUSED = "fused"  # one Python model runs every step (the cpu default: docs/architecture.md, Layouts)
    ENSEMBLE = "ensemble"  # a Triton ensemble calls one model per step
    HEAD = "head"  # one Python model: a classifier head over another product's embeddings


# --- what mmserve writes into a product's config -------------------------------------------

KIND_PARAMETER = "mmserve_kind"
LAYOUT_PARAMETER = "mmserve_layout"


@dataclass(frozen=True)
class ProductParameters:
    """The product's kind and layout, as its config's parameters record them."""

    kind: Kind
    layout: Layout

    def write(self, config: Any) -> None:
        """Set them on a ``ModelConfig`` message (the exporter does, for each product it writes)."""
        config.parameters[KIND_PARAMETER].string_value = self.kind.value
        config.parameters[LAYOUT_PARAMETER].string_value = self.layout.value

    @classmethod
    def read(cls, config: Any) -> ProductParameters | None:
        """From a ``ModelConfig`` message; None when it records none (exported before they
        were written) or names a kind or layout this version does not know."""
        values = {key: config.parameters[key].string_value for key in (KIND_PARAMETER, LAYOUT_PARAMETER)
                  if key in config.parameters}
        return cls.from_values(values)

    @classmethod
    def from_values(cls, values: Mapping[str, str]) -> ProductParameters | None:
        """From a config's parameters as plain strings (``serving.runtime.model_parameters``)."""
        try:
            return cls(Kind(values[KIND_PARAMETER]), Layout(values[LAYOUT_PARAMETER]))
        except (KeyError, ValueError):
            return None


def recorded_kind(config: Any) -> Kind | None:
    """The kind a config records (None: none recorded; a reader may then guess it)."""
    value = config.parameters[KIND_PARAMETER].string_value if KIND_PARAMETER in config.parameters else ""
    try:
        return Kind(value) if value else None
    except ValueError:
        return None


def served_layout(config: Any) -> Layout:
    """The layout a product's config (a ``ModelConfig`` message) is served in: what it
    records, else (exported before layouts were recorded) an ensemble platform's, else fused."""
    value = config.parameters[LAYOUT_PARAMETER].string_value if LAYOUT_PARAMETER in config.parameters else ""
    return _layout(value, config.platform)


def served_layout_of(config: Mapping[str, Any]) -> Layout:
    """:func:`served_layout` of a config in its JSON form (``get_model_config(as_json=True)``)."""
    return _layout(_json_parameter(config, LAYOUT_PARAMETER), config.get("platform", ""))


def recorded_kind_of(config: Mapping[str, Any]) -> Kind | None:
    """:func:`recorded_kind` of a config in its JSON form."""
    value = _json_parameter(config, KIND_PARAMETER)
    return Kind(value) if value in {kind.value for kind in Kind} else None


def _json_parameter(config: Mapping[str, Any], key: str) -> str:
    value = (config.get("parameters") or {}).get(key) or {}
    return str(value.get("string_value", "")) if isinstance(value, Mapping) else ""


def _layout(recorded: str, platform: str) -> Layout:
    if recorded in {layout.value for layout in Layout}:
        return Layout(recorded)
    return Layout.ENSEMBLE if platform == ENSEMBLE_PLATFORM else Layout.FUSED


# --- an ONNX step's settings in its config ---------------------------------------------------

ONNX_FILE_PARAMETER = "onnx_file"
THREADS_PARAMETER = "intra_op_threads"
SPINNING_PARAMETER = "allow_spinning"
PROVIDERS_PARAMETER = "providers"
PROVIDER_OPTIONS_PARAMETER = "provider_options"


@dataclass(frozen=True)
class OnnxStepParameters:
    """What an ONNX step's config tells the shared runner (mmserve/serving/encoder_model.py):
    its graph, onnxruntime's threads and spinning, its execution providers. The exporters
    write them, the runner, the bench and --tune read or rewrite them, all through this."""

    onnx_file: str = ONNX_FILE
    intra_op_threads: int | None = None  # None: the cores split by the instance count
    allow_spinning: bool | None = None  # None: not written (off)
    providers: tuple[str, ...] = ()  # () : the CPU
    provider_options: str = ""  # JSON: provider -> its options

    @classmethod
    def from_values(cls, values: Mapping[str, str]) -> OnnxStepParameters:
        """From a config's parameters as plain strings (``serving.runtime.model_parameters``)."""
        threads = values.get(THREADS_PARAMETER, "").strip()
        spinning = values.get(SPINNING_PARAMETER, "").strip()
        return cls(
            onnx_file=values.get(ONNX_FILE_PARAMETER) or ONNX_FILE,
            intra_op_threads=int(threads) if threads else None,
            allow_spinning=(spinning == "1") if spinning else None,
            providers=tuple(name.strip() for name in values.get(PROVIDERS_PARAMETER, "").split(",") if name.strip()),
            provider_options=values.get(PROVIDER_OPTIONS_PARAMETER, ""),
        )

    @classmethod
    def read(cls, config: Any) -> OnnxStepParameters:
        """From a ``ModelConfig`` message."""
        return cls.from_values({key: value.string_value for key, value in config.parameters.items()})

    def values(self) -> dict[str, str]:
        """The parameters as a config states them (only what differs from the defaults, but the graph)."""
        values = {ONNX_FILE_PARAMETER: self.onnx_file}
        if self.intra_op_threads is not None:
            values[THREADS_PARAMETER] = str(self.intra_op_threads)
        if self.allow_spinning is not None:
            values[SPINNING_PARAMETER] = "1" if self.allow_spinning else "0"
        if self.providers:
            values[PROVIDERS_PARAMETER] = ",".join(self.providers)
        if self.provider_options:
            values[PROVIDER_OPTIONS_PARAMETER] = self.provider_options
        return values

    def write(self, config: Any) -> None:
        """Set them on a ``ModelConfig`` message (other parameters are left as they are)."""
        for key, value in self.values().items():
            config.parameters[key].string_value = value
