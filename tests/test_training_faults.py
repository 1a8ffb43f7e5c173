"""Training under faults: a real SIGKILL to a real `mmserve train` process, and to processes
caught in the middle of writing training output.

A run killed mid-epoch and resumed with --resume must end where an uninterrupted run
ends; a kill at any instant must leave every file whole (old or new version, never torn)
and a checkpoint folder that never mixes two epochs.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mmserve.training.files import STAGING_DIR, finish_interrupted
from mmserve.training.text_checkpoint import load_text_checkpoint

MMSERVE = [sys.executable, "-m", "mmserve.cli"]
EPOCHS = 2
TOPICS = {
    "food": ["pizza", "pasta", "salad", "soup", "bread", "rice"],
    "sports": ["football", "tennis", "hockey", "golf", "rugby", "chess"],
    "weather": ["rain", "snow", "sunshine", "fog", "wind", "hail"],
}
TEMPLATES = ["{}", "{} {}", "the {}"]  # short: a tiny random BERT learns them in 2 epochs


def write_topics(path: Path, per_label: int, seed: int) -> Path:
    rng = random.Random(seed)
    rows = [
        f"{rng.choice(TEMPLATES).replace('{}', rng.choice(words))},{label}"
        for label, words in TOPICS.items() for _ in range(per_label)
    ]
    rng.shuffle(rows)
    path.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def topics(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("topics")
    return write_topics(folder / "train.csv", 60, seed=1), write_topics(folder / "dev.csv", 20, seed=2)


def train_command(base: Path, data: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    """Small batches make an epoch long enough (45 steps) to be killed in the middle of."""
    return [
        *MMSERVE, "train", "text", "--task", "classify", "--base", str(base), "--data", str(data[0]),
        "--dev-data", str(data[1]), "--out", str(out), "--epochs", str(EPOCHS), "--batch-size", "4",
        "--max-length", "16", "--lr", "5e-3", *extra,
    ]


class StderrWatcher:
    """Reads a child's stderr as it comes and signals once a pattern shows up."""

    def __init__(self, process: subprocess.Popen, pattern: re.Pattern, accept) -> None:
        self.text = ""
        self.matched = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(process, pattern, accept), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen, pattern: re.Pattern, accept) -> None:
        while chunk := os.read(process.stderr.fileno(), 4096):
            self.text += chunk.decode("utf-8", "replace")
            if any(accept(m) for m in pattern.finditer(self.text[-8192:])):
                self.matched.set()

    def join(self) -> None:
        self._thread.join(timeout=30)


