"""Text data loading: CSV/JSONL/CoNLL readers, IOB1 -> BIO, dev split, sub-token alignment."""
from __future__ import annotations

import json
import logging
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mmserve.training.defaults import DATA_DIR, embedded_data
from mmserve.training.errors import DataError
from mmserve.training.text_data import (
    IGNORE_INDEX,
    TaggedSentence,
    TextExample,
    align_word_labels,
    classification_labels,
    iob1_to_bio,
    ner_labels,
    read_classification,
    read_conll,
    split_dev,
)


def write(path, text: str, encoding: str = "utf-8"):
    path.write_text(text, encoding=encoding)
    return path


# --- classification files -------------------------------------------------------------


def test_csv_reads_quoted_commas_bom_and_extra_columns(tmp_path):
    path = write(tmp_path / "d.csv", 'id,text,label\n1,"Hi, there",greeting\n2, bye now ,goodbye\n', "utf-8-sig")
    assert read_classification(path) == [TextExample("Hi, there", "greeting"), TextExample("bye now", "goodbye")]


@pytest.mark.parametrize(
    ("content", "where", "what"),
    [
        ("sentence,label\nhi,greeting\n", ":1:", "header"),
        ("text,label\nhi,greeting\nhello, you,greeting\n", ":3:", "more fields"),
        ("label,text\ngreeting,hi\ngoodbye\n", ":3:", "fewer fields"),
        ("text,label\nhi,greeting\n\nhey,\n", ":4:", "empty label"),
        ('text,label\n"  ",greeting\n', ":2:", "empty text"),
    ],
)
def test_csv_bad_rows_name_file_and_line(tmp_path, content, where, what):
    path = write(tmp_path / "bad.csv", content)
    with pytest.raises(DataError, match=f"bad.csv{where}.*{what}"):
        read_classification(path)


def test_jsonl_reads_objects_skips_blank_lines_and_accepts_int_labels(tmp_path):
    rows = [{"text": "great", "label": "pos"}, {"text": "meh", "label": 3}]
    path = write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows[:1]) + "\n\n" + json.dumps(rows[1]) + "\n")
    assert read_classification(path) == [TextExample("great", "pos"), TextExample("meh", "3")]


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ('{"text": "x", "label": "a"', "invalid JSON"),
        ('{"text": "x"}', "expected an object"),
        ('["x", "a"]', "expected an object"),
        ('{"text": 5, "label": "a"}', "'text' must be a string"),
        ('{"text": "x", "label": ""}', "empty label"),
    ],
)
def test_jsonl_bad_rows_name_file_and_line(tmp_path, line, what):
    path = write(tmp_path / "bad.jsonl", '{"text": "ok", "label": "a"}\n' + line + "\n")
    with pytest.raises(DataError, match=f"bad.jsonl:2: {what}"):
        read_classification(path)


