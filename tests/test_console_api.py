"""The console's HTTP surface without a browser: FastAPI's TestClient in front of the real
app, the app in front of the session's real tritonserver (tiny models).

Every page answers, the playground answers per kind with what the client itself answers,
bad input shows the server's own message, and the admin routes refuse without sign-in
(401) or without the session's CSRF token (403). The attacks on the console itself
(anonymous visitors, foreign Host, parallel guesses, big bodies...) are in
tests/test_console_security.py.
"""
from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the console needs the `console` extra (pip install -e '.[console]')")
from fastapi.testclient import TestClient  # noqa: E402

from mmserve.console import ConsoleError, ConsoleSettings, create_app  # noqa: E402
from mmserve.console.auth import COOKIE_NAME, Session, SessionCodec  # noqa: E402
from mmserve.console.playground import wav_bytes  # noqa: E402
from mmserve.console.sampler import ModelCounters, Sample, request_quantiles, series, totals  # noqa: E402
from mmserve.lifecycle import Lifecycle  # noqa: E402

ADMIN_KEY = "console-test-admin-key-0123456789"


@pytest.fixture(scope="module")
def audit_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("console-api") / "audit.jsonl"


@pytest.fixture(scope="module")
def settings(server, repository: Path, audit_log: Path) -> ConsoleSettings:
    return ConsoleSettings(
        server=server.grpc_url, repository=repository, metrics_url=server.metrics_url,
        admin_key=ADMIN_KEY, audit_log=audit_log, sample_interval_s=0.5,
    )


BASE_URL = "http://localhost"  # a Host the console answers to (it refuses TestClient's "testserver")


@pytest.fixture(scope="module")
def web(settings: ConsoleSettings):
    """The app with its lifespan running (the statistics sampler polls the real server),
    signed in: everything beyond the landing page needs it."""
    with TestClient(create_app(settings), base_url=BASE_URL) as test_client:
        sign_in(test_client, ADMIN_KEY, "module")
        yield test_client


@pytest.fixture(scope="module")
def products(repository: Path, client_for_module) -> dict[str, object]:
    return {p.name: p for p in Lifecycle(repository, client_for_module).products()}


@pytest.fixture(scope="module")
def client_for_module(server):
    from mmserve.client import Client

    with Client(server.grpc_url, timeout=60.0) as c:
        yield c


def csrf_of(html: str) -> str:
    match = re.search(r'<meta name="csrf-token" content="([^"]+)"', html)
    assert match, "every page carries the session's CSRF token"
    return match.group(1)


def fresh_session(settings: ConsoleSettings) -> TestClient:
    """Another browser, not signed in, with a console of its own (own sessions and sign-in limits)."""
    return TestClient(create_app(settings), base_url=BASE_URL)


