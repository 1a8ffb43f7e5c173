"""Every `mmserve train ...` command the README shows runs, as written, through the real CLI.

Only what must change for a test to cost seconds changes: tiny bases (`--base`, and for
CLIP a tiny architecture with its own weights file in place of ViT-B-32's), one epoch,
large batches, and placeholders (BASE, pairs.csv, keywords/) filled with tiny real data.
Paths the README gives that exist in the repository (the embedded data sets) are used as
they are, from the repository root, as a reader would. Each run prints its report once,
says which tensors are new instead of the libraries' load reports, and leaves a
checkpoint that loads.
"""
from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# Third-party output that must not reach a training user (transformers 4.x and 5.x wording).
NOISE = ("LOAD REPORT", "Some weights of", "You should probably TRAIN", "Loading weights", "Writing model shards",
         "newly initialized", "FutureWarning")
FAST = {  # (flag, value) appended per modality: one epoch, big batches
    "text": ["--epochs", "1", "--batch-size", "64", "--max-length", "32"],
    "speech": ["--epochs", "1", "--batch-size", "16", "--no-augment"],
    "clip": ["--epochs", "1", "--batch-size", "32"],
}
PATH_FLAGS = {"--data", "--dev-data", "--val-data", "--classes", "--templates", "--base", "--pretrained", "--arch"}


def readme_train_commands() -> list[tuple[list[str], list[str]]]:
    """(argv after `mmserve`, options named in the trailing comment) for each README train line."""
    commands = []
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", README.read_text(encoding="utf-8"), re.S):
        for line in block.splitlines():
            line = line.strip()
            if line.startswith("mmserve train "):
                command, _, comment = line.partition("#")
                commands.append((shlex.split(command)[1:], re.findall(r"--[a-z-]+", comment)))
    return commands


COMMANDS = readme_train_commands()


def _id(command: tuple[list[str], list[str]]) -> str:
    argv = command[0]
    return "-".join([argv[1], *(argv[i + 1] for i, a in enumerate(argv) if a == "--task")])


def test_the_readme_shows_a_train_command_per_modality():
    assert sorted({argv[1] for argv, _ in COMMANDS}) == ["clip", "speech", "text"]
    assert sorted(_id(c) for c in COMMANDS) == ["clip", "speech", "text-classify", "text-ner"]


@pytest.fixture(scope="module")
def placeholders(tmp_path_factory, tiny_bert: Path) -> dict[tuple[str, str], str]:
    """(modality, flag) -> what stands in for the README's placeholder or real-size value."""
    folder = tmp_path_factory.mktemp("readme")
    return {
        ("text", "--base"): str(tiny_bert),
        **_clip_stand_ins(folder / "clip"),
        **_speech_stand_ins(folder / "speech"),
    }


def _clip_stand_ins(folder: Path) -> dict[tuple[str, str], str]:
    """A tiny architecture JSON and a weights file for it in open_clip's own .bin format."""
    import open_clip
    import torch
    from lines_clip import TINY_CLIP_CONFIG

    from mmserve.training.clip import resolve_arch
    from mmserve.training.clip_shapes import write_dataset

    folder.mkdir(parents=True)
    arch = folder / "tiny-clip.json"
    arch.write_text(json.dumps(TINY_CLIP_CONFIG))
    name, _ = resolve_arch(str(arch))
    torch.manual_seed(0)
    torch.save(open_clip.create_model(name).state_dict(), folder / "open_clip_pytorch_model.bin")
    data = write_dataset(folder / "shapes", n_train=64, n_val=8, n_test=8, n_unseen=4, image_size=40)
    return {
        ("clip", "--arch"): str(arch),
        ("clip", "--pretrained"): str(folder / "open_clip_pytorch_model.bin"),
        ("clip", "--data"): str(data.train),
    }


def _speech_stand_ins(folder: Path) -> dict[tuple[str, str], str]:
    """A tiny Whisper with (random) weights, so the base loads as a pretrained one does, and keywords."""
    import torch
    from lines_speech import tiny_keyword_spec
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    from mmserve.training.speech_keywords import synthesise_keywords
    from mmserve.training.speech_tiny import make_tiny_whisper

    config_folder = make_tiny_whisper(folder / "tiny-whisper-config")
    torch.manual_seed(0)
    base = folder / "tiny-whisper"
    WhisperModel(WhisperConfig.from_pretrained(config_folder)).save_pretrained(base)
    WhisperFeatureExtractor.from_pretrained(config_folder).save_pretrained(base)
    data = synthesise_keywords(folder / "keywords", tiny_keyword_spec())
    return {("speech", "--base"): str(base), ("speech", "--data"): str(data.train)}


