"""Every tensor name has one home, mmserve/pipelines.py: no other module spells one out.

The exporters (ONNX graphs, configs, ensemble wiring), the Python models that run inside
tritonserver (mmserve/serving), the bench and the client must agree on every tensor name,
public or internal; a name typed twice can drift apart. This walks their sources with
`ast` and fails on any string constant equal to a name pipelines.py defines. Docstrings
and comments may mention names (they are prose); f-strings are checked in their literal
parts only, so `f"{TEXT.name}[{i}]"` is fine.
"""
from __future__ import annotations

import ast
from pathlib import Path

from mmserve import pipelines

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ("exporters", "mmserve", "client")
HOME = ROOT / "mmserve" / "pipelines.py"

# (file relative to the root, name) -> why that literal is not a tensor name there.
ALLOWED: dict[tuple[str, str], str] = {
    # A keyword the naive peer (a plain HF model call, the bench's "what people do without
    # mmserve" baseline) passes to transformers' tokenizer output: HF's name, not ours.
    ("mmserve/bench/peer_naive.py", "attention_mask"): "HF tokenizer output key in a peer baseline",
}


def tensor_names() -> set[str]:
    return {spec.name for spec in pipelines.PUBLIC_TENSORS} | set(pipelines.INTERNAL_TENSORS)


def docstring_nodes(tree: ast.AST) -> set[int]:
    """ids of the Constant nodes that are docstrings (module, class, function)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def literal_tensor_names(path: Path, names: set[str]) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    docstrings = docstring_nodes(tree)
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value in names
        and id(node) not in docstrings
    ]


def sources() -> list[Path]:
    files = [f for folder in CHECKED for f in sorted((ROOT / folder).rglob("*.py"))]
    return [f for f in files if f != HOME and "__pycache__" not in f.parts]


def test_the_contract_module_defines_the_internal_names_once():
    names = [*(spec.name for spec in pipelines.PUBLIC_TENSORS), *pipelines.INTERNAL_TENSORS]
    assert len(names) == len(set(names)), "a tensor name is defined twice in mmserve/pipelines.py"
    assert {"TEXT", "input_ids", "token_probs", "pixel_values", "image_embeds", "input_features"} <= set(names)


def test_no_module_spells_out_a_tensor_name():
    names = tensor_names()
    found = []
    for path in sources():
        relative = path.relative_to(ROOT).as_posix()
        for line, name in literal_tensor_names(path, names):
            if (relative, name) not in ALLOWED:
                found.append(f"{relative}:{line}: {name!r}")
    assert not found, (
        "tensor names belong in mmserve/pipelines.py; import them from there instead of:\n  " + "\n  ".join(found)
    )


def test_the_walk_sees_a_literal(tmp_path: Path):
    """The check itself can fail: a quoted name in code is found, one in a docstring is not."""
    sample = tmp_path / "sample.py"
    sample.write_text('"""Mentions "input_ids" in prose."""\nFEED = {"input_ids": 1}\n', encoding="utf-8")
    assert literal_tensor_names(sample, tensor_names()) == [(2, "input_ids")]


def test_allow_list_entries_are_still_needed():
    names = tensor_names()
    for (relative, name), reason in ALLOWED.items():
        assert (ROOT / relative).exists(), f"{relative} ({reason}) is gone: drop its allow-list entry"
        assert name in {n for _, n in literal_tensor_names(ROOT / relative, names)}, (
            f"{relative} no longer spells {name!r} ({reason}): drop its allow-list entry"
        )
