"""Docs point at files that exist: every path README.md, docs/*.md and the docstrings name.

A moved or renamed module leaves its old path behind in prose, where nothing imports it
and nothing fails; a reader then looks for a file that is not there. This collects the
path-like references (`exporters/driver.py`, `docs/architecture.md`, `model_repository/...`:
a slash and a file extension) and checks each against the working tree. Paths that a run
writes (artifacts/, runs/, an export's model_repository/<model>/...) or that live outside
the repository (/tmp, a container's /models) are left out below, each with its reason;
so are metavariables in capitals (`OUT/gpu_check.json`: the folder given as --out).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CODE = ("exporters", "mmserve", "client", "training", "tools", "tests")

EXTENSIONS = "py|md|txt|json|jsonl|pbtxt|yaml|yml|toml|sh|cfg|ini|html|css|js|png|svg|csv|onnx|proto|service"
# a relative path with at least one folder and a file extension, not part of a URL or a longer path
PATH = re.compile(rf"(?<![\w/.:~$<{{-])((?:\.\./|\./)?[A-Za-z_][\w.-]*(?:/[\w.-]+)+\.(?:{EXTENSIONS}))(?![\w/])")

# Prefixes of paths that are written by a run, not checked in -> why.
GENERATED: dict[str, str] = {
    "artifacts/": "bench reports, plots and tool environments a run writes (git-ignored)",
    "runs/": "training runs' checkpoints (git-ignored)",
    "model_repository/": "an export's models (git-ignored; only model_repository/README.md is checked in)",
}
# Prefixes of paths outside this repository, or named by the user -> why.
ELSEWHERE: dict[str, str] = {
    "out/": "the folder a bench run is given with --out",
    "workdir/": "the demo's work folder (--workdir)",
}
# Files a walk-through tells the reader to create -> where.
TO_BE_WRITTEN: dict[str, str] = {
    "exporters/motion.py": "docs/adding-a-product-line.md's example line",
    "mmserve/serving/motion.py": "docs/adding-a-product-line.md's example line",
    "training/motion_checkpoint.py": "docs/adding-a-product-line.md's example line",
    "tests/lines_motion.py": "docs/adding-a-product-line.md's example line",
    "tests/test_motion_pipelines.py": "docs/adding-a-product-line.md's example line",
}
# Module paths of the installed package: mmserve.exporters / mmserve.training are the
# top-level exporters/ and training/ folders (pyproject's package-dir).
PACKAGE_DIRS = {"mmserve/exporters/": "exporters/", "mmserve/training/": "training/"}


def references_in(text: str) -> list[str]:
    found = []
    for match in PATH.finditer(text):
        start = match.start()
        line_start = text.rfind("\n", 0, start) + 1
        if "://" in text[line_start:start].split()[-1:][0] if text[line_start:start].split() else False:
            continue  # inside a URL
        found.append(match.group(1))
    return found


def docstrings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    texts = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            text = ast.get_docstring(node, clean=False)
            if text:
                texts.append(text)
    return texts


def exists(reference: str, source: Path) -> bool:
    if reference.startswith(("./", "../")):
        return (source.parent / reference).resolve().exists()
    for package, folder in PACKAGE_DIRS.items():
        if reference.startswith(package):
            reference = folder + reference[len(package):]
    return (ROOT / reference).exists() or (source.parent / reference).exists()


def ignored(reference: str) -> bool:
    if reference == "model_repository/README.md":
        return False
    first = reference.split("/")[0]
    if first.isupper():  # a metavariable: REPOSITORY/..., OUT/...
        return True
    return reference in TO_BE_WRITTEN or reference.startswith(tuple(GENERATED) + tuple(ELSEWHERE))


def missing_references() -> list[str]:
    sources: list[tuple[Path, list[str]]] = [(doc, [doc.read_text(encoding="utf-8")]) for doc in DOCS]
    for folder in CODE:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "__pycache__" not in path.parts:
                sources.append((path, docstrings(path)))
    missing = []
    for path, texts in sources:
        for text in texts:
            for reference in references_in(text):
                if not ignored(reference) and not exists(reference, path):
                    missing.append(f"{path.relative_to(ROOT)}: {reference}")
    return sorted(set(missing))


def test_every_referenced_file_exists():
    missing = missing_references()
    assert not missing, "docs and docstrings name files that are not in the repository:\n  " + "\n  ".join(missing)


def test_the_scan_finds_references():
    """The check can fail: it sees paths in prose, and tells real ones from missing ones."""
    text = "See exporters/driver.py and `docs/nowhere.md`, not https://example.com/a/b.py."
    assert references_in(text) == ["exporters/driver.py", "docs/nowhere.md"]
    assert exists("exporters/driver.py", ROOT / "README.md")
    assert exists("mmserve/exporters/driver.py", ROOT / "README.md")
    assert not exists("docs/nowhere.md", ROOT / "README.md")
    assert not ignored("model_repository/README.md") and ignored("model_repository/text_embed/config.pbtxt")
