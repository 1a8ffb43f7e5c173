"""Tiny randomly initialised speech configs (no weights), so tests train and export in seconds.

Each folder holds config.json + preprocessor_config.json only: `train speech --base
FOLDER` builds the model from the config (random init), exactly the path a user's
own config takes.
"""
from __future__ import annotations

from pathlib import Path


def make_tiny_whisper(out_dir: str | Path, clip_seconds: int = 1) -> Path:
    """A 2-layer, 32-wide Whisper encoder config over 80 mel bins, its window `clip_seconds`."""
    from transformers import WhisperConfig, WhisperFeatureExtractor

    out_dir = Path(out_dir)
    WhisperConfig(
        vocab_size=64, num_mel_bins=80, d_model=32,
        encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64,
        max_source_positions=50 * clip_seconds, max_target_positions=16, classifier_proj_size=16,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3,
        suppress_tokens=[], begin_suppress_tokens=[],
    ).save_pretrained(out_dir)
    WhisperFeatureExtractor(feature_size=80, chunk_length=clip_seconds).save_pretrained(out_dir)
    return out_dir


def make_tiny_wav2vec2(out_dir: str | Path) -> Path:
    """A 2-layer, 32-wide Wav2Vec2 config (layer-norm front end, so it takes an attention mask)."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor

    out_dir = Path(out_dir)
    Wav2Vec2Config(
        vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16, 16), conv_kernel=(10, 8, 4), conv_stride=(5, 4, 4),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer", do_stable_layer_norm=True, mask_time_prob=0.0, classifier_proj_size=16,
    ).save_pretrained(out_dir)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    ).save_pretrained(out_dir)
    return out_dir
