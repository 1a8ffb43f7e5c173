"""Which models of a repository are products and which are their internal steps.

A product is a pipeline of the public contract (``mmserve.pipelines.PIPELINES``): an
ensemble, or a fused model that serves a contract pipeline on its own, whose inputs
and outputs are those of one pipeline kind. Everything an ensemble calls
(``text_tokenize``, ``*_encoder``, ``*_postprocess``, ...) is a step, never a product.

Pure functions over Triton's ``ModelConfig`` message, so the client (configs read over
gRPC) and the lifecycle core (``config.pbtxt`` read from disk) classify alike.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2

from mmserve.pipelines import PIPELINES, Kind, TensorSpec
from mmserve.repository_layout import ENSEMBLE_PLATFORM, recorded_kind

from .results import ModelInfo

__all__ = [
    "ProductInfo", "find_products", "kind_of", "model_state", "products_from", "served_version", "steps_of", "tensor_specs",
]


@dataclass(frozen=True, slots=True)
class ProductInfo:
    """One product as the server sees it: its kind, its steps in call order, its state."""

    name: str
    kind: Kind
    steps: tuple[str, ...]
    state: str  # READY / UNAVAILABLE / UNLOADED / LOADING, as the repository index says
    reason: str
    versions: tuple[str, ...]  # versions the server has loaded or tried to load
    served_version: int | None = None  # the version it answers with (READY); None: not served
    inputs: tuple[TensorSpec, ...] = ()  # as the server's config states them
    outputs: tuple[TensorSpec, ...] = ()


def steps_of(config: model_config_pb2.ModelConfig) -> tuple[str, ...]:
    """The models an ensemble calls, in its order, each once; () for any other model."""
    names: list[str] = []
    for step in config.ensemble_scheduling.step:
        if step.model_name not in names:
            names.append(step.model_name)
    return tuple(names)


def tensor_specs(tensors) -> tuple[TensorSpec, ...]:  # noqa: ANN001 - repeated ModelInput/ModelOutput
    """A config's inputs or outputs as the contract spells them (TYPE_STRING -> BYTES)."""
    specs = []
    for tensor in tensors:
        dtype = model_config_pb2.DataType.Name(tensor.data_type).removeprefix("TYPE_")
        specs.append(TensorSpec(tensor.name, "BYTES" if dtype == "STRING" else dtype, tuple(tensor.dims)))
    return tuple(specs)


def _signature(specs) -> frozenset[tuple[str, str]]:  # noqa: ANN001 - TensorSpecs
    return frozenset((spec.name, spec.triton_dtype) for spec in specs)


def kind_of(name: str, config: model_config_pb2.ModelConfig, hint: str | None = None) -> Kind | None:
    """The contract kind a model serves, or None when it serves no pipeline.

    A product exported by mmserve records its kind in its config (``mmserve_kind``,
    mmserve/repository_layout.py): that is its kind, whatever its tensors are called.
    Only a config recording none (a repository exported before kinds were recorded) has
    its kind guessed from its tensors, as follows. Kinds with the same tensors (``text_embed`` and ``clip_text_embed``: TEXT ->
    EMBEDDING) are told apart by ``hint`` (the product card's kind), then by the name
    (``clip_text_embed``, ``catalog_clip_text_embed``), then the contract's order.
    """
    recorded = recorded_kind(config)
    if recorded is not None:
        return recorded
    inputs, outputs = _signature(tensor_specs(config.input)), _signature(tensor_specs(config.output))
    matching = [
        kind
        for kind, spec in PIPELINES.items()
        if _signature(spec.inputs) == inputs and _signature(spec.outputs) == outputs
    ]
    if not matching:
        return None
    if hint in {kind.value for kind in matching}:
        return Kind(hint)
    named = [kind for kind in matching if name == kind.value or name.endswith(f"_{kind.value}")]
    # The longest suffix wins: "x_clip_text_embed" ends with "_text_embed" too.
    return max(named, key=lambda kind: len(kind.value)) if named else matching[0]


def find_products(
    configs: Mapping[str, model_config_pb2.ModelConfig], hint: Callable[[str], str | None] | None = None
) -> dict[str, Kind]:
    """Every product of a repository (name -> kind), in name order.

    Ensembles serving a contract pipeline are products; so is a single model serving one
    when no ensemble calls it (a fused pipeline). A step is never a product, even one
    whose tensors happen to match a pipeline's. ``hint(name)`` may name a candidate's
    kind (its product card's), asked only for candidates.
    """
    called = {step for config in configs.values() for step in steps_of(config)}
    products: dict[str, Kind] = {}
    for name in sorted(configs):
        config = configs[name]
        if name in called and config.platform != ENSEMBLE_PLATFORM:
            continue
        kind = kind_of(name, config, hint(name) if hint is not None else None)
        if kind is not None:
            products[name] = kind
    return products


def model_state(rows: Sequence[ModelInfo], version: int | str | None = None) -> tuple[str, str]:
    """One model's state and reason from its rows of the repository index.

    Triton keeps a row per version it loaded or tried; a model is READY when the wanted
    version (or, with none named, any version) is. It says UNAVAILABLE/"unloaded" after
    an unload and leaves the state empty for a model never loaded: both are UNLOADED.
    """
    if version is not None and any(row.version == str(version) for row in rows):
        rows = [row for row in rows if row.version == str(version)]
    for wanted in ("READY", "LOADING"):
        for row in rows:
            if row.state == wanted:
                return row.state, row.reason
    if not rows:
        return "UNLOADED", "not in the server's repository index: is it serving another repository?"
    row = rows[0]
    if not row.state or row.reason.strip() == "unloaded":
        return "UNLOADED", ""
    return row.state, row.reason


def served_version(rows: Sequence[ModelInfo]) -> int | None:
    """The version a model answers with: its READY row's (the newest while a switch has
    two ready for a moment); None when no version is READY."""
    ready = [int(row.version) for row in rows if row.state == "READY" and row.version.isdigit()]
    return max(ready) if ready else None


def products_from(
    index: Sequence[ModelInfo], configs: Mapping[str, model_config_pb2.ModelConfig]
) -> list[ProductInfo]:
    """The products among the models whose configs the server gave, with their index state."""
    rows: dict[str, list[ModelInfo]] = {}
    for info in index:
        rows.setdefault(info.name, []).append(info)
    products = []
    for name, kind in find_products(configs).items():
        state, reason = model_state(rows.get(name, []))
        versions = tuple(sorted({row.version for row in rows.get(name, []) if row.version}))
        products.append(ProductInfo(
            name, kind, steps_of(configs[name]), state, reason, versions, served_version(rows.get(name, [])),
            tensor_specs(configs[name].input), tensor_specs(configs[name].output),
        ))
    return products
