"""Turning the app's images and audio into what the pipelines accept.

Images travel encoded (the server decodes them), so each one is encoded exactly
once here: bytes and files go as they are, PIL images and arrays are encoded
(RGB as JPEG quality 95 to keep requests small, anything else as lossless PNG,
which keeps alpha). Audio travels as mono float32 PCM in [-1, 1] plus its sample
rate; files are decoded with ``soundfile``, imported only when a file is given so
the client works without it.

Untrusted bytes are bounded before they are decoded (the console's playground decodes
visitors' uploads here): an audio file's header (format, rate, channels, length) is
checked against the pipelines' limits first, and the read stops one frame past the
limit whatever the header claims; an image is opened only as one of the contract's
formats, its size checked before any pixel is decoded (``open_image``).
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Literal, Union

import numpy as np
from PIL import Image

from .errors import InvalidInputError

__all__ = [
    "ImageInput",
    "AudioInput",
    "ImageFormat",
    "JPEG_QUALITY",
    "is_single_image",
    "encode_image",
    "is_single_audio",
    "to_mono_float32",
    "decode_audio",
    "load_audio",
    "open_image",
    "IMAGE_FORMATS",
    "MAX_AUDIO_SECONDS",
]

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]
AudioInput = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray]
ImageFormat = Literal["auto", "png", "jpeg"]

JPEG_QUALITY = 95
_PNG_MODES = {"1", "L", "LA", "P", "I", "I;16", "RGB", "RGBA"}
_JPEG_MODES = {"L", "RGB", "CMYK"}
_MAX_CHANNELS = 32  # more "channels" than this is an array given as [channels, n]
# What the audio pipelines accept (mmserve/serving/audio.py: the sample-rate range and the
# default clip limit `mmserve export speech --max-seconds` sets; tests hold them equal).
MAX_AUDIO_SECONDS = 30.0
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8_000, 48_000
MAX_FILE_CHANNELS = 8
AUDIO_FILE_FORMATS = ("WAV", "WAVEX", "FLAC", "OGG")  # libsndfile's names; nothing else is parsed further
# The image formats the contract names (mmserve/serving/image.py IMAGE_FORMATS).
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")
MAX_IMAGE_PIXELS = 40_000_000


def is_single_image(x: object) -> bool:
    """One image (as opposed to a list of them); a 4-D array is a batch."""
    if isinstance(x, np.ndarray):
        return x.ndim in (2, 3)
    return isinstance(x, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image))


def encode_image(image: ImageInput, image_format: ImageFormat = "auto", *, index: int = 0) -> bytes:
    """The bytes sent as one ``IMAGE`` item."""
    where = f"image {index}"
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        if not data:
            raise InvalidInputError(f"{where} is empty bytes: pass the encoded file contents")
        return data
    if isinstance(image, (str, os.PathLike)):
        return _read_file(image, where)
    if isinstance(image, np.ndarray):
        return _encode_pil(_array_to_pil(image, where), image_format, where)
    if isinstance(image, Image.Image):
        return _encode_pil(image, image_format, where)
    raise InvalidInputError(
        f"{where} has type {type(image).__name__}; pass a path, encoded bytes, "
        "a PIL.Image or an HxWxC uint8 numpy array"
    )


def _read_file(path: str | os.PathLike, where: str) -> bytes:
    text = os.fspath(path)
    if isinstance(text, str) and text.startswith(("http://", "https://")):
        raise InvalidInputError(
            f"{where} is a URL ({text}); the client does not download: fetch the bytes and pass them"
        )
    try:
        data = Path(text).read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"{where}: cannot read file {text!r}: {exc.strerror or exc}") from exc
    if not data:
        raise InvalidInputError(f"{where}: file {text!r} is empty")
    return data


def _array_to_pil(array: np.ndarray, where: str) -> Image.Image:
    if array.dtype != np.uint8:
        raise InvalidInputError(
            f"{where} is a {array.dtype} array; pass uint8 pixels, e.g. "
            "(x * 255).clip(0, 255).astype(np.uint8) for floats in [0, 1]"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4)):
        if array.size == 0:
            raise InvalidInputError(f"{where} has no pixels (shape {list(array.shape)})")
        return Image.fromarray(np.ascontiguousarray(array))
    raise InvalidInputError(
        f"{where} has shape {list(array.shape)}; pass HxW (gray) or HxWxC with C in 1, 3, 4 "
        "(channels last: transpose CxHxW arrays with x.transpose(1, 2, 0))"
    )


def _encode_pil(image: Image.Image, image_format: ImageFormat, where: str) -> bytes:
    if image_format not in ("auto", "png", "jpeg"):
        raise InvalidInputError(f"image_format must be 'auto', 'png' or 'jpeg', not {image_format!r}")
    use_jpeg = (image_format == "auto" and image.mode == "RGB") or (
        image_format == "jpeg" and image.mode in _JPEG_MODES
    )
    out = io.BytesIO()
    try:
        if use_jpeg:
            image.save(out, format="JPEG", quality=JPEG_QUALITY)
        else:
            if image.mode not in _PNG_MODES:  # CMYK, F, YCbCr, ...: PNG cannot hold them
                has_alpha = "A" in image.getbands()
                image = image.convert("RGBA" if has_alpha else "RGB")
            image.save(out, format="PNG")
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{where}: cannot encode PIL image of mode {image.mode}: {exc}") from exc
    return out.getvalue()


def is_single_audio(x: object) -> bool:
    """One clip (as opposed to a list of them)."""
    if isinstance(x, np.ndarray):
        return x.ndim in (1, 2)
    return isinstance(x, (str, os.PathLike, bytes, bytearray, memoryview))


def to_mono_float32(audio: np.ndarray, *, index: int = 0) -> np.ndarray:
    """A 1-D float32 clip in [-1, 1] from mono [n] or [n, channels] int/float samples."""
    where = f"audio clip {index}"
    if audio.ndim == 2:
        if audio.shape[1] > _MAX_CHANNELS:
            raise InvalidInputError(
                f"{where} has shape {list(audio.shape)}; pass [n_samples] or [n_samples, channels] "
                "(transpose [channels, n_samples] arrays with x.T)"
            )
        channels_last = True
    elif audio.ndim == 1:
        channels_last = False
    else:
        raise InvalidInputError(
            f"{where} has shape {list(audio.shape)}; pass [n_samples] or [n_samples, channels]"
        )
    if audio.dtype == np.int16:
        samples = audio.astype(np.float32) / 32768.0
    elif audio.dtype == np.int32:
        samples = (audio.astype(np.float64) / 2147483648.0).astype(np.float32)
    elif audio.dtype == np.uint8:  # 8-bit WAV is unsigned, centred on 128
        samples = (audio.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(audio.dtype, np.floating):
        samples = audio.astype(np.float32, copy=False)
    else:
        raise InvalidInputError(
            f"{where} has dtype {audio.dtype}; pass float32 in [-1, 1] or int16 PCM"
        )
    if channels_last:
        samples = samples.mean(axis=1, dtype=np.float32)
    if samples.size == 0:
        raise InvalidInputError(f"{where} is empty: pass at least one sample")
    return np.ascontiguousarray(samples, dtype=np.float32)


def open_image(data: bytes, *, max_pixels: int = MAX_IMAGE_PIXELS, where: str = "image") -> Image.Image:
    """Untrusted encoded bytes -> a PIL image opened as JPEG/PNG/WebP/BMP only, its size checked
    before any pixel is decoded; InvalidInputError otherwise. The caller decodes (``.load()``)."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(bytes(data)), formats=IMAGE_FORMATS)
    except Exception as exc:  # noqa: BLE001 - unidentified, a bomb, or a broken header
        raise InvalidInputError(
            f"{where} is not a JPEG, PNG, WebP or BMP image Pillow may open ({len(data)} bytes starting "
            f"{bytes(data[:8])!r}: {exc}); send one of those formats"
        ) from exc
    width, height = image.size
    if width < 1 or height < 1 or width * height > max_pixels:
        raise InvalidInputError(
            f"{where} is {width}x{height} pixels; accepted: 1 to {max_pixels:,} pixels (resize it first)"
        )
    return image


