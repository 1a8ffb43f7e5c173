"""Every repository file name, layout name and product setting has one home,
mmserve/repository_layout.py; the exporter records each product's kind and layout in its
config, and readers take them from there (not from its tensors or platform).

The AST check works as tests/test_tensor_names.py's: string constants equal to a name the
layout module defines fail anywhere else in exporters/, mmserve/ and client/ (docstrings
and comments may mention them).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from tritonclient.grpc.model_config_pb2 import DataType, ModelConfig

from mmserve import repository_layout as layout
from mmserve.client.products import find_products, kind_of
from mmserve.pipelines import EMBEDDING, TEXT, Kind
from test_tensor_names import docstring_nodes  # one reading of what a docstring is

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ("exporters", "mmserve", "client")
HOME = ROOT / "mmserve" / "repository_layout.py"

# Names that are also ordinary words or other things' names are not checked: "head" (a
# creation mode too), "steps" and "1" (JSON keys, versions), "model.py" (in f-strings).
NAMES = {
    layout.CONFIG_FILE, layout.LABELS_FILE, layout.CARD_FILE, layout.MODEL_ROOT, layout.ONNX_FILE,
    layout.TENSORRT_PLAN_FILE, layout.PIPELINE_FILE, layout.ENSEMBLE_PLATFORM, layout.Layout.FUSED.value,
    layout.KIND_PARAMETER, layout.LAYOUT_PARAMETER, layout.ONNX_FILE_PARAMETER, layout.THREADS_PARAMETER,
    layout.SPINNING_PARAMETER, layout.PROVIDERS_PARAMETER, layout.PROVIDER_OPTIONS_PARAMETER,
}

# (file relative to the root, name) -> why that literal is not a repository name there.
ALLOWED: dict[tuple[str, str], str] = {
    ("mmserve/bench/peers.py", "model.onnx"): "the file optimum's exporter writes for a peer baseline",
    ("mmserve/serving/shared_weights.py", "model.onnx"): "the prepared-weights cache's file, outside the repository",
    ("exporters/fused.py", "fused"): "the Python module mmserve.serving.fused that a fused model.py imports",
}


def literal_names(source: str) -> list[tuple[int, str]]:
    tree = ast.parse(source)
    docstrings = docstring_nodes(tree)
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in NAMES
        and id(node) not in docstrings
    ]


def test_no_module_spells_out_a_repository_name() -> None:
    found = []
    for folder in CHECKED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == HOME or "__pycache__" in path.parts:
                continue
            relative = path.relative_to(ROOT).as_posix()
            for line, name in literal_names(path.read_text(encoding="utf-8")):
                if (relative, name) not in ALLOWED:
                    found.append(f"{relative}:{line}: {name!r}")
    assert not found, (
        "repository file, layout and setting names belong in mmserve/repository_layout.py; import them instead of:\n  "
        + "\n  ".join(found)
    )


def test_the_check_sees_a_spelled_name_and_not_a_docstring() -> None:
    source = '"""Reads config.pbtxt."""\nPATH = "config.pbtxt"\nLAYOUT = "ensemble"\n'
    assert literal_names(source) == [(2, "config.pbtxt"), (3, "ensemble")]


def test_onnx_step_parameters_read_what_they_write() -> None:
    step = layout.OnnxStepParameters("model.int8.onnx", 2, True, ("TensorrtExecutionProvider", "CUDAExecutionProvider"), "{}")
    config = ModelConfig(name="encoder")
    config.parameters["max_length"].string_value = "128"  # another step setting: left alone
    step.write(config)
    assert layout.OnnxStepParameters.read(config) == step and config.parameters["max_length"].string_value == "128"
    assert layout.OnnxStepParameters.read(ModelConfig()) == layout.OnnxStepParameters()  # the defaults: model.onnx, CPU
    assert layout.OnnxStepParameters().values() == {layout.ONNX_FILE_PARAMETER: layout.ONNX_FILE}


def test_layouts_are_not_triton_platforms() -> None:
    assert {item.value for item in layout.Layout} == {"fused", "ensemble", "head"}
    assert layout.ENSEMBLE_PLATFORM == "ensemble"  # Triton's spelling: a platform, compared with config.platform


# --- the kind and layout a product's config records ----------------------------------------


def _pipeline_config(name: str, tensor_names: tuple[str, str] = (TEXT.name, EMBEDDING.name)) -> ModelConfig:
    config = ModelConfig(name=name, backend="python", max_batch_size=8)
    config.input.add(name=tensor_names[0], data_type=DataType.Value(TEXT.config_dtype), dims=[1])
    config.output.add(name=tensor_names[1], data_type=DataType.Value(EMBEDDING.config_dtype), dims=[-1])
    return config


def test_parameters_round_trip_through_a_config() -> None:
    config = ModelConfig(name="catalog")
    assert layout.ProductParameters.read(config) is None and layout.recorded_kind(config) is None
    layout.ProductParameters(Kind.CLIP_TEXT_EMBED, layout.Layout.FUSED).write(config)
    assert layout.ProductParameters.read(config) == layout.ProductParameters(Kind.CLIP_TEXT_EMBED, layout.Layout.FUSED)
    assert layout.served_layout(config) is layout.Layout.FUSED
    config.parameters[layout.KIND_PARAMETER].string_value = "a_kind_of_a_later_version"
    assert layout.ProductParameters.read(config) is None  # unknown: readers fall back, nothing raises


def test_the_recorded_kind_wins_over_the_tensor_guess() -> None:
    # Same tensors as text_embed, a name that says nothing: the guess says text_embed,
    # the recorded kind says clip_text_embed.
    config = _pipeline_config("catalog_vectors")
    assert kind_of("catalog_vectors", config) is Kind.TEXT_EMBED
    layout.ProductParameters(Kind.CLIP_TEXT_EMBED, layout.Layout.FUSED).write(config)
    assert kind_of("catalog_vectors", config) is Kind.CLIP_TEXT_EMBED


def test_a_product_whose_tensors_were_renamed_is_still_a_product() -> None:
    renamed = _pipeline_config("vectors", ("TEXT_V2", "EMBEDDING_V2"))
    assert find_products({"vectors": renamed}) == {}  # exported before kinds were recorded: hidden
    layout.ProductParameters(Kind.TEXT_EMBED, layout.Layout.FUSED).write(renamed)
    assert find_products({"vectors": renamed}) == {"vectors": Kind.TEXT_EMBED}


def test_served_layout_of_configs_exported_before_layouts_were_recorded() -> None:
    assert layout.served_layout(ModelConfig(name="e", platform=layout.ENSEMBLE_PLATFORM)) is layout.Layout.ENSEMBLE
    assert layout.served_layout(ModelConfig(name="f", backend="python")) is layout.Layout.FUSED
    assert layout.served_layout_of({"platform": layout.ENSEMBLE_PLATFORM}) is layout.Layout.ENSEMBLE
    assert layout.served_layout_of(
        {"backend": "python", "parameters": {layout.LAYOUT_PARAMETER: {"string_value": "head"}}}
    ) is layout.Layout.HEAD


@pytest.mark.parametrize(("server_fixture", "repository_fixture"),
                         [("ensemble_server", "repository"), ("fused_server", "fused_repository")])
def test_exported_products_record_their_kind_and_layout_and_triton_serves_them(
    server_fixture: str, repository_fixture: str, request: pytest.FixtureRequest
) -> None:
    """The session's exported repositories (both layouts): every product's config records its
    kind and layout, Triton loads it so (parameters are no tensors: the contract is unchanged),
    and the client's product list reads the kind from there."""
    import json

    import tritonclient.grpc as grpcclient

    from mmserve.client import Client
    from mmserve.exporters.versions import active_version

    server = request.getfixturevalue(server_fixture)
    repository = request.getfixturevalue(repository_fixture)
    wanted = layout.Layout.ENSEMBLE if server_fixture == "ensemble_server" else layout.Layout.FUSED
    triton = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        with Client(server.grpc_url) as client:
            products = {p.name: p.kind for p in client.products()}
        assert products
        for name, kind in products.items():
            served = triton.get_model_config(name).config
            assert layout.ProductParameters.read(served) == layout.ProductParameters(kind, wanted), name
            assert {t.name for t in served.input} == {t.name for t in kind_spec(kind).inputs}
            card = json.loads(
                (repository / name / str(active_version(repository, name)) / layout.CARD_FILE).read_text()
            )
            assert (card["kind"], card["layout"]) == (kind.value, wanted.value)
    finally:
        triton.close()


def kind_spec(kind: Kind):  # noqa: ANN201 - PipelineSpec
    from mmserve.pipelines import spec

    return spec(kind)
