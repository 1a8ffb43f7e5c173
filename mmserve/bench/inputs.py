"""Realistic request data per pipeline kind, for perf_analyzer and the in-process baseline.

Each kind has one small generator that returns `n` single-item requests, each a
dict {input name: per-item array} (no batch axis): real sentences of varied
length from the embedded data sets, photo-like 640x480 JPEGs, one-second
spoken clips. `perf_json` writes them as perf_analyzer's --input-data file;
`stack` makes a batch of them for the in-process runs. Generators are per input
shape (mmserve/kinds.py): a new kind of a known shape needs nothing here.
"""
from __future__ import annotations

import base64
import csv
import io
import json
import random
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mmserve import kinds
from mmserve.kinds import InputShape
from mmserve.pipelines import AUDIO, IMAGE, LABELS, TEXT, Kind, PipelineSpec
from mmserve.pipelines import SAMPLE_RATE as SAMPLE_RATE_INPUT

Request = dict[str, np.ndarray]

SAMPLE_RATE = 16_000
ZERO_SHOT_LABELS = (
    "a photo of a dog", "a photo of a cat", "a photo of a car", "a photo of a beach",
    "a photo of a city street", "a photo of food", "a photo of a mountain", "a photo of a person",
)
_SPOKEN = (
    "Where is my order?", "Play some music.", "Turn off the lights.", "What's the weather today?",
    "Call my mother.", "Set an alarm for seven.", "Cancel my subscription.", "I need a taxi.",
    "How much is this?", "Open the garage door.", "Read my messages.", "Stop the timer.",
)
_VOICES = ("en-us", "en-gb", "en-us+m3", "en-gb+f3", "en-us+f2", "en-us+m7")


def _data_dir() -> Path:
    return Path(__file__).resolve().parent.parent.parent / "training" / "data"


def _embedded(name: str) -> Path:
    try:
        from mmserve.training.defaults import embedded_data

        return embedded_data(name)
    except ImportError:  # the training extra is not installed: read the files beside it
        return _data_dir() / name


def sentences(n: int, seed: int = 0) -> list[str]:
    """Real sentences of varied length: intents (short), news headlines, NER news sentences (long)."""
    pool: list[str] = []
    for name in ("intents.csv", "sentiment.csv"):
        with _embedded(name).open(encoding="utf-8") as f:
            pool += [row["text"] for row in csv.DictReader(f) if row["text"].strip()]
    conll = _embedded("ner/dev.conll")
    if conll.exists():
        for block in conll.read_text(encoding="utf-8").split("\n\n"):
            words = [line.split()[0] for line in block.splitlines() if line.strip() and not line.startswith("-DOCSTART-")]
            if len(words) >= 4:
                pool.append(" ".join(words))
    rng = random.Random(seed)
    rng.shuffle(pool)
    return [pool[i % len(pool)] for i in range(n)]


