"""A finished model is never lost to a mistyped --out: every trainer (text, speech, CLIP)
refuses a folder that already holds a checkpoint unless told to --resume or --overwrite."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lines_clip import TINY_CLIP_CONFIG
from lines_speech import speech_paths, tiny_keyword_spec
from mmserve.training.errors import OutputExistsError

REFUSAL = r"already holds a checkpoint \(.*metrics\.json.*\); pass --resume to continue that run, --overwrite"


def folder_state(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def topics(tmp_path_factory) -> Path:
    rows = [f"i like {w} a lot,{label}" for label, words in {"food": ["soup", "rice", "pie"], "sport": ["golf", "judo", "polo"]}.items()
            for w in words for _ in range(3)]
    path = tmp_path_factory.mktemp("topics") / "topics.csv"
    path.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def text_config(tiny_bert: Path, data: Path, out: Path, **options):
    from mmserve.training.text import TextTrainConfig

    return TextTrainConfig(base=str(tiny_bert), task="classify", data=str(data), out=str(out), epochs=1,
                           batch_size=8, max_length=16, lr=1e-3, **options)


def test_text_refuses_an_existing_checkpoint_and_replaces_it_only_when_told(tiny_bert, topics, tmp_path):
    from mmserve.training.text import train_text

    out = tmp_path / "ckpt"
    train_text(text_config(tiny_bert, topics, out))
    before = folder_state(out)
    with pytest.raises(OutputExistsError, match=REFUSAL):
        train_text(text_config(tiny_bert, topics, out, seed=7))
    assert folder_state(out) == before  # refused before anything was written

    replaced = train_text(text_config(tiny_bert, topics, out, seed=7, overwrite=True))
    assert replaced.metrics["history"][0]["epoch"] == 1 and len(replaced.metrics["history"]) == 1
    assert json.loads((out / "training_config.json").read_text())["seed"] == 7
    assert folder_state(out)["model.safetensors"] != before["model.safetensors"]

    # --resume where the run's state is gone: resuming is impossible, overwriting is not implied
    import shutil

    shutil.rmtree(out / "last")
    with pytest.raises(OutputExistsError, match=r"holds a checkpoint .* but no resume state .*; pass --overwrite"):
        train_text(text_config(tiny_bert, topics, out, resume=True))


def test_text_may_train_into_a_folder_without_a_checkpoint(tiny_bert, topics, tmp_path):
    from mmserve.training.text import train_text

    out = tmp_path / "notes"
    out.mkdir()
    (out / "README.txt").write_text("my notes")
    train_text(text_config(tiny_bert, topics, out))
    assert (out / "README.txt").read_text() == "my notes" and (out / "metrics.json").is_file()


def test_the_cli_says_what_to_do(tiny_bert, topics, tmp_path, capsys):
    from mmserve.cli import main

    out = tmp_path / "ckpt"
    argv = ["train", "text", "--task", "classify", "--base", str(tiny_bert), "--data", str(topics), "--out", str(out),
            "--epochs", "1", "--batch-size", "8", "--max-length", "16"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mmserve: {out} already holds a checkpoint") and "Traceback" not in err
    assert main([*argv, "--overwrite"]) == 0


def test_speech_refuses_an_existing_checkpoint(workdir, tmp_path):
    from mmserve.training.speech_keywords import synthesise_keywords
    from mmserve.training.speech import SpeechTrainConfig, train_speech
    from mmserve.training.speech_tiny import make_tiny_whisper

    data = synthesise_keywords(speech_paths(workdir).data, tiny_keyword_spec())
    base = make_tiny_whisper(tmp_path / "tiny-whisper")
    config = dict(base=str(base), data=str(data.train), out=str(tmp_path / "kws"), epochs=1, lr=1e-3, dev_fraction=0.3)
    train_speech(SpeechTrainConfig(**config))
    before = folder_state(tmp_path / "kws")
    with pytest.raises(OutputExistsError, match=REFUSAL):
        train_speech(SpeechTrainConfig(**config))
    assert folder_state(tmp_path / "kws") == before
    assert train_speech(SpeechTrainConfig(**config, overwrite=True)).checkpoint == tmp_path / "kws"


def test_clip_refuses_an_existing_checkpoint(workdir, tmp_path):
    from mmserve.training.clip import ClipTrainConfig, train_clip
    from mmserve.training.clip_shapes import write_dataset

    data = write_dataset(tmp_path / "shapes", n_train=40, n_val=8, n_test=4, n_unseen=4, image_size=40)
    arch = tmp_path / "tiny-clip.json"
    arch.write_text(json.dumps(TINY_CLIP_CONFIG))
    config = dict(arch=str(arch), data=str(data.train), val_data=str(data.val), out=str(tmp_path / "clip"),
                  epochs=1, batch_size=20, lr=1e-3, workers=0)
    train_clip(ClipTrainConfig(**config))
    before = folder_state(tmp_path / "clip")
    with pytest.raises(OutputExistsError, match=REFUSAL):
        train_clip(ClipTrainConfig(**config))
    assert folder_state(tmp_path / "clip") == before
    assert train_clip(ClipTrainConfig(**config, overwrite=True)).checkpoint == tmp_path / "clip"