def sign_in(browser: TestClient, key: str, name: str = "tester"):
    token = csrf_of(browser.get("/signin").text)
    response = browser.post(f"/signin?csrf_token={token}", data={"admin_key": key, "name": name}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return response


def png(colour: tuple[int, int, int]) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (48, 48), "white")
    ImageDraw.Draw(image).ellipse([8, 8, 40, 40], fill=colour)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def tone(seconds: float = 1.0, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return wav_bytes(0.3 * np.sin(2 * np.pi * 440 * t), rate)


# --- pages ----------------------------------------------------------------------------------


def test_every_page_answers(web: TestClient, products: dict):
    pages = ["/products", "/live", "/live/overview", "/playground", "/audit", "/signin", "/healthz"]
    pages += [f"/products/{name}" for name in products] + [f"/playground/{name}" for name in products]
    pages += [f"/live?product={name}" for name in products]
    for page in pages:
        response = web.get(page)
        assert response.status_code == 200, (page, response.text[:500])
    assert web.get("/", follow_redirects=False).headers["location"] == "/products"  # signed in
    assert web.get("/healthz").json() == {"console": "ok", "server_ready": True}


def test_products_page_lists_the_lifecycle_products_with_their_state(web: TestClient, products: dict):
    html = web.get("/products").text
    for name, product in products.items():
        assert f'id="product-{name}"' in html
        assert product.state == "READY"
    assert html.count("state-ready") >= len(products)
    detail = web.get("/products/sentiment").text
    for label in products["sentiment"].labels:
        assert f'<span class="chip">{label}</span>' in detail
    for step in products["sentiment"].steps:
        assert f"<code>{step.name}</code>" in detail


def test_unknown_product_is_404_and_lists_the_products(web: TestClient):
    response = web.get("/products/no_such_product")
    assert response.status_code == 404
    assert "no product &#39;no_such_product&#39;" in response.text and "sentiment" in response.text
    assert web.get("/api/live?product=text_tokenize").status_code == 404  # a step is not a product


def test_security_headers(web: TestClient, settings: ConsoleSettings):
    response = web.get("/products")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert not re.search(r"<script(?![^>]*\bsrc=)", response.text)  # no inline scripts
    with fresh_session(settings) as browser:  # a first visit gets its session cookie
        cookie = browser.get("/").headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie


# --- playground -----------------------------------------------------------------------------


def post(web: TestClient, product: str, data: dict | None = None, files: list | None = None, htmx: bool = True):
    """The playground form as htmx sends it (the token as a header) or as a browser without
    JavaScript does (the token in the form's action URL)."""
    token = csrf_of(web.get(f"/playground/{product}").text)
    if htmx:
        return web.post(f"/playground/{product}", data=data or {}, files=files,
                        headers={"HX-Request": "true", "X-CSRF-Token": token})
    return web.post(f"/playground/{product}?csrf_token={token}", data=data or {}, files=files)


def test_playground_classifies_text_like_the_client(web: TestClient, client_for_module, products: dict):
    texts = ["where is my parcel?", "I want to cancel my order"]
    response = post(web, "sentiment", {"text": "\n".join(texts)})
    assert response.status_code == 200, response.text
    expected = client_for_module.classify_text(texts, pipeline="sentiment")
    labels = [m for m in re.findall(r'class="top-label">([^<]+)<', response.text)]
    assert labels == [e.label for e in expected]
    assert response.text.count('class="bar"') == len(texts) * len(products["sentiment"].labels)


def test_playground_shows_the_top_classes_and_the_version_that_answered(web: TestClient, products: dict):
    labels = products["text_classify"].labels
    assert len(labels) > 3
    response = post(web, "text_classify", {"text": "where is my parcel?\nI want to cancel my order"})
    assert response.status_code == 200, response.text
    assert response.text.count('class="bar"') == 2 * 3  # the top 3 of each, not every class
    more = len(labels) - 3
    assert response.text.count(f"+{more} more {'class' if more == 1 else 'classes'} below") == 2
    served = products["text_classify"].served_version
    assert served is not None and f"Answered by <b>text_classify v{served}</b>" in response.text


def test_the_playground_partner_is_a_served_product_of_the_partner_kind(web: TestClient):
    """The form's partner is checked against the products, never sent to Triton as given."""
    image = png((220, 30, 30))
    for partner in ("text_tokenize", "sentiment", "clip_text_embed_encoder", "../x"):
        response = post(web, "image_embed", {"text": "a red circle", "partner": partner},
                        files=[("files", ("a.png", image, "image/png"))])
        assert response.status_code == 400, (partner, response.text)
        assert "is not a served clip_text_embed product" in response.text and "clip_text_embed" in response.text


def test_playground_highlights_entities_like_the_client(web: TestClient, client_for_module):
    text = "Angela Merkel met Emmanuel Macron in Paris."
    response = post(web, "text_ner", {"text": text})
    assert response.status_code == 200
    expected = client_for_module.extract_entities(text, pipeline="text_ner")
    marked = re.findall(r'<mark class="ent [^"]*"[^>]*data-label="([^"]+)">([^<]*)<sub>', response.text)
    assert marked == [(e.label, e.text) for e in sorted(expected, key=lambda e: e.start)]


def test_playground_embeddings_show_a_similarity_matrix(web: TestClient):
    texts = ["how do I reset my password?", "I forgot my password", "the weather is lovely"]
    response = post(web, "text_embed", {"text": "\n".join(texts)})
    assert response.status_code == 200
    cells = re.findall(r'<td class="sim sim-\d+">(-?[\d.]+)</td>', response.text)
    assert len(cells) == 9
    assert [cells[i * 4] for i in range(3)] == ["1.00"] * 3  # each text with itself


def test_playground_zero_shot_and_image_text_similarity(web: TestClient, client_for_module):
    image = png((220, 30, 30))
    labels = ["a red circle", "a blue square", "a green triangle"]
    response = post(web, "zero_shot_image", {"labels": ", ".join(labels)}, files=[("files", ("circle.png", image, "image/png"))])
    assert response.status_code == 200, response.text
    expected = client_for_module.zero_shot(image, labels)
    assert re.findall(r'class="top-label">([^<]+)<', response.text) == [expected.label]
    assert response.text.count('class="bar"') == len(labels)
    assert 'src="data:image/png;base64,' in response.text  # the uploaded image, shown back

    response = post(web, "image_embed", {"text": "a red circle\na blue square", "partner": "clip_text_embed"},
                    files=[("files", ("a.png", image, "image/png")), ("files", ("b.png", png((20, 20, 200)), "image/png"))])
    assert response.status_code == 200, response.text
    assert len(re.findall(r'<td class="sim sim-\d+">', response.text)) == 4
    assert "images (image_embed) × texts (clip_text_embed)" in response.text


def test_playground_classifies_audio_like_the_client(web: TestClient, client_for_module, products: dict):
    clip = tone()
    response = post(web, "audio_classify", files=[("files", ("tone.wav", clip, "audio/wav"))])
    assert response.status_code == 200, response.text
    expected = client_for_module.classify_audio(clip, pipeline="audio_classify")
    assert re.findall(r'class="top-label">([^<]+)<', response.text) == [expected.label]
    assert expected.label in products["audio_classify"].labels


@pytest.mark.parametrize(
    ("product", "data", "files", "message"),
    [
        ("text_classify", {"text": ""}, None, "TEXT[0] is empty or only whitespace"),
        ("zero_shot_image", {"labels": "a cat"}, [("files", ("broken.png", b"\x89PNG\r\n\x1a\nnot really", "image/png"))], "IMAGE[0]"),
        ("zero_shot_image", {"labels": " , "}, [("files", ("ok.png", None, "image/png"))], "labels is empty"),
        ("audio_classify", {}, [("files", ("slow.wav", None, "audio/wav"))], "Hz"),  # refused from the header
        ("audio_classify", {}, None, "no audio clips chosen"),
    ],
)
def test_bad_input_shows_the_servers_message(web: TestClient, product, data, files, message):
    if files and files[0][1][1] is None:  # fill in the valid-but-wrong payloads here
        name = files[0][1][0]
        payload = png((1, 2, 3)) if name.endswith(".png") else tone(0.5, rate=4000)  # below 8 kHz: refused
        files = [("files", (name, payload, files[0][1][2]))]
    for htmx in (True, False):  # the fragment for htmx, the whole page without JavaScript
        response = post(web, product, data, files, htmx=htmx)
        assert response.status_code == 400, response.text
        assert 'role="alert"' in response.text and message in response.text
        assert "InvalidInputError" in response.text


def test_an_upload_over_the_limit_is_refused_before_reading(server, repository: Path, tmp_path: Path):
    small = ConsoleSettings(server=server.grpc_url, repository=repository, audit_log=tmp_path / "audit.jsonl",
                            admin_key=ADMIN_KEY, max_upload_bytes=100_000)
    with TestClient(create_app(small), base_url=BASE_URL) as browser:
        sign_in(browser, ADMIN_KEY)
        response = post(browser, "zero_shot_image", {"labels": "a cat"},
                        files=[("files", ("big.png", b"\0" * 200_000, "image/png"))])
        assert response.status_code == 413 and "over 0.1 MB" in response.text and "per request" in response.text


# --- live -----------------------------------------------------------------------------------


def test_live_data_counts_requests_per_product_and_step(web: TestClient, client_for_module, products: dict):
    steps = [s.name for s in products["text_classify"].steps]
    deadline = time.monotonic() + 60
    answered = 0.0
    while time.monotonic() < deadline and answered == 0:  # until a sample interval saw our requests
        client_for_module.classify_text(["hello there", "where is my parcel?"], pipeline="text_classify")
        time.sleep(0.6)
        data = web.get("/api/live?product=text_classify").json()
        answered = sum(v or 0 for v in data["models"]["text_classify"]["requests_per_s"])
    assert answered > 0, "the sampler saw no request in a minute"
    assert data["steps"] == steps and set(data["models"]) == {"text_classify", *steps}
    for column in ("requests_per_s", "failures_per_s", "latency_ms", "queue_ms", "compute_ms", "batch"):
        assert len(data["models"]["text_classify"][column]) == len(data["time"])
    encoder = data["models"][steps[1]]
    assert any(v for v in encoder["compute_ms"] if v), "a step's compute time per request"
    assert any(v and v >= 1 for v in encoder["batch"])
    page = web.get("/live?product=text_classify").text
    assert 'data-live-url="/api/live?product=text_classify"' in page


def counters(success: float, fail: float = 0.0, executions: float | None = None) -> ModelCounters:
    return ModelCounters(success=success, fail=fail, inferences=success * 2,
                         executions=success if executions is None else executions,
                         success_ns=success * 3e6, queue_ns=success * 1e6, compute_ns=success * 2e6)


def test_series_reads_counter_differences_and_restarts():
    def at(t: float, success: float, fail: float = 0.0, executions: float | None = None) -> Sample:
        return Sample(t, {"m": counters(success, fail, executions)})

    out = series([at(0, 0), at(2, 10, 1), at(4, 10, 1), at(6, 4)], "m")  # the last: a reload restarted the counters
    assert out.requests_per_s == [5.0, 0.0, 2.0]
    assert out.failures_per_s == [0.5, 0.0, 0.0]
    assert out.latency_ms == [3.0, None, 3.0] and out.queue_ms[0] == 1.0 and out.compute_ms[0] == 2.0
    assert out.batch == [2.0, None, 2.0]
    assert series([at(0, 0), Sample(2, {})], "m").requests_per_s == [None]  # no data: a gap


def test_a_version_switch_is_counted_and_named():
    """v1 answers, then v2 loads beside it and takes over, then v1 is gone: no interval is
    blank, each names the version(s) that answered, and the window's totals add up."""
    def at(t: float, **versions: float) -> Sample:
        by_version = {"m": {v.lstrip("v"): counters(n) for v, n in versions.items()}}
        return Sample(t, {"m": counters(sum(versions.values()))}, by_version=by_version)

    samples = [at(0, v1=0), at(2, v1=10), at(4, v1=14, v2=6), at(6, v2=16)]
    out = series(samples, "m")
    assert out.versions == ["1", "1+2", "2"]
    assert out.requests_per_s == [5.0, 5.0, 5.0]
    window = totals(samples, "m", 60.0)
    assert window is not None and window.requests == 30 and window.versions == ("1", "2")


def test_a_card_names_its_base_model_as_people_do():
    from mmserve.console.cards import card_facts

    for stored, shown in (
        ("/data/models/all-MiniLM-L6-v2/model", "all-MiniLM-L6-v2"),  # not "model", the folder's name
        ("sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
        ("/home/u/.cache/huggingface/hub/models--sentence-transformers--all-MiniLM-L6-v2/snapshots/" + "0" * 40,
         "sentence-transformers/all-MiniLM-L6-v2"),
        ("/tmp/ckpt/intents/best", "intents"),
    ):
        fact = card_facts({"base_model": stored})[0]
        assert (fact.label, fact.text, fact.title) == ("Base model", shown, stored)


def test_latency_quantiles_from_the_metrics_text():
    text = "\n".join([
        '# TYPE nv_inference_request_summary_us summary',
        'nv_inference_request_summary_us_count{model="a",version="1"} 3',
        'nv_inference_request_summary_us{model="a",version="1",quantile="0.500000"} 1200',
        'nv_inference_request_summary_us{model="a",version="1",quantile="0.99"} 5000',
        'nv_inference_request_summary_us{model="a",version="2",quantile="0.99"} 7000',
        'nv_inference_request_summary_us{model="b",version="1",quantile="0.5"} Nan',
    ])
    assert request_quantiles(text) == {"a": {"0.5": 1200.0, "0.99": 7000.0}}


def test_the_session_servers_metrics_port_is_read(web: TestClient, server):
    import urllib.request

    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
        text = response.read().decode()
    quantiles = request_quantiles(text)
    sampler = web.app.state.console.sampler
    if "nv_inference_request_summary_us{" in text:
        assert quantiles and sampler.metrics_note is None
    else:  # the live page says why there are no percentiles
        assert quantiles == {} and "summary_latencies" in (sampler.metrics_note or "")


# --- sign-in, CSRF and admin actions --------------------------------------------------------


def test_admin_post_needs_sign_in_and_csrf(settings: ConsoleSettings, audit_log: Path):
    before = audit_log.read_text() if audit_log.exists() else ""
    with fresh_session(settings) as browser:
        token = csrf_of(browser.get("/signin").text)
        header = {"X-CSRF-Token": token}
        assert browser.post("/products/sentiment/reload", data={"confirm": "yes"}, headers=header).status_code == 401
        assert browser.post("/products/sentiment/reload", data={"confirm": "yes"}).status_code == 403
        # The token counts only where it is read before the body: a form field does not.
        assert browser.post("/products/sentiment/reload", data={"csrf_token": token, "confirm": "yes"}).status_code == 403
        assert browser.post("/signin", data={"admin_key": ADMIN_KEY}).status_code == 403  # sign-in is a POST too
        wrong = browser.post("/signin", data={"admin_key": "guess-guess-guess-guess"}, headers=header)
        assert wrong.status_code == 401 and "wrong admin key" in wrong.text

        signed_in = browser.post(f"/signin?csrf_token={token}", data={"admin_key": ADMIN_KEY, "name": "ada",
                                                                     "next": "/products/sentiment"}, follow_redirects=False)
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/products/sentiment"
        page = browser.get("/products/sentiment").text
        new_token = csrf_of(page)
        assert new_token != token and "console:ada" in page  # a new token once signed in
        assert browser.post("/products/sentiment/reload", data={"confirm": "yes"}, headers=header).status_code == 403
        assert browser.post("/products/sentiment/reload", data={"confirm": "yes"},
                            headers={"X-CSRF-Token": "x" + new_token}).status_code == 403
        assert browser.post("/products/sentiment/frobnicate", headers={"X-CSRF-Token": new_token}).status_code == 404
    after = audit_log.read_text() if audit_log.exists() else ""
    assert after == before  # nothing was done


def test_forged_or_foreign_cookies_are_not_sessions(settings: ConsoleSettings):
    admin = Session.new().signed_in_as("console:mallory")
    forged = SessionCodec().dumps(admin)  # signed with another process's secret
    with fresh_session(settings) as browser:
        browser.cookies.set(COOKIE_NAME, forged)
        page = browser.get("/products/sentiment")  # not signed in: sent to the sign-in page
        assert page.url.path == "/signin" and "console:mallory" not in page.text and "Sign in" in page.text
        assert browser.post("/products/sentiment/reload", data={"confirm": "yes"},
                            headers={"X-CSRF-Token": admin.csrf}).status_code == 403


def test_signed_in_action_asks_first(settings: ConsoleSettings, audit_log: Path):
    """The first POST of an action only describes it (acting on the session's shared server
    is left to the test with a server of its own, below)."""
    with fresh_session(settings) as browser:
        sign_in(browser, ADMIN_KEY, "grace")
        page = browser.get("/products/sentiment").text
        token = csrf_of(page)
        # Offered: what can succeed now. READY, serving the version on disk: unload only.
        assert 'data-action="unload"' in page
        assert 'data-action="load"' not in page and 'data-action="reload"' not in page
        lines_before = len(audit_log.read_text().splitlines()) if audit_log.exists() else 0

        ask = browser.post("/products/sentiment/unload", headers={"HX-Request": "true", "X-CSRF-Token": token})
        assert ask.status_code == 200 and 'name="confirm" value="yes"' in ask.text
        assert "Unload <code>sentiment</code>?" in ask.text and "will FAIL" in ask.text
        assert (len(audit_log.read_text().splitlines()) if audit_log.exists() else 0) == lines_before
        assert browser.get("/healthz").json()["server_ready"]

        signed_out = browser.post(f"/signout?csrf_token={token}", follow_redirects=False)
        assert signed_out.status_code == 303
        token = csrf_of(browser.get("/signin").text)
        assert browser.post("/products/sentiment/reload", headers={"X-CSRF-Token": token}).status_code == 401


def test_actions_that_cannot_succeed_are_refused_in_words_and_audited(settings: ConsoleSettings, products: dict,
                                                                     audit_log: Path):
    """No roll back from the oldest version, no load of a READY product, no reload with
    nothing new: refused (409) with a sentence for the page (no CLI flags), and each
    confirmed attempt is in the audit log with its refusal."""
    assert [v.version for v in products["text_ner"].versions] == [1]
    with fresh_session(settings) as browser:
        sign_in(browser, ADMIN_KEY, "ci")
        token = csrf_of(browser.get("/products/text_ner").text)
        headers = {"HX-Request": "true", "X-CSRF-Token": token}
        for action, data, words in (
            ("rollback", {}, "v1 is the oldest version of text_ner: there is no earlier one to roll back to"),
            ("make-live", {"to": "1"}, "text_ner already serves v1"),
            ("make-live", {"to": "7"}, "text_ner has no v7; its versions are v1"),
            ("load", {}, "text_ner is READY already: there is nothing to load"),
            ("reload", {}, "text_ner already serves v1, the version on disk: there is nothing new to serve"),
        ):
            response = browser.post(f"/products/text_ner/{action}", data={**data, "confirm": "yes"}, headers=headers)
            assert response.status_code == 409 and 'role="alert"' in response.text, (action, response.text)
            assert words in response.text and "--" not in response.text.split('role="alert"')[1], action
            entry = Lifecycle(settings.repository, audit_log=audit_log).audit(limit=1)[0]
            assert (entry.actor, entry.action, entry.product) == ("console:ci", action, "text_ner")
            assert not entry.ok and words in entry.result
        page = browser.get("/products/text_ner").text  # and none of them is offered
        assert not re.search(r'data-action="(load|reload|rollback|roll-forward|make-live)', page)


# --- binding --------------------------------------------------------------------------------


def test_a_bind_beyond_loopback_needs_an_admin_key_and_tls(repository: Path):
    with pytest.raises(ConsoleError, match="MMSERVE_ADMIN_KEY"):
        ConsoleSettings(host="0.0.0.0", repository=repository).check_bind()
    with pytest.raises(ConsoleError, match="plain HTTP.*--https-cert"):
        ConsoleSettings(host="0.0.0.0", repository=repository, admin_key=ADMIN_KEY).check_bind()
    ConsoleSettings(host="0.0.0.0", repository=repository, admin_key=ADMIN_KEY, insecure=True).check_bind()
    ConsoleSettings(host="localhost", repository=repository).check_bind()
    with pytest.raises(ConsoleError, match="at least 16"):
        ConsoleSettings(repository=repository, admin_key="short").check_bind()
    with pytest.raises(ConsoleError, match="no repository at"):
        ConsoleSettings(repository=repository / "missing").check()

    env = {"PATH": "/usr/bin:/bin", "HOME": str(repository.parent)}
    for extra, message in (([], "needs an admin key"), (["--insecure"], "needs an admin key")):
        result = subprocess.run(
            [sys.executable, "-m", "mmserve.cli", "console", "--host", "0.0.0.0", "--repository", str(repository), *extra],
            capture_output=True, text=True, env=env, timeout=120,
        )
        assert result.returncode == 2
        assert "refusing to listen on 0.0.0.0" in result.stderr and message in result.stderr
        assert "Traceback" not in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "mmserve.cli", "console", "--host", "0.0.0.0", "--repository", str(repository)],
        capture_output=True, text=True, env={**env, "MMSERVE_ADMIN_KEY": ADMIN_KEY}, timeout=120,
    )
    assert result.returncode == 2 and "over plain HTTP" in result.stderr and "--https-cert" in result.stderr


