"""Which repository a server serves, so that a command given ``--repository`` never acts on
(or writes the audit log of) a repository the server does not serve.

How a server says it. The launcher (:mod:`mmserve.server`) gives each repository it serves
an id, kept in the repository (``.mmserve-repository-id``: JSON ``{"id", "path"}``, a
file, so neither Triton's index nor ``repository_models()`` takes it for a model), and
starts tritonserver with ``--id=<server id>.repo-<repository id>``: Triton reports that
as its name in the server metadata, which every client may read (no key, gRPC and HTTP
alike, through TLS and containers). The launcher also records the repository's path in
this user's registry of running servers (:mod:`mmserve.local_servers`).

How a command checks (:func:`mismatch`), most certain first:

1. the server runs on this host and the registry names its repository: the same folder?
2. the server reports a repository id: does the folder carry that id?
3. neither (tritonserver started by hand, a read-only repository with no id): the
   server's repository index, which lists every model folder of its repository, against
   the folder's models.

A copy of a served repository carries its id file along; the file names the folder it was
made for, so the copy is recognised as such (and gets an id of its own when served).
Stdlib only: the client side imports it.
"""
from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path

from mmserve import local_servers
from mmserve.repository_layout import CONFIG_FILE

ID_FILE = ".mmserve-repository-id"
_MARK = ".repo-"  # between the server's own id and the repository's, in Triton's --id
_COPY_MARK = "__v"  # a version's copy during a switch (exporters/versions.py COPY_MARK)
_CONFIG = CONFIG_FILE


def _record(repository: Path) -> dict | None:
    try:
        record = json.loads((repository / ID_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("id"), str) and record["id"] else None


def _copied(repository: Path, record: dict) -> bool:
    """The id file was made for another folder that still exists with that id: a copy."""
    made_for = Path(str(record.get("path") or ""))
    if not made_for.is_absolute() or not made_for.is_dir():
        return False  # moved, or the path of another host (a container's mount): the id holds
    try:
        if made_for.samefile(repository):
            return False
    except OSError:
        return False
    original = _record(made_for)
    return original is not None and original["id"] == record["id"]


def repository_id(repository: Path) -> str | None:
    """The folder's repository id; None when it has none (never served by mmserve) or is a
    copy of a served one (its id is the original's)."""
    repository = Path(repository)
    record = _record(repository)
    if record is None or _copied(repository, record):
        return None
    return str(record["id"])


def ensure_repository_id(repository: Path) -> str | None:
    """The folder's id, made (or, in a copy, made anew) when missing; None when the folder
    cannot be written (a read-only mount): the server then reports none."""
    repository = Path(repository).resolve()
    current = repository_id(repository)
    if current is not None:
        return current
    new = secrets.token_hex(8)
    temporary = repository / f"{ID_FILE}.{new}.tmp"
    try:
        temporary.write_text(json.dumps({"id": new, "path": str(repository)}) + "\n", encoding="utf-8")
        os.replace(temporary, repository / ID_FILE)
    except OSError:
        temporary.unlink(missing_ok=True)
        return None
    return new


def server_name(server_id: str, repository_id: str | None) -> str:
    """Triton's --id for a server of ``server_id`` serving the repository of that id."""
    return f"{server_id}{_MARK}{repository_id}" if repository_id else server_id


def reported_id(name: str) -> str | None:
    """The repository id in the name a server reports (None: not an mmserve launch, or no id)."""
    _, mark, repository = name.rpartition(_MARK)
    return repository if mark and repository else None


def local_repository(url: str) -> Path | None:
    """The repository of this user's server on ``url`` (a loopback address), from the
    registry of running servers; None for any other server."""
    host, _, port = url.rpartition(":")
    if not port.isdigit() or host.strip("[]") not in ("localhost", "127.0.0.1", "::1"):
        return None
    for entry in local_servers.entries():
        if int(port) in ((entry.get("ports") or {}).get("grpc"),) and entry.get("repository"):
            return Path(entry["repository"])
    return None


def _models(repository: Path) -> set[str]:
    return {path.parent.name for path in repository.glob(f"*/{_CONFIG}") if _COPY_MARK not in path.parent.name}


def mismatch(repository: Path, url: str, name: str, index: Callable[[], Iterable[str]] | None) -> str | None:
    """Why ``repository`` is not what the server at ``url`` serves (None: it is), from the
    name the server reports and, for a server that reports no id, ``index()``: the model
    names of its repository index (None: not asked)."""
    repository = Path(repository)
    served = local_repository(url)
    if served is not None:
        try:
            same = served.samefile(repository)
        except OSError:
            same = False
        if not same:
            return (f"the server at {url} serves {served}, not {repository.resolve()}: pass --repository {served} "
                    "(or leave --repository out)")
        return None
    theirs, ours = reported_id(name), repository_id(repository)
    if theirs is not None:
        if ours == theirs:
            return None
        what = (f"its id is {ours}" if ours else
                "it has no repository id (it has not been served by mmserve, or it is a copy)")
        return (f"the server at {url} serves the repository with id {theirs} ({ID_FILE}); {repository.resolve()} is not "
                f"that one ({what}): pass the --repository the server was started with")
    if index is None:
        return None
    listed = {model for model in index() if _COPY_MARK not in model}
    here = _models(repository)
    missing_here, missing_there = sorted(listed - here), sorted(here - listed)
    if not missing_here and not missing_there:
        return None
    differences = []
    if missing_here:
        differences.append(f"it serves {', '.join(missing_here[:5])}{' ...' if len(missing_here) > 5 else ''}, "
                           "which this folder lacks")
    if missing_there:
        differences.append(f"this folder has {', '.join(missing_there[:5])}{' ...' if len(missing_there) > 5 else ''}, "
                           "which its repository lacks")
    return (f"{repository.resolve()} is not the repository the server at {url} serves: {'; '.join(differences)}. "
            "Pass the --repository the server was started with")
