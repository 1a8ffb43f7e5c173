"""The front door against the session's real tritonserver: the official `openai` SDK with its
defaults, mmserve's routes per kind, keys (401/403/429/quota), limits, metering that
survives a restart, and TLS. Replicas sharing Redis: tests/test_gateway_replicas.py."""
from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import sqlite3
import ssl
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from mmserve.cli import main as mmserve
from mmserve.gateway.app import GatewayConfig
from mmserve.gateway.catalog import Catalog
from mmserve.gateway.server import GatewayError, GatewayThread, Listen
from mmserve.gateway.store import open_store

TEXTS = ["how do I reset my password?", "I forgot my password", "the weather is lovely today"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = mmserve(list(argv))
    return code, out.getvalue()


def create_key(store: str, repository: Path, audit: Path, *options: str) -> dict:
    """`mmserve keys create` (its audit records in ``audit``: the session repository's own log
    stays the lifecycle tests')."""
    code, out = cli("keys", "create", "--store", store, "--repository", str(repository), "--json",
                    "--audit-log", str(audit), *options)
    assert code == 0, out
    return json.loads(out)


def start_gateway(server, repository: Path, store: str, **listen) -> GatewayThread:
    config = GatewayConfig(server=server.grpc_url, catalog=Catalog(repository), store=open_store(store),
                           client_options={"admin_key": ""}, max_items=64, max_body_bytes=2_000_000,
                           metrics_key="metrics-key-for-tests")
    return GatewayThread(config, Listen(port=free_port(), **listen)).start()


def png(seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def wav(freq: float, seconds: float = 0.6, rate: int = 16000) -> bytes:
    import soundfile

    t = np.arange(int(seconds * rate)) / rate
    out = io.BytesIO()
    soundfile.write(out, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, format="WAV")
    return out.getvalue()


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture(scope="module")
def setup(server, repository, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gateway")
    store, audit = str(folder / "gateway.sqlite3"), folder / "audit.jsonl"
    gateway = start_gateway(server, repository, store)
    keys = {
        "all": create_key(store, repository, audit, "--tenant", "acme", "--products",
                          "text_embed,image_embed,audio_embed,clip_text_embed,text_classify,text_ner,"
                          "zero_shot_image,audio_classify"),
        "text": create_key(store, repository, audit, "--tenant", "globex", "--products", "text_embed"),
        "slow": create_key(store, repository, audit, "--tenant", "initech", "--products", "text_embed", "--rate", "0.2"),
        "quota": create_key(store, repository, audit, "--tenant", "umbrella", "--products", "text_embed", "--quota", "3"),
    }
    yield {"gateway": gateway, "store": store, "audit": audit, "keys": keys}
    gateway.stop()


def sdk(setup, key: str = "all", **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=setup["gateway"].url + "/v1", api_key=setup["keys"][key]["key"], **options)


def post(setup, route: str, body: dict, key: str | None = "all", **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {setup['keys'][key]['key']}"} if key else {}
    return httpx.post(setup["gateway"].url + route, json=body, headers=headers, timeout=30, **kwargs)


# --- the official SDK, its defaults (base64) ----------------------------------------------


def test_openai_sdk_text_embeddings_equal_the_clients(setup, client):
    answer = sdk(setup).embeddings.create(model="text_embed", input=TEXTS)  # the SDK asks for base64
    got = np.array([d.embedding for d in answer.data])
    assert [d.index for d in answer.data] == [0, 1, 2] and answer.model == "text_embed"
    assert cosine(got, client.embed_text(TEXTS)).min() >= 0.9999
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == 3  # items: documented in docs/api.md
    floats = sdk(setup).embeddings.create(model="text_embed", input=TEXTS[0], encoding_format="float")
    assert cosine(floats.data[0].embedding, got[0]) >= 0.9999


def test_openai_sdk_image_embeddings_equal_the_clients(setup, client):
    images = [png(1), png(2)]
    answer = sdk(setup).embeddings.create(model="image_embed", input=[data_url("image/png", x) for x in images])
    got = np.array([d.embedding for d in answer.data])
    assert cosine(got, client.embed_images(images)).min() >= 0.9999
    bare = sdk(setup).embeddings.create(model="image_embed", input=base64.b64encode(images[0]).decode())
    assert cosine(bare.data[0].embedding, got[0]) >= 0.9999


def test_openai_sdk_audio_embeddings_equal_the_clients(setup, client):
    clips = [wav(440.0), wav(880.0, seconds=0.9)]
    answer = sdk(setup).embeddings.create(model="audio_embed", input=[data_url("audio/wav", c) for c in clips])
    got = np.array([d.embedding for d in answer.data])
    assert cosine(got, client.embed_audio(clips)).min() >= 0.9999


def test_raw_base64_is_little_endian_float32(setup, client):
    body = post(setup, "/v1/embeddings", {"model": "text_embed", "input": TEXTS[:1], "encoding_format": "base64"}).json()
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert body["object"] == "list" and body["data"][0]["object"] == "embedding"
    assert cosine(vector, client.embed_text(TEXTS[0])) >= 0.9999


# --- one route per other kind, from the kind table ----------------------------------------


def test_kind_routes_answer_like_the_client(setup, client):
    classified = post(setup, "/v1/classifications", {"model": "text_classify", "input": TEXTS}).json()
    expected = client.classify_text(TEXTS)
    assert [d["label"] for d in classified["data"]] == [c.label for c in expected]
    assert abs(sum(classified["data"][0]["scores"].values()) - 1) < 1e-3
    entities = post(setup, "/v1/entities", {"model": "text_ner", "input": "Angela Merkel visited Paris"}).json()
    assert entities["data"][0]["entities"] == [
        {"text": e.text, "label": e.label, "start": e.start, "end": e.end, "score": pytest.approx(e.score, abs=1e-6)}
        for e in client.extract_entities("Angela Merkel visited Paris")]
    zero = post(setup, "/v1/zero-shot-classifications",
                {"model": "zero_shot_image", "input": data_url("image/png", png(3)), "labels": ["a cat", "a dog"]})
    assert list(zero.json()["data"][0]["scores"]) == ["a cat", "a dog"]
    assert zero.json()["data"][0]["label"] == client.zero_shot(png(3), ["a cat", "a dog"]).label
    audio = post(setup, "/v1/audio/classifications", {"model": "audio_classify", "input": data_url("audio/wav", wav(300.0))})
    assert audio.json()["data"][0]["label"] == client.classify_audio(wav(300.0)).label
    wrong = post(setup, "/v1/embeddings", {"model": "text_classify", "input": "hi"})
    assert wrong.status_code == 400 and "/v1/classifications" in wrong.json()["error"]["message"]


def test_models_lists_only_the_keys_products(setup):
    listed = sdk(setup, "text").models.list()
    assert [(m.id, m.object, m.owned_by) for m in listed.data] == [("text_embed", "model", "mmserve")]
    assert {m.id for m in sdk(setup).models.list().data} >= {"text_embed", "image_embed", "audio_embed"}


def test_openapi_documents_every_route(setup):
    paths = httpx.get(setup["gateway"].url + "/openapi.json").json()["paths"]
    assert {"/v1/embeddings", "/v1/models", "/v1/classifications", "/v1/entities",
            "/v1/zero-shot-classifications", "/v1/audio/classifications"} <= set(paths)


# --- keys, scopes, limits ------------------------------------------------------------------


def test_wrong_key_401_out_of_scope_403(setup):
    bad = openai.OpenAI(base_url=setup["gateway"].url + "/v1", api_key="mms-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        bad.embeddings.create(model="text_embed", input="hi")
    assert refused.value.body["code"] == "invalid_api_key"
    assert post(setup, "/v1/embeddings", {"model": "text_embed", "input": "hi"}, key=None).status_code == 401
    with pytest.raises(openai.PermissionDeniedError) as denied:
        sdk(setup, "text", max_retries=0).embeddings.create(model="image_embed", input=data_url("image/png", png(1)))
    assert "text_embed" in denied.value.message  # says what the key may use


def test_over_rate_429_with_retry_after(setup):
    first = post(setup, "/v1/embeddings", {"model": "text_embed", "input": "one"}, key="slow")
    second = post(setup, "/v1/embeddings", {"model": "text_embed", "input": "two"}, key="slow")
    assert first.status_code == 200 and second.status_code == 429
    assert second.json()["error"]["code"] == "rate_limit_exceeded" and int(second.headers["retry-after"]) >= 1
    with pytest.raises(openai.RateLimitError):
        sdk(setup, "slow", max_retries=0).embeddings.create(model="text_embed", input="three")


def test_over_quota_refused_and_not_retried(setup):
    client = sdk(setup, "quota")  # the SDK's default retries: x-should-retry stops them
    assert len(client.embeddings.create(model="text_embed", input=["a", "b"]).data) == 2
    with pytest.raises(openai.RateLimitError) as refused:
        client.embeddings.create(model="text_embed", input=["c", "d"])  # 2 + 2 > 3
    assert refused.value.body["code"] == "insufficient_quota" and "2 of its 3" in refused.value.message
    assert len(client.embeddings.create(model="text_embed", input="c").data) == 1  # exactly up to the quota


def test_revoked_and_expired_keys_are_refused(setup, repository):
    store, audit = setup["store"], setup["audit"]
    key = create_key(store, repository, audit, "--tenant", "hooli", "--products", "text_embed")
    headers = {"Authorization": f"Bearer {key['key']}"}
    url = setup["gateway"].url + "/v1/models"
    assert httpx.get(url, headers=headers).status_code == 200
    assert cli("keys", "revoke", key["id"], "--store", store, "--repository", str(repository),
               "--audit-log", str(audit))[0] == 0
    refused = httpx.get(url, headers=headers)
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
    old = create_key(store, repository, audit, "--tenant", "hooli", "--products", "text_embed", "--expires", "2020-01-01")
    assert "expired" in httpx.get(url, headers={"Authorization": f"Bearer {old['key']}"}).json()["error"]["message"]
    code, listing = cli("keys", "list", "--store", store, "--repository", str(repository), "--json")
    records = {r["id"]: r for r in json.loads(listing)}
    assert records[key["id"]]["revoked"] and "key_hash" not in records[key["id"]]
    assert key["key"] not in Path(store).read_bytes().decode("latin-1")  # only its hash is stored
    records = audit.read_text()
    assert '"action":"keys.revoke"' in records and key["id"] in records and key["key"] not in records


def test_bad_requests_are_openai_shaped_400s(setup):
    cases = [
        ({"model": "text_embed", "input": [101, 2023]}, "token_arrays_not_supported", "input"),
        ({"model": "text_embed", "input": "hi", "dimensions": 8}, "dimensions_not_supported", "dimensions"),
        ({"model": "text_embed", "input": []}, "empty_input", "input"),
        ({"model": "text_embed", "input": ["x"] * 65}, "too_many_inputs", "input"),
        ({"model": "image_embed", "input": "https://example.com/cat.png"}, "invalid_media", "input"),
        ({"model": "image_embed", "input": data_url("image/png", b"GIF89a not a png")}, "invalid_image", "input"),
        ({"model": "text_embed", "input": "hi", "encoding_format": "int8"}, "invalid_request", "encoding_format"),
    ]
    for body, code, param in cases:
        answer = post(setup, "/v1/embeddings", body)
        error = answer.json()["error"]
        assert (answer.status_code, error["code"], error["param"]) == (400, code, param), (body, error)
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
    missing = post(setup, "/v1/embeddings", {"model": "no_such_product", "input": "hi"})
    assert missing.status_code == 403  # never says whether a product the key may not use exists


def test_body_limit_before_parsing(setup):
    big = post(setup, "/v1/embeddings", {"model": "text_embed", "input": "x" * 2_100_000})
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"

    def chunks():
        for _ in range(40):
            yield b"x" * 100_000  # chunked: no Content-Length to refuse on

    chunked = httpx.post(setup["gateway"].url + "/v1/embeddings", content=chunks(),
                         headers={"Authorization": f"Bearer {setup['keys']['all']['key']}"})
    assert chunked.status_code == 413


# --- metering --------------------------------------------------------------------------------


def test_usage_survives_a_restart_and_exports_csv(setup, server, repository):
    store = setup["store"]

    def counted() -> dict:
        with sqlite3.connect(store) as db:
            return {(t, p, s): (r, i) for t, p, s, r, i in db.execute(
                "SELECT tenant, product, status, SUM(requests), SUM(items) FROM usage GROUP BY 1, 2, 3")}

    before = counted().get(("globex", "text_embed", 200), (0, 0))
    for _ in range(3):
        sdk(setup, "text").embeddings.create(model="text_embed", input=TEXTS[:2])
    setup["gateway"].stop()  # the answered requests are already in the store
    assert counted()[("globex", "text_embed", 200)] == (before[0] + 3, before[1] + 6)
    setup["gateway"] = start_gateway(server, repository, store)
    sdk(setup, "text").embeddings.create(model="text_embed", input=TEXTS[:1])
    assert counted()[("globex", "text_embed", 200)] == (before[0] + 4, before[1] + 7)
    assert counted()[("initech", "text_embed", 429)][0] >= 1  # refusals are counted by status
    code, out = cli("usage", "--since", "1d", "--csv", "--by", "total", "--tenant", "globex", "--store", store)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0] == "period,tenant,product,status,requests,items,bytes"
    assert f"total,globex,text_embed,200,{before[0] + 4},{before[1] + 7}," in out


def test_prometheus_counters_need_the_metrics_key(setup):
    post(setup, "/v1/embeddings", {"model": "text_embed", "input": "hi"})
    url = setup["gateway"].url + "/metrics"
    assert httpx.get(url).status_code == 401
    text = httpx.get(url, headers={"Authorization": "Bearer metrics-key-for-tests"}).text
    assert 'mmserve_gateway_requests_total{tenant="acme",product="text_embed",status="200"}' in text


# --- the bind rule and TLS ---------------------------------------------------------------------


def test_beyond_loopback_needs_tls_or_insecure(tmp_path):
    with pytest.raises(GatewayError, match="--tls-cert"):
        Listen(host="0.0.0.0").check()
    Listen(host="0.0.0.0", insecure=True).check()
    with pytest.raises(GatewayError, match="together"):
        Listen(tls_cert=tmp_path / "c.pem").check()


def test_gateway_serves_https(setup, server, repository, tmp_path):
    from certificates import make_certificates

    certs = make_certificates(tmp_path)
    gateway = start_gateway(server, repository, setup["store"], tls_cert=certs.server_cert, tls_key=certs.server_key)
    try:
        assert gateway.url.startswith("https://")
        secure = openai.OpenAI(base_url=gateway.url + "/v1", api_key=setup["keys"]["text"]["key"],
                               http_client=httpx.Client(verify=ssl.create_default_context(cafile=str(certs.ca))))
        assert len(secure.embeddings.create(model="text_embed", input="hi").data) == 1
        with pytest.raises(httpx.ConnectError):
            httpx.get(gateway.url + "/healthz")  # its certificate is not the system's to trust
    finally:
        gateway.stop()


def test_a_killed_gateway_loses_no_answered_usage(server, repository, tmp_path):
    """`mmserve gateway` as deployed (its own process), SIGKILLed right after its last answer:
    every answered request is already in the store."""
    import subprocess
    import sys
    import time

    store = str(tmp_path / "gateway.sqlite3")
    key = create_key(store, repository, tmp_path / "audit.jsonl", "--tenant", "acme", "--products", "text_embed")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "mmserve.cli", "gateway", "--server", server.grpc_url,
                                "--repository", str(repository), "--port", str(port), "--store", store],
                               stdout=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + "/healthz")
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, "the gateway did not start"
                time.sleep(0.1)
        headers = {"Authorization": f"Bearer {key['key']}"}
        for i in range(12):
            answer = httpx.post(url + "/v1/embeddings", json={"model": "text_embed", "input": ["x"] * (1 + i % 2)},
                                headers=headers)
            assert answer.status_code == 200
    finally:
        process.kill()
        process.wait(timeout=10)
    with sqlite3.connect(store) as db:
        counted = db.execute("SELECT SUM(requests), SUM(items) FROM usage WHERE tenant = 'acme' AND status = 200").fetchone()
    assert counted == (12, 18)


def test_serve_gateway_options_start_a_gateway_beside_the_server(setup, server, repository):
    """`mmserve serve --gateway ...`: the options parsed by the real parser reach a gateway that
    calls this server (the server itself is the session's: no second Triton here)."""
    from mmserve.cli import build_parser
    from mmserve.cli.gateway import gateway_beside

    port = free_port()
    args = build_parser().parse_args(["serve", "--repository", str(repository), "--gateway", "--gateway-port",
                                      str(port), "--gateway-store", setup["store"], "--gateway-max-items", "2"])
    gateway = gateway_beside(server, args, None)
    try:
        headers = {"Authorization": f"Bearer {setup['keys']['text']['key']}"}
        url = f"http://127.0.0.1:{port}/v1/embeddings"
        assert httpx.post(url, json={"model": "text_embed", "input": ["a", "b"]}, headers=headers).status_code == 200
        assert httpx.post(url, json={"model": "text_embed", "input": ["a"] * 3}, headers=headers).status_code == 400
    finally:
        gateway.stop()


def test_a_store_that_cannot_be_reached_is_a_503_not_an_answer(server, repository, setup):
    gateway = start_gateway(server, repository, f"redis://127.0.0.1:{free_port()}/0")  # nobody listens there
    try:
        answer = httpx.post(gateway.url + "/v1/embeddings", json={"model": "text_embed", "input": "hi"},
                            headers={"Authorization": f"Bearer {setup['keys']['text']['key']}"})
        assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
        assert answer.json()["error"]["code"] == "store_unavailable"
    finally:
        gateway.stop()