def test_sign_in_without_any_key_is_impossible(settings: ConsoleSettings):
    from dataclasses import replace

    with TestClient(create_app(replace(settings, admin_key=None)), base_url=BASE_URL) as browser:
        page = browser.get("/signin").text
        assert "started without an admin key" in page
        response = browser.post(f"/signin?csrf_token={csrf_of(page)}", data={"admin_key": ""})
        assert response.status_code == 401 and "no admin key to sign in with" in response.text


# --- a server with TLS and keys -------------------------------------------------------------


def test_console_against_a_server_with_tls_and_keys(repository: Path, tmp_path_factory):
    """Keys and TLS stay on the console's side: pages, playground, live statistics and admin
    actions work, the browser never receives a key, and a console without the API key shows
    the server's refusal."""
    import secrets
    from dataclasses import replace

    from certificates import make_certificates

    from mmserve.server import ServerPorts, TritonServer

    certs = make_certificates(tmp_path_factory.mktemp("console-certs"))
    api_key, admin_key = secrets.token_hex(16), secrets.token_hex(16)
    models = ["text_classify", "text_classify_encoder", "text_classify_postprocess", "text_tokenize"]
    folder = tmp_path_factory.mktemp("console-secure")
    repository = Path(shutil.copytree(repository, folder / "repository", ignore=shutil.ignore_patterns(".mmserve*")))
    with TritonServer(repository, ServerPorts.free(), models=models, log_file=folder / "triton.log",
                      tls_cert=certs.server_cert, tls_key=certs.server_key, admin_key=admin_key, api_key=api_key) as secure:
        settings = ConsoleSettings(
            server=secure.grpc_url, repository=repository, metrics_url=secure.metrics_url, admin_key=admin_key,
            api_key=api_key, tls_ca=certs.ca, audit_log=folder / "audit.jsonl", sample_interval_s=0.5,
        )
        with TestClient(create_app(settings), base_url=BASE_URL) as browser:
            sign_in(browser, admin_key, "ops")
            products = browser.get("/products").text
            assert 'id="product-text_classify"' in products and "state-ready" in products
            answer = post(browser, "text_classify", {"text": "where is my parcel?"})
            assert answer.status_code == 200 and 'class="top-label"' in answer.text
            token = csrf_of(browser.get("/products/text_classify").text)
            for action in ("unload", "load"):  # what a READY product, then an unloaded one, offers
                done = browser.post(f"/products/text_classify/{action}", data={"confirm": "yes"},
                                    headers={"X-CSRF-Token": token, "HX-Request": "true", "HX-Target": "main"})
                assert done.status_code == 200 and f"{action.capitalize()} text_classify: ok" in done.text
                entry = Lifecycle(repository, audit_log=settings.audit_log).audit(limit=1)[0]
                assert (entry.actor, entry.action, entry.product, entry.result) == ("console:ops", action, "text_classify", "ok")
            audit_page = browser.get("/audit").text
            assert "console:ops" in audit_page and "<b>unload</b>" in audit_page
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                live = browser.get("/api/live?product=text_classify").json()
                if live["time"]:
                    break
                time.sleep(0.5)
            assert live["error"] is None and live["time"], "statistics read over TLS"
            pages = [browser.get(p).text for p in ("/products", "/live", "/playground/text_classify", "/audit")]
            assert not any(key in text for text in pages + [done.text, answer.text] for key in (api_key, admin_key))

        without_api_key = replace(settings, api_key=None)
        with TestClient(create_app(without_api_key), base_url=BASE_URL) as browser:
            sign_in(browser, admin_key)
            refused = post(browser, "text_classify", {"text": "where is my parcel?"})
            assert refused.status_code == 403
            assert "PermissionDeniedError" in refused.text and "api-key" in refused.text

        # A console holding a key the server does not enforce: nobody signs in with it.
        other_key = secrets.token_hex(16)
        with TestClient(create_app(replace(settings, admin_key=other_key)), base_url=BASE_URL) as browser:
            token = csrf_of(browser.get("/signin").text)
            refused = browser.post(f"/signin?csrf_token={token}", data={"admin_key": other_key})
            assert refused.status_code == 401 and "the server refuses this key" in refused.text
            assert browser.get("/products", follow_redirects=False).status_code == 303


