"""The tritonserver process: its run folder, its environment, dying with the launcher, and
stopping its whole process group (the server and its Python stubs)."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from mmserve.launch import LaunchError

# tritonserver's own --exit-timeout-secs: how long it waits for in-flight requests and
# unloading models once asked to stop.
EXIT_TIMEOUT_S = 10
# How long a stopping tritonserver gets (EXIT_TIMEOUT_S and its own clean-up) before its
# process group is killed (`mmserve serve --stop-grace`).
STOP_GRACE_S = 40.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
KEY_VARIABLES = ("MMSERVE_ADMIN_KEY", "MMSERVE_API_KEY")


def runs_root() -> Path:
    """Where `mmserve serve` keeps a folder per run (its Triton log): $MMSERVE_RUNS, else ./runs."""
    return Path(os.environ.get("MMSERVE_RUNS") or "runs")


def new_run_dir(root: Path | None = None) -> Path:
    """A fresh `serve-<UTC time>` folder under runs_root(); never reuses an earlier run's."""
    root = root or runs_root()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    for suffix in ("", *(f"-{i}" for i in range(1, 100))):
        path = root / f"serve-{stamp}{suffix}"
        try:
            root.mkdir(parents=True, exist_ok=True)
            path.mkdir(mode=0o700)  # private: tritonserver's working directory, the generated admin key
            return path
        except FileExistsError:
            continue
        except OSError as error:
            raise LaunchError(f"cannot create the run folder {path}: {error}. Set MMSERVE_RUNS or pass --log FILE.")
    raise LaunchError(f"{root} already has 100 runs started this second")


def private_work_dir(run_dir: Path | None) -> tuple[Path, bool]:
    """tritonserver's working directory, 0700 (nothing planted where it was launched is imported):
    run_dir, else a new temporary folder. Returns (folder, whether it is temporary)."""
    if run_dir is None:
        return Path(tempfile.mkdtemp(prefix="mmserve-run-")), True
    folder = Path(run_dir).resolve()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    return folder, False


def child_environment(hide_keys: bool) -> tuple[dict[str, str], bool]:
    """The stub takes its Python prefix from the first python3 on PATH: make it ours.

    Its sys.path gets no working directory (PYTHONSAFEPATH; the cwd is the private run folder
    anyway) and no relative PYTHONPATH entry, which would name the launch folder. With
    hide_keys (keys on Triton's command line), the preload library that masks them in `ps`.
    Returns (environment, whether the keys are masked)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONSAFEPATH"] = "1"
    if "PYTHONPATH" in env:
        kept = [entry for entry in env["PYTHONPATH"].split(os.pathsep) if entry and os.path.isabs(entry)]
        env["PYTHONPATH"] = os.pathsep.join(kept)
    for secret in KEY_VARIABLES:
        env.pop(secret, None)  # model code has no business with them
    if not hide_keys:
        return env, False
    from mmserve.hide_keys import library

    hider = library()
    if hider is None:
        return env, False
    env["LD_PRELOAD"] = " ".join(filter(None, [str(hider), env.get("LD_PRELOAD")]))
    return env, True


def die_with_launcher() -> Any:
    """A preexec_fn asking Linux to SIGKILL the child when the thread that started it dies
    (the OOM killer's `kill -9` of `mmserve serve` included); its Python stubs notice their
    parent is gone and exit within a second. Only from the main thread: a worker thread that
    starts a server and ends would take the server with it. None elsewhere (atexit stays)."""
    if threading.current_thread() is not threading.main_thread() or not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def arm() -> None:  # runs in the child between fork and exec: no allocation-heavy work
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the launcher died before the signal was armed
            os._exit(1)

    return arm


def kill_group(pid: int) -> None:
    """SIGKILL a process group (the server and stubs that outlived it); gone already is fine."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def terminate_group(process: subprocess.Popen, timeout_s: float = STOP_GRACE_S) -> int:
    """SIGTERM, up to timeout_s for a clean exit, then SIGKILL for the whole process group."""
    try:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
    finally:  # even when a second Ctrl-C interrupts the graceful wait
        kill_group(process.pid)
        process.wait()
    return process.returncode
