"""Fine-tunes as background jobs: a small file-based queue, one job at a time.

The queue is the run folders (mmserve/products/runs.py) whose mode is finetune: a queued
run waits, the worker takes the oldest. One worker per runs folder at a time (an exclusive
`flock` on worker.lock), so a small machine trains one model at a time however many jobs
are asked for. The worker starts the ordinary training command (`mmserve train text|speech
... --resume`) as a child that dies with it, its output kept in the run's train.log, and
follows its progress from the checkpoint's metrics.json (each epoch's loss and dev metric)
and the log's progress bar. Then it writes the report (export to the run's own draft
repository, the held-out examples run through it).

- cancel: `mmserve jobs cancel ID` (or the console) drops a `cancel` file; the worker stops
  the training within a second. A queued job is cancelled at once.
- crash: a job left `running` by a worker that is gone is queued again; its training goes
  on from the last finished epoch (the training command's --resume).
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from mmserve.products.runs import (
    CANCELLED,
    FAILED,
    FINAL_STATES,
    QUEUED,
    RUNNING,
    Run,
    all_runs,
    products_root,
)

LOCK_FILE = "worker.lock"
CANCEL_FILE = "cancel"
TRAIN_LOG = "train.log"
POLL_S = 0.5
# Training processes per job (torchrun); the Kubernetes Job (docker/k8s/jobs/finetune-job.yaml) sets it.
PROCESSES_ENV = "MMSERVE_TRAIN_PROCESSES"
_BAR = re.compile(r"epoch (\d+)/(\d+):\s*(\d+)%")


def queued(root: Path | None = None) -> list[Run]:
    return [r for r in all_runs(root) if r.request.mode == "finetune" and r.status().state == QUEUED]


def jobs(root: Path | None = None, everything: bool = False) -> list[Run]:
    """The fine-tune jobs (all of them, or those not finished and the last few)."""
    runs = [r for r in all_runs(root) if r.request.mode == "finetune"]
    if everything:
        return runs
    active = [r for r in runs if r.status().state not in FINAL_STATES]
    return [r for r in runs[-5:] if r not in active] + active


def cancel(run: Run) -> str:
    state = run.status().state
    if state in FINAL_STATES:
        raise ValueError(f"job {run.id} is {state} already; nothing to cancel")
    if state == QUEUED:
        run.set_status(state=CANCELLED, stage="cancelled before it started")
        return f"cancelled {run.id} (it had not started)"
    run.path(CANCEL_FILE).touch()
    return f"cancelling {run.id}: its training stops within a second"


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(root: Path | None = None) -> list[Run]:
    """Jobs whose worker died while they ran, queued again to resume (called by a new worker)."""
    revived = []
    for run in all_runs(root):
        status = run.status()
        if run.request.mode == "finetune" and status.state == RUNNING and not _alive(status.pid):
            run.set_status(state=QUEUED, pid=None, stage=f"resuming after epoch {status.epoch}: its worker stopped")
            revived.append(run)
    return revived


@contextmanager
def worker_lock(root: Path) -> Iterator[bool]:
    """True when this process is the runs folder's one worker (until the block ends)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / LOCK_FILE).open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def work(root: Path | None = None, on_change: Callable[[Run], None] | None = None, stop: Callable[[], bool] = lambda: False) -> int:
    """Run queued jobs one at a time until none is left; returns how many ran (0 when another
    worker holds the queue)."""
    root = root or products_root()
    done = 0
    with worker_lock(root) as mine:
        if not mine:
            return 0
        recover(root)
        while not stop():
            waiting = queued(root)
            if not waiting:
                break
            run_job(waiting[0], on_change)
            done += 1
    return done


def training_command(run: Run) -> list[str]:
    """The training command a job runs (the same `mmserve train` a person would)."""
    from mmserve.kinds import InputShape
    from mmserve.products.create import CHECKPOINT_DIR, classification_kind

    request = run.request
    kind = classification_kind(request.kind)
    modality = "text" if kind.input is InputShape.TEXT else "speech"
    processes = int(os.environ.get(PROCESSES_ENV, "1") or 1)
    if processes > 1:  # torchrun, as `mmserve train` runs distributed (docs/architecture.md)
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    else:
        launcher = [sys.executable]
    command = [*launcher, "-m", "mmserve.cli", "train", modality]
    if modality == "text":
        command += ["--task", "classify"]
    command += ["--data", str(run.path("train.csv")), "--dev-data", str(run.path("heldout.csv")),
                "--out", str(run.path(CHECKPOINT_DIR)), "--resume", "--seed", str(request.seed)]
    if request.lora:
        command.append("--lora")
    if request.base:
        command += ["--base", request.base]
    if request.epochs:
        command += ["--epochs", str(request.epochs)]
    return command


