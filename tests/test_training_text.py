"""Text fine-tuning end to end on a tiny BERT: checkpoints, LoRA merge, resume, reload."""
from __future__ import annotations

import json
import os
import random
import shutil

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

from mmserve.training.errors import CheckpointError, ResumeError
from mmserve.training.text import LORA_LR, TextTrainConfig, evaluate_text, train_text
from mmserve.training.text_checkpoint import load_text_checkpoint
from mmserve.training.text_tiny import make_tiny_bert

TOPICS = {
    "food": ["pizza", "pasta", "salad", "soup", "bread"],
    "sports": ["football", "tennis", "hockey", "golf", "rugby"],
    "weather": ["rain", "snow", "sunshine", "fog", "wind"],
}
PEOPLE = [["Alice", "Smith"], ["Bob"], ["Carla", "Diaz"], ["Dmitri"]]
CITIES = [["Paris"], ["New", "York"], ["Oslo"], ["Rio", "de", "Janeiro"]]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")


def write_classify_csv(path, n_per_label: int, seed: int) -> str:
    rng = random.Random(seed)
    rows = [f"i really like {rng.choice(words)} today,{label}" for label, words in TOPICS.items() for _ in range(n_per_label)]
    rng.shuffle(rows)
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return str(path)


def write_conll(path, n: int, seed: int) -> str:
    rng = random.Random(seed)
    lines = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(n):
        person, city = rng.choice(PEOPLE), rng.choice(CITIES)
        words = [(w, "B-PER" if i == 0 else "I-PER") for i, w in enumerate(person)]
        words += [("flew", "O"), ("to", "O")]
        words += [(w, "B-LOC" if i == 0 else "I-LOC") for i, w in enumerate(city)]
        lines += [f"{w} X X {t}" for w, t in words] + [". . O O", ""]
    path.write_text("\n".join(lines))
    return str(path)


@pytest.fixture(scope="module")
def classify_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("classify")
    return write_classify_csv(folder / "train.csv", 12, seed=1), write_classify_csv(folder / "dev.csv", 4, seed=2)


@pytest.fixture(scope="module")
def ner_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ner")
    return write_conll(folder / "train.conll", 40, seed=1), write_conll(folder / "dev.conll", 10, seed=2)


def config(base, task, data, out, **kw) -> TextTrainConfig:
    return TextTrainConfig(base=str(base), task=task, data=data, out=str(out), lr=kw.pop("lr", 2e-3), **kw)


def assert_checkpoint_files(out, model_cls):
    for name in ("model.safetensors", "config.json", "tokenizer.json", "labels.txt", "metrics.json", "training_config.json"):
        assert (out / name).is_file(), name
    assert any((out / "runs").iterdir()), "no TensorBoard events"
    labels = (out / "labels.txt").read_text().splitlines()
    model = model_cls.from_pretrained(out)
    assert [model.config.id2label[i] for i in range(model.config.num_labels)] == labels
    return labels


def test_classify_full_fine_tune(tiny_base, classify_data, tmp_path):
    train_csv, _ = classify_data
    out = tmp_path / "out"
    result = train_text(config(tiny_base, "classify", train_csv, out, epochs=2, batch_size=8))

    assert result.checkpoint == out
    assert assert_checkpoint_files(out, AutoModelForSequenceClassification) == ["food", "sports", "weather"]
    assert "accuracy" in result.report and "macro avg" in result.report and "weighted avg" in result.report
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == result.metrics
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["n_train"] + metrics["n_dev"] == 36 and metrics["n_dev"] == 6  # 2 of each label
    assert metrics["best_epoch"] in (1, 2)
    best = metrics["history"][metrics["best_epoch"] - 1]
    assert metrics["dev_accuracy"] == best["dev_accuracy"] == max(h["dev_accuracy"] for h in metrics["history"])
    for key in ("dev_macro_f1", "train_time_seconds"):
        assert key in metrics
    training_config = json.loads((out / "training_config.json").read_text())
    assert training_config["kind"] == "text" and training_config["task"] == "classify"
    assert training_config["base"] == str(tiny_base.resolve()) and "torch" in training_config["versions"]
    assert not (out / "adapter").exists()


