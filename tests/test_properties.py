"""Property-based tests (hypothesis) of the pure pre- and post-processing the server runs.

The example-based tests pin these functions to their references (open_clip, scipy,
transformers) on chosen inputs; these state what must hold for *any* input a client can
send: text decoding and truncation, BIO tags -> entity spans, image decoding and
normalisation in every mode and size, audio resampling and windowing.
"""
from __future__ import annotations

import functools
import io
import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from mmserve.serving.audio import (
    FeatureConfig,
    FeatureExtractor,
    check_pcm,
    log_mel_spectrogram,
    loudest_window,
    lowpass_filter,
    mel_filter_bank,
    resample,
    zero_mean_unit_var,
)
from mmserve.serving.clip_text import ClipTokenizer, LabelEmbeddings, decode_labels, zero_shot_probs
from mmserve.serving.image import ImageTransform, decode_image, to_rgb
from mmserve.serving.runtime import InputError
from mmserve.serving.text import TextTokenizer, decode_entities, decode_texts, top_labels

# The machine is shared and slow at times: no per-example deadline; enough examples to matter
# (MMSERVE_PROPERTY_EXAMPLES=2000 searches harder, with new random draws). No example database: nothing written to the tree.
PROPERTY = settings(
    max_examples=int(os.environ.get("MMSERVE_PROPERTY_EXAMPLES", "80")), deadline=None, database=None,
    # the suite's runs search the same examples each time (a CI run must not fail on a draw);
    # MMSERVE_PROPERTY_EXAMPLES=N searches new ones at random
    derandomize="MMSERVE_PROPERTY_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow],
)
NER_LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]

# Text as clients send it: any Unicode, with words, punctuation and spaces likely.
any_text = st.lists(
    st.one_of(
        st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6),
        st.sampled_from(["New", "York", "Angela", "Merkel", "Paris", "café", "🙂", "我想", "Straße", "'s", "U.S."]),
        st.sampled_from([" ", " ", ", ", ". ", "-", "\t", "\n", "  "]),
    ),
    max_size=24,
).map("".join)
words_text = any_text.filter(lambda t: t.strip() != "")


@functools.cache
def minilm(max_length: int) -> TextTokenizer:
    """The server's tokenizer over the default base's tokenizer.json (loaded once per length)."""
    from mmserve.training.defaults import default_text_base

    return TextTokenizer(default_text_base() / "tokenizer.json", max_length)


# --- text: decoding ---------------------------------------------------------------------


@PROPERTY
@given(st.lists(words_text, min_size=1, max_size=8), st.booleans())
def test_decode_texts_round_trips_any_utf8_text(texts, as_bytes):
    items = np.array([t.encode("utf-8") if as_bytes else t for t in texts] + [None], dtype=object)[:-1]
    assert decode_texts(items.reshape(-1, 1)) == texts


@PROPERTY
@given(st.lists(words_text, min_size=1, max_size=5), st.data())
def test_decode_texts_names_the_first_bad_item(texts, data):
    bad = data.draw(st.integers(0, len(texts) - 1))
    broken = data.draw(st.sampled_from([b"\xff" + texts[bad].encode(), b"  \t\n", b"", texts[bad].encode()[:0] + b"\xc3"]))
    items = np.array([t.encode("utf-8") for t in texts] + [None], dtype=object)[:-1]
    items[bad] = broken
    with pytest.raises(InputError, match=rf"^TEXT\[{bad}\] is (not valid UTF-8|empty or only whitespace)"):
        decode_texts(items)


# --- text: tokenisation and truncation ------------------------------------------------------


