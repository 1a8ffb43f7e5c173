"""Attacks on the console itself, tried against a real console (uvicorn on a thread, spoken
to with httpx or a raw socket) in front of the session's real tritonserver.

Each test is one row of docs/security.md's attack table: an anonymous visitor gets the
landing page only (or, with --public-read, products without local paths and never the
playground), a foreign Host is refused, parallel wrong sign-ins are refused with 429,
a one-time key signs in once, a body over the limit is refused however it is sent, the
CSRF token is checked before the body is read, and the session cookie is Secure and
__Host- over TLS or behind a proxy that says so.
"""
from __future__ import annotations

import contextlib
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the console needs the `console` extra (pip install -e '.[console]')")
httpx = pytest.importorskip("httpx")

from mmserve.console import ConsoleSettings  # noqa: E402
from mmserve.console.auth import SECURE_COOKIE_NAME, SignInLimiter  # noqa: E402
from mmserve.console.server import ConsoleServer, free_port  # noqa: E402

ADMIN_KEY = "security-test-admin-key-0123456789"
READ_ONLY = ["/products", "/products/sentiment", "/live", "/live?product=sentiment", "/live/overview"]
SIGNED_IN_ONLY = ["/playground", "/playground/sentiment", "/audit"]


@pytest.fixture(scope="module")
def settings(server, repository: Path, tmp_path_factory) -> ConsoleSettings:
    return ConsoleSettings(
        server=server.grpc_url, repository=repository, metrics_url=server.metrics_url, admin_key=ADMIN_KEY,
        audit_log=tmp_path_factory.mktemp("console-security") / "audit.jsonl", sample_interval_s=1.0,
        max_upload_bytes=200_000,
    )


def running(settings: ConsoleSettings, **changes) -> ConsoleServer:
    """A console of its own (own sessions, own sign-in limits) on a free port."""
    return ConsoleServer(replace(settings, port=free_port(), **changes))


@pytest.fixture(scope="module")
def console(settings: ConsoleSettings) -> Iterator[ConsoleServer]:
    with running(settings) as started:
        yield started


def csrf_of(html: str) -> str:
    match = re.search(r'<meta name="csrf-token" content="([^"]+)"', html)
    assert match, "every page carries the session's CSRF token"
    return match.group(1)


def visitor(console: ConsoleServer, **options) -> httpx.Client:
    return httpx.Client(base_url=console.url, timeout=60.0, **options)


@contextlib.contextmanager
def signed_in(console: ConsoleServer, key: str = ADMIN_KEY) -> Iterator[httpx.Client]:
    with visitor(console) as browser:
        token = csrf_of(browser.get("/signin").text)
        answer = browser.post("/signin", params={"csrf_token": token}, data={"admin_key": key, "name": "tester"})
        assert answer.status_code == 303, answer.text
        yield browser


def local_paths(repository: Path) -> list[str]:
    """What must never reach an anonymous visitor: the folders the repository and the
    checkpoints, base models and data of its cards live in."""
    return [str(repository.resolve()), str(repository.resolve().parent)]


def inferences(server, product: str) -> int:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(server.grpc_url) as triton:
        stats = triton.get_inference_statistics(product, as_json=True)["model_stats"]
    return sum(int(m.get("inference_count", 0)) for m in stats)


# --- who sees what ------------------------------------------------------------------------------


def test_an_anonymous_visitor_gets_only_the_landing_page(console: ConsoleServer, server, repository: Path):
    with visitor(console) as anonymous:
        landing = anonymous.get("/")
        assert landing.status_code == 200 and "Sign in" in landing.text
        assert "sentiment" not in landing.text and server.grpc_url not in landing.text  # nothing about the server
        for path in READ_ONLY + SIGNED_IN_ONLY:
            page = anonymous.get(path)
            assert page.status_code == 303 and page.headers["location"].startswith("/signin?next="), path
        assert anonymous.get("/api/live", params={"product": "sentiment"}).status_code == 401
        before = inferences(server, "sentiment")
        token = csrf_of(landing.text)  # a visitor's own valid token: no help without signing in
        tried = anonymous.post("/playground/sentiment", params={"csrf_token": token}, data={"text": "hello there"})
        assert tried.status_code == 401
        assert inferences(server, "sentiment") == before, "an anonymous visitor made the console spend its keys"
        assert not any(p in landing.text for p in local_paths(repository))


def test_public_read_shows_products_without_paths_and_never_the_playground(settings: ConsoleSettings, server,
                                                                          repository: Path):
    with running(settings, public_read=True) as public, visitor(public) as anonymous:
        for path in READ_ONLY:
            page = anonymous.get(path)
            assert page.status_code == 200, path
            assert not any(p in page.text for p in local_paths(repository)), f"{path} shows a local path"
            assert "Full product card" not in page.text and "Triton at" not in page.text
        assert 'id="product-sentiment"' in anonymous.get("/products").text
        for path in SIGNED_IN_ONLY:
            assert anonymous.get(path).status_code == 303, path
        before = inferences(server, "sentiment")
        token = csrf_of(anonymous.get("/products").text)
        assert anonymous.post("/playground/sentiment", params={"csrf_token": token}, data={"text": "hi"}).status_code == 401
        assert inferences(server, "sentiment") == before
        with signed_in(public) as admin:  # who signed in sees where things are
            assert str(repository.resolve().parent) in admin.get("/products/sentiment").text


