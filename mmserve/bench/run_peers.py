"""The peer side by side on text_embed: same model folder, sentences, loads and cores.

Each peer is started alone (the others stopped), its vectors checked against
sentence-transformers, then driven by perf_analyzer at the same concurrency
levels as our pipeline. Our own text_embed is also measured over HTTP, the
peers' protocol, next to its gRPC figures.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmserve.bench.config import BenchConfig
from mmserve.bench.inputs import openai_json, perf_json, texts_of
from mmserve.bench.peers import (
    SERVED_NAME, embed_http, ensure_peer_env, infinity_peer, naive_peer, reference_vectors,
)
from mmserve.bench.perf import BenchError, Load, run_level
from mmserve.exporters.similarity import row_cosines
from mmserve.pipelines import EMBEDDING, PIPELINES, TEXT, Kind


REFERENCE_SENTENCES = 32
MIN_COSINE = 0.999  # a peer below this returns different vectors: not timed


def peer_count(with_http: bool) -> int:
    return 3 + (1 if with_http else 0)


def _embed_triton(client: Any, pipeline: str, texts: Sequence[str]) -> np.ndarray:
    import tritonclient.grpc as grpcclient

    items = np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)
    tensor = grpcclient.InferInput(TEXT.name, list(items.shape), "BYTES")
    tensor.set_data_from_numpy(items)
    return client.infer(pipeline, [tensor]).as_numpy(EMBEDDING.name)


def run_peers(config: BenchConfig, client: Any, url: str, http_url: str | None, pipeline: str, requests: list,
              raw: Path, progress) -> dict[str, Any]:
    model = config.known_checkpoints.get(pipeline)
    result: dict[str, Any] = {"pipeline": pipeline, "model": str(model), "targets": [], "notes": []}
    if model is None or not Path(model).exists():
        result["notes"].append(f"peers skipped: the model folder behind {pipeline} is unknown (--checkpoint {pipeline}=PATH)")
        return result
    model = Path(model).resolve()
    texts = texts_of(requests)
    workdir = raw / "peers"
    progress.step("peers: environment + reference vectors")
    python = ensure_peer_env(config.peers_venv.resolve(), progress.write)
    reference = reference_vectors(python, model, texts[:REFERENCE_SENTENCES], workdir)
    result["ours_min_cosine"] = float(row_cosines(_embed_triton(client, pipeline, texts[:REFERENCE_SENTENCES]), reference).min())
    progress.advance()
    loads = [Load("concurrency", c) for c in config.concurrency]

    if http_url:
        data = perf_json(requests, PIPELINES[Kind.TEXT_EMBED], raw / f"{pipeline}.input.json")
        rows = []
        for load in loads:
            progress.step(f"{pipeline} over HTTP: {load}")
            rows.append(_level(http_url, pipeline, data, load, config, raw, "triton-http", None, f"{pipeline}-http"))
            progress.advance()
        result["targets"].append({"name": f"mmserve {pipeline} (HTTP)", "min_cosine": result["ours_min_cosine"], "rows": rows})

    openai_data = openai_json(texts, SERVED_NAME, raw / "peers.input.json")
    factories = (
        ("infinity-torch", lambda: infinity_peer(python, model, workdir, "torch")),
        ("infinity-optimum", lambda: infinity_peer(python, model, workdir, "optimum", cache=config.peers_venv.resolve().parent)),
        ("naive-fastapi", lambda: naive_peer(python, model, workdir)),
    )
    for slug, factory in factories:
        target: dict[str, Any] = {"name": slug, "rows": []}
        result["targets"].append(target)
        try:
            peer = factory()
            target["name"] = peer.name
            progress.step(f"{peer.name}: starting")
            with peer:
                target["min_cosine"] = float(row_cosines(embed_http(peer, texts[:REFERENCE_SENTENCES]), reference).min())
                if target["min_cosine"] < MIN_COSINE:
                    target["error"] = (f"vectors differ from sentence-transformers (min cosine "
                                       f"{target['min_cosine']:.4f}): not timed")
                else:
                    for load in loads:
                        progress.step(f"{peer.name}: {load}")
                        target["rows"].append(
                            _level(peer.url, SERVED_NAME, openai_data, load, config, raw, "openai", peer.endpoint, slug)
                        )
                        progress.advance()
        except BenchError as error:
            target["error"] = str(error)
            progress.write(f"peer {slug}: {error}")
        for _ in range(len(loads) - len(target["rows"])):
            progress.advance()
    return result


def _level(url, model, data, load, config, raw, service, endpoint, label) -> dict:
    try:
        row = run_level(url, model, data, load, config.settings, raw, service=service, endpoint=endpoint, label=label)
    except BenchError as error:
        return {"pipeline": label, "target": service, "mode": load.mode, "load": load.value, "error": str(error)}
    row.target = label
    return row.as_dict()
