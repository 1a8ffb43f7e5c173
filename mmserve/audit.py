"""The audit log of admin actions: JSON lines, each carrying the hash of the one before.

One home for the log the lifecycle core (CLI and console) writes. Why each rule:

- **Tamper-evident**: every record holds ``prev`` (the previous record's hash) and
  ``hash`` (SHA-256 over ``prev`` and the record's canonical JSON), so an edited, removed
  or inserted line breaks the chain at that line; ``mmserve audit verify`` names the
  first broken one. (Whoever can rewrite the whole file can also recompute the chain:
  keep a copy of the last hash elsewhere for that, docs/security.md.)
- **Nothing unrecorded**: an action writes an ``attempt`` record before it acts and its
  result after; an attempt that cannot be written refuses the action
  (``AuditWriteError``).
- **Who**: the actor is the authenticated identity where there is one: the console's
  signed-in user, else ``user@host`` with the fingerprint of the admin key used.
- Writers append under an exclusive lock (``flock``), one ``write`` per record.
"""
from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

AUDIT_LOG = ".mmserve-audit.jsonl"  # inside the repository; a file, so Triton never takes it for a model
GENESIS = "0" * 64
ATTEMPT, RESULT = "attempt", "result"


class AuditWriteError(Exception):
    """The audit log cannot be written: the action it would record is not done."""


@dataclass(frozen=True)
class Verification:
    path: Path
    records: int
    chained: int
    broken_line: int | None = None  # 1-based
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_line is None

    def summary(self) -> str:
        if not self.ok:
            return f"{self.path}: line {self.broken_line} is broken: {self.reason}"
        legacy = self.records - self.chained
        return (f"{self.path}: {self.records} records, the hash chain is intact"
                + (f" ({legacy} older records before the chain began)" if legacy else ""))