def test_a_foreign_host_is_refused(settings: ConsoleSettings, console: ConsoleServer):
    """A DNS-rebinding page reaches 127.0.0.1 under its own name: that Host gets 400."""
    with visitor(console) as browser:
        for host in ("evil.example", "evil.example:8080", "127.0.0.1.evil.example", ""):
            refused = browser.get("/", headers={"Host": host})
            assert refused.status_code == 400 and "--allowed-host" in refused.text, host
        assert browser.get("/", headers={"Host": f"localhost:{console.settings.port}"}).status_code == 200
        assert browser.get("/", headers={"Host": f"[::1]:{console.settings.port}"}).status_code == 200
    with running(settings, allowed_hosts=("console.example",)) as named, visitor(named) as browser:
        assert browser.get("/", headers={"Host": "console.example"}).status_code == 200
        assert browser.get("/", headers={"Host": "evil.example"}).status_code == 400


def test_host_names_and_paths_as_the_guards_read_them(repository: Path):
    from mmserve.console.deps import no_paths
    from mmserve.console.guards import host_name

    assert [host_name(h) for h in ("LOCALHOST:8080", "[::1]:8080", "::1", "127.0.0.1", "evil.example:1")] == [
        "localhost", "::1", "::1", "127.0.0.1", "evil.example"]
    names = ConsoleSettings(repository=repository, host="10.0.0.5", allowed_hosts=("Console.Example",)).host_names()
    assert {"localhost", "127.0.0.1", "::1", "10.0.0.5", "console.example"} == set(names)
    assert "0.0.0.0" not in ConsoleSettings(repository=repository, host="0.0.0.0").host_names()
    message = "failed to load 'sentiment': unable to open '/home/ops/repo/sentiment/2/model.onnx' (see ./runs/x/triton.log)"
    assert no_paths(message) == "failed to load 'sentiment': unable to open '…/model.onnx' (see …/triton.log)"
    assert no_paths("served at 127.0.0.1:8001, http://host:8002/metrics") == "served at 127.0.0.1:8001, http://host:8002/metrics"


# --- sign-in ------------------------------------------------------------------------------------


