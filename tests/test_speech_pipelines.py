"""The speech pipelines over real gRPC, as a raw tritonclient sees them (the public contract)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from lines_speech import MAX_SECONDS, W2V_PIPELINE, speech_paths
from mmserve.pipelines import spec

from layouts import both_layouts  # noqa: E402

server, triton = both_layouts()  # every test here runs against both cpu layouts

CLASSIFY_PIPELINES = ["audio_classify", W2V_PIPELINE]
ALL_PIPELINES = ["audio_classify", "audio_embed", W2V_PIPELINE]
FIRST_OUTPUT = {"audio_classify": "PROBS", W2V_PIPELINE: "PROBS", "audio_embed": "EMBEDDING"}


def tone(rate: int, seconds: float = 0.6, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def infer(triton, pipeline: str, audio: np.ndarray, rates, rate_dtype=np.int32):
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None, :]
    rates = np.asarray(rates, dtype=rate_dtype).reshape(-1, 1)
    a = grpcclient.InferInput("AUDIO", list(audio.shape), "FP32")
    a.set_data_from_numpy(audio)
    r = grpcclient.InferInput("SAMPLE_RATE", list(rates.shape), "INT32" if rate_dtype == np.int32 else "INT64")
    r.set_data_from_numpy(rates)
    return triton.infer(pipeline, [a, r])


@pytest.fixture(scope="module")
def paths(workdir):
    return speech_paths(workdir)


@pytest.fixture(scope="module")
def whisper(paths):
    from mmserve.training.speech_checkpoint import load_speech_checkpoint

    return load_speech_checkpoint(paths.whisper)


def test_pipelines_state_the_contract_names(triton):
    for pipeline, kind in [("audio_classify", "audio_classify"), ("audio_embed", "audio_embed"),
                           (W2V_PIPELINE, "audio_classify")]:
        metadata = triton.get_model_metadata(pipeline, as_json=True)
        contract = spec(kind)
        assert [i["name"] for i in metadata["inputs"]] == ["AUDIO", "SAMPLE_RATE"]
        assert [i["datatype"] for i in metadata["inputs"]] == ["FP32", "INT32"]
        assert [o["name"] for o in metadata["outputs"]] == [t.name for t in contract.outputs]
    index = {m["name"] for m in triton.get_model_repository_index(as_json=True)["models"]}
    if triton.get_model_config("audio_classify").config.platform == "ensemble":
        assert "audio_embed_preprocess" not in index  # same feature extractor: one shared audio_preprocess
        assert f"{W2V_PIPELINE}_preprocess" in index  # a different one: its own
    else:  # fused: each pipeline is one model holding its own steps
        assert index == {name for name in index if not name.endswith(("_preprocess", "_encoder", "_postprocess"))}


def test_raw_tritonclient_classify_returns_probs_and_label(triton, paths):
    labels = (paths.whisper / "labels.txt").read_text().split()
    result = infer(triton, "audio_classify", np.stack([tone(16000), tone(16000, hz=880)]), [16000, 16000])
    probs, label = result.as_numpy("PROBS"), result.as_numpy("LABEL")
    assert probs.shape == (2, len(labels)) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert label.shape == (2, 1) and [x.decode() for x in label[:, 0]] == [labels[i] for i in probs.argmax(1)]


def test_server_probs_equal_torch_on_scipy_resampled_audio(triton, whisper):
    """A 440 Hz tone at 44.1 kHz, resampled in the server, answers as scipy-resampled audio does in torch."""
    import torch
    from scipy.signal import resample_poly

    x = tone(44100)
    served = infer(triton, "audio_classify", x, [44100]).as_numpy("PROBS")[0]
    local = resample_poly(x, 160, 441).astype(np.float32)
    features = whisper.feature_extractor(local, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        expected = torch.softmax(whisper.model(input_features=features).logits, -1)[0].numpy()
    np.testing.assert_allclose(served, expected, atol=1e-4)


def test_embeddings_are_normalised_and_equal_the_mean_pooled_encoder(triton, whisper):
    import torch

    clips = np.stack([tone(16000), 0.1 * np.random.default_rng(0).standard_normal(9600).astype(np.float32)])
    served = infer(triton, "audio_embed", clips, [16000, 16000]).as_numpy("EMBEDDING")
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, rtol=1e-5)
    features = whisper.feature_extractor(list(clips), sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        hidden = whisper.model.encoder(features).last_hidden_state.mean(1)
    np.testing.assert_allclose(served, torch.nn.functional.normalize(hidden, dim=-1).numpy(), atol=1e-4)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("pipeline", ALL_PIPELINES)
def test_common_sample_rates_are_resampled_and_answered(triton, pipeline, rate):
    result = infer(triton, pipeline, tone(rate), [rate])
    assert result.as_numpy(FIRST_OUTPUT[pipeline]).shape[0] == 1


@pytest.mark.parametrize("pipeline", ALL_PIPELINES)
def test_one_request_with_several_rates_answers_each_item(triton, pipeline):
    rates = [8000, 16000, 44100]
    batch = infer(triton, pipeline, np.stack([tone(8000)] * 3), rates).as_numpy(FIRST_OUTPUT[pipeline])
    alone = np.concatenate([infer(triton, pipeline, tone(8000), [r]).as_numpy(FIRST_OUTPUT[pipeline]) for r in rates])
    np.testing.assert_allclose(batch, alone, atol=1e-5)


@pytest.mark.parametrize("pipeline", ALL_PIPELINES)
def test_clips_of_different_lengths_batched_by_the_server_answer_as_alone(triton, pipeline):
    """Concurrent requests of different lengths meet in one dynamic batch (padded, masked)."""
    clips = [tone(16000, seconds=s, hz=300 + 100 * i) for i, s in enumerate((0.2, 0.9, 0.45, 1.6, 0.05, 0.7))]
    alone = [infer(triton, pipeline, c, [16000]).as_numpy(FIRST_OUTPUT[pipeline])[0] for c in clips]
    with ThreadPoolExecutor(len(clips)) as pool:
        together = list(pool.map(
            lambda c: infer(triton, pipeline, c, [16000]).as_numpy(FIRST_OUTPUT[pipeline])[0], clips * 3
        ))
    np.testing.assert_allclose(np.stack(together), np.stack(alone * 3), atol=1e-5)


BAD_INPUTS = [
    (np.zeros((1, 0), np.float32), [16000], r"AUDIO\[0\] is empty"),
    (np.array([[0.1, np.nan, 0.2] * 100]), [16000], r"AUDIO\[0\] has NaN or infinite samples"),
    (np.array([[0.1, -np.inf] * 100]), [16000], r"AUDIO\[0\] has NaN or infinite samples"),
    (np.stack([tone(16000), 4 * tone(16000)]), [16000, 16000], r"AUDIO\[1\] has samples beyond \[-1, 1\]"),
    (np.round(tone(16000) * 20000)[None, :], [16000], r"AUDIO\[0\] looks like int16 PCM sent as float.*32768"),
    (np.zeros((1, 16000 * 600), np.float32), [16000], rf"AUDIO\[0\] is 600\.0 s long .* at most {MAX_SECONDS:g} s"),
    (tone(16000)[None, :], [7000], r"SAMPLE_RATE\[0\] is 7000 Hz; supported rates are 8000\.\.48000 Hz"),
    (tone(16000)[None, :], [96000], r"SAMPLE_RATE\[0\] is 96000 Hz"),
    (np.stack([tone(16000)] * 2), [16000, 0], r"SAMPLE_RATE\[1\] is 0 Hz"),
]
BAD_IDS = ["empty", "nan", "inf", "beyond-1", "int16-as-float", "ten-minutes", "rate-7000", "rate-96000", "rate-0"]


@pytest.mark.parametrize("pipeline", ALL_PIPELINES)
@pytest.mark.parametrize("audio, rates, message", BAD_INPUTS, ids=BAD_IDS)
def test_bad_audio_is_invalid_arg_naming_the_input_and_the_next_call_works(triton, pipeline, audio, rates, message):
    with pytest.raises(InferenceServerException, match=message) as error:
        infer(triton, pipeline, audio, rates)
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert infer(triton, pipeline, tone(16000), [16000]).as_numpy(FIRST_OUTPUT[pipeline]).shape[0] == 1


@pytest.mark.parametrize("pipeline", ALL_PIPELINES)
@pytest.mark.parametrize(
    "audio", [np.array([[0.3]], np.float32), np.array([[0.0, 0.0]], np.float32), (1.2 * tone(16000))[None, :]],
    ids=["one-sample", "two-zeros", "overshoot-clipped"],
)
def test_tiny_or_mildly_clipped_audio_gets_a_correct_answer(triton, pipeline, audio):
    out = infer(triton, pipeline, audio, [16000]).as_numpy(FIRST_OUTPUT[pipeline])
    assert out.shape[0] == 1 and np.isfinite(out).all()


def test_overshoot_is_answered_as_the_clipped_signal(triton):
    loud = 1.3 * tone(16000)
    clipped = np.clip(loud, -1, 1)
    a = infer(triton, "audio_classify", loud, [16000]).as_numpy("PROBS")
    b = infer(triton, "audio_classify", clipped, [16000]).as_numpy("PROBS")
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_a_bad_request_does_not_fail_its_neighbours_in_a_dynamic_batch(triton):
    def call(i):
        audio = tone(16000) if i % 3 else np.full(8000, np.nan, np.float32)
        try:
            return infer(triton, "audio_classify", audio, [16000]).as_numpy("LABEL").shape
        except InferenceServerException as error:
            return error.status()

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(call, range(24)))
    assert outcomes == [(1, 1) if i % 3 else "StatusCode.INVALID_ARGUMENT" for i in range(24)]


def test_wrong_dtype_for_sample_rate_is_refused_by_triton(triton):
    with pytest.raises(InferenceServerException) as error:
        infer(triton, "audio_classify", tone(16000), [16000], rate_dtype=np.int64)
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert infer(triton, "audio_classify", tone(16000), [16000]).as_numpy("LABEL").shape == (1, 1)


def test_stereo_shaped_audio_is_refused_by_triton_and_the_next_call_works(triton):
    stereo = np.stack([tone(16000), tone(16000)], axis=-1)[None]  # [1, n, 2]: not the contract's [-1]
    a = grpcclient.InferInput("AUDIO", list(stereo.shape), "FP32")
    a.set_data_from_numpy(stereo)
    r = grpcclient.InferInput("SAMPLE_RATE", [1, 1], "INT32")
    r.set_data_from_numpy(np.array([[16000]], np.int32))
    with pytest.raises(InferenceServerException) as error:
        triton.infer("audio_classify", [a, r])
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert infer(triton, "audio_classify", tone(16000), [16000]).as_numpy("LABEL").shape == (1, 1)

