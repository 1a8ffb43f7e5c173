"""No untrusted deserialisation in the project's own code.

Checkpoints, base models and resume state come from users' folders; unpickling such a
file runs whatever code it carries. Weights are read through safetensors, or through
`torch.load(weights_only=True)` (the resume state's optimizer and RNG). This scans the
Python source of every package (an AST walk, so comments and strings do not count) for
pickle and its relatives, `torch.load` without `weights_only=True`,
`np.load(allow_pickle=True)` and `yaml.load` without a safe loader.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("training", "exporters", "mmserve", "client")
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}
UNSAFE_YAML_CALLS = {"unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}


def _dotted(node: ast.AST) -> str:
    """`np.load` -> "np.load", `torch.serialization.load` -> "torch.serialization.load"."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_loads(source: str, filename: str = "<source>") -> list[str]:
    """Every unsafe deserialisation in `source`, as 'file:line: what'."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            short = name.rsplit(".", 1)[-1]
            if name in ("torch.load", "torch.serialization.load") and not _is_true(_keyword(node, "weights_only")):
                found.append(f"{where}: {name}(...) without weights_only=True")
            elif short == "load" and name.split(".")[0] in ("np", "numpy") and not _false_or_absent(node, "allow_pickle"):
                found.append(f"{where}: {name}(..., allow_pickle=True)")
            elif name.startswith("yaml.") and short in UNSAFE_YAML_CALLS:
                found.append(f"{where}: {name}(...)")
            elif name in ("yaml.load", "yaml.load_all"):
                loader = _keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
                if loader is None or _dotted(loader).rsplit(".", 1)[-1] not in SAFE_YAML_LOADERS:
                    found.append(f"{where}: {name}(...) without Loader=yaml.SafeLoader")
            elif short in ("read_pickle", "from_pickle"):
                found.append(f"{where}: {name}(...)")
    return found


def _false_or_absent(call: ast.Call, name: str) -> bool:
    value = _keyword(call, name)
    return value is None or (isinstance(value, ast.Constant) and value.value is False)


def project_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_the_project_code_deserialises_nothing_unsafely():
    files = project_files()
    assert len(files) > 40 and any(p.parts[-2] == "training" for p in files)  # the scan sees the code
    found = [hit for path in files for hit in unsafe_loads(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]
    assert found == [], "unsafe deserialisation (use safetensors or torch.load(weights_only=True)):\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("source", "what"),
    [
        ("import pickle\npickle.loads(b'')", "import pickle"),
        ("from joblib import load", "from joblib import"),
        ("import dill as d", "import dill"),
        ("import torch\ntorch.load('x.pt')", "without weights_only=True"),
        ("import torch\ntorch.load('x.pt', weights_only=False)", "without weights_only=True"),
        ("import numpy as np\nnp.load('x.npy', allow_pickle=True)", "allow_pickle=True"),
        ("import yaml\nyaml.load(open('c.yaml'))", "without Loader=yaml.SafeLoader"),
        ("import yaml\nyaml.load(text, Loader=yaml.Loader)", "without Loader=yaml.SafeLoader"),
        ("import yaml\nyaml.unsafe_load(text)", "yaml.unsafe_load"),
        ("import pandas as pd\npd.read_pickle('f')", "read_pickle"),
    ],
)
def test_the_scan_finds_each_unsafe_form(source, what):
    (hit,) = unsafe_loads(source)
    assert what in hit


@pytest.mark.parametrize(
    "source",
    [
        "import torch\ntorch.load(path, weights_only=True)",
        "import numpy as np\nnp.load('x.npy')\nnp.load('y.npy', allow_pickle=False)",
        "import yaml\nyaml.load(text, Loader=yaml.SafeLoader)\nyaml.safe_load(text)",
        "# import pickle would be bad\ntext = 'torch.load(x)'",
        "from safetensors.torch import load_file\nload_file('model.safetensors')",
    ],
)
def test_the_scan_accepts_safe_forms(source):
    assert unsafe_loads(source) == []