def test_parallel_wrong_sign_ins_are_refused(settings: ConsoleSettings):
    """30 wrong keys at once from one client: a few are checked (one at a time, each failure
    paused), the rest refused with 429 at once; the right key is then refused too until
    the window passes."""
    with running(settings) as own:
        with visitor(own) as browser:
            token = csrf_of(browser.get("/signin").text)
            cookies = dict(browser.cookies)
        statuses: list[int] = []
        lock = threading.Lock()

        def guess(i: int) -> None:
            with visitor(own, cookies=cookies) as attacker:
                answer = attacker.post("/signin", params={"csrf_token": token},
                                       data={"admin_key": f"wrong-guess-number-{i:04d}-xxxxxxxx"})
            with lock:
                statuses.append(answer.status_code)

        started = time.monotonic()
        threads = [threading.Thread(target=guess, args=(i,)) for i in range(30)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        took = time.monotonic() - started
        checked = statuses.count(401)
        assert len(statuses) == 30 and set(statuses) <= {401, 429}, statuses
        assert checked <= SignInLimiter().per_client and statuses.count(429) >= 30 - SignInLimiter().per_client
        assert took >= 0.5 * checked * 0.9, "failed attempts are checked one at a time, each paused"
        with visitor(own, cookies=cookies) as browser:
            locked = browser.post("/signin", params={"csrf_token": token}, data={"admin_key": ADMIN_KEY})
            assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
            assert "too many sign-in attempts" in locked.text


def test_sign_in_limits_per_client_and_overall():
    now = [0.0]
    limiter = SignInLimiter(per_client=3, overall=5, window_s=60.0, clock=lambda: now[0])
    assert [limiter.reserve("a") for _ in range(3)] == [None] * 3
    assert limiter.reserve("a") == pytest.approx(60.0)  # this client: wait for its oldest attempt to age out
    limiter.refund("a")  # a success does not count
    assert limiter.reserve("a") is None
    assert limiter.reserve("b") is None and limiter.reserve("c") is None
    assert limiter.reserve("d") is not None  # 5 in the window: everyone waits
    now[0] = 61.0
    assert limiter.reserve("a") is None and limiter.reserve("d") is None


def test_the_one_time_key_signs_in_once(settings: ConsoleSettings):
    one_time = "one-time-key-for-this-test-0123"
    with running(settings, admin_key=None, sign_in_key=one_time) as own:
        with signed_in(own, one_time) as first:
            assert first.get("/products").status_code == 200
        with visitor(own) as second:
            token = csrf_of(second.get("/signin").text)
            again = second.post("/signin", params={"csrf_token": token}, data={"admin_key": one_time})
            assert again.status_code == 401 and "one-time key has been used" in again.text
            assert second.get("/products").status_code == 303


def test_a_short_key_never_signs_in(settings: ConsoleSettings):
    """The console refuses to hold a key Triton would refuse (the length rule), and a short
    typed key is refused before any comparison."""
    from mmserve.console import ConsoleError

    with pytest.raises(ConsoleError, match="at least 16"):
        running(settings, admin_key="x").start()
    with running(settings) as own, visitor(own) as browser:
        token = csrf_of(browser.get("/signin").text)
        short = browser.post("/signin", params={"csrf_token": token}, data={"admin_key": ADMIN_KEY[:8]})
        assert short.status_code == 401 and "at least 16 characters" in short.text


# --- bodies and CSRF ----------------------------------------------------------------------------


def test_a_chunked_upload_over_the_limit_is_refused(console: ConsoleServer, settings: ConsoleSettings):
    limit = settings.max_upload_bytes
    with signed_in(console) as browser:
        token = csrf_of(browser.get("/playground/zero_shot_image").text)
        boundary = "mmserve-boundary"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"labels\"\r\n\r\na cat\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n"
                "Content-Type: image/png\r\n\r\n").encode()
        sent = [0]

        def body() -> Iterator[bytes]:  # no Content-Length: httpx sends it chunked
            yield head
            for _ in range(4 * limit // 16_384):
                sent[0] += 16_384
                yield b"\0" * 16_384
            yield f"\r\n--{boundary}--\r\n".encode()

        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", "X-CSRF-Token": token}
        try:
            answer = browser.post("/playground/zero_shot_image", content=body(), headers=headers)
            assert answer.status_code == 413 and "per request" in answer.text
        except httpx.RemoteProtocolError:  # the console answered 413 and closed while we still sent
            pass
        declared = browser.post("/playground/zero_shot_image", content=b"\0" * (limit + 1), headers=headers)
        assert declared.status_code == 413
        assert browser.get("/healthz").json()["console"] == "ok"


def raw_post(console: ConsoleServer, path: str, headers: dict[str, str]) -> tuple[str, float]:
    """A POST that declares a 50 MB body and sends none of it: the status line, and how
    long it took to come. A console that parsed before checking would wait for the body."""
    port = console.settings.port
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: multipart/form-data; boundary=x",
             f"Content-Length: {50_000_000}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall("\r\n".join(lines).encode())
        status = sock.makefile("rb").readline().decode().strip()
    return status, time.monotonic() - started


def test_csrf_is_checked_before_the_body_is_read(console: ConsoleServer):
    with visitor(console) as browser:
        token = csrf_of(browser.get("/").text)
        cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
    status, _ = raw_post(console, "/playground/sentiment", {"Cookie": cookie, "X-CSRF-Token": "wrong"})
    assert status.startswith("HTTP/1.1 403")
    status, _ = raw_post(console, "/playground/sentiment", {"Cookie": cookie})
    assert status.startswith("HTTP/1.1 403")
    status, _ = raw_post(console, f"/playground/sentiment?csrf_token={token}", {"Cookie": cookie})
    assert status.startswith("HTTP/1.1 401")  # the right token, not signed in: still before the body
    status, _ = raw_post(console, "/signin", {"Cookie": cookie})
    assert status.startswith("HTTP/1.1 403")


# --- cookies over TLS ---------------------------------------------------------------------------


def test_the_session_cookie_is_secure_over_tls_and_behind_a_proxy(settings: ConsoleSettings, tmp_path: Path):
    from certificates import make_certificates

    certs = make_certificates(tmp_path)
    with running(settings, https_cert=certs.server_cert, https_key=certs.server_key) as tls:
        assert tls.url.startswith("https://")
        with httpx.Client(base_url=tls.url, verify=ssl.create_default_context(cafile=str(certs.ca)), timeout=30) as browser:
            cookie = browser.get("/").headers["set-cookie"]
        assert cookie.startswith(f"{SECURE_COOKIE_NAME}=") and "Secure" in cookie and "Path=/" in cookie
        assert "Domain" not in cookie
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port gets nothing
            httpx.get(tls.url.replace("https://", "http://"), timeout=10)

    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    with running(settings, forwarded_allow_ips="127.0.0.1") as behind, visitor(behind) as browser:
        cookie = browser.get("/", headers=proxied).headers["set-cookie"]
        assert cookie.startswith(f"{SECURE_COOKIE_NAME}=") and "Secure" in cookie
    with running(settings) as direct, visitor(direct) as browser:  # a proxy not trusted is not believed
        cookie = browser.get("/", headers=proxied).headers["set-cookie"]
        assert cookie.startswith("mmserve_console=") and "Secure" not in cookie
