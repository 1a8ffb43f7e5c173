"""The naive peer: FastAPI + transformers, one forward pass per request, no batching.

What a team writes in an afternoon to serve sentence embeddings: an
OpenAI-style /v1/embeddings endpoint, mean pooling + L2 norm in torch. Runs in
the bench's separate peer environment (never imported by mmserve itself):

    python peer_naive.py --model FOLDER --port 8080
"""
from __future__ import annotations

import argparse
import os

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import AutoModel, AutoTokenizer


class EmbeddingRequest(BaseModel):
    input: list[str] | str
    model: str = "minilm"


def build_app(model_path: str, max_length: int) -> FastAPI:
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).eval()
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/embeddings")
    def embeddings(request: EmbeddingRequest) -> dict:
        texts = [request.input] if isinstance(request.input, str) else request.input
        encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        vectors = torch.nn.functional.normalize(pooled, p=2, dim=-1).tolist()
        return {
            "object": "list",
            "model": request.model,
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": int(encoded["attention_mask"].sum()), "total_tokens": int(encoded["attention_mask"].sum())},
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    uvicorn.run(build_app(args.model, args.max_length), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