def photo_jpeg(rng: np.random.Generator, size: tuple[int, int] = (640, 480), quality: int = 85) -> bytes:
    """A natural-looking picture: sky/ground gradients, soft shapes, texture and sensor noise."""
    from PIL import Image, ImageDraw, ImageFilter

    width, height = size
    horizon = int(height * rng.uniform(0.35, 0.65))
    top, bottom = rng.uniform(60, 230, 3), rng.uniform(30, 200, 3)
    ground_a, ground_b = rng.uniform(20, 180, 3), rng.uniform(20, 180, 3)
    rows = np.empty((height, 3))
    t = np.linspace(0, 1, horizon)[:, None]
    rows[:horizon] = top * (1 - t) + bottom * t
    t = np.linspace(0, 1, height - horizon)[:, None]
    rows[horizon:] = ground_a * (1 - t) + ground_b * t
    pixels = np.repeat(rows[:, None, :], width, axis=1)
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(20, 45))):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        w, h = rng.uniform(10, width / 4), rng.uniform(10, height / 4)
        colour = tuple(int(c) for c in rng.uniform(0, 255, 3))
        if rng.random() < 0.5:
            draw.ellipse([x, y, x + w, y + h], fill=colour)
        else:
            points = [(x + rng.uniform(-w, w), y + rng.uniform(-h, h)) for _ in range(int(rng.integers(3, 7)))]
            draw.polygon(points, fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 1.5))))
    array = np.asarray(image, dtype=np.float32)
    for cell, strength in ((64, 14.0), (16, 9.0), (4, 6.0)):  # texture at several scales, smooth not blocky
        field = rng.normal(0, strength, (height // cell + 2, width // cell + 2)).astype(np.float32)
        smooth = Image.fromarray(field, mode="F").resize((width + 2 * cell, height + 2 * cell), Image.BICUBIC)
        array += np.asarray(smooth)[cell : cell + height, cell : cell + width, None]
    array += rng.normal(0, 2.5, array.shape)  # sensor noise
    out = io.BytesIO()
    Image.fromarray(array.clip(0, 255).astype(np.uint8)).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def jpegs(n: int, seed: int = 0, distinct: int = 16) -> list[bytes]:
    rng = np.random.default_rng(seed)
    made = [photo_jpeg(rng) for _ in range(min(n, distinct))]
    return [made[i % len(made)] for i in range(n)]


def _resample(audio: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    if source_rate == target_rate:
        return audio
    try:
        from scipy.signal import resample_poly

        g = np.gcd(source_rate, target_rate)
        return resample_poly(audio, target_rate // g, source_rate // g).astype(np.float32)
    except ImportError:
        times = np.arange(int(len(audio) * target_rate / source_rate)) / target_rate
        return np.interp(times, np.arange(len(audio)) / source_rate, audio).astype(np.float32)


def _espeak(text: str, voice: str, folder: Path) -> np.ndarray | None:
    import wave

    wav = folder / "clip.wav"
    done = subprocess.run(["espeak-ng", "-v", voice, "-s", "160", "-w", str(wav), text], capture_output=True)
    if done.returncode != 0 or not wav.exists():
        return None
    with wave.open(str(wav)) as f:
        rate, frames = f.getframerate(), f.readframes(f.getnframes())
    audio = np.frombuffer(frames, dtype=np.int16).astype(np.float32) / 32768.0
    return _resample(audio, rate, SAMPLE_RATE)


def _voiced(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Without espeak-ng: a voiced, speech-like signal (harmonics under a syllable envelope)."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    pitch = rng.uniform(90, 220) * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(2, 5) * t))
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    signal = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t), 0, None) ** 0.5
    return (0.3 * signal * envelope + rng.normal(0, 0.005, t.shape)).astype(np.float32)


def speech_clips(n: int, seed: int = 0, seconds: float = 1.0, distinct: int = 12) -> list[np.ndarray]:
    """`n` mono float32 clips of exactly `seconds` at 16 kHz: spoken commands (espeak-ng) when available."""
    rng = np.random.default_rng(seed)
    length = int(seconds * SAMPLE_RATE)
    made = []
    with tempfile.TemporaryDirectory() as scratch:
        for i in range(min(n, distinct)):
            audio = None
            if shutil.which("espeak-ng"):
                audio = _espeak(_SPOKEN[i % len(_SPOKEN)], _VOICES[i % len(_VOICES)], Path(scratch))
            if audio is None or not len(audio):
                audio = _voiced(rng, seconds)
            clip = np.zeros(length, dtype=np.float32)
            clip[: min(length, len(audio))] = audio[:length]
            peak = float(np.abs(clip).max()) or 1.0
            made.append((clip / peak * 0.8).astype(np.float32))
    return [made[i % len(made)] for i in range(n)]


def _bytes_item(value: str | bytes) -> np.ndarray:
    return np.array([value.encode("utf-8") if isinstance(value, str) else value], dtype=np.object_)


def _text_requests(n: int, seed: int) -> list[Request]:
    return [{TEXT.name: _bytes_item(s)} for s in sentences(n, seed)]


def _image_requests(n: int, seed: int) -> list[Request]:
    return [{IMAGE.name: _bytes_item(j)} for j in jpegs(n, seed)]


def _zero_shot_requests(n: int, seed: int) -> list[Request]:
    labels = np.array([label.encode("utf-8") for label in ZERO_SHOT_LABELS], dtype=np.object_)
    return [{IMAGE.name: _bytes_item(j), LABELS.name: labels} for j in jpegs(n, seed)]


def _audio_requests(n: int, seed: int) -> list[Request]:
    rate = np.array([SAMPLE_RATE], dtype=np.int32)
    return [{AUDIO.name: clip, SAMPLE_RATE_INPUT.name: rate} for clip in speech_clips(n, seed)]


# One generator per input shape of the kind table: a new kind with a known shape needs no
# entry; a new shape adds one (tests/test_kind_table.py checks every row's shape is here).
GENERATORS: dict[InputShape, Callable[[int, int], list[Request]]] = {
    InputShape.TEXT: _text_requests,
    InputShape.IMAGE: _image_requests,
    InputShape.IMAGE_AND_LABELS: _zero_shot_requests,
    InputShape.AUDIO: _audio_requests,
}


def requests_for(kind: Kind | str, n: int, seed: int = 0) -> list[Request]:
    return GENERATORS[kinds.info(kind).input](n, seed)


def _perf_value(array: np.ndarray, triton_dtype: str) -> dict:
    """One input of one step as perf_analyzer reads it: readable text as content, the rest base64."""
    if triton_dtype == "BYTES":
        items = list(array.reshape(-1))
        try:
            texts = [bytes(item).decode("utf-8") for item in items]
            if all(t.isprintable() for t in texts):
                return {"content": texts, "shape": list(array.shape)}
        except UnicodeDecodeError:
            pass
        # Binary BYTES are sent raw: each element carries its 4-byte little-endian length.
        raw = b"".join(struct.pack("<I", len(bytes(item))) + bytes(item) for item in items)
        return {"b64": base64.b64encode(raw).decode("ascii"), "shape": list(array.shape)}
    return {"b64": base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii"), "shape": list(array.shape)}


def perf_json(requests: Sequence[Request], pipeline: PipelineSpec, path: Path) -> Path:
    """perf_analyzer's --input-data file: one step per request, cycled through during a run."""
    steps = [{t.name: _perf_value(r[t.name], t.triton_dtype) for t in pipeline.inputs} for r in requests]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": steps}))
    return path


def openai_json(texts: Sequence[str], model: str, path: Path) -> Path:
    """The same sentences for an OpenAI-style /embeddings endpoint (perf_analyzer --service-kind openai)."""
    steps = [{"payload": [{"input": [t], "model": model}]} for t in texts]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": steps}))
    return path


def stack(requests: Sequence[Request]) -> Request:
    """Several single-item requests as one batch (first axis); equal per-item shapes required."""
    names = requests[0].keys()
    return {name: np.stack([r[name] for r in requests]) for name in names}


def texts_of(requests: Sequence[Request]) -> list[str]:
    return [bytes(r[TEXT.name].reshape(-1)[0]).decode("utf-8") for r in requests]


def describe(kind: Kind | str, requests: Sequence[Request]) -> str:
    """One line about the data, for the report."""
    shape = kinds.info(kind).input
    if shape is InputShape.TEXT:
        words = [len(t.split()) for t in texts_of(requests)]
        return f"{len(requests)} real sentences, {min(words)}–{max(words)} words (median {int(np.median(words))})"
    if shape in (InputShape.IMAGE, InputShape.IMAGE_AND_LABELS):
        sizes = [len(bytes(r[IMAGE.name][0])) for r in requests]
        extra = f", {len(ZERO_SHOT_LABELS)} candidate labels" if shape is InputShape.IMAGE_AND_LABELS else ""
        return f"{len(requests)} requests over {len(set(sizes))} photo-like 640x480 JPEGs (q85, median {int(np.median(sizes)) // 1024} KiB){extra}"
    seconds = [len(r[AUDIO.name]) / SAMPLE_RATE for r in requests]
    source = "espeak-ng speech" if shutil.which("espeak-ng") else "synthetic voiced audio"
    return f"{len(requests)} requests of {np.median(seconds):.1f} s {source} at {SAMPLE_RATE} Hz"