def test_checkpoint_reload_reproduces_in_memory_logits(tiny_base, classify_data, tmp_path):
    """The dev loss was computed from the in-memory model; the reloaded one must match it."""
    train_csv, dev_csv = classify_data
    out = tmp_path / "out"
    result = train_text(config(tiny_base, "classify", train_csv, out, dev_data=dev_csv, epochs=1))

    ckpt = load_text_checkpoint(out)
    assert (ckpt.task, ckpt.labels, ckpt.max_length) == ("classify", ["food", "sports", "weather"], 128)
    assert not ckpt.model.training
    reloaded = evaluate_text(out, dev_csv)
    assert reloaded.metrics["loss"] == pytest.approx(result.metrics["dev_metrics"]["loss"], rel=1e-5)
    assert reloaded.metrics["accuracy"] == result.metrics["dev_accuracy"]

    state = {k: v.clone() for k, v in ckpt.model.state_dict().items()}
    batch = ckpt.tokenizer(["i really like soup today", "rain"], padding=True, return_tensors="pt")
    fresh = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.inference_mode():
        torch.testing.assert_close(fresh(**batch).logits, ckpt.model(**batch).logits)
    assert all(torch.equal(state[k], v) for k, v in fresh.state_dict().items())


def test_ner_full_fine_tune(tiny_base, ner_data, tmp_path):
    train_conll, dev_conll = ner_data
    out = tmp_path / "out"
    result = train_text(config(tiny_base, "ner", train_conll, out, dev_data=dev_conll, epochs=2))

    labels = assert_checkpoint_files(out, AutoModelForTokenClassification)
    assert labels == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert "micro avg" in result.report and "macro avg" in result.report
    assert result.metrics["metric"] == "f1" and len(result.metrics["history"]) == 2
    assert (result.metrics["n_train"], result.metrics["n_dev"]) == (40, 10)
    reloaded = evaluate_text(out, dev_conll)
    assert reloaded.metrics["f1"] == result.metrics["dev_f1"]
    assert reloaded.metrics["loss"] == pytest.approx(result.metrics["dev_metrics"]["loss"], rel=1e-5)
    assert load_text_checkpoint(out).task == "ner"


@pytest.mark.parametrize("task", ["classify", "ner"])
def test_lora_checkpoint_is_merged_and_loads_with_plain_from_pretrained(tiny_base, classify_data, ner_data, tmp_path, task):
    train, dev = classify_data if task == "classify" else ner_data
    out = tmp_path / "out"
    result = train_text(config(tiny_base, task, train, out, dev_data=dev, epochs=1, lora=True, lr=None))

    model_cls = AutoModelForSequenceClassification if task == "classify" else AutoModelForTokenClassification
    assert_checkpoint_files(out, model_cls)
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert not [k for k in keys if "lora" in k or "base_model" in k or "modules_to_save" in k]
    assert json.loads((out / "training_config.json").read_text())["learning_rate"] == LORA_LR
    # merged weights give the same dev loss as the in-memory LoRA model did
    metric = result.metrics["metric"]
    reloaded = evaluate_text(out, dev)
    assert reloaded.metrics[metric] == result.metrics[f"dev_{metric}"]
    assert reloaded.metrics["loss"] == pytest.approx(result.metrics["dev_metrics"]["loss"], rel=1e-4)


