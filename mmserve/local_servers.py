"""This user's running servers, so that local tools find them: ports -> pids, run folder, admin key file.

`mmserve serve` writes one small JSON file per running server into a per-user folder
(``$MMSERVE_STATE_DIR``, else ``$XDG_RUNTIME_DIR/mmserve``, else ``/tmp/mmserve-<uid>``;
mode 0700, owned by the user): its ports, its tritonserver's and launcher's pids, its run
folder and the file holding its admin key (mode 0600). So:

- the client, the lifecycle commands and the console, dialing a loopback address with no
  admin key given, read the key of the server on that port (``admin_key_for``), and the
  README's quick start needs no key typed;
- a second `mmserve serve` on a taken port names the server holding it (``holder_of``),
  from this folder or, for any process of this user, from /proc.

An entry counts only while its tritonserver runs with the id it was started with (a
reused pid is not taken for it). Stdlib only: the client imports it.
"""
from __future__ import annotations

import ipaddress
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

STATE_ENV = "MMSERVE_STATE_DIR"
KEY_FILE = "admin.key"


def state_dir() -> Path:
    """The per-user folder of running servers (not created here)."""
    explicit = os.environ.get(STATE_ENV)
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "mmserve"
    return Path(tempfile.gettempdir()) / f"mmserve-{os.getuid()}"


def private_dir(create: bool) -> Path | None:
    """The state folder if it is ours and closed to others (else None: never trust it)."""
    folder = state_dir()
    if create:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        info = folder.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None
    return folder


def write_private(path: Path, text: str) -> None:
    """Create a file only its owner can read (0600), refusing to follow or reuse an existing one."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def read_private(path: Path) -> str | None:
    """A file's text if this user owns it and nobody else can read it; else None."""
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            return None
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def register(server_id: str, **entry: Any) -> Path | None:
    """Record a running server (its pid, ports, run folder, key file); None when the folder is not usable."""
    try:
        folder = private_dir(create=True)
    except OSError:
        return None
    if folder is None:
        return None
    path = folder / f"{server_id}.json"
    staged = folder / f".{server_id}.{os.getpid()}.tmp"  # complete before it is seen: readers never get half
    try:
        staged.unlink(missing_ok=True)
        write_private(staged, json.dumps({"id": server_id, **entry}, default=str))
        os.replace(staged, path)
    except OSError:
        staged.unlink(missing_ok=True)
        return None
    return path


def unregister(server_id: str) -> None:
    folder = private_dir(create=False)
    if folder is not None:
        (folder / f"{server_id}.json").unlink(missing_ok=True)


def _cmdline(pid: int) -> list[str] | None:
    """A process's arguments; None when there is no such process. Empty while it is being
    exec'd (the kernel sets them up after the point the parent sees the exec succeed)."""
    try:
        return [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return None


def _liveness(pid: Any, server_id: str) -> bool | None:
    """True: the server runs with the id it was started with; False: gone (or the pid reused);
    None: cannot be told yet (a process in the middle of its exec)."""
    argv = _cmdline(pid) if isinstance(pid, int) else None
    if argv is None:
        return False
    if not argv:
        return None
    return f"--id={server_id}" in argv


def entries() -> list[dict[str, Any]]:
    """The servers of this user that still run (entries of dead ones are removed)."""
    folder = private_dir(create=False)
    if folder is None:
        return []
    found = []
    for path in sorted(folder.glob("*.json")):
        text = read_private(path)
        try:
            entry = json.loads(text) if text else None
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            continue  # not ours to judge (someone else's file, or unreadable): neither used nor removed
        alive = _liveness(entry.get("pid"), str(entry.get("id")))
        if alive is False:
            path.unlink(missing_ok=True)  # its server is gone
        if not alive:
            continue
        found.append(entry)
    return found


def _host_port(url: str) -> tuple[str, int] | None:
    text = url.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = text.rpartition(":")
    if not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def admin_key_for(url: str) -> str | None:
    """The admin key of this user's server listening on `url`'s port, when `url` is a loopback
    address; None otherwise (a remote server's key is never guessed)."""
    parsed = _host_port(url)
    if parsed is None or not _loopback(parsed[0]):
        return None
    port = parsed[1]
    for entry in entries():
        ports = entry.get("ports") or {}
        if port in (ports.get("grpc"), ports.get("http")) and entry.get("key_file"):
            return read_private(Path(entry["key_file"]))
    return None


def listener_pids(port: int) -> list[int]:
    """Processes (of this user: others' fds are not readable) listening on a TCP port, from /proc."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{cols[9]}]")
    pids = []
    if not inodes:
        return pids
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def holder_of(port: int) -> str | None:
    """Who holds a port, in words: an mmserve server of this user (pids, run folder), or a
    process of this user; None when it cannot be told (another user's, or nothing)."""
    for entry in entries():
        if port in (entry.get("ports") or {}).values():
            return (f"an earlier `mmserve serve` still runs there: tritonserver pid {entry['pid']} (launcher pid "
                    f"{entry.get('launcher_pid')}, run folder {entry.get('run_dir')}); stop it with "
                    f"`kill {entry.get('launcher_pid') or entry['pid']}`")
    for pid in listener_pids(port):
        argv = _cmdline(pid) or []
        ids = [a.split("=", 1)[1] for a in argv if a.startswith("--id=mmserve-")]
        if ids:
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                cwd = "unknown"
            return (f"a tritonserver of mmserve ({ids[0]}) holds it: pid {pid}, run folder {cwd}; "
                    f"stop it with `kill {pid}`")
        name = Path(argv[0]).name if argv else "?"
        return f"process {pid} ({name}) holds it"
    return None
