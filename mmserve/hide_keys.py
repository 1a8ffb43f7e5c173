"""Keep Triton's keys out of `ps`: a tiny preload library that masks them in its argv.

Triton takes restricted-protocol keys only as arguments
(``--grpc-restricted-protocol=<groups>:admin-key=KEY``), and a process's arguments are
readable by every local user in ``/proc/PID/cmdline``. The library below, preloaded into
tritonserver only, runs before Triton's ``main``: it gives ``main`` private copies of
those arguments and overwrites the key characters in the original ones with ``*``
(what ``ps`` reads), then drops itself from the environment so the Python stubs do not
load it. Triton parses the copies and enforces the real keys.

It is compiled once per user with the C compiler on PATH into the private registry folder
(:mod:`mmserve.local_servers`: 0700, owner checked); where there is no compiler (the slim
images, where the server is alone in its container's PID namespace anyway) the keys stay
visible and `mmserve serve` says so (docs/security.md).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

from mmserve import local_servers

SOURCE = r"""
#include <stdlib.h>
#include <string.h>

static int key_option(const char *arg) {
    return strncmp(arg, "--grpc-restricted-protocol=", 27) == 0 || strncmp(arg, "--http-restricted-api=", 22) == 0;
}

/* glibc passes (argc, argv, envp) to constructors: the same argv main() receives. */
__attribute__((constructor)) static void mmserve_hide_keys(int argc, char **argv, char **envp) {
    (void)envp;
    for (int i = 1; i < argc; i++) {
        char *arg = argv[i];
        if (!key_option(arg)) continue;
        char *groups = strchr(arg, '=');                 /* --option=<groups>:<header>=<key> */
        char *header = groups ? strchr(groups + 1, ':') : NULL;
        char *key = header ? strchr(header + 1, '=') : NULL;
        if (key == NULL) continue;
        char *copy = strdup(arg);
        if (copy == NULL) continue;                      /* out of memory: leave it visible */
        argv[i] = copy;                                  /* main() parses the copy */
        for (char *c = key + 1; *c; c++) *c = '*';       /* /proc/PID/cmdline shows the mask */
    }
    unsetenv("LD_PRELOAD");                              /* not into the Python stubs */
}
"""
_NAME = f"hide-keys-{hashlib.sha256(SOURCE.encode()).hexdigest()[:12]}.so"


def _trusted(path: Path) -> bool:
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022


def library() -> Path | None:
    """The compiled library (built on first use); None when it cannot be had here."""
    try:
        folder = local_servers.private_dir(create=True)
    except OSError:
        return None
    if folder is None or any(c in str(folder) for c in " :"):  # LD_PRELOAD separators
        return None
    path = folder / _NAME
    if _trusted(path):
        return path
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    staged = folder / f".{_NAME}.{os.getpid()}.tmp"
    try:
        subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(staged), "-x", "c", "-"], input=SOURCE,
                       text=True, capture_output=True, timeout=60, check=True)
        os.chmod(staged, 0o700)
        os.replace(staged, path)
    except (OSError, subprocess.SubprocessError):
        staged.unlink(missing_ok=True)
        return None
    return path if _trusted(path) else None
