"""The typed client against the real server: what a backend team's code sees."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mmserve.client import (
    AsyncClient,
    Classification,
    Client,
    DeadlineExceededError,
    Entity,
    InvalidInputError,
    ModelNotReadyError,
    ServerUnavailableError,
)
from mmserve.server import ServerPorts

from layouts import both_layouts  # noqa: E402

server, triton = both_layouts()  # every test here runs against both cpu layouts


def test_ready_and_models(client):
    assert client.ready() and client.ready("text_embed")
    assert not client.ready("no_such_pipeline")
    states = {m.name: m.state for m in client.models()}
    assert states["text_classify"] == "READY" and set(states.values()) == {"READY"}
    steps = {step for product in client.products() for step in product.steps}
    assert steps <= set(states)  # an ensemble's steps are models too; a fused pipeline has none


def test_one_string_or_a_list(client):
    one = client.embed_text("hello there")
    many = client.embed_text(["hello there", "general kenobi"])
    assert one.shape == (many.shape[1],) and many.shape[0] == 2
    np.testing.assert_allclose(one, many[0], atol=1e-5)
    assert client.embed_text([]).shape[0] == 0


def test_classify_and_entities_are_dataclasses(client, text_checkpoints):
    labels = (text_checkpoints["classify"] / "labels.txt").read_text().split()
    result = client.classify_text("I want a refund")
    assert isinstance(result, Classification) and result.label in labels
    assert result.score == pytest.approx(float(result.probs.max()))
    entities = client.extract_entities(["Angela Merkel visited Paris.", "nothing"])
    assert len(entities) == 2 and all(isinstance(e, Entity) for doc in entities for e in doc)


def test_a_batch_longer_than_the_server_limit_is_split(client):
    texts = [f"message number {i}" for i in range(150)]
    assert client.embed_text(texts).shape[0] == 150
    assert len(client.classify_text(texts, pipeline="sentiment")) == 150


def test_bad_input_is_a_typed_error_with_the_server_message(client):
    with pytest.raises(InvalidInputError, match=r"TEXT\[1\] is empty") as error:
        client.classify_text(["fine", "   "])
    assert error.value.status == "INVALID_ARGUMENT"
    assert client.classify_text("fine").label  # the next call is served


def test_unknown_pipeline_is_model_not_ready(client):
    with pytest.raises(ModelNotReadyError):
        client.embed_text("x", pipeline="no_such_pipeline")


def test_deadline_exceeded(client):
    with pytest.raises(DeadlineExceededError):
        client.embed_text(["a long enough batch " * 50] * 64, timeout=0.0005)


def test_server_unavailable_on_a_closed_port():
    with Client(f"127.0.0.1:{ServerPorts.free().grpc}", timeout=2.0) as closed:
        assert not closed.ready()
        with pytest.raises(ServerUnavailableError):
            closed.embed_text("x")


def test_async_client_runs_concurrent_calls(server):
    async def main():
        async with AsyncClient(server.grpc_url, timeout=30.0) as client:
            texts = [f"order {i} has not arrived" for i in range(16)]
            results = await asyncio.gather(*(client.classify_text(t) for t in texts))
            vectors = await client.embed_text(texts)
            return results, vectors

    results, vectors = asyncio.run(main())
    assert len(results) == 16 and vectors.shape[0] == 16


def test_the_client_does_not_import_torch():
    import subprocess
    import sys

    code = "import mmserve.client, sys; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