def test_a_server_that_is_down_is_shown_not_raised(repository: Path, tmp_path: Path):
    """No Triton at the address: pages still answer, say so, and list the repository's
    products from disk; a playground request shows the client's unavailable error."""
    from mmserve.console.server import free_port

    settings = ConsoleSettings(server=f"127.0.0.1:{free_port()}", repository=repository, admin_key=ADMIN_KEY,
                               metrics_url=f"http://127.0.0.1:{free_port()}/metrics", audit_log=tmp_path / "audit.jsonl",
                               sample_interval_s=0.2, request_timeout_s=5.0)
    with TestClient(create_app(settings), base_url=BASE_URL) as browser:
        sign_in(browser, ADMIN_KEY)  # the server being down does not keep anyone out
        products = browser.get("/products")
        assert products.status_code == 200
        assert 'role="status"' in products.text and settings.server in products.text
        assert 'id="product-sentiment"' in products.text and "state-unknown" in products.text
        assert browser.get("/healthz").json() == {"console": "ok", "server_ready": False}
        refused = post(browser, "sentiment", {"text": "hello"})
        assert refused.status_code == 503 and "ServerUnavailableError" in refused.text
        deadline = time.monotonic() + 30
        while browser.app.state.console.sampler.last_error is None and time.monotonic() < deadline:
            time.sleep(0.2)
        live = browser.get("/live").text
        assert "statistics unavailable" in live
