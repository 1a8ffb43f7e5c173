"""Where tritonserver and its Python backend are, and which models of a repository it loads.

$TRITONSERVER, then `tritonserver` on PATH, then the one bundled in the `nvidia-pytriton`
wheel, whose Python backend gets the stub built for this interpreter."""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from mmserve.launch import LaunchError


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    backend_directory: Path | None  # None: the binary's own default (NGC container)


def _bundled_triton_root() -> Path | None:
    import importlib.util

    # find_spec does not run pytriton's __init__, whose own requirements we do not install.
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    return root if (root / "bin" / "tritonserver").exists() else None


def _python_backend_ready(backends: Path) -> Path:
    """Put the stub built for this Python next to the bundled Python backend (idempotent)."""
    python_backend = backends / "python"
    stub = python_backend / "triton_python_backend_stub"
    if not stub.exists():
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        source = backends.parent / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not source.exists():
            raise LaunchError(
                f"The bundled Triton has no Python backend stub for Python {version} "
                f"(looked for {source}). Use Python 3.11, or set TRITONSERVER to a full install."
            )
        shutil.copy2(source, stub)
    return backends


def find_triton() -> TritonInstall:
    explicit = os.environ.get("TRITONSERVER")
    if explicit:
        binary = Path(explicit)
        if not binary.exists():
            raise LaunchError(f"TRITONSERVER={explicit} does not exist; point it at a tritonserver binary.")
        return TritonInstall(binary, _backend_dir_for(binary))
    on_path = shutil.which("tritonserver")
    if on_path:
        return TritonInstall(Path(on_path), _backend_dir_for(Path(on_path)))
    bundled = _bundled_triton_root()
    if bundled is None:
        raise LaunchError(
            "No tritonserver found: set TRITONSERVER, put tritonserver on PATH, or install the "
            "bundled one with `pip install --no-deps nvidia-pytriton==0.7.0` (`make setup` does)."
        )
    return TritonInstall(bundled / "bin" / "tritonserver", _python_backend_ready(bundled / "backends"))


def _backend_dir_for(binary: Path) -> Path | None:
    """A bundled-layout binary needs its sibling backends folder; a system install knows its own."""
    sibling = binary.resolve().parent.parent / "backends"
    if (sibling / "python").exists() and (sibling.parent / "python_backend_stubs").exists():
        return _python_backend_ready(sibling)
    return None


def repository_models(repository: Path) -> list[str]:
    """The model folders Triton should load: every sub-folder with a config.pbtxt, except
    dot-folders (an export's staging folder, mmserve's own state)."""
    return sorted(p.parent.name for p in repository.glob("*/config.pbtxt") if not p.parent.name.startswith("."))


def no_models_error(repository: Path) -> LaunchError:
    """What to say of a repository without a model to serve."""
    return LaunchError(
        f"{repository} holds no models (no */config.pbtxt). Export one first, e.g. "
        "`mmserve export text CHECKPOINT --repository DIR`."
    )
