"""Which checkpoint stands behind each pipeline: what the bench needs for its torch rows,
accuracy columns and the peers' model folder.

The bench never imports the demo or guesses its folders: whoever trains (the demo, or a
user) writes a small manifest, `{"pipeline": "checkpoint folder"}`, and the bench reads it.
`--checkpoint PIPELINE=PATH` on the command line overrides an entry.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

# Where `mmserve demo` records its checkpoints (artifacts/demo is its default workdir).
DEFAULT_MANIFEST = Path("artifacts/demo/checkpoints.json")


def read_manifest(manifest: Path) -> dict[str, Path]:
    """The manifest's entries whose folders still exist (paths relative to the manifest's folder)."""
    if not manifest.is_file():
        return {}
    entries = json.loads(manifest.read_text(encoding="utf-8"))
    found = {}
    for pipeline, folder in entries.items():
        path = Path(folder)
        path = path if path.is_absolute() else manifest.parent / path
        if path.exists():
            found[pipeline] = path
    return found


def record_checkpoint(manifest: Path, pipeline: str, checkpoint: Path) -> None:
    """Add or replace one entry, atomically (a reader never sees half a file)."""
    manifest.parent.mkdir(parents=True, exist_ok=True)
    entries = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}
    entries[pipeline] = str(checkpoint.resolve())
    fd, staging = tempfile.mkstemp(prefix=".checkpoints-", dir=manifest.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(entries, f, indent=2, sort_keys=True)
    os.replace(staging, manifest)


def known_checkpoints(manifest: Path = DEFAULT_MANIFEST, overrides: dict[str, Path] | None = None) -> dict[str, Path]:
    """text_embed's default base (when the train extra is installed), the manifest, then overrides."""
    found: dict[str, Path] = {}
    try:
        from mmserve.training.defaults import default_text_base

        found["text_embed"] = default_text_base()
    except Exception:  # noqa: BLE001 - the train extra is optional for the bench
        pass
    found.update(read_manifest(manifest))
    found.update(overrides or {})
    return found
