"""Keys and TLS for a launched server: where a key comes from, what a key must be, and the
arguments that make Triton enforce them (docs/security.md).

Triton's restricted-protocol groups: the model repository, shared memory, trace and logging
behind the admin key; inference behind the optional API key. The key names are what Triton
checks: the HTTP header as is, the gRPC metadata header with the prefix Triton adds
("triton-grpc-protocol-admin-key"); the client (client/_channel.py) sends both."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from mmserve import local_servers
from mmserve.launch import LaunchError

ADMIN_KEY_NAME = "admin-key"
API_KEY_NAME = "api-key"
ADMIN_PROTOCOLS = ("model-repository", "shared-memory", "trace", "logging")
API_PROTOCOLS = ("inference",)
MIN_KEY_LENGTH = 16


def resolve_key(value: str | None, file: Path | None, env: str, what: str) -> str | None:
    """A secret from the command line, a file (a mounted Kubernetes Secret) or the environment.

    The file and the environment keep the key out of `ps` for mmserve itself."""
    if value is not None and file is not None:
        raise LaunchError(f"give the {what} once: as a value or as a file, not both")
    if file is not None:
        try:
            value = file.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise LaunchError(f"cannot read the {what} file {file}: {error.strerror or error}") from None
        if not value:
            raise LaunchError(f"the {what} file {file} is empty")
    elif value is None:
        value = os.environ.get(env) or None
    return value


def key_option(value: str | None, file: Path | None, what: str) -> str | None:
    """A client command's key: from its --...-key-file when given (the value never reaches
    `ps`), else the value (whose default is the environment's)."""
    if file is not None:
        return resolve_key(None, file, "", what)
    return value or None


def check_key(key: str, what: str) -> None:
    if len(key) < MIN_KEY_LENGTH or not key.isprintable() or any(c.isspace() for c in key):
        raise LaunchError(
            f"the {what} must be at least {MIN_KEY_LENGTH} printable characters without spaces; "
            "generate one with `openssl rand -hex 32`"
        )


def check_tls(cert: Path | None, key: Path | None, ca: Path | None) -> None:
    """Both halves of the server's pair, a CA only with them, and every file a readable PEM."""
    if (cert is None) != (key is None):
        raise LaunchError("TLS needs both --tls-cert and --tls-key (PEM files)")
    if ca is not None and cert is None:
        raise LaunchError("--tls-ca (client certificates) needs TLS: add --tls-cert and --tls-key")
    for path in (cert, key, ca):
        if path is None:
            continue
        try:
            with open(path, "rb") as pem:
                if b"-----BEGIN" not in pem.read():
                    raise LaunchError(f"{path} is not a PEM file (no -----BEGIN line)")
        except OSError as error:
            raise LaunchError(f"cannot read {path}: {error.strerror or error}") from None


def security_args(cert: Path | None, key: Path | None, ca: Path | None,
                  admin_key: str | None, api_key: str | None) -> list[str]:
    """tritonserver's TLS and restricted-protocol arguments. Triton takes the keys only on its
    command line (mmserve/hide_keys.py masks them in `ps` where it can)."""
    args = []
    if cert is not None and key is not None:
        args += ["--grpc-use-ssl=true", f"--grpc-server-cert={Path(cert).resolve()}",
                 f"--grpc-server-key={Path(key).resolve()}"]
        if ca is not None:
            args += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={Path(ca).resolve()}"]
    for secret, name, protocols in ((admin_key, ADMIN_KEY_NAME, ADMIN_PROTOCOLS), (api_key, API_KEY_NAME, API_PROTOCOLS)):
        if secret is not None:
            group = f"{','.join(protocols)}:{name}={secret}"
            args += [f"--grpc-restricted-protocol={group}", f"--http-restricted-api={group}"]
    return args


def generate_admin_key(folder: Path) -> tuple[str, Path]:
    """A new admin key for one start, in a 0600 file of the run folder (local tools find it there)."""
    key_file = folder / local_servers.KEY_FILE
    key = secrets.token_hex(32)
    try:
        key_file.unlink(missing_ok=True)  # an earlier start's, in a reused folder
        local_servers.write_private(key_file, key + "\n")
    except OSError as error:
        raise LaunchError(f"cannot write the admin key file {key_file}: {error.strerror or error}") from None
    return key, key_file


def other_users_see_arguments(mounts: Path = Path("/proc/mounts")) -> bool:
    """Whether other users can read a process's command line here: /proc is not mounted with
    hidepid (1/noaccess or 2/invisible). Triton takes its keys on its command line only."""
    try:
        for line in mounts.read_text().splitlines():
            fields = line.split()
            if len(fields) > 3 and fields[1] == "/proc" and fields[2] == "proc":
                options = fields[3].split(",")
                return not any(o.startswith("hidepid=") and o.split("=", 1)[1] not in ("0", "off") for o in options)
    except OSError:
        pass
    return True
