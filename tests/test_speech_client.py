"""The typed client's speech methods against the real server."""
from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
import soundfile

from lines_speech import W2V_PIPELINE, speech_paths
from mmserve.client import AsyncClient, Classification, InvalidInputError

from layouts import both_layouts  # noqa: E402

server, triton = both_layouts()  # every test here runs against both cpu layouts


def tone(rate: int, seconds: float = 0.5, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.fixture(scope="module")
def labels(workdir):
    return (speech_paths(workdir).whisper / "labels.txt").read_text().split()


@pytest.fixture(scope="module")
def test_files(workdir):
    return sorted((speech_paths(workdir).data / "test").glob("*/*.wav"))


def test_one_clip_with_its_rate_is_a_classification(client, labels):
    result = client.classify_audio(tone(22050), sample_rate=22050)
    assert isinstance(result, Classification) and result.label in labels
    assert result.score == pytest.approx(float(result.probs.max())) and result.probs.shape == (len(labels),)


def test_files_paths_and_bytes_are_decoded_on_the_client(client, test_files, labels):
    path = test_files[0]
    by_path = client.classify_audio(path)
    by_bytes = client.classify_audio(path.read_bytes())
    samples, rate = soundfile.read(path, dtype="float32")
    by_array = client.classify_audio(samples, sample_rate=rate)
    assert by_path.label == by_bytes.label == by_array.label
    np.testing.assert_allclose(by_path.probs, by_array.probs, atol=1e-6)


def test_flac_and_ogg_files_are_accepted(client, tmp_path):
    clip = tone(16000)
    for fmt in ("FLAC", "OGG"):
        buffer = io.BytesIO()
        soundfile.write(buffer, clip, 16000, format=fmt)
        assert client.classify_audio(buffer.getvalue()).label


def test_stereo_is_downmixed_and_int16_scaled_on_the_client(client):
    mono = tone(16000)
    stereo = np.stack([mono, mono], axis=1)
    int16 = (mono * 32767).astype(np.int16)
    a = client.embed_audio(mono, sample_rate=16000)
    np.testing.assert_allclose(client.embed_audio(stereo, sample_rate=16000), a, atol=1e-6)
    np.testing.assert_allclose(client.embed_audio(int16, sample_rate=16000), a, atol=1e-3)


def test_a_list_of_clips_of_different_lengths(client, test_files):
    clips = [tone(16000, 0.3), tone(16000, 1.2, hz=880), tone(16000, 0.05)]
    together = client.classify_audio(clips, sample_rate=16000)
    alone = [client.classify_audio(c, sample_rate=16000) for c in clips]
    assert [r.label for r in together] == [r.label for r in alone]
    np.testing.assert_allclose(np.stack([r.probs for r in together]), np.stack([r.probs for r in alone]), atol=1e-5)
    files = client.classify_audio(test_files[:5])  # files at 22,050 Hz, resampled in the server
    assert len(files) == 5 and all(isinstance(r, Classification) for r in files)
    vectors = client.embed_audio(test_files[:4])
    assert vectors.shape[0] == 4
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_other_pipelines_of_the_same_kind(client):
    assert client.classify_audio(tone(16000), sample_rate=16000, pipeline=W2V_PIPELINE).label


def test_server_side_errors_are_typed_with_the_server_message(client):
    with pytest.raises(InvalidInputError, match=r"AUDIO\[0\] has NaN") as error:
        client.classify_audio(np.full(1600, np.nan, np.float32), sample_rate=16000)
    assert error.value.status == "INVALID_ARGUMENT"
    with pytest.raises(InvalidInputError, match=r"SAMPLE_RATE\[0\] is 96000 Hz"):
        client.embed_audio(tone(96000), sample_rate=96000)
    with pytest.raises(InvalidInputError, match=r"looks like int16 PCM"):
        client.classify_audio(np.round(tone(16000) * 30000), sample_rate=16000)
    assert client.classify_audio(tone(16000), sample_rate=16000).label  # the next call is served


def test_client_side_errors_before_sending(client):
    with pytest.raises(InvalidInputError, match="without sample_rate"):
        client.classify_audio(tone(16000))
    with pytest.raises(InvalidInputError, match="empty"):
        client.classify_audio(np.zeros(0, np.float32), sample_rate=16000)
    with pytest.raises(InvalidInputError, match="cannot decode audio"):
        client.classify_audio(b"not a wav file")


def test_async_client_speech(server, test_files):
    async def main():
        async with AsyncClient(server.grpc_url, timeout=30.0) as client:
            results = await asyncio.gather(*(client.classify_audio(p) for p in test_files[:6]))
            vectors = await client.embed_audio(test_files[:3])
            return results, vectors

    results, vectors = asyncio.run(main())
    assert len(results) == 6 and vectors.shape[0] == 3