@PROPERTY
@given(st.lists(words_text, min_size=1, max_size=4), st.integers(8, 48))
def test_tokenizer_truncates_pads_and_keeps_offsets_inside_the_text(texts, max_length):
    batch = minilm(max_length)(texts)
    n, width = batch.input_ids.shape
    assert n == len(texts) and width <= max_length
    assert batch.input_ids.dtype == batch.attention_mask.dtype == np.int64
    assert batch.offsets.shape == (n, width, 2) and batch.word_ids.shape == (n, width)
    for row, text in enumerate(texts):
        real = batch.attention_mask[row].astype(bool)
        length = int(real.sum())
        assert real[:length].all() and not real[length:].any()  # right padding
        assert batch.input_ids[row, 0] == 101 and batch.input_ids[row, length - 1] == 102  # [CLS] ... [SEP]
        assert (batch.word_ids[row, ~real] == -1).all() and (batch.offsets[row, ~real] == 0).all()
        starts, ends = batch.offsets[row, :, 0], batch.offsets[row, :, 1]
        assert (0 <= starts).all() and (starts <= ends).all() and (ends <= len(text)).all()
        words = batch.word_ids[row, real][1:-1]
        assert (words >= 0).all() and (np.diff(words) >= 0).all()  # words in order, none skipped backwards


# --- text: BIO tags -> entity spans -----------------------------------------------------------


def _probs(data, n_tokens: int) -> np.ndarray:
    """Per-token probabilities whose argmax is a drawn tag (any BIO sequence, slips included)."""
    tags = data.draw(st.lists(st.integers(0, len(NER_LABELS) - 1), min_size=n_tokens, max_size=n_tokens))
    confidence = data.draw(st.lists(st.floats(0.3, 1.0), min_size=n_tokens, max_size=n_tokens))
    probs = np.empty((n_tokens, len(NER_LABELS)), dtype=np.float32)
    for i, (tag, p) in enumerate(zip(tags, confidence)):
        probs[i] = (1.0 - p) / (len(NER_LABELS) - 1)
        probs[i, tag] = p  # p >= 0.3 > 0.7 / 4: a strict argmax
    return probs


@PROPERTY
@given(words_text, st.integers(8, 64), st.data())
def test_entity_spans_lie_inside_the_text_never_overlap_and_quote_it(text, max_length, data):
    batch = minilm(max_length)([text])
    probs = _probs(data, batch.input_ids.shape[1])
    entities = decode_entities(text, batch.offsets[0], batch.word_ids[0], probs, NER_LABELS)
    previous_end = 0
    for entity in entities:
        assert 0 <= entity["start"] < entity["end"] <= len(text)
        assert entity["start"] >= previous_end  # in order, no overlap
        previous_end = entity["end"]
        assert entity["text"] == text[entity["start"] : entity["end"]]
        assert entity["label"] in ("LOC", "PER")
        assert 0.0 < entity["score"] <= 1.0


@PROPERTY
@given(words_text, st.data())
def test_entity_spans_are_the_entities_seqeval_scores(text, data):
    """Server and training agree: the spans are seqeval's (lenient mode) entities over the
    word tags (each word's first sub-token), slips like I-PER after O included."""
    from seqeval.metrics.sequence_labeling import get_entities

    batch = minilm(64)([text])
    offsets, word_ids = batch.offsets[0], batch.word_ids[0]
    probs = _probs(data, len(word_ids))
    entities = decode_entities(text, offsets, word_ids, probs, NER_LABELS)

    first_token = {}
    last_end = {}
    for token, word in enumerate(word_ids):
        if word >= 0:
            first_token.setdefault(int(word), token)
            last_end[int(word)] = int(offsets[token][1])
    words = sorted(first_token)
    tags = [NER_LABELS[int(np.argmax(probs[first_token[w]]))] for w in words]
    expected = [
        (kind, int(offsets[first_token[words[start]]][0]), last_end[words[end]])
        for kind, start, end in get_entities(tags)
    ]
    assert [(e["label"], e["start"], e["end"]) for e in entities] == expected


@PROPERTY
@given(arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(2, 6)), elements=st.floats(0, 1, width=32)))
def test_top_labels_names_the_argmax(probs):
    labels = [f"label{i}" for i in range(probs.shape[1])]
    assert top_labels(probs, labels) == [labels[i] for i in probs.argmax(-1)]


# --- images: decoding and normalisation ------------------------------------------------------

