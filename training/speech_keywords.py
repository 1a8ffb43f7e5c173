"""A spoken-command data set synthesised offline with Debian's `espeak-ng`.

Ten commands (yes/no/up/down/left/right/on/off/stop/go), an `_unknown_` class of
other words and a `_silence_` class of background noise, spoken by several
espeak-ng voices (accent + voice variant) at several speeds and pitches. The test
split uses voices that never occur in training: different accents *and* variants,
so its accuracy measures generalisation to unseen speakers, not memorisation.

Layout written (folders of WAV per label, what `mmserve train speech --data` reads):

    ROOT/train/<label>/<voice>_s<speed>_p<pitch>_<word>.wav
    ROOT/test/<label>/...
    ROOT/manifest.json      the spec it was made from; a matching one is reused as is

Clips are 16-bit WAV at espeak-ng's own 22,050 Hz, trimmed to the spoken word plus a
short margin, so training and serving both exercise resampling to the model's rate.
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mmserve.training.errors import TrainingError

COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN_WORDS = (
    "bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow",
    "seven", "learn", "follow", "forward", "visual", "zero", "three", "eight", "backward", "table",
)
SILENCE, UNKNOWN = "_silence_", "_unknown_"
# accent+variant; the test voices share neither accent nor variant with the training ones
TRAIN_VOICES = (
    "en-us+m1", "en-us+f2", "en-gb+m3", "en-gb+f1", "en-gb-x-rp+m2", "en-gb-x-rp+f4",
    "en-029+m6", "en-029+f2", "en-gb-x-gbclan+m1", "en-gb-x-gbclan+klatt2", "en-us+m6", "en-gb+klatt2",
)
TEST_VOICES = ("en-gb-scotland+m7", "en-us-nyc+f3", "en-gb-x-gbcwmd+m4", "en-us-nyc+f5", "en-gb-scotland+klatt3")
TRAIN_PROSODY = ((130, 35), (150, 60), (170, 45), (190, 70), (210, 40), (160, 80), (140, 50), (200, 55))
TEST_PROSODY = ((145, 45), (175, 65), (195, 50), (155, 30))
ESPEAK_RATE = 22_050
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class KeywordSpec:
    """What to synthesise; its hash names the cache entry."""

    commands: tuple[str, ...] = COMMANDS
    unknown_words: tuple[str, ...] = UNKNOWN_WORDS
    train_voices: tuple[str, ...] = TRAIN_VOICES
    test_voices: tuple[str, ...] = TEST_VOICES
    train_per_voice: int = 4  # (speed, pitch) renditions of each command per training voice
    test_per_voice: int = 3
    unknown_per_voice: int = 4  # random other words per voice (the `_unknown_` class)
    silence_per_voice: int = 4  # background-noise clips per voice slot (the `_silence_` class)
    margin_seconds: float = 0.03
    seed: int = 7
    version: int = 2  # of this synthesis code: a change re-synthesises cached sets

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    @property
    def labels(self) -> list[str]:
        return sorted([*self.commands, SILENCE, UNKNOWN])


@dataclass
class KeywordDataset:
    root: Path
    spec: KeywordSpec
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> label -> clips
    reused: bool = False

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def test(self) -> Path:
        return self.root / "test"

    def summary(self) -> str:
        parts = [f"{split}: {sum(c.values())} clips" for split, c in self.counts.items()]
        return (
            f"{self.root} ({'reused' if self.reused else 'synthesised'}): {', '.join(parts)}; "
            f"{len(self.spec.labels)} labels, {len(self.spec.train_voices)} training voices, "
            f"{len(self.spec.test_voices)} held-out test voices"
        )


def espeak_binary() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise TrainingError(
            "espeak-ng is not installed; it synthesises the keyword data set offline "
            "(Debian: apt-get install espeak-ng)"
        )
    return path


def speak(text: str, voice: str, speed: int, pitch: int, margin_seconds: float = 0.03) -> np.ndarray:
    """One utterance as float32 at 22,050 Hz, trimmed to the speech plus a margin."""
    import soundfile

    with tempfile.NamedTemporaryFile(suffix=".wav") as wav:
        subprocess.run(
            [espeak_binary(), "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", wav.name, text],
            check=True, capture_output=True, timeout=30,
        )
        samples, rate = soundfile.read(wav.name, dtype="float32")
    if rate != ESPEAK_RATE:
        raise TrainingError(f"espeak-ng wrote {rate} Hz audio; expected {ESPEAK_RATE}")
    return trim_silence(samples, rate, margin_seconds)


def trim_silence(samples: np.ndarray, rate: int, margin_seconds: float, threshold: float = 0.02) -> np.ndarray:
    """Cut leading/trailing samples below `threshold` x peak, keeping a margin."""
    if samples.ndim > 1:
        samples = samples.mean(axis=1)
    peak = float(np.abs(samples).max()) if samples.size else 0.0
    if peak == 0.0:
        return samples
    loud = np.flatnonzero(np.abs(samples) >= threshold * peak)
    margin = int(margin_seconds * rate)
    return samples[max(0, loud[0] - margin) : loud[-1] + margin + 1]


def background_noise(rng: np.random.Generator, seconds: float = 1.0, rate: int = ESPEAK_RATE) -> np.ndarray:
    """One `_silence_` clip: digital silence, white/pink/brown noise or mains hum at a low level."""
    n = int(seconds * rate)
    kind = rng.choice(["zero", "white", "pink", "brown", "hum"], p=[0.1, 0.25, 0.25, 0.2, 0.2])
    if kind == "zero":
        return np.zeros(n, dtype=np.float32)
    if kind == "hum":
        t = np.arange(n) / rate
        base = rng.choice([50.0, 60.0])
        x = sum(np.sin(2 * np.pi * base * h * t + rng.uniform(0, 2 * np.pi)) / h for h in (1, 2, 3))
        x = x + 0.1 * rng.standard_normal(n)
    else:
        white = rng.standard_normal(n)
        if kind == "white":
            x = white
        else:
            spectrum = np.fft.rfft(white)
            f = np.fft.rfftfreq(n)
            f[0] = f[1]
            spectrum /= np.sqrt(f) if kind == "pink" else f
            x = np.fft.irfft(spectrum, n)
    level = 10 ** (rng.uniform(-65, -30) / 20)  # RMS in dBFS
    x = x / (np.sqrt(np.mean(x**2)) + 1e-12) * level
    return np.clip(x, -1, 1).astype(np.float32)


def synthesise_keywords(root: str | Path, spec: KeywordSpec = KeywordSpec(), fresh: bool = False) -> KeywordDataset:
    """Write the data set under `root` (reusing a complete one made from the same spec)."""
    import soundfile

    root = Path(root)
    manifest = root / MANIFEST
    if not fresh and manifest.is_file():
        saved = json.loads(manifest.read_text())
        if saved.get("digest") == spec.digest():
            return KeywordDataset(root, spec, saved["counts"], reused=True)
    espeak_binary()
    for split in ("train", "test"):
        shutil.rmtree(root / split, ignore_errors=True)
    manifest.unlink(missing_ok=True)

    rng = random.Random(spec.seed)
    noise_rng = np.random.default_rng(spec.seed)
    jobs: list[tuple[Path, str, str, int, int]] = []  # path, text, voice, speed, pitch
    silences: list[Path] = []
    for split, voices, prosody, per_voice in (
        ("train", spec.train_voices, TRAIN_PROSODY, spec.train_per_voice),
        ("test", spec.test_voices, TEST_PROSODY, spec.test_per_voice),
    ):
        for voice in voices:
            tag = voice.replace("+", "_")
            for word in spec.commands:
                for speed, pitch in rng.sample(prosody, min(per_voice, len(prosody))):
                    jobs.append((root / split / word / f"{tag}_s{speed}_p{pitch}_{word}.wav", word, voice, speed, pitch))
            for i in range(spec.unknown_per_voice if split == "train" else per_voice):
                word = rng.choice(spec.unknown_words)
                speed, pitch = rng.choice(prosody)
                name = f"{tag}_s{speed}_p{pitch}_{word}{i}.wav"
                jobs.append((root / split / UNKNOWN / name, word, voice, speed, pitch))
            for i in range(spec.silence_per_voice if split == "train" else per_voice):
                silences.append(root / split / SILENCE / f"{tag}_noise{i}.wav")

    def run(job: tuple[Path, str, str, int, int]) -> None:
        path, text, voice, speed, pitch = job
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, speak(text, voice, speed, pitch, spec.margin_seconds), ESPEAK_RATE, subtype="PCM_16")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(run, jobs))
    for path in silences:
        path.parent.mkdir(parents=True, exist_ok=True)
        seconds = float(noise_rng.uniform(0.5, 1.0))
        soundfile.write(path, background_noise(noise_rng, seconds), ESPEAK_RATE, subtype="PCM_16")

    counts = {
        split: {label: len(list((root / split / label).glob("*.wav"))) for label in spec.labels}
        for split in ("train", "test")
    }
    manifest.write_text(json.dumps({"digest": spec.digest(), "spec": asdict(spec), "counts": counts}, indent=2))
    return KeywordDataset(root, spec, counts)