def test_classification_rejects_unknown_extension_empty_and_non_utf8(tmp_path):
    with pytest.raises(DataError, match="unsupported file type '.tsv'"):
        read_classification(write(tmp_path / "d.tsv", "text\tlabel\n"))
    with pytest.raises(DataError, match="no examples"):
        read_classification(write(tmp_path / "empty.csv", "text,label\n"))
    (tmp_path / "latin1.csv").write_bytes("text,label\ncaf\xe9,x\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_classification(tmp_path / "latin1.csv")
    with pytest.raises(DataError, match="no such file"):
        read_classification(tmp_path / "missing.csv")


def test_classification_labels_are_sorted():
    examples = [TextExample("a", "zeta"), TextExample("b", "alpha"), TextExample("c", "mid"), TextExample("d", "alpha")]
    assert classification_labels(examples) == ["alpha", "mid", "zeta"]


# --- CoNLL ------------------------------------------------------------------------------

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

-DOCSTART- -X- -X- O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER


BRUSSELS NNP B-NP B-LOC
"""


def test_conll_skips_docstart_and_uses_last_column(tmp_path):
    sentences = read_conll(write(tmp_path / "d.conll", CONLL))
    assert sentences == [
        TaggedSentence(("EU", "rejects", "German", "call", "."), ("B-ORG", "O", "B-MISC", "O", "O")),
        TaggedSentence(("Peter", "Blackburn"), ("B-PER", "I-PER")),
        TaggedSentence(("BRUSSELS",), ("B-LOC",)),
    ]


def test_conll_converts_iob1_to_bio_at_load(tmp_path):
    iob1 = "Peter I-PER\nBlackburn I-PER\nmet O\nAnna I-PER\nBob B-PER\nin O\nNew I-LOC\nYork I-LOC\n"
    (sentence,) = read_conll(write(tmp_path / "iob1.txt", iob1))
    assert sentence.tags == ("B-PER", "I-PER", "O", "B-PER", "B-PER", "O", "B-LOC", "I-LOC")


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        (["I-PER", "I-PER", "O", "I-LOC"], ["B-PER", "I-PER", "O", "B-LOC"]),
        (["I-PER", "B-PER", "I-PER"], ["B-PER", "B-PER", "I-PER"]),  # IOB1: B- splits adjacent entities
        (["I-PER", "I-LOC"], ["B-PER", "B-LOC"]),  # a type change starts an entity
        (["B-ORG", "I-ORG", "O", "B-LOC"], ["B-ORG", "I-ORG", "O", "B-LOC"]),  # BIO is unchanged
        ([], []),
    ],
)
def test_iob1_to_bio(tags, expected):
    assert iob1_to_bio(tags) == expected


@pytest.mark.parametrize(
    ("content", "where", "what"),
    [
        ("EU B-ORG\nrejects\n", ":2:", "one column"),
        ("EU NNP B-ORG\nrejects VBZ X-ORG\n", ":2:", "not O, B-TYPE or I-TYPE"),
    ],
)
def test_conll_bad_lines_name_file_and_line(tmp_path, content, where, what):
    with pytest.raises(DataError, match=f"bad.conll{where} .*{what}"):
        read_conll(write(tmp_path / "bad.conll", content))


@pytest.mark.parametrize(
    ("content", "where", "what"),
    [
        # a column dropped or added by hand in one place: read before as if nothing were wrong
        ("EU NNP B-ORG\nrejects VBZ O\n\nPeter B-PER\n", ":4:", "2 columns, but line 1 has 3"),
        ("EU B-ORG\nrejects O\nGerman JJ B-MISC\n", ":3:", "3 columns, but line 1 has 2"),
        ("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\n\nPeter NNP B-PER\n", ":5:", "3 columns, but line 3 has 4"),
    ],
)
def test_conll_mixing_column_counts_is_an_error_naming_the_line(tmp_path, content, where, what):
    with pytest.raises(DataError, match=f"mixed.conll{where} {what}; every token line needs the same columns"):
        read_conll(write(tmp_path / "mixed.conll", content))


def test_conll_entity_starting_with_inside_tag_warns_once_with_count_and_lines(tmp_path, caplog):
    content = (
        "Angela B-PER\nMerkel I-PER\nmet O\nBarack I-PER\nObama I-PER\n\n"  # line 4: I-PER after O
        "in O\nNew B-LOC\nYork I-LOC\nCity I-ORG\n\n"  # line 10: I-ORG after a LOC
        "Paris I-LOC\n"  # line 12: I-LOC opens the sentence
    )
    with caplog.at_level(logging.WARNING, logger="mmserve.training"):
        sentences = read_conll(write(tmp_path / "slips.conll", content))
    # read as B- (a new entity): what seqeval's default mode and the server's decoder do
    assert [s.tags for s in sentences] == [
        ("B-PER", "I-PER", "O", "B-PER", "I-PER"), ("O", "B-LOC", "I-LOC", "B-ORG"), ("B-LOC",),
    ]
    from seqeval.metrics.sequence_labeling import get_entities

    raw = [line.split()[-1] for line in content.splitlines() if line]
    bio = [tag for s in sentences for tag in s.tags]
    assert get_entities(raw) == get_entities(bio)  # seqeval counts the same entities either way
    (record,) = caplog.records
    message = record.getMessage()
    assert "slips.conll:4: warning: I-PER with no B-PER or I-PER before it; read as B-PER" in message
    assert "3 such tags in this file (also lines 10, 12)" in message


def test_conll_in_bio_gives_no_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="mmserve.training"):
        read_conll(write(tmp_path / "d.conll", CONLL))
        read_conll(embedded_data("ner/dev"))
    assert caplog.records == []


def test_conll_without_sentences_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no sentences"):
        read_conll(write(tmp_path / "empty.conll", "-DOCSTART- -X- -X- O\n\n"))


def test_ner_labels_o_first_then_b_i_per_sorted_type():
    sentences = [TaggedSentence(("a", "b", "c"), ("B-PER", "O", "B-LOC")), TaggedSentence(("d",), ("I-MISC",))]
    assert ner_labels(sentences) == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-PER", "I-PER"]


# --- dev split ----------------------------------------------------------------------------


def test_split_dev_is_stratified_and_seeded():
    items = [TextExample(f"t{i}", "a") for i in range(20)] + [TextExample(f"u{i}", "b") for i in range(6)]
    items.append(TextExample("lonely", "c"))
    train, dev = split_dev(items, 0.25, seed=1, key=lambda e: e.label)
    assert sorted(e.label for e in dev) == ["a"] * 5 + ["b"] * 2  # "c" has one item: it stays in train
    assert {e.label for e in train} == {"a", "b", "c"}
    assert set(train).isdisjoint(dev) and len(train) + len(dev) == len(items)
    assert split_dev(items, 0.25, seed=1, key=lambda e: e.label) == (train, dev)
    assert split_dev(items, 0.25, seed=2, key=lambda e: e.label) != (train, dev)


def test_split_dev_keeps_one_of_each_in_both_parts_for_small_classes():
    items = [TextExample("x", "a"), TextExample("y", "a")]
    train, dev = split_dev(items, 0.1, seed=0, key=lambda e: e.label)
    assert len(train) == len(dev) == 1


# --- sub-token alignment --------------------------------------------------------------------


def test_align_word_labels_first_sub_token_only():
    word_ids = [None, 0, 1, 1, 1, 2, None, None]
    assert align_word_labels(word_ids, [3, 1, 0]) == [IGNORE_INDEX, 3, 1, IGNORE_INDEX, IGNORE_INDEX, 0, IGNORE_INDEX, IGNORE_INDEX]


def test_encode_ner_with_a_real_fast_tokenizer():
    from transformers import AutoTokenizer

    from mmserve.training.defaults import default_text_base
    from mmserve.training.text_features import collate, encode_ner

    tokenizer = AutoTokenizer.from_pretrained(default_text_base())
    sentence = TaggedSentence(("Washingtonian", "visits", "Paris"), ("B-MISC", "O", "B-LOC"))
    label2id = {"O": 0, "B-LOC": 1, "I-LOC": 2, "B-MISC": 3, "I-MISC": 4}
    (feature,) = encode_ner(tokenizer, [sentence], label2id, max_length=32)
    tokens = tokenizer.convert_ids_to_tokens(feature.inputs["input_ids"])
    assert tokens == ["[CLS]", "washington", "##ian", "visits", "paris", "[SEP]"]
    assert list(feature.label) == [IGNORE_INDEX, 3, IGNORE_INDEX, 0, 1, IGNORE_INDEX]
    assert feature.word_starts == (1, 3, 4)

    (truncated,) = encode_ner(tokenizer, [sentence], label2id, max_length=4)  # [CLS] washington ##ian [SEP]
    assert truncated.word_starts == (1, -1, -1)

    short = encode_ner(tokenizer, [TaggedSentence(("Paris",), ("B-LOC",))], label2id, max_length=32)[0]
    batch = collate([feature, short], tokenizer.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 6)
    assert batch["labels"][1].tolist() == [IGNORE_INDEX, 1, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 0, 0, 0]


# --- embedded data --------------------------------------------------------------------------


def test_embedded_data_resolves_short_names():
    if not (DATA_DIR / "ner" / "train.conll").is_file():
        pytest.skip("embedded data sets not present")
    assert embedded_data("intents") == DATA_DIR / "intents.csv"
    assert embedded_data("ner/train") == DATA_DIR / "ner" / "train.conll"
    with pytest.raises(FileNotFoundError, match="available: .*intents"):
        embedded_data("nope")