def _check_audio_header(info: object, where: str, max_seconds: float) -> int:
    """The header's promises against the pipelines' limits; the frames to read at most."""
    fmt, rate, channels, frames = (getattr(info, name) for name in ("format", "samplerate", "channels", "frames"))
    if fmt not in AUDIO_FILE_FORMATS:
        raise InvalidInputError(f"{where} is {fmt} audio; send WAV, FLAC or OGG, or a numpy array")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise InvalidInputError(
            f"{where} is {rate} Hz; the pipelines accept {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz: resample it first"
        )
    if not 1 <= channels <= MAX_FILE_CHANNELS:
        raise InvalidInputError(f"{where} has {channels} channels; at most {MAX_FILE_CHANNELS} are accepted")
    limit = int(max_seconds * rate)
    if frames > limit:
        raise InvalidInputError(
            f"{where} says it is {frames / rate:,.1f} s long ({frames:,} frames at {rate} Hz); the pipelines accept "
            f"at most {max_seconds:g} s per clip: split longer audio (refused before decoding)"
        )
    return limit


def decode_audio(
    data: bytes | str | os.PathLike, *, index: int = 0, max_seconds: float = MAX_AUDIO_SECONDS
) -> tuple[np.ndarray, int]:
    """Decode a WAV/FLAC/OGG file or its bytes to (mono float32, sample rate).

    The header is checked before decoding (format, rate, channels, length up to
    `max_seconds`, the pipeline's limit), and decoding stops one frame past the limit
    whatever the header says, so a small file that expands to hours costs nothing."""
    where = f"audio clip {index}"
    try:
        import soundfile  # lazy: only apps sending encoded audio need it
    except ImportError as exc:  # pragma: no cover - soundfile is in the dev venv
        raise ImportError(
            "decoding audio files needs the 'soundfile' package (pip install soundfile); "
            "or pass a numpy array with sample_rate="
        ) from exc
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if not Path(path).is_file():  # type: ignore[arg-type]
            raise InvalidInputError(f"{where}: no such file {path!r}")

        def source() -> object:
            return path
    else:
        if not data:
            raise InvalidInputError(f"{where} is empty bytes: pass the encoded file contents")
        raw = bytes(data)

        def source() -> object:
            return io.BytesIO(raw)
    try:
        limit = _check_audio_header(soundfile.info(source()), where, max_seconds)
        samples, rate = soundfile.read(source(), frames=limit + 1, dtype="float32", always_2d=True)
    except (RuntimeError, TypeError, ValueError) as exc:  # LibsndfileError is a RuntimeError
        raise InvalidInputError(
            f"{where}: cannot decode audio ({exc}); pass WAV, FLAC or OGG, or a numpy array"
        ) from exc
    if samples.shape[0] > limit:  # the header under-stated the length
        raise InvalidInputError(
            f"{where} is longer than {max_seconds:g} s, whatever its header says; the pipelines accept at most "
            f"{max_seconds:g} s per clip: split longer audio"
        )
    return to_mono_float32(samples, index=index), int(rate)


