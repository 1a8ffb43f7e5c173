"""The layers of mmserve/ hold (import-linter's contracts in pyproject.toml, [tool.importlinter]),
and the client installs and imports without the server side.

import-linter reads a package from one folder, but mmserve's subpackages client/, exporters/
and training/ live beside mmserve/ (pyproject's package-dir). The test lays out the package as
it is installed -- a folder of links, mmserve/client -> client/ and so on -- and runs
`lint-imports` over it. Layers, the grouping and why: docs/architecture.md, "Layers".
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUBPACKAGES_BESIDE = ("client", "exporters", "training")  # pyproject: package-dir
CONTRACTS = (
    "Layers: cli > tools > operations > exporters > training > client > bottom",
    "The client needs no torch, onnxruntime, tokenizers or training stack",
    "Nothing imports the CLI",
    "No import circles among sibling modules or packages",
)
SERVER_SIDE = ("torch", "torchvision", "transformers", "onnxruntime", "tokenizers", "onnx")


@pytest.fixture(scope="module")
def installed_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose mmserve/ is the package as installed (links to the working tree)."""
    top = tmp_path_factory.mktemp("layers")
    package = top / "mmserve"
    package.mkdir()
    for entry in (ROOT / "mmserve").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name in SUBPACKAGES_BESIDE:
        (package / name).symlink_to(ROOT / name)
    return top


def test_the_import_contracts_hold(installed_layout: Path) -> None:
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint_imports is None:
        pytest.fail("lint-imports is missing: install the dev extra (pip install -e '.[dev]' brings import-linter)")
    result = subprocess.run(
        [lint_imports, "--no-cache", str(ROOT / "pyproject.toml")],
        cwd=installed_layout, env={**os.environ, "PYTHONPATH": str(installed_layout)},
        capture_output=True, text=True, timeout=300,
    )
    report = " ".join(result.stdout.split())  # import-linter wraps long contract names
    assert result.returncode == 0, f"an import contract is broken (pyproject.toml [tool.importlinter]):\n{result.stdout}{result.stderr}"
    for contract in CONTRACTS:
        assert contract in report, f"contract {contract!r} was not checked:\n{result.stdout}"
    assert "0 broken" in report


def test_every_module_of_mmserve_is_in_a_layer() -> None:
    """A module in no layer is checked by no layers contract: each new one is placed."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    (layers,) = [c for c in config["contracts"] if c["type"] == "layers"]
    placed = {name.strip() for layer in layers["layers"] for name in layer.replace("|", ":").split(":")}
    modules = {p.stem for p in (ROOT / "mmserve").glob("*.py") if p.stem != "__init__"}
    modules |= {p.name for p in (ROOT / "mmserve").iterdir() if (p / "__init__.py").is_file()}
    modules |= set(SUBPACKAGES_BESIDE)
    assert sorted(modules - placed) == [], "place these in a layer of pyproject.toml's [tool.importlinter] contract"


def test_the_client_imports_with_no_server_side_package_installed() -> None:
    """In a fresh interpreter where torch, onnxruntime, tokenizers... cannot be imported (as after
    `pip install mmserve`, which no longer pulls them), the client imports and builds requests."""
    blocked = ", ".join(repr(name) for name in SERVER_SIDE)
    script = f"""
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ({blocked},):
            raise ImportError(f"{{name}} is not installed (blocked by the test)")
        return None

sys.meta_path.insert(0, Block())
from mmserve.client import AsyncClient, Client, codec
from mmserve.pipelines import Kind
plan = codec.plan(Kind.TEXT_CLASSIFY, ["hello", "world"])
assert len(plan.requests) == 1 and plan.requests[0].batch_size == 2
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ({blocked},))
assert not loaded, loaded
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


def test_every_package_of_the_tree_is_installed() -> None:
    """A package missing from pyproject's list works from a checkout (editable install) and is
    absent from a wheel or an image (`pip install .`): its imports fail there only."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    found = {"mmserve." + init.parent.relative_to(ROOT / "mmserve").as_posix().replace("/", ".")
             for init in (ROOT / "mmserve").rglob("__init__.py") if init.parent != ROOT / "mmserve"}
    found |= {"mmserve"} | {f"mmserve.{name}" for name in SUBPACKAGES_BESIDE}
    assert sorted(found - listed) == [], "add these to [tool.setuptools] packages in pyproject.toml"


def test_the_base_install_is_the_client() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    base = " ".join(project["dependencies"])
    assert not [name for name in SERVER_SIDE if name in base], base
    serving = " ".join(project["optional-dependencies"]["serving"])
    assert "onnxruntime" in serving and "tokenizers" in serving
    assert "mmserve[serving]" in project["optional-dependencies"]["server"]  # `make setup` installs it
