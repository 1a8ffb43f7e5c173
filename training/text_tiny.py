"""A tiny randomly initialised BERT with the MiniLM tokenizer, so tests train in seconds."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from mmserve.training.defaults import default_text_base


def make_tiny_bert(out_dir: str | Path, tokenizer_from: str | Path | None = None, seed: int = 0) -> Path:
    """Save a 2-layer, 32-wide BertModel plus a tokenizer (MiniLM's by default) to `out_dir`."""
    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from or default_text_base())
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():  # a fixed model without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = BertModel(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