def _canonical(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def record_hash(prev: str, record: dict[str, Any]) -> str:
    body = {key: value for key, value in record.items() if key != "hash"}
    return hashlib.sha256(f"{prev}\n{_canonical(body)}".encode("utf-8")).hexdigest()


def _link_of(line: bytes) -> str:
    """What the next record's ``prev`` must be: this record's hash, or a pre-chain line's digest."""
    try:
        record = json.loads(line)
        if isinstance(record, dict) and isinstance(record.get("hash"), str):
            return record["hash"]
    except ValueError:
        pass
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def key_fingerprint(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


def actor_for(admin_key: str | None = None, user: str | None = None) -> str:
    """The audit log's "who": a signed-in user as given, else user@host and, when an admin key
    was used, its fingerprint (the key is what the server authenticated)."""
    if user:
        return user
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        name = f"uid{os.getuid()}"
    actor = f"{name}@{socket.gethostname()}"
    return f"{actor} (admin key {key_fingerprint(admin_key)})" if admin_key else actor


def lines_from_end(path: Path, block: int = 64 * 1024) -> Iterator[str]:
    """A text file's non-empty lines, last first, reading it backwards block by block."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    with handle:
        position = handle.seek(0, os.SEEK_END)
        rest = b""
        while position > 0:
            size = min(block, position)
            position -= size
            handle.seek(position)
            lines = (handle.read(size) + rest).split(b"\n")
            rest = lines.pop(0)  # may continue in the block before
            for line in reversed(lines):
                if line.strip():
                    yield line.decode("utf-8", errors="replace")
        if rest.strip():
            yield rest.decode("utf-8", errors="replace")


def _last_line(fd: int, block: int = 64 * 1024) -> bytes | None:
    size = os.lseek(fd, 0, os.SEEK_END)
    position, tail = size, b""
    while position > 0:
        step = min(block, position)
        position -= step
        tail = os.pread(fd, step, position) + tail
        stripped = tail.rstrip(b"\n")
        if b"\n" in stripped:
            return stripped.rsplit(b"\n", 1)[1]
    stripped = tail.rstrip(b"\n")
    return stripped or None


class AuditLog:
    """One audit log file (see the module doc)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Chain and write one record; AuditWriteError when it cannot be written."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as error:
            raise AuditWriteError(f"cannot write the audit log {self.path}: {error.strerror or error}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            last = _last_line(fd)
            chained = {**record, "prev": _link_of(last) if last is not None else GENESIS}
            chained["hash"] = record_hash(chained["prev"], chained)
            data = (_canonical(chained) + "\n").encode("utf-8")
            if os.write(fd, data) != len(data):
                raise OSError("short write")
            os.fsync(fd)
            return chained
        except OSError as error:
            raise AuditWriteError(f"cannot write the audit log {self.path}: {error.strerror or error}") from None
        finally:
            os.close(fd)  # releases the lock

    def attempt(self, record: dict[str, Any]) -> str:
        """Write the record of an action about to happen; its id, for the result."""
        attempt_id = secrets.token_hex(8)
        self.append({**record, "phase": ATTEMPT, "attempt": attempt_id, "result": ATTEMPT})
        return attempt_id

    def result(self, attempt_id: str | None, record: dict[str, Any]) -> dict[str, Any]:
        return self.append({**record, "phase": RESULT, **({"attempt": attempt_id} if attempt_id else {})})

    def entries(self, limit: int = 200) -> list[dict[str, Any]]:
        """The newest ``limit`` records, newest first, each action once: its result, or its
        attempt when no result followed (the process died mid-action)."""
        found: list[dict[str, Any]] = []
        finished: set[str] = set()
        for line in lines_from_end(self.path):
            if len(found) >= limit:
                break
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn or foreign line: the rest of the log still reads
            if not isinstance(record, dict):
                continue
            if record.get("phase") == ATTEMPT:
                if record.get("attempt") in finished:
                    continue
                record = {**record, "result": "no result recorded (the process ended during the action)"}
            elif record.get("attempt"):
                finished.add(record["attempt"])
            found.append(record)
        return found

    def verify(self) -> Verification:
        """Walk the chain from the first line; the first line whose link does not hold."""
        records = chained = 0
        expected: str | None = None  # None: no chained record yet (older lines may precede the chain)
        previous_link = GENESIS
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return Verification(self.path, 0, 0)
        with handle:
            for number, raw in enumerate(handle, start=1):
                line = raw.rstrip(b"\n")
                if not line.strip():
                    continue
                records += 1
                try:
                    record = json.loads(line)
                except ValueError:
                    return Verification(self.path, records, chained, number, "not a JSON record (edited or torn)")
                has_hash = isinstance(record, dict) and isinstance(record.get("hash"), str)
                if not has_hash:
                    if expected is not None:
                        return Verification(self.path, records, chained, number,
                                            "a record without a hash inside the chain (inserted or edited)")
                    previous_link = _link_of(line)
                    continue
                if record.get("prev") != previous_link:
                    return Verification(self.path, records, chained, number,
                                        "its prev is not the hash of the record before (a record was removed, "
                                        "inserted or edited before it)")
                if record_hash(record["prev"], record) != record["hash"]:
                    return Verification(self.path, records, chained, number,
                                        "its hash does not match its content (edited)")
                chained += 1
                expected = previous_link = record["hash"]
        return Verification(self.path, records, chained)


def utc_now() -> str:
    """A record's time: ISO 8601, UTC, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def error_text(error: BaseException) -> str:
    """A failed action's result as the log states it."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    return f"{type(error).__name__}: {error}"


def record_export(repository: Path, result: Any, error: BaseException | None) -> None:
    """Audit an export (exporters/driver.py, which sits below the lifecycle and writes here
    directly): the version it made active on disk, or why it failed. A failure is recorded only
    in a repository that serves something already (models or an audit log): a failed export
    into a new folder leaves it as it was. The actor is this user@host (no key is used)."""
    repository = Path(repository)
    if not repository.is_dir():
        return
    if error is not None:
        if not (repository / AUDIT_LOG).exists() and not any(repository.glob("*/config.pbtxt")):
            return
        product, detail, outcome = "", "", error_text(error)
    else:
        served = f"; served after `mmserve reload {result.pipeline}` (or the next start)"
        product = result.pipeline
        detail = f"version {result.version} of {', '.join(result.pipelines)} ({result.description}) active on disk{served}"
        outcome = "ok"
    record = {"time": utc_now(), "actor": actor_for(), "action": "export", "product": product, "detail": detail,
              "result": outcome}
    try:
        AuditLog(repository / AUDIT_LOG).result(None, record)
    except Exception:  # noqa: BLE001 - the audit log unwritable: the export itself is done (or failed) already
        pass
