"""The server's CLIP text handling (mmserve.serving.clip_text) against open_clip itself, no server."""
from __future__ import annotations

import random

import numpy as np
import pytest

from mmserve.serving.clip_text import (
    ClipTokenizer,
    LabelEmbeddings,
    clean_text,
    decode_labels,
    fix_text,
    zero_shot_probs,
)
from mmserve.serving.runtime import InputError

# Words real captions and labels contain, joined by ASCII separators. Not covered: text
# that looks like mojibake (e.g. "cafÃ©"), which ftfy re-decodes heuristically and the
# server tokenises as received (see mmserve.serving.clip_text).
_WORDS = (
    "a", "photo", "of", "the", "Dog", "CAT", "café", "naïve", "Straße", "øre", "Æther", "“quoted”", "‘single’",
    "it's", "don't", "we'll", "Σίσυφος", "ΣΊΣΥΦΟΣ", "Москва", "我想查询一下订单", "日本語のテキスト", "한국어",
    "🙂", "🚀🔥", "👍🏽", "ﬁsh", "ﬂow", "ＬＯＵＤ", "ｶﾀｶﾅ", "&amp;", "&lt;b&gt;", "&eacute;t&eacute;", "&EACUTE;",
    "&#39;", "&#x27;s", "<b>bold</b>", "\x1b[31mred\x1b[0m", "e\u0301", "Ⅻ", "①", "x²", "3.14", "2024", "C++",
    "e-mail", "snake_case", "#tag", "@user", "50%", "İstanbul", "\u200bzero", "\ufeffbom", "\x07bell",
)
_SEPARATORS = (" ", " ", " ", ", ", ". ", "\n", "\r\n", "\t", "  ", "-", "/", "\u00a0", "\u3000", "\u2028", "!")


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = [
        "a photo of a small red circle", "It's “quoted” — ok", "&amp;lt;b&amp;gt; bold", "<b>html</b> &amp; tags",
        "x" * 500, "word " * 100, "Hello\r\nWorld", "", "   ", "<end_of_text> hi <start_of_text>",
        "ＦＵＬＬＷＩＤＴＨ　ｓｐａｃｅ", "line\u2028separator\u2029para",
    ]
    for _ in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(1, 25))]
        texts.append("".join(w + rng.choice(_SEPARATORS) for w in words).strip(" "))
    return texts


@pytest.fixture(scope="module")
def open_clip_tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=32)


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory, open_clip_tokenizer):
    from mmserve.exporters.clip import clip_tokenizer_json

    path = tmp_path_factory.mktemp("clip-tokenizer") / "tokenizer.json"
    path.write_text(clip_tokenizer_json(open_clip_tokenizer), encoding="utf-8")
    return path


def test_fix_text_equals_ftfy_without_mojibake():
    import ftfy

    for text in _texts(1500):
        assert fix_text(text) == ftfy.fix_text(text), repr(text)


def test_mojibake_is_left_as_received_a_documented_difference():
    import ftfy

    assert ftfy.fix_text("cafÃ©") == "café"
    assert fix_text("cafÃ©") == "cafÃ©"


def test_token_ids_equal_open_clip_on_many_texts(open_clip_tokenizer, tokenizer_file):
    texts = _texts(1500, seed=1)
    ours = ClipTokenizer(tokenizer_file, context_length=32)(texts)
    expected = open_clip_tokenizer(texts).numpy()
    assert ours.dtype == np.int64 and ours.shape == expected.shape
    mismatched = [t for t, a, b in zip(texts, ours, expected) if not np.array_equal(a, b)]
    assert not mismatched, mismatched[:3]


@pytest.mark.parametrize("context_length", [2, 8, 77])
def test_truncation_keeps_the_end_token(open_clip_tokenizer, tokenizer_file, context_length):
    text = "a very long caption " * 40
    ids = ClipTokenizer(tokenizer_file, context_length)([text, "hi"])
    assert ids[0, 0] == 49406 and ids[0, -1] == 49407  # <start_of_text> ... <end_of_text>
    assert np.array_equal(ids, open_clip_tokenizer([text, "hi"], context_length=context_length).numpy())


@pytest.mark.parametrize("clean", ["lower", "whitespace", "canonicalize"])
def test_clean_functions_match_open_clip(clean):
    from open_clip.tokenizer import get_clean_fn

    reference = get_clean_fn(clean)
    for text in _texts(300, seed=2):
        assert clean_text(text, clean) == reference(text), repr(text)


def test_labels_are_decoded_and_bad_ones_named():
    assert decode_labels(np.array([b"cat", "dog".encode(), "Café".encode()], dtype=object)) == ["cat", "dog", "Café"]
    with pytest.raises(InputError, match=r"LABELS is empty"):
        decode_labels(np.zeros((0,), dtype=object))
    with pytest.raises(InputError, match=r"LABELS\[1\] is empty"):
        decode_labels(np.array([b"cat", b"  "], dtype=object))
    with pytest.raises(InputError, match=r"LABELS\[0\] is not valid UTF-8"):
        decode_labels(np.array([b"\xff"], dtype=object))
    with pytest.raises(InputError, match=r"LABELS has 4 labels, above .* limit of 3"):
        decode_labels(np.array([b"a", b"b", b"c", b"d"], dtype=object), max_labels=3)


def test_label_embeddings_average_templates_and_cache_per_label():
    calls = []

    def embed(prompts):
        calls.append(list(prompts))
        vectors = np.array([[len(p), p.count("a") + 1.0] for p in prompts], dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    labels = LabelEmbeddings(embed, ["a {}.", "the {} photo"], capacity=2)
    first = labels(["cat", "dog"])
    assert calls == [["a cat.", "the cat photo", "a dog.", "the dog photo"]]
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0)
    expected = embed(["a cat.", "the cat photo"]).mean(0)
    calls.pop()
    assert np.allclose(first[0], expected / np.linalg.norm(expected))
    again = labels(["dog", "cat", "dog"])  # cached, order and repeats kept
    assert len(calls) == 1 and np.allclose(again, first[[1, 0, 1]])
    labels(["bird"])  # capacity 2: evicts the least recently used ("cat" was used before "dog")
    labels(["dog"])
    assert len(calls) == 2
    labels(["cat"])
    assert len(calls) == 3 and labels.hits == 4 and labels.misses == 4


def test_zero_shot_probs_follow_label_order_and_sum_to_one():
    image = np.array([1.0, 0.0], dtype=np.float32)
    classes = np.array([[0.0, 1.0], [1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
    probs = zero_shot_probs(image, classes, logit_scale=100.0)
    assert probs.dtype == np.float32 and probs.sum() == pytest.approx(1.0, abs=1e-6)
    assert probs.argmax() == 1 and np.allclose(zero_shot_probs(image, classes[::-1], 100.0), probs[::-1])