IMAGE_MODES = ("1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "I;16", "I", "F", "YCbCr", "PA")
FORMATS = {  # modes each encoder writes without converting
    "PNG": {"1", "L", "P", "RGB", "RGBA", "LA", "I;16"},
    "JPEG": {"L", "RGB", "CMYK", "YCbCr"},
    "BMP": {"1", "L", "P", "RGB", "RGBA"},
    "WEBP": {"RGB", "RGBA"},
}


@st.composite
def pil_images(draw) -> Image.Image:
    mode = draw(st.sampled_from(IMAGE_MODES))
    width, height = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if mode == "F":
        values = rng.normal(0, draw(st.sampled_from([1.0, 300.0, 1e6])), (height, width)).astype(np.float32)
        return Image.fromarray(values)  # F
    if mode in ("I;16", "I"):
        top = draw(st.sampled_from([255, 4095, 65535]))
        values = rng.integers(0, top + 1, (height, width))
        return Image.fromarray(values.astype(np.uint16 if mode == "I;16" else np.int32))  # I;16 / I
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    if mode == "P" and draw(st.booleans()):
        image = rgb.convert("P", palette=Image.ADAPTIVE, colors=8)
        image.info["transparency"] = 0
        return image
    if mode in ("PA",):
        return rgb.convert("P").convert("PA")
    return rgb.convert(mode)


@PROPERTY
@given(pil_images())
def test_to_rgb_gives_8_bit_rgb_of_the_same_size_for_any_mode(image):
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == image.size
    assert np.asarray(rgb).dtype == np.uint8


@PROPERTY
@given(pil_images(), st.sampled_from(sorted(FORMATS)))
def test_any_encodable_image_decodes_to_upright_rgb_of_its_size(image, fmt):
    assume(image.mode in FORMATS[fmt])
    encoded = io.BytesIO()
    image.save(encoded, format=fmt)
    decoded = decode_image(encoded.getvalue())
    assert decoded.mode == "RGB" and decoded.size == image.size


@PROPERTY
@given(
    pil_images(),
    st.one_of(st.integers(1, 40), st.tuples(st.integers(1, 40), st.integers(1, 40))),
    st.sampled_from(["shortest", "longest", "squash"]),
    st.sampled_from(["bicubic", "bilinear"]),
    st.integers(0, 255),
)
def test_normalised_pixels_have_the_model_shape_and_stay_in_range(image, size, resize_mode, interpolation, fill):
    transform = ImageTransform.from_config(
        {"size": size, "resize_mode": resize_mode, "interpolation": interpolation, "fill_color": fill}
    )
    height, width = transform.size
    pixels = transform(to_rgb(image))
    assert pixels.shape == (3, height, width) and pixels.dtype == np.float32 and pixels.flags.c_contiguous
    mean, std = np.array(transform.mean)[:, None, None], np.array(transform.std)[:, None, None]
    assert np.isfinite(pixels).all()
    assert (pixels >= (0 - mean) / std - 1e-5).all() and (pixels <= (1 - mean) / std + 1e-5).all()


@PROPERTY
@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_are_refused_as_bad_input(data):
    try:
        image = decode_image(data, index=3)
    except InputError as error:
        assert str(error).startswith("IMAGE[3] ")
    else:
        assert image.mode == "RGB" and image.width >= 1 and image.height >= 1


# --- audio: resampling and windowing ----------------------------------------------------------

RATES = st.sampled_from([8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000]) | st.integers(8000, 48000)
pcm = arrays(np.float32, st.integers(1, 3000), elements=st.floats(-1, 1, width=32))


@PROPERTY
@given(pcm, RATES, RATES)
def test_resampling_gives_the_length_rate_and_values_scipy_does(x, orig, target):
    """Any pair of rates, coprime ones (47999 -> 16000 Hz) included: those once built a
    polyphase matrix of ~6 GB per request."""
    from scipy.signal import resample_poly as scipy_resample_poly

    y = resample(x, orig, target)
    assert y.dtype == np.float32 and y.shape == (math.ceil(len(x) * target / orig),)
    assert np.isfinite(y).all()
    if orig == target:
        assert np.array_equal(y, x)
        return
    g = math.gcd(orig, target)
    up, down = target // g, orig // g
    assert np.abs(y - scipy_resample_poly(x.astype(np.float64), up, down)).max() <= 1e-5
    # bounded: each output is one phase of the filter applied to the input
    h = lowpass_filter(up, down)
    phases = np.pad(np.abs(h), (0, -len(h) % up)).reshape(-1, up).sum(axis=0)
    assert np.abs(y).max() <= phases.max() * np.abs(x).max() + 1e-6


@PROPERTY
@given(pcm, st.integers(1, 4000))
def test_loudest_window_has_the_window_length_and_the_most_energy(x, length):
    window = loudest_window(x, length)
    assert window.shape == (length,)
    if len(x) <= length:
        assert np.array_equal(window[: len(x)], x) and not window[len(x) :].any()
        return
    energy = [float(np.sum(np.square(x[s : s + length], dtype=np.float64))) for s in range(len(x) - length + 1)]
    assert float(np.sum(np.square(window, dtype=np.float64))) >= max(energy) - 1e-6
    assert any(np.array_equal(x[s : s + length], window) for s in range(len(x) - length + 1))  # a slice of the clip


@PROPERTY
@given(arrays(np.float32, st.integers(400, 4000), elements=st.floats(-1, 1, width=32)))
def test_log_mel_features_are_finite_with_whispers_shape_and_range(x):
    filters = mel_filter_bank(16000, 400, 80)
    features = log_mel_spectrogram(x, filters, 400, 160)
    assert features.shape == (80, len(x) // 160) and features.dtype == np.float32
    assert np.isfinite(features).all()
    assert features.max() - features.min() <= 2.0 + 1e-6  # 80 dB below the peak, scaled by 1/4


@PROPERTY
@given(arrays(np.float32, st.integers(1, 2000), elements=st.floats(-1.5, 1.5, width=32)), RATES)
def test_pcm_in_range_or_slightly_over_is_accepted_and_clipped(x, rate):
    assume(len(x) / rate <= 30)
    checked = check_pcm(x, 0, rate, 30.0)
    assert checked.dtype == np.float32 and checked.shape == x.shape
    assert np.abs(checked).max() <= 1.0
    assert np.array_equal(checked, np.clip(x, -1, 1))


@PROPERTY
@given(arrays(np.float32, st.integers(1, 500), elements=st.floats(-1, 1, width=32)), st.data())
def test_a_non_finite_sample_is_refused_naming_its_position(x, data):
    position = data.draw(st.integers(0, len(x) - 1))
    x = x.copy()
    x[position] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    x[position + 1 :] = np.where(np.isfinite(x[position + 1 :]), x[position + 1 :], 0)
    x[:position] = np.nan_to_num(x[:position])
    with pytest.raises(InputError, match=rf"AUDIO\[2\] has NaN or infinite samples \(the first at sample {position}\)"):
        check_pcm(x, 2, 16000, 30.0)


@PROPERTY
@given(st.lists(pcm, min_size=1, max_size=4), st.booleans(), st.booleans())
def test_waveform_features_are_finite_padded_and_masked(clips, normalize, mask):
    config = FeatureConfig(kind="waveform", sampling_rate=16000, do_normalize=normalize, attention_mask=mask, min_samples=400)
    out = FeatureExtractor(config)(clips)
    values = out["input_values"]
    lengths = [max(len(c), 400) for c in clips]
    assert values.shape == (len(clips), max(lengths)) and values.dtype == np.float32
    assert np.isfinite(values).all()
    assert ("attention_mask" in out) == mask
    if mask:
        assert out["attention_mask"].sum(axis=1).tolist() == lengths
    for row, length in enumerate(lengths):
        assert not values[row, length:].any()


@PROPERTY
@given(pcm)
def test_zero_mean_unit_variance_is_finite_even_for_silence(x):
    normalised = zero_mean_unit_var(x)
    assert np.isfinite(normalised).all() and abs(float(normalised.mean())) < 1e-3


# --- CLIP text: tokens, labels, zero-shot scores -----------------------------------------------


@functools.cache
def open_clip_tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=16)


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
    """context length -> the server's CLIP tokenizer over the exporter's tokenizer.json."""
    from mmserve.exporters.clip import clip_tokenizer_json

    path = tmp_path_factory.mktemp("clip-tokenizer") / "tokenizer.json"
    path.write_text(clip_tokenizer_json(open_clip_tokenizer()), encoding="utf-8")
    return functools.cache(lambda context_length: ClipTokenizer(path, context_length))


@PROPERTY
@given(st.lists(any_text, min_size=1, max_size=4), st.integers(2, 24))
def test_clip_tokens_start_end_and_pad_like_open_clip(clip_tokenizer, texts, context_length):
    tokenizer = clip_tokenizer(context_length)
    ids = tokenizer(texts)
    assert ids.shape == (len(texts), context_length) and ids.dtype == np.int64
    for text, row in zip(texts, ids):
        assert row[0] == tokenizer.sot_id
        (ends,) = np.nonzero(row == tokenizer.eot_id)
        assert len(ends) == 1  # exactly one end token, kept even when truncated
        assert not row[ends[0] + 1 :].any()  # padded with 0 after the end (0 is also "!" in CLIP's vocabulary)
        whole = clip_tokenizer(256)([text])[0]  # the same text, not truncated
        assert ends[0] == min(int(np.nonzero(whole == tokenizer.eot_id)[0][0]), context_length - 1)
        assert (row[1 : ends[0]] == whole[1 : ends[0]]).all()  # truncation keeps the first tokens


@PROPERTY
@given(st.lists(any_text, min_size=1, max_size=6))
def test_clip_tokens_equal_open_clips(clip_tokenizer, texts):
    """Against open_clip's own tokenizer, for any text except two differences: ftfy's mojibake
    repair, which the server does not reproduce (documented), and characters newer than the
    Unicode tables of the Rust tokenizer (e.g. U+323B0, CJK Extension H, Unicode 15): open_clip's
    `regex` splits them as letters, the server as symbols (':\U000323b0' -> ':' [25] instead of
    ':</w>' [281]). Python 3.11's unicodedata (Unicode 14) calls those unassigned (Cn)."""
    import unicodedata

    import ftfy

    from mmserve.serving.clip_text import fix_text

    assume(all(ftfy.fix_text(t) == fix_text(t) for t in texts))
    assume(not any(unicodedata.category(c) == "Cn" for t in texts for c in t))
    expected = open_clip_tokenizer()(texts).numpy()
    assert np.array_equal(clip_tokenizer(16)(texts), expected)


@PROPERTY
@given(st.lists(words_text.filter(lambda t: len(t) <= 1000), min_size=1, max_size=10))
def test_labels_round_trip(labels):
    items = np.array([label.encode("utf-8") for label in labels] + [None], dtype=object)[:-1]
    assert decode_labels(items) == labels


@PROPERTY
@given(
    st.lists(st.sampled_from(["cat", "dog", "bird", "a red car", "🙂"]), min_size=1, max_size=8),
    st.floats(1.0, 100.0),
    st.integers(0, 2**32 - 1),
)
def test_zero_shot_scores_are_a_distribution_independent_of_the_cache(labels, logit_scale, seed):
    rng = np.random.default_rng(seed)
    table = {}

    def embed(prompts: list[str]) -> np.ndarray:
        rows = [table.setdefault(p, rng.normal(size=8)) for p in prompts]
        return np.array([r / np.linalg.norm(r) for r in rows], dtype=np.float32)

    cached = LabelEmbeddings(embed, ["a photo of a {}.", "{}"], capacity=3)
    image = rng.normal(size=8).astype(np.float32)
    image /= np.linalg.norm(image)
    first = zero_shot_probs(image, cached(labels), logit_scale)
    again = zero_shot_probs(image, cached(list(labels)), logit_scale)  # some from the cache, some evicted
    assert first.shape == (len(labels),) and np.isfinite(first).all() and (first >= 0).all()
    assert abs(float(first.sum()) - 1.0) < 1e-5
    np.testing.assert_allclose(first, again, atol=1e-6)
    assert np.allclose(np.linalg.norm(cached(labels), axis=1), 1.0, atol=1e-5)