def test_killed_mid_epoch_and_resumed_ends_where_an_uninterrupted_run_does(tiny_bert, topics, tmp_path, capsys, request):
    # the uninterrupted run goes on beside the one to be killed (each alone in its folder)
    straight_log = tmp_path / "straight.log"
    with straight_log.open("w") as log:
        straight = subprocess.Popen(train_command(tiny_bert, topics, tmp_path / "straight"), stdout=log, stderr=log)
    request.addfinalizer(lambda: straight.poll() is None and straight.kill())  # a failed check leaves none behind

    out = tmp_path / "killed"
    process = subprocess.Popen(train_command(tiny_bert, topics, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # our own progress bar says where the run is: kill in the first half of epoch 2
    progress = re.compile(rf"epoch 2/{EPOCHS}:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)")
    watcher = StderrWatcher(process, progress, lambda m: 0 < int(m.group(1)) <= int(m.group(2)) // 2)
    try:
        seen = watcher.matched.wait(timeout=600)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=60)
        watcher.join()
    assert seen, f"never saw epoch 2 under way:\n{watcher.text[-3000:]}"
    assert process.returncode == -signal.SIGKILL

    assert straight.wait(timeout=600) == 0, straight_log.read_text()[-3000:]

    state = json.loads((out / "last" / "state.json").read_text())
    assert 1 <= state["epochs_done"] < EPOCHS  # killed after epoch 1 was saved, before the run finished
    # what the kill left is whole: the best checkpoint so far loads, metrics.json parses
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_epoch"] <= state["epochs_done"] == len(metrics["history"])
    assert load_text_checkpoint(out).labels == sorted(TOPICS)

    from mmserve.cli import main

    assert main(train_command(tiny_bert, topics, out)[3:]) == 2  # without --resume: refused, nothing lost
    refusal = capsys.readouterr().err
    assert "already holds a checkpoint" in refusal and "--resume" in refusal and "--overwrite" in refusal

    resumed = subprocess.run(train_command(tiny_bert, topics, out, "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming after epoch {state['epochs_done']} of {EPOCHS}" in resumed.stdout
    assert resumed.stdout.count("best epoch") == 1  # the report is printed once

    expected = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    got = json.loads((out / "metrics.json").read_text())
    def epochs(metrics: dict) -> str:
        return "; ".join(f"accuracy {h['dev_accuracy']:.4f} dev loss {h['dev_loss']:.5f}" for h in metrics["history"])

    print(f"uninterrupted: {epochs(expected)} | killed in epoch {state['epochs_done'] + 1}, resumed: {epochs(got)}")
    assert [h["epoch"] for h in got["history"]] == list(range(1, EPOCHS + 1))
    assert got["dev_accuracy"] == pytest.approx(expected["dev_accuracy"], abs=0.01)  # within 1 point
    assert got["dev_macro_f1"] == pytest.approx(expected["dev_macro_f1"], abs=0.01)
    for a, b in zip(expected["history"], got["history"], strict=True):
        assert b["dev_accuracy"] == pytest.approx(a["dev_accuracy"], abs=0.01)
        # weights, optimizer, schedule, RNG and data order all came back: the losses agree too
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["dev_loss"] == pytest.approx(a["dev_loss"], rel=1e-4)
    assert not (out / STAGING_DIR).exists() and not list(out.glob("last.*"))
    reloaded = load_text_checkpoint(out)
    assert reloaded.labels == sorted(TOPICS)


# --- a kill while output is being written -------------------------------------------------

# Each child writes versions 0, 1, 2, ... of some training output, printing each version
# once it is written; the test kills it at a random moment and checks what is on disk.
WRITERS = {
    "json": """
        from mmserve.training.files import write_json
        for version in range(10**6):
            write_json(target / "metrics.json", {"version": version, "blob": str(version % 10) * 4_000_000})
            print(version, flush=True)
    """,
    "checkpoint": """
        from mmserve.training.files import staged_update, write_json
        for version in range(10**6):
            with staged_update(target, move_last=("metrics.json",)) as staging:
                for i in range(40):
                    (staging / f"shard-{i:02d}.bin").write_bytes(bytes([version % 256]) * 20_000)
                (staging / "adapter").mkdir()
                (staging / "adapter" / "adapter.bin").write_bytes(bytes([version % 256]) * 20_000)
                write_json(staging / "metrics.json", {"version": version})
            print(version, flush=True)
    """,
    "resume state": """
        from mmserve.training.files import partial_folder, replace_folder, write_json
        for version in range(10**6):
            partial = partial_folder(target / "last")
            (partial / "model.safetensors").write_bytes(bytes([version % 256]) * 500_000)
            write_json(partial / "state.json", {"version": version})
            replace_folder(partial, target / "last")
            print(version, flush=True)
    """,
}


def kill_while_writing(kind: str, target: Path, seed: int) -> int:
    """Start the writer, let it finish a few versions, SIGKILL it at a random moment; the last version it reported."""
    code = "from pathlib import Path\ntarget = Path(__import__('sys').argv[1])\n" + textwrap.dedent(WRITERS[kind])
    process = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        reported = [int(process.stdout.readline()) for _ in range(2)]
        started = time.monotonic()
        reported.append(int(process.stdout.readline()))
        period = time.monotonic() - started  # how long one version takes to write
        time.sleep(random.Random(seed).uniform(0, period))  # to land somewhere inside the next one
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        reported += [int(line) for line in process.stdout.read().split()]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    return reported[-1]


@pytest.mark.parametrize("seed", range(6))
def test_a_killed_json_write_leaves_the_old_or_the_new_file(tmp_path, seed):
    last = kill_while_writing("json", tmp_path, seed)
    finish_interrupted(tmp_path)
    written = json.loads((tmp_path / "metrics.json").read_text())  # never torn: always parses
    assert written["version"] in (last, last + 1) and written["blob"] == str(written["version"] % 10) * 4_000_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporary files left


@pytest.mark.parametrize("seed", range(6))
def test_a_killed_checkpoint_commit_never_mixes_two_versions(tmp_path, seed):
    last = kill_while_writing("checkpoint", tmp_path, seed)
    finish_interrupted(tmp_path)  # what the next run does first
    version = json.loads((tmp_path / "metrics.json").read_text())["version"]
    assert version in (last, last + 1)
    files = sorted(tmp_path.glob("shard-*.bin")) + [tmp_path / "adapter" / "adapter.bin"]
    assert len(files) == 41
    assert {f.read_bytes() for f in files} == {bytes([version % 256]) * 20_000}  # every file of one version
    assert not (tmp_path / STAGING_DIR).exists()


@pytest.mark.parametrize("seed", range(6))
def test_a_killed_resume_state_swap_keeps_a_whole_state(tmp_path, seed):
    last = kill_while_writing("resume state", tmp_path, seed)
    finish_interrupted(tmp_path, swapped=("last",))
    version = json.loads((tmp_path / "last" / "state.json").read_text())["version"]
    assert version in (last, last + 1)
    assert (tmp_path / "last" / "model.safetensors").read_bytes() == bytes([version % 256]) * 500_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # no last.old / last.partial