def test_resume_continues_from_the_next_epoch(tiny_base, classify_data, ner_data, tmp_path, capsys):
    train_csv, dev_csv = classify_data
    out = tmp_path / "out"
    first = train_text(config(tiny_base, "classify", train_csv, out, dev_data=dev_csv, epochs=1, resume=True))
    assert len(first.metrics["history"]) == 1 and (out / "last" / "state.json").is_file()

    second = train_text(config(tiny_base, "classify", train_csv, out, dev_data=dev_csv, epochs=2, resume=True))
    assert "resuming after epoch 1 of 2" in capsys.readouterr().out
    assert [h["epoch"] for h in second.metrics["history"]] == [1, 2]
    assert second.metrics["history"][0] == first.metrics["history"][0]
    assert second.metrics["train_time_seconds"] >= first.metrics["train_time_seconds"]

    third = train_text(config(tiny_base, "classify", train_csv, out, dev_data=dev_csv, epochs=2, resume=True))
    assert "already completed (2 epochs)" in capsys.readouterr().out
    assert third.metrics == second.metrics

    # labels changed (a data set with fewer classes): the saved state cannot continue
    two_labels = tmp_path / "two.csv"
    two_labels.write_text("\n".join(l for l in open(train_csv).read().splitlines() if not l.endswith("weather")) + "\n")
    with pytest.raises(ResumeError, match="labels="):
        train_text(config(tiny_base, "classify", str(two_labels), out, epochs=3, resume=True))
    with pytest.raises(ResumeError, match="task="):
        train_text(config(tiny_base, "ner", ner_data[0], out, epochs=3, resume=True))


def test_resume_matches_an_uninterrupted_run(tiny_base, classify_data, tmp_path, monkeypatch):
    """Weights, optimizer, schedule and RNG all come back: a run stopped after epoch 1 and
    resumed ends exactly where an uninterrupted run does."""
    from mmserve.training.loop import RunLedger

    train_csv, dev_csv = classify_data
    straight = train_text(config(tiny_base, "classify", train_csv, tmp_path / "a", dev_data=dev_csv, epochs=2))

    commit = RunLedger.commit

    def commit_then_stop(ledger, *args):
        commit(ledger, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(RunLedger, "commit", commit_then_stop)
    cfg = config(tiny_base, "classify", train_csv, tmp_path / "b", dev_data=dev_csv, epochs=2, resume=True)
    with pytest.raises(KeyboardInterrupt):
        train_text(cfg)
    monkeypatch.setattr(RunLedger, "commit", commit)
    resumed = train_text(cfg)

    for a, b in zip(straight.metrics["history"], resumed.metrics["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["dev_loss"] == pytest.approx(b["dev_loss"], rel=1e-6)


def test_load_text_checkpoint_embed_and_broken_folders(tiny_base, tmp_path):
    raw = load_text_checkpoint(tiny_base)
    assert (raw.task, raw.labels, raw.max_length) == ("embed", [], 512)
    assert type(raw.model).__name__ == "BertModel"

    with pytest.raises(CheckpointError, match="not a folder"):
        load_text_checkpoint(tmp_path / "missing")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_base, broken)
    (broken / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="no tokenizer"):
        load_text_checkpoint(broken)
    shutil.copytree(tiny_base, broken, dirs_exist_ok=True)
    (broken / "training_config.json").write_text(json.dumps({"kind": "text", "task": "classify", "max_length": 64}))
    with pytest.raises(CheckpointError, match="no labels.txt"):
        load_text_checkpoint(broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model weights"):
        load_text_checkpoint(broken)
    adapter_only = tmp_path / "adapter"
    adapter_only.mkdir()
    (adapter_only / "adapter_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="LoRA adapter only"):
        load_text_checkpoint(adapter_only)


def test_load_text_checkpoint_default_base_is_embed():
    from mmserve.training.defaults import default_text_base

    ckpt = load_text_checkpoint(default_text_base())
    assert (ckpt.task, ckpt.max_length) == ("embed", 256)
    assert ckpt.model.config.hidden_size == 384


def test_make_tiny_bert_is_tiny_and_deterministic(tiny_base, tmp_path):
    from transformers import AutoConfig

    config_ = AutoConfig.from_pretrained(tiny_base)
    assert (config_.hidden_size, config_.num_hidden_layers, config_.num_attention_heads) == (32, 2, 2)
    assert (config_.intermediate_size, config_.max_position_embeddings) == (64, 512)
    again = make_tiny_bert(tmp_path / "again")
    assert (again / "model.safetensors").read_bytes() == (tiny_base / "model.safetensors").read_bytes()
