"""CLIP training: data files, architectures, the loop (full, LoRA, locked tower, resume), checkpoints."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lines_clip import TINY_CLIP_CONFIG, tiny_clip_checkpoint
from mmserve.training.clip_data import read_classes, read_pairs, read_templates, split_val
from mmserve.training.errors import DataError, ResumeError, TrainingError


@pytest.fixture(scope="module")
def shapes(workdir: Path):
    from mmserve.training.clip_shapes import write_dataset

    tiny_clip_checkpoint(workdir)  # writes workdir/shapes as a side effect, once per session
    return write_dataset(workdir / "shapes", n_train=64, n_val=24, n_test=24, n_unseen=12, image_size=40)


@pytest.fixture(scope="module")
def arch(workdir: Path) -> Path:
    path = workdir / "tiny-clip-wrapped.json"
    path.write_text(json.dumps({"model_cfg": TINY_CLIP_CONFIG}))  # the open_clip_config.json shape works too
    return path


def _config(shapes, out: Path, arch: Path, **overrides):
    from mmserve.training.clip import ClipTrainConfig

    settings = dict(
        arch=str(arch), data=str(shapes.train), val_data=str(shapes.val), classes=str(shapes.classes),
        out=str(out), epochs=1, batch_size=32, lr=1e-3,
    )
    return ClipTrainConfig(**{**settings, **overrides})


# --- data files -----------------------------------------------------------------------------


def test_csv_tsv_and_jsonl_pairs_resolve_relative_paths(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(b"x")
    (tmp_path / "a.csv").write_text('image,caption,label\nimg/a.jpg,"a cat, sitting",cat\n', encoding="utf-8")
    (tmp_path / "a.tsv").write_text("filepath\ttitle\nimg/a.jpg\ta cat\n", encoding="utf-8")  # open_clip's trainer format
    (tmp_path / "a.jsonl").write_text(json.dumps({"image": "img/a.jpg", "caption": "a cat"}) + "\n", encoding="utf-8")
    csv_pairs = read_pairs(tmp_path / "a.csv")
    assert csv_pairs[0].image == tmp_path / "img" / "a.jpg" and csv_pairs[0].caption == "a cat, sitting"
    assert csv_pairs[0].label == "cat"
    assert read_pairs(tmp_path / "a.tsv")[0].caption == "a cat" and read_pairs(tmp_path / "a.tsv")[0].label is None
    assert read_pairs(tmp_path / "a.jsonl")[0].image == tmp_path / "img" / "a.jpg"


@pytest.mark.parametrize(
    "content, message",
    [
        ("picture,caption\nx.jpg,a\n", r"no image column"),
        ("image,caption\nmissing.jpg,a cat\n", r"a.csv:2: image file .*missing.jpg does not exist"),
        ("image,caption\nimg/a.jpg,  \n", r"a.csv:2: empty caption"),
        ("image,caption,label\nimg/a.jpg,a,cat\nimg/a.jpg,b,\n", r"1 of 2 rows have no label"),
        ("image,caption\n", r"no rows"),
    ],
)
def test_bad_data_files_name_file_and_line(tmp_path, content, message):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(b"x")
    (tmp_path / "a.csv").write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_pairs(tmp_path / "a.csv")


def test_classes_and_templates_files(tmp_path):
    (tmp_path / "c.txt").write_text("# colours\nred\n\nblue\n", encoding="utf-8")
    assert read_classes(tmp_path / "c.txt") == ["red", "blue"]
    (tmp_path / "t.json").write_text('["a photo of a {}.", "a {} thing"]', encoding="utf-8")
    assert read_templates(tmp_path / "t.json") == ["a photo of a {}.", "a {} thing"]
    (tmp_path / "bad.txt").write_text("a photo\n", encoding="utf-8")
    with pytest.raises(DataError, match="must contain"):
        read_templates(tmp_path / "bad.txt")
    (tmp_path / "dup.txt").write_text("red\nred\n", encoding="utf-8")
    with pytest.raises(DataError, match="duplicate"):
        read_classes(tmp_path / "dup.txt")


def test_val_split_is_seeded_and_disjoint(shapes):
    pairs = read_pairs(shapes.train)
    train, val = split_val(pairs, 0.25, seed=3)
    assert len(val) == 16 and not {p.image for p in train} & {p.image for p in val}
    assert split_val(pairs, 0.25, seed=3) == (train, val)


# --- architectures ---------------------------------------------------------------------------


def test_architecture_json_is_registered_with_open_clip(arch):
    import open_clip

    from mmserve.training.clip import resolve_arch

    name, config = resolve_arch(str(arch))
    assert name == arch.stem and name in open_clip.list_models()
    assert open_clip.get_model_config(name)["vision_cfg"] == TINY_CLIP_CONFIG["vision_cfg"]
    assert resolve_arch("ViT-B-32")[1]["embed_dim"] == 512
    with pytest.raises(TrainingError, match="unknown architecture"):
        resolve_arch("ViT-Nope-1")


def test_pretrained_file_must_exist(shapes, tmp_path, arch):
    from mmserve.training.clip import train_clip

    with pytest.raises(TrainingError, match="no such file"):
        train_clip(_config(shapes, tmp_path / "out", arch, pretrained=str(tmp_path / "missing.bin")))


# --- the loop and its checkpoints --------------------------------------------------------------


def test_checkpoint_is_open_clips_own_format_with_serving_settings(workdir):
    import open_clip
    import torch

    checkpoint = tiny_clip_checkpoint(workdir)
    settings = json.loads((checkpoint / "mmserve_clip.json").read_text())
    assert settings["kind"] == "clip" and settings["tokenizer"] == {
        "type": "SimpleTokenizer", "context_length": 16, "clean": "lower", "reduction_mask": "", "hf_tokenizer_name": "",
    }
    assert settings["prompt_templates"] and len(settings["classes"]) == 30
    preprocess = json.loads((checkpoint / "open_clip_config.json").read_text())["preprocess_cfg"]
    assert preprocess["size"] in (32, [32, 32]) and preprocess["interpolation"] == "bicubic" and len(preprocess["mean"]) == 3
    metrics = json.loads((checkpoint / "metrics.json").read_text())
    assert {"zero_shot_top1", "image_to_text_r1", "text_to_image_r5"} <= set(metrics["history"][0])
    assert list((checkpoint / "runs").iterdir())  # TensorBoard event file

    model, _, preprocess_val = open_clip.create_model_and_transforms(f"local-dir:{checkpoint}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{checkpoint}")
    with torch.no_grad():
        text = model.encode_text(tokenizer(["a photo of a red circle"]))
    assert text.shape == (1, TINY_CLIP_CONFIG["embed_dim"]) and tokenizer.context_length == 16


def test_resume_continues_from_the_last_epoch(shapes, tmp_path, arch, capsys):
    from mmserve.training.clip import train_clip

    out = tmp_path / "resumed"
    train_clip(_config(shapes, out, arch, epochs=1))
    first = json.loads((out / "metrics.json").read_text())["history"]
    result = train_clip(_config(shapes, out, arch, epochs=2, resume=True))
    assert "resuming after epoch 1 of 2" in capsys.readouterr().out
    assert [h["epoch"] for h in result.metrics["history"]] == [1, 2]
    assert result.metrics["history"][0] == first[0]
    with pytest.raises(ResumeError, match="lora"):
        train_clip(_config(shapes, out, arch, epochs=3, resume=True, lora=True))


def test_lora_checkpoint_is_merged_and_loads_as_plain_open_clip(shapes, tmp_path, arch):
    from mmserve.training.clip import train_clip
    from mmserve.training.clip_checkpoint import load_clip_checkpoint

    out = tmp_path / "lora"
    train_clip(_config(shapes, out, arch, lora=True))
    assert (out / "adapter" / "adapter_config.json").is_file()
    loaded = load_clip_checkpoint(out)  # strict load: merged weights, no LoRA keys
    assert not any("lora" in key for key in loaded.model.state_dict())


def test_locked_image_tower_keeps_its_weights(shapes, tmp_path, arch):
    import torch

    from mmserve.training.clip import build_model, train_clip
    from mmserve.training.clip_checkpoint import load_clip_checkpoint
    from mmserve.training.loop import seed_everything

    config = _config(shapes, tmp_path / "locked", arch, lock_image=True)
    seed_everything(config.seed)
    initial = build_model(config)[0]
    train_clip(config)
    trained = load_clip_checkpoint(tmp_path / "locked").model
    for (name, before), after in zip(initial.visual.state_dict().items(), trained.visual.state_dict().values()):
        assert torch.equal(before, after), name
    assert not torch.equal(initial.text_projection, trained.text_projection)


def test_evaluate_a_saved_checkpoint_on_held_out_data(workdir, shapes):
    from mmserve.training.clip import evaluate_clip

    metrics = evaluate_clip(tiny_clip_checkpoint(workdir), shapes.test)
    assert 0 <= metrics["zero_shot_top1"] <= metrics["zero_shot_top5"] <= 1
    assert 0 <= metrics["image_to_text_r1"] <= metrics["image_to_text_r5"] <= 1


def test_retrieval_metrics_treat_equal_captions_as_one_text():
    from mmserve.training.clip_eval import retrieval_metrics

    images = np.array([[1.0, 0.0], [0.0, 1.0], [0.1, 0.9]], dtype=np.float32)
    texts = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    metrics = retrieval_metrics(images, texts, ["a", "b", "b"])  # images 1 and 2 share caption "b"
    assert metrics["image_to_text_r1"] == 1.0 and metrics["text_to_image_r1"] == 1.0
    assert retrieval_metrics(images, texts[[0, 1, 0]], ["a", "b", "c"])["image_to_text_r1"] == pytest.approx(2 / 3)


def test_cli_parses_train_and_export_clip():
    from mmserve.cli import build_parser

    args = build_parser().parse_args(
        ["train", "clip", "--arch", "ViT-B-32", "--pretrained", "w.bin", "--data", "d.csv", "--out", "o", "--lora",
         "--classes", "c.txt", "--epochs", "3", "--lr", "1e-5", "--batch-size", "32", "--seed", "1", "--resume"]
    )
    assert (args.arch, args.lora, args.epochs, args.batch_size, args.resume) == ("ViT-B-32", True, 3, 32, True)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "clip", "--arch", "x", "--data", "d", "--out", "o", "--lora", "--lock-text"])
    args = build_parser().parse_args(["export", "clip", "ckpt", "--repository", "repo", "--int8", "--name", "shop"])
    assert (args.int8, args.name, str(args.repository)) == (True, "shop", "repo")
