"""Reading labelled audio and augmenting it: folders of WAV/FLAC/OGG per label, or a CSV.

Pure numpy + soundfile (no torch): decoding, down-mixing, resampling with the very
function the server runs (mmserve.serving.audio), the window a Whisper model sees,
and the training-time augmentations (additive noise, time shift, gain, speed).
"""
from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from mmserve.serving.audio import loudest_window, resample, resample_poly
from mmserve.training.errors import DataError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


@dataclass(frozen=True)
class AudioExample:
    path: Path
    label: str


def read_audio_examples(source: str | Path) -> list[AudioExample]:
    """Examples from DIR/<label>/*.{wav,flac,ogg} or a CSV with header `path,label`.

    CSV paths are relative to the CSV's folder unless absolute.
    """
    source = Path(source)
    if source.is_dir():
        examples = _read_folders(source)
    elif source.suffix.lower() == ".csv":
        examples = _read_csv(source)
    elif not source.exists():
        raise DataError(f"{source}: no such file or folder")
    else:
        raise DataError(f"{source}: use a folder with one sub-folder of audio files per label, or a CSV (path,label)")
    if not examples:
        raise DataError(f"{source}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
    return examples


def _read_folders(root: Path) -> list[AudioExample]:
    examples = []
    stray = [p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES]
    if stray:
        raise DataError(
            f"{root}: audio files directly in the folder ({stray[0]}, ...); put each in a sub-folder named by its label"
        )
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in AUDIO_SUFFIXES:
                examples.append(AudioExample(path, folder.name))
    return examples


def _read_csv(path: Path) -> list[AudioExample]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in ("path", "label") if c not in header]
            if missing:
                raise DataError(f"{path}:1: header must name columns 'path' and 'label' (missing {missing}, got {header})")
            examples = []
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if not row["path"] or not (row["label"] or "").strip():
                    raise DataError(f"{where}: empty path or label")
                audio = Path(row["path"].strip())
                audio = audio if audio.is_absolute() else path.parent / audio
                if not audio.is_file():
                    raise DataError(f"{where}: no such audio file {audio}")
                examples.append(AudioExample(audio, row["label"].strip()))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte offset {exc.start})") from exc
    return examples


def load_clip(path: Path, rate: int) -> np.ndarray:
    """Decode, down-mix to mono and resample to `rate`; float32 in [-1, 1]."""
    import soundfile

    try:
        samples, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, TypeError, ValueError) as exc:  # LibsndfileError is a RuntimeError
        raise DataError(f"{path}: cannot decode audio ({exc})") from exc
    if samples.shape[0] == 0:
        raise DataError(f"{path}: no samples")
    mono = samples.mean(axis=1)
    return np.clip(resample(mono, int(file_rate), rate), -1.0, 1.0)


def load_clips(examples: Sequence[AudioExample], rate: int) -> list[np.ndarray]:
    return [load_clip(e.path, rate) for e in examples]


def audio_labels(examples: Sequence[AudioExample]) -> list[str]:
    """Label list in model output order: sorted."""
    return sorted({e.label for e in examples})


# --- augmentation -------------------------------------------------------------------------


@dataclass(frozen=True)
class Augmentation:
    """Random perturbations of a training clip; each applied with its own probability."""

    noise_prob: float = 0.6
    snr_db: tuple[float, float] = (5.0, 35.0)
    gain_prob: float = 0.6
    gain_db: tuple[float, float] = (-12.0, 6.0)
    speed_prob: float = 0.5
    speed: tuple[float, float] = (0.85, 1.15)
    shift_seconds: float = 0.15  # leading silence added or cut (waveform models; Whisper places clips in its window)

    @classmethod
    def none(cls) -> "Augmentation":
        return cls(noise_prob=0.0, gain_prob=0.0, speed_prob=0.0, shift_seconds=0.0)


def change_speed(x: np.ndarray, factor: float) -> np.ndarray:
    """Play `factor` times faster (pitch moves with it), by band-limited resampling."""
    ratio = Fraction(factor).limit_denominator(40)
    if ratio == 1:
        return x
    return resample_poly(x, ratio.denominator, ratio.numerator).astype(np.float32)


def add_noise(x: np.ndarray, rng: np.random.Generator, snr_db: float) -> np.ndarray:
    """White or pink noise at `snr_db` below the clip's RMS (a floor for near-silent clips)."""
    noise = rng.standard_normal(x.shape[0])
    if rng.random() < 0.5:  # pink: 1/f power
        spectrum = np.fft.rfft(noise)
        f = np.fft.rfftfreq(x.shape[0])
        f[0] = f[1] if f.size > 1 else 1.0
        noise = np.fft.irfft(spectrum / np.sqrt(f), x.shape[0])
    signal_rms = max(float(np.sqrt(np.mean(np.square(x)))), 1e-3)
    noise *= signal_rms / (float(np.sqrt(np.mean(np.square(noise)))) + 1e-12) / (10 ** (snr_db / 20))
    return (x + noise).astype(np.float32)


def augment(x: np.ndarray, rate: int, rng: np.random.Generator, aug: Augmentation) -> np.ndarray:
    if aug.speed_prob and rng.random() < aug.speed_prob:
        x = change_speed(x, float(rng.uniform(*aug.speed)))
    if aug.shift_seconds:
        shift = int(rng.uniform(-aug.shift_seconds, aug.shift_seconds) * rate)
        x = np.pad(x, (shift, 0)) if shift > 0 else x[min(-shift, x.shape[0] // 4) :]
    if aug.gain_prob and rng.random() < aug.gain_prob:
        x = x * np.float32(10 ** (rng.uniform(*aug.gain_db) / 20))
    if aug.noise_prob and rng.random() < aug.noise_prob:
        x = add_noise(x, rng, float(rng.uniform(*aug.snr_db)))
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def place_in_window(x: np.ndarray, length: int, rng: np.random.Generator | None) -> np.ndarray:
    """A fixed window for Whisper: at a random offset while training, as the server does otherwise."""
    if rng is None or x.shape[0] == length:
        return loudest_window(x, length)
    if x.shape[0] > length:
        start = int(rng.integers(0, x.shape[0] - length + 1))
        return x[start : start + length]
    start = int(rng.integers(0, length - x.shape[0] + 1))
    return np.pad(x, (start, length - x.shape[0] - start))
