"""The server's audio functions (mmserve.serving.audio) against scipy and transformers."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import resample_poly as scipy_resample_poly

from mmserve.serving.audio import (
    AudioPreprocessor,
    FeatureConfig,
    FeatureExtractor,
    check_pcm,
    check_sample_rate,
    loudest_window,
    mel_filter_bank,
    resample,
    resample_poly,
)
from mmserve.serving.runtime import InputError

RATES = (8000, 11025, 16000, 22050, 32000, 44100, 48000)


def tone(rate: int, seconds: float = 1.0, hz: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.mark.parametrize("rate", RATES)
def test_a_440_hz_tone_resamples_like_scipy(rate):
    x = tone(rate)
    ours = resample(x, rate, 16000)
    from math import gcd

    g = gcd(16000, rate)
    expected = scipy_resample_poly(x, 16000 // g, rate // g)
    assert ours.dtype == np.float32 and ours.shape == expected.shape
    assert np.abs(ours - expected).max() < 1e-6
    # and it is still a 440 Hz tone: the spectrum's peak bin
    spectrum = np.abs(np.fft.rfft(ours))
    assert abs(np.argmax(spectrum) * 16000 / len(ours) - 440) <= 1.0


@pytest.mark.parametrize("n", [1, 2, 7, 160, 441, 10_007])
@pytest.mark.parametrize("up, down", [(160, 441), (441, 160), (1, 3), (2, 1), (320, 441), (10, 11)])
def test_polyphase_matches_scipy_for_any_length_and_ratio(n, up, down):
    x = np.random.default_rng(n).standard_normal(n)
    expected = scipy_resample_poly(x, up, down)
    ours = resample_poly(x, up, down)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, atol=1e-10)


def test_resampling_removes_content_above_the_new_nyquist():
    rate = 48000
    x = tone(rate, hz=12000.0)  # above 8 kHz: must not alias into the 16 kHz signal
    y = resample(x, rate, 16000)
    assert np.sqrt(np.mean(y[200:-200] ** 2)) < 1e-3 * np.sqrt(np.mean(x**2))


def test_mel_filters_equal_whisper_feature_extractor():
    from transformers import WhisperFeatureExtractor

    np.testing.assert_allclose(mel_filter_bank(16000, 400, 80), WhisperFeatureExtractor().mel_filters, atol=1e-12)


@pytest.mark.parametrize("seconds", [0.3, 1.0])
def test_whisper_features_equal_the_transformers_extractor(seconds):
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=80, chunk_length=1)
    rng = np.random.default_rng(0)
    clip = np.concatenate([0.3 * rng.standard_normal(int(16000 * seconds / 2)), tone(16000, seconds / 2)])
    clip = clip.astype(np.float32)
    expected = fe(clip, sampling_rate=16000, return_tensors="np").input_features
    ours = FeatureExtractor(FeatureConfig.from_preprocessor_config(fe.to_dict()))([clip])["input_features"]
    assert ours.shape == expected.shape == (1, 80, 100)
    assert np.abs(ours - expected).max() < 1e-5


def test_waveform_features_equal_the_wav2vec2_extractor():
    from transformers import Wav2Vec2FeatureExtractor

    fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=True, return_attention_mask=True)
    rng = np.random.default_rng(1)
    clips = [(0.2 * rng.standard_normal(n)).astype(np.float32) for n in (800, 16000, 5000)]
    expected = fe(clips, sampling_rate=16000, padding=True, return_tensors="np")
    ours = FeatureExtractor(FeatureConfig.from_preprocessor_config(fe.to_dict()))(clips)
    np.testing.assert_allclose(ours["input_values"], expected.input_values, atol=1e-6)
    np.testing.assert_array_equal(ours["attention_mask"], expected.attention_mask)


def test_short_waveform_clips_are_padded_to_the_receptive_field_as_silence():
    config = FeatureConfig.from_preprocessor_config(
        {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1, "sampling_rate": 16000},
        min_samples=400,
    )
    out = FeatureExtractor(config)([np.array([0.5], dtype=np.float32), np.zeros(1000, np.float32)])
    assert out["input_values"].shape == (2, 1000)
    assert out["attention_mask"][0].sum() == 400 and out["attention_mask"][1].sum() == 1000
    assert np.isfinite(out["input_values"]).all()


def test_loudest_window_keeps_the_word_and_pads_short_clips():
    x = np.zeros(48000, dtype=np.float32)
    x[30000:34000] = 0.5
    window = loudest_window(x, 16000)
    assert window.shape == (16000,) and np.abs(window).sum() == pytest.approx(0.5 * 4000)
    short = loudest_window(np.ones(10, np.float32), 16000)
    assert short.shape == (16000,) and short[:10].sum() == 10 and short[10:].sum() == 0


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_supported_rates_pass(rate):
    assert check_sample_rate(np.array([rate], dtype=np.int32), 0) == rate


@pytest.mark.parametrize("rate", [0, -16000, 7999, 48001, 96000])
def test_unsupported_rates_name_sample_rate(rate):
    with pytest.raises(InputError, match=r"SAMPLE_RATE\[2\] is .* 8000\.\.48000 Hz"):
        check_sample_rate(np.array([rate]), 2)


@pytest.mark.parametrize(
    "samples, message",
    [
        (np.zeros(0, np.float32), r"AUDIO\[1\] is empty"),
        (np.array([0.1, np.nan, 0.2], np.float32), r"AUDIO\[1\] has NaN or infinite samples \(the first at sample 1\)"),
        (np.array([0.1, 0.2, np.inf], np.float32), r"AUDIO\[1\] has NaN or infinite .* sample 2"),
        (np.array([0.0, 3.5, -0.2], np.float32), r"AUDIO\[1\] has samples beyond \[-1, 1\] \(peak 3\.5\)"),
        (np.array([0.0, 1200.0, -32768.0], np.float32), r"AUDIO\[1\] looks like int16 PCM sent as float.*divide by 32768"),
        (np.zeros(16000 * 31, np.float32), r"AUDIO\[1\] is 31\.0 s long .* at most 30 s"),
    ],
    ids=["empty", "nan", "inf", "beyond-1", "int16-as-float", "too-long"],
)
def test_bad_pcm_names_the_item_and_the_problem(samples, message):
    with pytest.raises(InputError, match=message):
        check_pcm(samples, 1, 16000, max_seconds=30.0)


def test_mild_overshoot_is_clipped_not_refused():
    x = np.array([0.5, 1.2, -1.4, 1.0], dtype=np.float32)
    np.testing.assert_array_equal(check_pcm(x, 0, 16000, 30.0), [0.5, 1.0, -1.0, 1.0])


def test_preprocessor_handles_mixed_rates_in_one_request():
    config = FeatureConfig.from_preprocessor_config(
        {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1, "sampling_rate": 16000,
         "return_attention_mask": True},
    )
    preprocess = AudioPreprocessor(config, max_seconds=5.0)
    audio = np.stack([tone(8000), tone(8000)])  # same row length, different rates: 1 s and ~0.18 s
    out = preprocess(audio, np.array([[8000], [44100]], dtype=np.int32))
    assert out["input_values"].shape == (2, 16000)
    assert out["attention_mask"].sum(axis=1).tolist() == [16000, len(resample(tone(8000), 44100, 16000))]


def test_preprocessor_refuses_mismatched_rows():
    config = FeatureConfig(kind="whisper", sampling_rate=16000, window_samples=16000)
    with pytest.raises(InputError, match="SAMPLE_RATE has 1 rows but AUDIO has 2"):
        AudioPreprocessor(config)(np.zeros((2, 100), np.float32), np.array([[16000]], np.int32))
