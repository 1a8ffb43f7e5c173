"""The checkpoint manifest: how the demo (or a user) tells the bench what stands behind a pipeline."""
from __future__ import annotations

import json
from pathlib import Path

from mmserve.bench.checkpoints import known_checkpoints, read_manifest, record_checkpoint


def test_recorded_entries_are_read_back_and_overrides_win(tmp_path: Path) -> None:
    manifest = tmp_path / "demo" / "checkpoints.json"
    intents, ner, mine = (tmp_path / n for n in ("intents", "ner", "mine"))
    for folder in (intents, ner, mine):
        folder.mkdir()
    record_checkpoint(manifest, "text_classify", intents)
    record_checkpoint(manifest, "text_ner", ner)
    record_checkpoint(manifest, "text_classify", intents)  # re-recording replaces, never duplicates
    assert read_manifest(manifest) == {"text_classify": intents.resolve(), "text_ner": ner.resolve()}
    found = known_checkpoints(manifest, {"text_ner": mine})
    assert found["text_classify"] == intents.resolve() and found["text_ner"] == mine
    assert not list(manifest.parent.glob(".checkpoints-*"))  # no staging file left behind


def test_missing_folders_and_manifest_are_skipped(tmp_path: Path) -> None:
    assert read_manifest(tmp_path / "absent.json") == {}
    manifest = tmp_path / "checkpoints.json"
    manifest.write_text(json.dumps({"text_classify": "gone", "text_ner": "here"}))
    (tmp_path / "here").mkdir()
    assert read_manifest(manifest) == {"text_ner": tmp_path / "here"}  # relative to the manifest
