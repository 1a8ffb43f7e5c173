"""Pure text functions the server runs: decoding, tokenisation bounds, BIO -> entities."""
import numpy as np
import pytest

from mmserve.serving.runtime import InputError
from mmserve.serving.text import TextTokenizer, decode_entities, decode_texts, top_labels
from mmserve.training.defaults import default_text_base

LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def test_decode_texts_accepts_utf8_and_str():
    items = np.array([["héllo".encode()], ["我想查询".encode()], ["🙂"]], dtype=object)
    assert decode_texts(items) == ["héllo", "我想查询", "🙂"]


@pytest.mark.parametrize(
    "item, problem",
    [(b"\xff\xfe\xfa", "not valid UTF-8"), (b"", "empty"), (b" \n\t ", "empty")],
)
def test_decode_texts_names_the_bad_item(item, problem):
    items = np.array([[b"fine"], [item]], dtype=object)
    with pytest.raises(InputError, match=rf"TEXT\[1\] is {problem}"):
        decode_texts(items)


@pytest.fixture(scope="module")
def tokenizer():
    return TextTokenizer(default_text_base() / "tokenizer.json", max_length=32)


def test_long_text_is_truncated_not_refused(tokenizer):
    batch = tokenizer(["word " * 100_000, "short"])
    assert batch.input_ids.shape == (2, 32)
    assert batch.attention_mask[1].sum() < 32  # padded to the longest, masked
    assert batch.word_ids[1, -1] == -1


def test_offsets_point_into_the_original_text(tokenizer):
    text = "Visit São Paulo 🙂 or 北京 today"
    batch = tokenizer([text])
    pieces = [text[s:e] for (s, e), w in zip(batch.offsets[0], batch.word_ids[0]) if w >= 0]
    assert "Paulo" in "".join(pieces) and "北" in pieces


def _one_hot(tags):
    probs = np.full((len(tags), len(LABELS)), 0.01, dtype=np.float32)
    for row, tag in enumerate(tags):
        probs[row, LABELS.index(tag)] = 0.96
    return probs


def test_bio_decoding_merges_words_and_subwords():
    text = "Anna Schmidt flew to New York."
    # tokens: [CLS] Anna Schm ##idt flew to New York . [SEP]
    offsets = np.array([[0, 0], [0, 4], [5, 9], [9, 12], [13, 17], [18, 20], [21, 24], [25, 29], [29, 30], [0, 0]])
    word_ids = np.array([-1, 0, 1, 1, 2, 3, 4, 5, 6, -1])
    tags = ["O", "B-PER", "I-PER", "O", "O", "O", "B-LOC", "I-LOC", "O", "O"]  # ##idt's own tag is ignored
    entities = decode_entities(text, offsets, word_ids, _one_hot(tags), LABELS)
    assert [(e["text"], e["label"], e["start"], e["end"]) for e in entities] == [
        ("Anna Schmidt", "PER", 0, 12),
        ("New York", "LOC", 21, 29),
    ]
    assert all(0.9 < e["score"] <= 1 for e in entities)


def test_stray_inside_tag_starts_an_entity_and_type_change_splits():
    text = "Paris Berlin"
    offsets = np.array([[0, 5], [6, 12]])
    word_ids = np.array([0, 1])
    entities = decode_entities(text, offsets, word_ids, _one_hot(["I-LOC", "I-PER"]), LABELS)
    assert [(e["text"], e["label"]) for e in entities] == [("Paris", "LOC"), ("Berlin", "PER")]


def test_no_entities_is_an_empty_list():
    assert decode_entities("hello", np.array([[0, 5]]), np.array([0]), _one_hot(["O"]), LABELS) == []


def test_top_labels_checks_the_label_count():
    assert top_labels(np.array([[0.1, 0.9]]), ["neg", "pos"]) == ["pos"]
    with pytest.raises(ValueError, match="labels.txt"):
        top_labels(np.array([[0.1, 0.9]]), ["only"])


def test_runner_settings_split_cores_and_read_the_config_parameters():
    import os

    from mmserve.serving.runtime import RunnerSettings

    cores = len(os.sched_getaffinity(0))
    assert RunnerSettings.for_instances(1).intra_op_threads == cores
    assert RunnerSettings.for_instances(cores * 2).intra_op_threads == 1
    assert not RunnerSettings.for_instances(1).allow_spinning  # off unless the config asks
    tuned = RunnerSettings.for_instances(1, override="3", allow_spinning="1")
    assert (tuned.intra_op_threads, tuned.allow_spinning) == (3, True)
