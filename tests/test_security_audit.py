"""The audit log (issue 18, finding 9): tamper-evident, written before the action acts (an
unwritable log refuses the action), the actor from what authenticated; and never baked
into an image. Real server (the session's), real CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mmserve.audit import AuditLog, key_fingerprint

MMSERVE = [sys.executable, "-m", "mmserve.cli"]
ROOT = Path(__file__).resolve().parent.parent
PRODUCT = "text_classify"


def _verify(log: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*MMSERVE, "audit", "verify", "--audit-log", str(log)], capture_output=True, text=True,
                          timeout=120)


def _records(n: int) -> list[dict]:
    return [{"time": f"2026-12-07T17:0{i}:00+00:00", "actor": "ops@host", "action": "load", "product": f"p{i}",
             "detail": "", "result": "ok"} for i in range(n)]


def test_each_record_carries_the_hash_of_the_one_before(tmp_path: Path):
    log = tmp_path / "audit.jsonl"
    legacy = json.dumps({"time": "2026-12-01T00:00:00+00:00", "actor": "old", "action": "load", "product": "x",
                         "detail": "", "result": "ok"})
    log.write_text(legacy + "\n")  # a log from before the chain: kept, and chained onto
    for record in _records(4):
        AuditLog(log).append(record)
    lines = log.read_text().splitlines()
    chained = [json.loads(line) for line in lines[1:]]
    assert [r["prev"] for r in chained[1:]] == [r["hash"] for r in chained[:-1]]
    intact = _verify(log)
    assert intact.returncode == 0 and "5 records, the hash chain is intact" in intact.stdout, intact

    edited = lines.copy()
    edited[2] = edited[2].replace('"p1"', '"p9"')  # someone rewrites what was done
    log.write_text("\n".join(edited) + "\n")
    broken = _verify(log)
    assert broken.returncode == 1 and "line 3 is broken" in broken.stderr and "edited" in broken.stderr, broken

    log.write_text("\n".join(lines[:2] + lines[3:]) + "\n")  # someone removes a record
    removed = _verify(log)
    assert removed.returncode == 1 and "line 3 is broken" in removed.stderr, removed

    log.write_text("\n".join(lines[:3] + [legacy] + lines[3:]) + "\n")  # or slips one in
    inserted = _verify(log)
    assert inserted.returncode == 1 and "line 4 is broken" in inserted.stderr, inserted


def test_concurrent_writers_keep_one_chain(tmp_path: Path):
    from concurrent.futures import ThreadPoolExecutor

    log = tmp_path / "audit.jsonl"
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda r: AuditLog(log).append(r), _records(8) * 8))
    result = AuditLog(log).verify()
    assert result.ok and result.records == 64, result.summary()


@pytest.fixture
def lifecycle_client(server):
    from mmserve.client import Client

    with Client(server.grpc_url, timeout=120, admin_key="audit-" + "0123456789abcdef" * 2) as client:
        yield client


def test_an_action_is_recorded_before_and_after_with_the_keys_fingerprint(repository: Path, lifecycle_client,
                                                                           tmp_path: Path):
    from mmserve.lifecycle import Lifecycle

    log = tmp_path / "audit.jsonl"
    entry = Lifecycle(repository, lifecycle_client, audit_log=log).load(PRODUCT)  # loaded already: in place
    assert entry.ok
    attempt, result = [json.loads(line) for line in log.read_text().splitlines()]
    assert attempt["phase"] == "attempt" and result["phase"] == "result" and result["attempt"] == attempt["attempt"]
    assert key_fingerprint("audit-" + "0123456789abcdef" * 2) in result["actor"]
    assert "0123456789abcdef" not in log.read_text()  # the fingerprint, never the key
    shown = Lifecycle(repository, lifecycle_client, audit_log=log).audit()
    assert [e.result for e in shown] == ["ok"]  # one line per action: its result


def test_an_action_whose_record_cannot_be_written_is_refused(repository: Path, lifecycle_client, tmp_path: Path):
    """Finding 9: an action whose audit write failed had already happened."""
    from mmserve.lifecycle import Lifecycle, LifecycleError

    unwritable = tmp_path / "log-is-a-folder"
    unwritable.mkdir()
    lifecycle = Lifecycle(repository, lifecycle_client, audit_log=unwritable)
    with pytest.raises(LifecycleError, match="cannot write the audit log .*the action is refused"):
        lifecycle.unload(PRODUCT)
    states = {m.name: m.state for m in lifecycle_client.models()}
    assert states[PRODUCT] == "READY", "the unload happened without its audit record"


def test_images_never_carry_audit_logs():
    """Finding 9: `COPY model_repository` baked the audit log into images."""
    for ignore in [ROOT / ".dockerignore", *(ROOT / "docker").glob("*.dockerignore")]:
        patterns = ignore.read_text().splitlines()
        assert "**/.mmserve-audit.jsonl*" in patterns, ignore


def test_cards_baked_into_images_carry_no_local_paths(repository: Path, tmp_path: Path):
    """Finding 9: the cards `COPY model_repository` bakes in held local paths of checkpoints and data."""
    import shutil

    copy = tmp_path / "models"
    shutil.copytree(repository, copy, ignore=shutil.ignore_patterns("*.onnx", "*.onnx.data", "__pycache__"))
    (copy / ".mmserve-audit.jsonl").write_text("{}\n")

    def local_strings(value) -> list[str]:
        if isinstance(value, dict):
            return [s for item in value.values() for s in local_strings(item)]
        if isinstance(value, list):
            return [s for item in value for s in local_strings(item)]
        return [value] if isinstance(value, str) and value.startswith(("/", "~")) else []

    cards = sorted(copy.glob("*/*/card.json"))
    assert cards and any(local_strings(json.loads(c.read_text())) for c in cards), "no local path to strip: test moot"
    result = subprocess.run([sys.executable, str(ROOT / "docker" / "strip_card_paths.py"), str(copy)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert [c for c in cards if local_strings(json.loads(c.read_text()))] == []
    assert not (copy / ".mmserve-audit.jsonl").exists()
    for dockerfile in ("Dockerfile", "Dockerfile.cpu", "Dockerfile.models"):
        text = (ROOT / "docker" / dockerfile).read_text()
        assert "strip_card_paths.py /models" in text, dockerfile  # run on what the image copies
