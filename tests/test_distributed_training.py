"""`mmserve train` under torchrun: two CPU processes on gloo learn what one process learns.

The two-process run takes the same global batches (each process half of each) and must
reach the same dev metrics as one process with the same global batch size; only rank 0
writes files and prints the report.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from subsets import subset_csv

GLOBAL_BATCH = 8
EPOCHS = 6  # (3 + 3 resumed) what a randomly initialised tiny BERT needs to move off chance on 52 rows


@pytest.fixture(scope="module")
def intents_60(tmp_path_factory) -> Path:
    """60 rows of the embedded intents data: 15 of each of its first 4 labels."""
    from mmserve.training.defaults import embedded_data

    return subset_csv(embedded_data("intents"), tmp_path_factory.mktemp("intents") / "intents-60.csv", 4, 15)


@pytest.fixture(scope="module")
def tiny_bert_without_dropout(tiny_bert: Path, tmp_path_factory) -> Path:
    """The tiny BERT with dropout off: dropout masks are the one thing that differs between a
    process that sees a whole batch and two that see a half each, so without it both runs
    compute the same steps and their metrics can be compared closely."""
    from transformers import AutoTokenizer, BertModel

    model = BertModel.from_pretrained(tiny_bert, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    out = tmp_path_factory.mktemp("bert") / "tiny-bert-no-dropout"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(out)
    return out


def train_args(base: Path, data: Path, out: Path, batch_size: int) -> list[str]:
    return [
        "-m", "mmserve.cli", "train", "text", "--task", "classify", "--base", str(base), "--data", str(data),
        "--out", str(out), "--epochs", str(EPOCHS), "--batch-size", str(batch_size), "--lr", "3e-3",
    ]


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run_together(*commands: list[str], ok: bool = True) -> list[subprocess.CompletedProcess]:
    """Independent training runs at once (each single-threaded; most of a run is starting
    Python and importing torch, which overlaps): their results, each checked to have
    succeeded when ``ok``."""
    started = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for c in commands]
    results = []
    try:
        for command, process in zip(commands, started):
            stdout, stderr = process.communicate(timeout=600)
            results.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
    for result in results if ok else ():
        assert result.returncode == 0, f"{' '.join(result.args)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return results


def run(command: list[str]) -> subprocess.CompletedProcess:
    return run_together(command)[0]


def files_in(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and "runs" not in p.parts}


def test_two_processes_match_one_and_resume_and_refuse_like_it(
    tiny_bert_without_dropout: Path, intents_60: Path, tmp_path: Path
):
    """Two processes on gloo learn what one process learns (same global batches), rank 0
    alone writes and prints; an occupied --out stops every rank with rank 0's message (none
    left waiting); --resume loads rank 0's saved state on every rank and continues as a
    resumed single process does. One test, so each phase's runs serve the next one."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    first = EPOCHS // 2

    def epochs(args: list[str], epochs: int) -> list[str]:
        return [*args[: args.index("--epochs") + 1], str(epochs), *args[args.index("--epochs") + 2 :]]

    single, double = tmp_path / "single", tmp_path / "double"
    one = train_args(tiny_bert_without_dropout, intents_60, single, GLOBAL_BATCH)
    # per-process batch (--batch-size) = global batch / world size
    two = [*torchrun, *train_args(tiny_bert_without_dropout, intents_60, double, GLOBAL_BATCH // 2)]
    _, started = run_together([sys.executable, *epochs(one, first)], epochs(two, first))

    one_metrics = json.loads((single / "metrics.json").read_text())
    two_metrics = json.loads((double / "metrics.json").read_text())
    assert two_metrics["n_train"] == one_metrics["n_train"] and two_metrics["n_dev"] == one_metrics["n_dev"]
    # rank 0 alone wrote: the same files as one process, one set of TensorBoard curves
    assert files_in(double) == files_in(single)
    assert len(list((double / "runs").glob("events.out.tfevents.*"))) == 1
    # and rank 0 alone printed the report and the checkpoint line
    assert started.stdout.count("best epoch") == 1, started.stdout
    assert started.stdout.count(f"checkpoint: {double}") == 1, started.stdout
    assert started.stdout.count(f"epoch {first}: train loss") == 1, started.stdout

    # the refusal, while the single process resumes (it writes only in its own folder)
    refused, resumed_one = run_together(epochs(two, first), [sys.executable, *epochs(one, EPOCHS), "--resume"], ok=False)
    assert resumed_one.returncode == 0, resumed_one.stderr[-3000:]
    assert refused.returncode != 0
    assert refused.stderr.count("already holds a checkpoint") == 2, refused.stderr[-3000:]  # each rank, same words

    resumed = run([*epochs(two, EPOCHS), "--resume"])
    assert resumed.stdout.count(f"resuming after epoch {first} of {EPOCHS}") == 1, resumed.stdout
    one_metrics = json.loads((single / "metrics.json").read_text())
    two_metrics = json.loads((double / "metrics.json").read_text())
    assert len(two_metrics["history"]) == EPOCHS
    for one_epoch, two_epoch in zip(one_metrics["history"], two_metrics["history"], strict=True):
        assert abs(one_epoch["dev_accuracy"] - two_epoch["dev_accuracy"]) <= 0.01, (one_epoch, two_epoch)
        assert two_epoch["dev_loss"] == pytest.approx(one_epoch["dev_loss"], rel=0.02), (one_epoch, two_epoch)
        assert two_epoch["train_loss"] == pytest.approx(one_epoch["train_loss"], rel=0.02), (one_epoch, two_epoch)
    assert two_metrics["best_epoch"] == one_metrics["best_epoch"]
    history = one_metrics["history"]
    # it learned (3 epochs, then 3 more on the resumed schedule): the match means something
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 0.02, history
