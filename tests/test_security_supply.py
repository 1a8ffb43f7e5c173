"""Dependencies and images (issue 18, findings 10 and 11): the floors sit above the published
advisories and what is installed meets them; the NGC image is a Triton release with the
HTTP-server fixes. Fast: reads files and installed metadata only."""
from __future__ import annotations

import re
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
# package -> the first release without the advisories docs/security.md lists for it
FIXED_IN = {
    "starlette": "1.3.1", "python-multipart": "0.0.26", "pillow": "11.3", "h11": "0.16",
    "grpcio": "1.65.4", "jinja2": "3.1.6",
}


def _requirements() -> dict[str, Requirement]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10 (the NGC image)
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    found: dict[str, Requirement] = {}
    for line in lines:
        requirement = Requirement(line)
        found.setdefault(requirement.name.lower(), requirement)
    return found


@pytest.mark.parametrize("package", sorted(FIXED_IN))
def test_floors_are_above_the_advisories_and_installed_versions_meet_them(package: str):
    requirement = _requirements().get(package)
    assert requirement is not None, f"{package} has no floor in pyproject.toml"
    floors = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==")]
    assert floors and min(floors) >= Version(FIXED_IN[package]), requirement
    assert Version(version(package)) in requirement.specifier, (package, version(package))


def test_the_ngc_image_is_a_triton_release_with_the_http_fixes():
    """CVE-2025-23310/23311 (a chunked HTTP body overflowing the stack before any key check): fixed in 25.07."""
    text = (ROOT / "docker" / "Dockerfile").read_text()
    tag = re.search(r"^ARG TRITON_IMAGE=nvcr\.io/nvidia/tritonserver:(\d+)\.(\d+)-py3$", text, re.MULTILINE)
    assert tag is not None
    assert (int(tag.group(1)), int(tag.group(2))) >= (25, 7)
