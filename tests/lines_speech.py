"""The speech line's tiny models in the session's repository (see conftest.LINE_BUILDERS).

A few espeak-ng keywords, a tiny random Whisper and a tiny random Wav2Vec2 trained
one epoch by the real training loop, exported by the real exporter:

- `audio_classify`  tiny Whisper classifier (shares `audio_preprocess` with audio_embed)
- `audio_embed`     the same checkpoint's encoder, mean-pooled and L2-normalised
- `keywords_w2v`    tiny Wav2Vec2 classifier: waveform features, attention mask, its own preprocess
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MAX_SECONDS = 30.0
W2V_PIPELINE = "keywords_w2v"


@dataclass(frozen=True)
class SpeechPaths:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "keywords"

    @property
    def whisper(self) -> Path:
        return self.root / "ckpt-whisper"

    @property
    def wav2vec2(self) -> Path:
        return self.root / "ckpt-wav2vec2"


def speech_paths(workdir: Path) -> SpeechPaths:
    return SpeechPaths(workdir / "speech")


def tiny_keyword_spec():
    from mmserve.training.speech_keywords import KeywordSpec

    return KeywordSpec(
        commands=("yes", "no", "stop"),
        train_voices=("en-us+m1", "en-gb+f2"),
        test_voices=("en-gb-scotland+m7",),
        train_per_voice=3, test_per_voice=2, unknown_per_voice=2, silence_per_voice=2,
    )


def build_speech_line(workdir: Path, repository: Path, **options) -> None:
    from mmserve.exporters.speech import export_speech
    from mmserve.training.speech_keywords import synthesise_keywords
    from mmserve.training.speech import SpeechTrainConfig, train_speech
    from mmserve.training.speech_tiny import make_tiny_wav2vec2, make_tiny_whisper

    paths = speech_paths(workdir)
    data = synthesise_keywords(paths.data, tiny_keyword_spec())
    bases = {
        paths.whisper: make_tiny_whisper(paths.root / "tiny-whisper"),
        paths.wav2vec2: make_tiny_wav2vec2(paths.root / "tiny-wav2vec2"),
    }
    for out, base in bases.items():
        if (out / "metrics.json").exists():  # kept by MMSERVE_TEST_CACHE
            continue
        train_speech(SpeechTrainConfig(
            base=str(base), data=str(data.train), out=str(out), epochs=1, batch_size=16, lr=1e-3, dev_fraction=0.3,
            overwrite=True,  # a kept session folder (MMSERVE_TEST_CACHE) may hold an earlier build's
        ))
    export_speech(paths.whisper, repository, max_seconds=MAX_SECONDS, **options)
    export_speech(paths.whisper, repository, task="embed", max_seconds=MAX_SECONDS, **options)
    export_speech(paths.wav2vec2, repository, name=W2V_PIPELINE, max_seconds=MAX_SECONDS, **options)