def load_audio(
    audio: AudioInput, sample_rate: int | None, *, index: int = 0, max_seconds: float = MAX_AUDIO_SECONDS
) -> tuple[np.ndarray, int]:
    """(mono float32 samples, sample rate) for one clip given any supported way."""
    where = f"audio clip {index}"
    if sample_rate is not None and (
        isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0
    ):
        raise InvalidInputError(f"sample_rate must be a positive int (Hz), not {sample_rate!r}")
    if isinstance(audio, np.ndarray):
        if sample_rate is None:
            raise InvalidInputError(
                f"{where} is a numpy array without sample_rate: pass sample_rate= "
                "(the rate the samples were recorded at, e.g. 16000)"
            )
        return to_mono_float32(audio, index=index), int(sample_rate)
    if isinstance(audio, (str, os.PathLike, bytes, bytearray, memoryview)):
        samples, rate = decode_audio(audio, index=index, max_seconds=max_seconds)  # type: ignore[arg-type]
        if sample_rate is not None and int(sample_rate) != rate:
            raise InvalidInputError(
                f"{where}: the file says {rate} Hz but sample_rate={sample_rate}; "
                "drop sample_rate for files (their own rate is used)"
            )
        return samples, rate
    raise InvalidInputError(
        f"{where} has type {type(audio).__name__}; pass a numpy array (with sample_rate=), "
        "a path, or WAV/FLAC/OGG bytes"
    )
