"""Decompression bombs and exotic formats (issue 18, finding 3), made here and fed to the
decoders that see untrusted bytes: the client's `decode_audio` (which the console's
playground uses too), its `open_image`, and the server's `decode_image`.

Each bomb is refused with a message naming the limit, before the bytes are decoded: the
peak memory of the refused decode is measured in a fresh process."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from mmserve.client import InvalidInputError
from mmserve.client import media
from mmserve.serving import audio as serving_audio
from mmserve.serving import image as serving_image
from mmserve.serving.runtime import InputError


def _flac_of_silence(seconds: int, rate: int = 8000) -> bytes:
    """Silence compresses to almost nothing: an hour is ~90 KB of FLAC, 115 MB as float32."""
    out = io.BytesIO()
    with soundfile.SoundFile(out, "w", samplerate=rate, channels=1, format="FLAC", subtype="PCM_16") as f:
        block = np.zeros(rate * 60, dtype=np.int16)
        for _ in range(seconds // 60):
            f.write(block)
    return out.getvalue()


def _with_flac_total_samples(data: bytes, total: int) -> bytes:
    """STREAMINFO's 36-bit total-samples field rewritten (0 means "unknown")."""
    patched = bytearray(data)
    offset = 4 + 4 + 10  # "fLaC", the block header, block sizes and frame sizes
    value = int.from_bytes(patched[offset:offset + 8], "big")
    value = (value & ~((1 << 36) - 1)) | total
    patched[offset:offset + 8] = value.to_bytes(8, "big")
    return bytes(patched)


def _wav(rate: int, channels: int, seconds: float = 0.1, fmt: str = "WAV") -> bytes:
    out = io.BytesIO()
    soundfile.write(out, np.zeros((int(rate * seconds), channels), dtype=np.float32), rate, format=fmt)
    return out.getvalue()


@pytest.fixture(scope="module")
def hour_of_flac() -> bytes:
    return _flac_of_silence(3600)


def test_the_client_limits_are_the_pipelines():
    assert media.MAX_AUDIO_SECONDS == serving_audio.DEFAULT_MAX_SECONDS
    assert (media.MIN_SAMPLE_RATE, media.MAX_SAMPLE_RATE) == (serving_audio.MIN_SAMPLE_RATE,
                                                               serving_audio.MAX_SAMPLE_RATE)
    assert media.IMAGE_FORMATS == serving_image.IMAGE_FORMATS
    assert media.MAX_IMAGE_PIXELS == serving_image.DEFAULT_MAX_PIXELS


def test_an_hour_of_flac_is_refused_from_its_header_in_bounded_memory(hour_of_flac: bytes, tmp_path: Path):
    """Finding 3: an 18 KB FLAC decoded to 1 GiB in decode_audio before the 30 s limit applied."""
    assert len(hour_of_flac) < 200_000
    bomb = tmp_path / "hour.flac"
    bomb.write_bytes(hour_of_flac)
    script = textwrap.dedent(f"""
        import json, resource
        from pathlib import Path
        from mmserve.client import InvalidInputError
        from mmserve.client.media import decode_audio
        data = Path({str(bomb)!r}).read_bytes()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            decode_audio(data)
            message = None
        except InvalidInputError as error:
            message = str(error)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"message": message, "grew_kib": after - before}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["message"] is not None, "the bomb was decoded"
    assert "says it is 3,600.0 s long" in outcome["message"] and "at most 30 s" in outcome["message"]
    decoded_mib = 3600 * 8000 * 4 / 2**20  # what decoding it would have taken, as float32
    assert outcome["grew_kib"] / 1024 < 16 < decoded_mib, outcome


def test_a_header_that_hides_the_length_is_refused_or_cut(hour_of_flac: bytes):
    unknown = _with_flac_total_samples(hour_of_flac, 0)  # "length unknown": refused, never read to the end
    with pytest.raises(InvalidInputError, match="at most 30 s"):
        media.decode_audio(unknown)
    # A header that says 1 s: libsndfile stops there; the read is bounded by the limit in any case.
    samples, rate = media.decode_audio(_with_flac_total_samples(hour_of_flac, 8000))
    assert rate == 8000 and samples.shape == (8000,)


@pytest.mark.parametrize("data, message", [
    (_wav(96_000, 1), "96000 Hz; the pipelines accept 8000..48000 Hz"),
    (_wav(16_000, 16), "16 channels; at most 8"),
    (_wav(16_000, 1, fmt="AIFF"), "AIFF audio; send WAV, FLAC or OGG"),
], ids=["rate", "channels", "format"])
def test_rates_channels_and_formats_out_of_bounds_are_refused_from_the_header(data: bytes, message: str):
    with pytest.raises(InvalidInputError, match=message):
        media.decode_audio(data)


def test_a_longer_limit_can_be_asked_for_and_an_ordinary_clip_still_decodes():
    clip = _wav(16_000, 2, seconds=1.0)
    samples, rate = media.decode_audio(clip)
    assert rate == 16_000 and samples.shape == (16_000,)
    with pytest.raises(InvalidInputError, match="at most 0.5 s"):
        media.decode_audio(clip, max_seconds=0.5)


# --- images: only the contract's formats --------------------------------------------------------


def _eps() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(out, format="EPS")
    return out.getvalue()


def _fits() -> bytes:
    cards = ["SIMPLE  =                    T", "BITPIX  =                    8", "NAXIS   =                    2",
             "NAXIS1  =                    8", "NAXIS2  =                    8", "END"]
    header = "".join(card.ljust(80) for card in cards).ljust(2880).encode()
    return header + bytes(64).ljust(2880, b"\0")


def _psd() -> bytes:
    header = b"8BPS" + (1).to_bytes(2, "big") + bytes(6) + (3).to_bytes(2, "big") + (8).to_bytes(4, "big") \
        + (8).to_bytes(4, "big") + (8).to_bytes(2, "big") + (3).to_bytes(2, "big")
    return header + bytes(4) + bytes(4) + bytes(4) + (0).to_bytes(2, "big") + bytes(8 * 8 * 3)


def _tiff() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="TIFF")
    return out.getvalue()


OUTSIDE_THE_CONTRACT = {"EPS": _eps, "FITS": _fits, "PSD": _psd, "TIFF": _tiff}


@pytest.mark.parametrize("fmt", sorted(OUTSIDE_THE_CONTRACT))
def test_formats_outside_the_contract_are_never_opened(fmt: str):
    data = OUTSIDE_THE_CONTRACT[fmt]()
    assert Image.open(io.BytesIO(data)).format == fmt  # Pillow alone would open it: the refusal below is ours
    with pytest.raises(InputError, match=r"IMAGE\[0\] is not an image in an accepted format"):
        serving_image.decode_image(data)
    with pytest.raises(InvalidInputError, match="not a JPEG, PNG, WebP or BMP image"):
        media.open_image(data)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP"])
def test_the_contract_formats_open(fmt: str):
    out = io.BytesIO()
    Image.new("RGB", (8, 6), (10, 200, 30)).save(out, format=fmt)
    assert serving_image.decode_image(out.getvalue()).size == (8, 6)
    assert media.open_image(out.getvalue()).size == (8, 6)


def test_an_image_bomb_is_refused_by_the_client_before_decoding():
    header = io.BytesIO()
    Image.new("L", (1, 1)).save(header, format="PNG")
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    ihdr = (30000).to_bytes(4, "big") + (30000).to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    with pytest.raises(InvalidInputError):
        media.open_image(bomb)
