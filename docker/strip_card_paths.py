"""Make an exported repository fit for an image: no local paths in product cards, no audit log.

Run by the image builds (docker/Dockerfile*) on the copied repository, never on the
original: a card's checkpoint, base model and data paths become their last component
(what the model is, not where the exporter's files were), and `.mmserve-audit.jsonl*`
files (the .dockerignore files exclude them already) are removed. Stdlib only.

    python3 strip_card_paths.py /models
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path, PureWindowsPath
from typing import Any


def _looks_local(text: str) -> bool:
    return text.startswith(("/", "~", "./", "../")) or bool(PureWindowsPath(text).drive)


def strip(value: Any) -> Any:
    """Every string that is a local path replaced by its last component, at any depth."""
    if isinstance(value, dict):
        return {key: strip(item) for key, item in value.items()}
    if isinstance(value, list):
        return [strip(item) for item in value]
    if isinstance(value, str) and _looks_local(value):
        return PureWindowsPath(value).name if PureWindowsPath(value).drive else os.path.basename(value.rstrip("/"))
    return value


def main(repository: str) -> int:
    root = Path(repository)
    for card in sorted(root.glob("*/*/card.json")):
        card.write_text(json.dumps(strip(json.loads(card.read_text(encoding="utf-8"))), indent=2) + "\n",
                        encoding="utf-8")
    for log in root.rglob(".mmserve-audit.jsonl*"):
        log.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