def run_job(run: Run, on_change: Callable[[Run], None] | None = None) -> None:
    """Train, follow, and report one job; its state says how it ended."""
    from mmserve.products.create import CHECKPOINT_DIR

    notify = on_change or (lambda _run: None)
    run.path(CANCEL_FILE).unlink(missing_ok=True)
    started = time.perf_counter()
    run.set_status(state=RUNNING, pid=os.getpid(), stage="starting the training", error=None)
    notify(run)
    with run.path(TRAIN_LOG).open("ab") as log:
        log.write(f"\n$ {' '.join(training_command(run))}\n".encode())
        log.flush()
        child = subprocess.Popen(
            training_command(run), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        while child.poll() is None:
            if run.path(CANCEL_FILE).exists():
                _stop(child)
                run.set_status(state=CANCELLED, stage="cancelled during training", pid=None)
                notify(run)
                return
            _follow(run, run.path(CHECKPOINT_DIR))
            notify(run)
            time.sleep(POLL_S)
    _follow(run, run.path(CHECKPOINT_DIR))
    if child.returncode != 0:
        run.set_status(state=FAILED, pid=None, error=f"training exited with status {child.returncode}: "
                       f"{_log_tail(run.path(TRAIN_LOG))}")
        notify(run)
        return
    seconds_file = run.path("seconds.json")
    seconds = json.loads(seconds_file.read_text()) if seconds_file.exists() else {}
    seconds["train"] = time.perf_counter() - started
    seconds_file.write_text(json.dumps(seconds))
    # The report (an export and the held-out run) in a process of its own: the worker keeps no
    # torch memory between jobs, and a long-lived worker runs the code installed now.
    run.set_status(stage="exporting the checkpoint for the report")
    with run.path(TRAIN_LOG).open("ab") as log:
        reported = subprocess.run([sys.executable, "-m", "mmserve.cli", "jobs", "report", run.id],
                                  stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  preexec_fn=_die_with_parent, check=False)
    if reported.returncode != 0 and run.status().state != FAILED:
        run.set_status(state=FAILED, error=f"report: exited with status {reported.returncode}: {_log_tail(run.path(TRAIN_LOG))}")
    run.set_status(pid=None)
    notify(run)


def report_job(run: Run) -> int:
    """`mmserve jobs report ID`: the report of a trained job (the worker runs it in a child)."""
    from mmserve.products.create import report_finetune

    try:
        report_finetune(run)
    except Exception as error:  # noqa: BLE001 - the job fails with the reason
        run.set_status(state=FAILED, error=f"report: {type(error).__name__}: {error}")
        return 1
    return 0


def _follow(run: Run, checkpoint: Path) -> None:
    """Progress from the checkpoint's metrics.json (finished epochs) and the log's progress bar."""
    changes: dict = {}
    try:
        metrics = json.loads((checkpoint / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        metrics = {}
    history = metrics.get("history") or []
    if history:
        last = history[-1]
        metric = next((k for k in last if k.startswith("dev_") and k != "dev_loss"), None)
        changes.update(epoch=int(last.get("epoch", len(history))), train_loss=last.get("train_loss"),
                       dev_metric=metric, dev_value=last.get(metric) if metric else None, history=history)
    bar = _BAR.findall(_log_tail(run.path(TRAIN_LOG), 4000))
    if bar:
        epoch, epochs, percent = (int(v) for v in bar[-1])
        changes.update(epochs=epochs, stage=f"training epoch {epoch} of {epochs} ({percent}%)")
    if changes:
        run.set_status(**changes)


def _log_tail(path: Path, size: int = 600) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in re.split(r"[\r\n]+", text) if line.strip())[-size:]


def _stop(child: subprocess.Popen) -> None:
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _die_with_parent() -> None:
    """In the child: SIGKILL it when the worker dies (a crashed worker leaves no orphan training)."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def wait_for(run: Run, on_change: Callable[[Run], None] | None = None, poll_s: float = 1.0) -> Run:
    """Run the queue here if no worker does, else wait until `run` is finished."""
    while run.status().state not in FINAL_STATES:
        if run.status().state == QUEUED:
            work(on_change=on_change, stop=lambda: run.status().state in FINAL_STATES)
        if run.status().state not in FINAL_STATES:
            if on_change:
                on_change(run)
            time.sleep(poll_s)
    return run