def as_test_run(argv: list[str], placeholders: dict[tuple[str, str], str], out: Path) -> list[str]:
    """The README command with stand-ins, --out in the test's folder and the FAST options."""
    modality = argv[1]
    run = list(argv)
    for i, flag in enumerate(argv[:-1]):
        if flag == "--out":
            run[i + 1] = str(out)
        elif (modality, flag) in placeholders:
            run[i + 1] = placeholders[modality, flag]
        elif flag in PATH_FLAGS:
            assert (ROOT / argv[i + 1]).exists(), f"README names {argv[i + 1]}, which is not in the repository"
    if (modality, "--base") in placeholders and "--base" not in argv:
        run += ["--base", placeholders[modality, "--base"]]
    return run + FAST[modality]


def run_cli(argv: list[str], capfd) -> tuple[int, str, str]:
    """main(argv) in this process; (exit code, its stdout, its stderr) and nothing from before."""
    from mmserve.cli import main

    capfd.readouterr()
    code = main(argv)
    captured = capfd.readouterr()
    return code, captured.out, captured.err


def assert_reads_well(out: str, err: str, checkpoint: Path, new_head: bool) -> None:
    assert out.count("best epoch") == 1, out  # the report, once
    assert out.count(f"checkpoint: {checkpoint}") == 1, out
    for noise in NOISE:
        assert noise not in out + err, f"{noise!r} reached the user:\n{out}\n{err}"
    assert ("new head: " in out) == new_head, out


@pytest.mark.parametrize("command", COMMANDS, ids=_id)
def test_a_readme_train_command_runs(command, placeholders, tmp_path, capfd, monkeypatch):
    argv, comment_options = command
    modality = argv[1]
    monkeypatch.chdir(ROOT)  # the README's relative paths are from the repository root
    out = tmp_path / "ckpt"
    code, stdout, stderr = run_cli(as_test_run(argv, placeholders, out), capfd)
    assert code == 0, stderr[-3000:]
    assert_reads_well(stdout, stderr, out, new_head=modality in ("text", "speech"))
    load_checkpoint(modality, out)
    if "--dev-data" in argv:  # the flag that crashed the run after its first epoch
        dev_data = json.loads((out / "training_config.json").read_text())["dev_data"]
        # recorded where it is (absolute: a card must not depend on where training ran from)
        assert dev_data == str((ROOT / argv[argv.index("--dev-data") + 1]).resolve())

    if "--resume" in comment_options:  # e.g. "--lora, --resume, --overwrite": each works on this command
        code, stdout, stderr = run_cli(as_test_run(argv, placeholders, out) + ["--resume", "--epochs", "2"], capfd)
        assert code == 0, stderr[-3000:]
        assert "resuming after epoch 1 of 2" in stdout
        assert_reads_well(stdout, stderr, out, new_head=True)
        assert len(json.loads((out / "metrics.json").read_text())["history"]) == 2
    if "--overwrite" in comment_options:  # a new run in place of the one just trained
        code, stdout, stderr = run_cli(as_test_run(argv, placeholders, out) + ["--overwrite"], capfd)
        assert code == 0, stderr[-3000:]
        assert_reads_well(stdout, stderr, out, new_head=True)
        assert len(json.loads((out / "metrics.json").read_text())["history"]) == 1
    if "--lora" in comment_options:
        lora_out = tmp_path / "ckpt-lora"
        code, stdout, stderr = run_cli(as_test_run(argv, placeholders, lora_out) + ["--lora"], capfd)
        assert code == 0, stderr[-3000:]
        assert_reads_well(stdout, stderr, lora_out, new_head=True)
        assert (lora_out / "adapter" / "adapter_config.json").is_file()
        load_checkpoint(modality, lora_out)


def load_checkpoint(modality: str, folder: Path) -> None:
    if modality == "text":
        from mmserve.training.text_checkpoint import load_text_checkpoint

        assert load_text_checkpoint(folder).labels
    elif modality == "speech":
        from mmserve.training.speech_checkpoint import load_speech_checkpoint

        assert load_speech_checkpoint(folder).labels
    else:
        from mmserve.training.clip_checkpoint import load_clip_checkpoint

        assert load_clip_checkpoint(folder).classes
