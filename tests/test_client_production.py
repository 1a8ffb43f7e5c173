"""The client as a production app uses it: TLS, keys, admin calls, deadlines, retries across
a real server restart, and one client shared by threads and asyncio tasks.

Servers here are real tritonservers over the session's test repository, serving only the
text_classify pipeline (fast to start), with TLS and Triton's restricted protocols turned on
through the launcher's options; certificates are made for each test module.
"""
from __future__ import annotations

import asyncio
import glob
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from certificates import Certificates, make_certificates
from mmserve.client import (
    AsyncClient,
    Client,
    DeadlineExceededError,
    InvalidInputError,
    ModelNotReadyError,
    PermissionDeniedError,
    RetryPolicy,
    ServerUnavailableError,
)
from mmserve.client.errors import (
    ClientCertificateRejectedError,
    ClientCertificateRequiredError,
    ServerCertificateError,
    TLSRequiredError,
)
from mmserve.server import ServerPorts, TritonServer

TEXT_CLASSIFY = ["text_classify", "text_classify_encoder", "text_classify_postprocess", "text_tokenize"]
API_KEY, ADMIN_KEY = secrets.token_hex(16), secrets.token_hex(16)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


def _serve(repository: Path, log: Path, ports: ServerPorts | None = None, **security: object) -> TritonServer:
    return TritonServer(repository, ports or ServerPorts.free(), models=TEXT_CLASSIFY, log_file=log, **security)


@pytest.fixture(scope="module")
def secure_server(repository, certs, tmp_path_factory) -> Iterator[TritonServer]:
    """TLS; inference behind the API key; repository and shared memory behind the admin key;
    health behind a custom header (to show arbitrary metadata reaches the server)."""
    with _serve(
        repository,
        tmp_path_factory.mktemp("secure") / "triton.log",
        tls_cert=certs.server_cert,
        tls_key=certs.server_key,
        admin_key=ADMIN_KEY,
        api_key=API_KEY,
        extra_args=("--grpc-restricted-protocol=health:tenant=blue",),
    ) as running:
        yield running


@pytest.fixture(scope="module")
def mutual_server(repository, certs, tmp_path_factory) -> Iterator[TritonServer]:
    """Mutual TLS: clients must show a certificate signed by the test CA."""
    with _serve(
        repository,
        tmp_path_factory.mktemp("mutual") / "triton.log",
        tls_cert=certs.server_cert,
        tls_key=certs.server_key,
        tls_ca=certs.ca,
    ) as running:
        yield running


# --- TLS ----------------------------------------------------------------------------


def test_tls_with_the_servers_ca_as_a_path_or_pem_bytes(secure_server, certs):
    with Client(secure_server.grpc_url, root_certificates=certs.ca, api_key=API_KEY) as client:
        assert client.classify_text("where is my parcel?").label

    async def with_pem_bytes() -> str:
        async with AsyncClient(
            secure_server.grpc_url, root_certificates=certs.ca.read_bytes(), api_key=API_KEY
        ) as client:
            return (await client.classify_text("where is my parcel?")).label

    assert asyncio.run(with_pem_bytes())


def test_an_untrusted_server_certificate_fails_at_once_with_advice(secure_server, certs):
    patient = RetryPolicy(max_attempts=100, initial_backoff=0.01, max_backoff=0.05)
    with Client(secure_server.grpc_url, root_certificates=certs.other_ca, api_key=API_KEY, retry=patient) as client:
        with pytest.raises(ServerCertificateError, match="root_certificates=") as error:
            client.classify_text("hi", timeout=60)
    assert "attempt(s)" not in str(error.value)  # a handshake failure is not retried
    with Client(secure_server.grpc_url, api_key=API_KEY, timeout=60.0, retry=patient) as plaintext:  # TLS server, plain client
        with pytest.raises(TLSRequiredError, match="speaks TLS only"):
            plaintext.classify_text("hi")


def test_mutual_tls_needs_the_client_certificate(mutual_server, certs, tmp_path):
    with Client(
        mutual_server.grpc_url,
        root_certificates=certs.ca,
        certificate_chain=certs.client_cert,
        private_key=certs.client_key.read_bytes(),
    ) as client:
        assert client.classify_text("cancel my order").label

    async def async_call() -> str:
        async with AsyncClient(
            mutual_server.grpc_url,
            root_certificates=certs.ca,
            certificate_chain=certs.client_cert,
            private_key=certs.client_key,
        ) as client:
            return (await client.classify_text("cancel my order")).label

    assert asyncio.run(async_call())
    patient = RetryPolicy(max_attempts=100, initial_backoff=0.01, max_backoff=0.05)
    with Client(mutual_server.grpc_url, root_certificates=certs.ca, timeout=60.0, retry=patient) as anonymous:
        with pytest.raises(ClientCertificateRequiredError, match="certificate_chain= and private_key=") as error:
            anonymous.classify_text("cancel my order")  # told at once, not retried for a minute
    assert "attempt(s)" not in str(error.value)
    other = make_certificates(tmp_path)  # a client certificate from a CA the server does not trust
    with Client(mutual_server.grpc_url, root_certificates=certs.ca, certificate_chain=other.client_cert,
                private_key=other.client_key, timeout=10.0) as stranger:
        with pytest.raises(ClientCertificateRejectedError, match="does not trust this client certificate"):
            stranger.models()


def test_certificate_options_are_checked_before_connecting(certs, tmp_path):
    with pytest.raises(InvalidInputError, match="certificate_chain= .* and private_key="):
        Client("127.0.0.1:1", private_key=certs.client_key)
    with pytest.raises(InvalidInputError, match="root_certificates: cannot read"):
        Client("127.0.0.1:1", root_certificates=tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(InvalidInputError, match="is not PEM"):
        AsyncClient("127.0.0.1:1", root_certificates=tmp_path / "junk.pem")
    with pytest.raises(InvalidInputError, match="tls_server_name= needs TLS"):
        Client("127.0.0.1:1", tls_server_name="localhost")


# --- keys and headers ---------------------------------------------------------------


def test_inference_needs_the_api_key(secure_server, certs):
    for key in (None, "wrong"):
        with Client(secure_server.grpc_url, root_certificates=certs.ca, api_key=key) as client:
            with pytest.raises(PermissionDeniedError, match=r"api_key=") as error:
                client.classify_text("hi")
            assert "attempt(s)" not in str(error.value)  # a refusal is never retried
    with Client(secure_server.grpc_url, root_certificates=certs.ca, api_key=API_KEY) as client:
        assert client.classify_text(["hi", "cancel it"])[1].label


def test_admin_calls_without_the_admin_key_are_refused(secure_server, certs):
    with Client(secure_server.grpc_url, root_certificates=certs.ca, api_key=API_KEY) as client:
        for call in (client.models, lambda: client.load("text_classify"), lambda: client.unload("text_classify")):
            with pytest.raises(PermissionDeniedError, match=r"admin_key=") as error:
                call()
            assert error.value.status == "UNAVAILABLE" and "restricted" in error.value.server_message
        assert client.classify_text("still served").label  # nothing was unloaded

    async def async_refused() -> None:
        async with AsyncClient(secure_server.grpc_url, root_certificates=certs.ca, admin_key="wrong") as client:
            with pytest.raises(PermissionDeniedError, match=r"admin_key="):
                await client.unload("text_classify")

    asyncio.run(async_refused())


def test_the_admin_key_unloads_loads_and_pins_a_version(secure_server, certs):
    options = dict(root_certificates=certs.ca, api_key=API_KEY, admin_key=ADMIN_KEY)
    with Client(secure_server.grpc_url, **options) as admin:
        states = {m.name: m.state for m in admin.models()}
        assert states["text_classify"] == "READY"
        admin.unload("text_classify")
        with pytest.raises(ModelNotReadyError):
            admin.classify_text("hi")
        admin.load("text_classify")
        assert admin.classify_text("hi").label
        admin.load("text_classify", version=1)  # serve exactly version 1 (what the repository has)
        assert {m.name: m.state for m in admin.models()}["text_classify"] == "READY"
        with pytest.raises(InvalidInputError, match="version must be"):
            admin.load("text_classify", version=0)

    async def async_reload() -> bool:
        async with AsyncClient(secure_server.grpc_url, **options) as client:
            await client.load("text_classify")
            return any(m.name == "text_classify" and m.state == "READY" for m in await client.models())

    assert asyncio.run(async_reload())


def test_metadata_headers_go_with_every_call(secure_server, certs):
    with Client(secure_server.grpc_url, root_certificates=certs.ca, headers={"Triton-GRPC-Protocol-Tenant": "blue"}) as client:
        assert client.ready()  # health is restricted to tenant=blue: the header arrived (lower-cased)
    with Client(secure_server.grpc_url, root_certificates=certs.ca) as client:
        with pytest.raises(PermissionDeniedError):
            client.ready()


def test_shared_memory_needs_the_admin_key_where_it_is_restricted(secure_server, certs):
    before = set(glob.glob(f"/dev/shm/mmserve_{os.getpid()}_*"))
    with Client(secure_server.grpc_url, root_certificates=certs.ca, api_key=API_KEY, shared_memory="system") as client:
        with pytest.raises(PermissionDeniedError, match=r"shared_memory='system'.*admin_key="):
            client.classify_text("hi")
    assert set(glob.glob(f"/dev/shm/mmserve_{os.getpid()}_*")) == before  # the refused region was unlinked
    with Client(
        secure_server.grpc_url, root_certificates=certs.ca, api_key=API_KEY, admin_key=ADMIN_KEY, shared_memory="system"
    ) as client, Client(secure_server.grpc_url, root_certificates=certs.ca, api_key=API_KEY) as plain:
        texts = [f"parcel {i} is late" for i in range(3)]
        assert client.classify_text(texts) == plain.classify_text(texts)
    assert set(glob.glob(f"/dev/shm/mmserve_{os.getpid()}_*")) == before


# --- deadlines ----------------------------------------------------------------------


def test_deadlines_per_client_and_per_call(server):
    batch = ["a long enough text to take a while " * 40] * 64
    with Client(server.grpc_url, timeout=0.0005) as hurried:
        with pytest.raises(DeadlineExceededError):
            hurried.classify_text(batch)
        assert len(hurried.classify_text(batch, timeout=60)) == 64  # one call's own deadline

    async def async_deadline() -> None:
        async with AsyncClient(server.grpc_url, timeout=60) as client:
            with pytest.raises(DeadlineExceededError):
                await client.classify_text(batch, timeout=0.0005)

    asyncio.run(async_deadline())


# --- retries ------------------------------------------------------------------------


@pytest.fixture
def closed_port_url() -> str:
    return f"127.0.0.1:{ServerPorts.free().grpc}"


def test_retries_end_in_a_typed_error_that_says_why(closed_port_url):
    quick = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)
    with Client(closed_port_url, retry=quick) as client:
        with pytest.raises(ServerUnavailableError, match=r"after 3 attempt\(s\).*all attempts used"):
            client.classify_text("hi")
        with pytest.raises(ServerUnavailableError, match=r"after 3 attempt\(s\)"):
            client.classify_text(["a"] * 70)  # two requests in parallel, then retried one by one
        with pytest.raises(ServerUnavailableError) as admin:
            client.models()  # admin calls are never retried
        assert "attempt(s)" not in str(admin.value)
    with Client(closed_port_url, retry=RetryPolicy(initial_backoff=0.01, budget=2, budget_per_second=0)) as client:
        with pytest.raises(ServerUnavailableError, match="retry budget"):
            client.classify_text("hi")  # two retries allowed, then the budget is spent
        with pytest.raises(ServerUnavailableError, match="retry budget"):
            client.classify_text("hi")  # and stays spent for the next call
    with Client(closed_port_url, retry=RetryPolicy(initial_backoff=0.5, max_backoff=0.5), timeout=0.3) as client:
        with pytest.raises(ServerUnavailableError, match="deadline"):
            client.classify_text("hi")  # no pause longer than the time left

    async def async_gives_up() -> None:
        async with AsyncClient(closed_port_url, retry=quick) as client:
            with pytest.raises(ServerUnavailableError, match=r"after 3 attempt\(s\)"):
                await client.classify_text(["a"] * 70)  # two requests, both retried

    asyncio.run(async_gives_up())
    with Client(closed_port_url, retry=None) as client:
        with pytest.raises(ServerUnavailableError) as once:
            client.classify_text("hi")
        assert "attempt(s)" not in str(once.value)


def test_retry_policy_is_validated():
    for bad in (dict(max_attempts=0), dict(initial_backoff=3, max_backoff=1), dict(jitter=2), dict(budget=-1)):
        with pytest.raises(InvalidInputError):
            RetryPolicy(**bad)
    with pytest.raises(InvalidInputError, match="RetryPolicy"):
        Client("127.0.0.1:1", retry=3)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Outcome:
    worker: str
    started: float
    ended: float
    error: BaseException | None


def _wait_for(condition, what: str, seconds: float = 300.0) -> None:
    """Poll ``condition``; a guard against a test that would otherwise wait forever."""
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def _keep_calling(name: str, call, stop: threading.Event, outcomes: list[Outcome]) -> None:
    while not stop.is_set():
        started = time.monotonic()
        try:
            call()
            error = None
        except Exception as exc:  # noqa: BLE001 - every outcome is recorded and judged below
            error = exc
        outcomes.append(Outcome(name, started, time.monotonic(), error))
        time.sleep(0.02)


def test_calls_ride_out_a_server_restart(repository, tmp_path):
    """Stop the server and start a new one on the same ports while clients keep calling:
    each call succeeds (after the restart, within its deadline) or raises
    ServerUnavailableError; none hangs; calls made while the server was down come
    through once it is back, without a new client."""
    patient = RetryPolicy(max_attempts=10_000, initial_backoff=0.05, max_backoff=0.5, budget=10_000)
    first = _serve(repository, tmp_path / "first.log").start()
    ports = first.ports
    url = first.grpc_url
    stop = threading.Event()
    outcomes: list[Outcome] = []
    loop = asyncio.new_event_loop()
    clients = [
        Client(url, timeout=90, retry=patient),
        Client(url, timeout=90, retry=patient, shared_memory="system"),  # its regions must be registered again
        Client(url, timeout=1.0),  # default policy, short deadline: gives up typed
    ]
    async_client = AsyncClient(url, timeout=90, retry=patient)

    def async_call() -> None:
        asyncio.run_coroutine_threadsafe(async_client.classify_text(["refund please", "hi"]), loop).result()

    workers = [
        threading.Thread(target=_keep_calling, args=(name, call, stop, outcomes))
        for name, call in (
            ("sync", lambda: clients[0].classify_text("refund please")),
            ("shm", lambda: clients[1].classify_text(["refund please"] * 3)),
            ("short", lambda: clients[2].classify_text("refund please")),
            ("async", async_call),
        )
    ]
    loop_thread = threading.Thread(target=loop.run_forever)
    second = None
    try:
        loop_thread.start()
        for worker in workers:
            worker.start()
        _wait_for(lambda: {o.worker for o in list(outcomes) if o.error is None} == {"sync", "shm", "short", "async"},
                  "every client's first answer")
        first.stop()
        time.sleep(1.0)  # no server at all for a while: every client meets the dead port
        restarting = time.monotonic()  # any answer after this comes from the new server
        second = _serve(repository, tmp_path / "second.log", ports).start()
        up = time.monotonic()
        _wait_for(
            lambda: all(
                any(o.worker == name and o.started > up and o.error is None for o in list(outcomes))
                for name in ("sync", "shm", "short", "async")
            ),
            "every client's answer from the new server",
        )
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=120)
        hung = [worker for worker in workers if worker.is_alive()]
        asyncio.run_coroutine_threadsafe(async_client.close(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        loop_thread.join(timeout=30)
        for client in clients:
            client.close()
        first.stop()
        if second is not None:
            second.stop()
    assert not hung, "a call hung past its deadline"
    unexpected = [o for o in outcomes if o.error is not None and not isinstance(o.error, ServerUnavailableError)]
    assert not unexpected, f"calls failed otherwise than ServerUnavailableError: {unexpected[:3]}"
    for name in ("sync", "shm", "async"):  # sent before the new server existed, answered by it
        assert any(o.worker == name and o.started < restarting < o.ended and o.error is None for o in outcomes), name
    assert any(o.worker == "short" and isinstance(o.error, ServerUnavailableError) for o in outcomes)


# --- sharing one client -------------------------------------------------------------


def test_one_client_shared_by_threads_and_by_tasks(server):
    texts = [f"order {i} never arrived" if i % 2 else f"hello number {i}" for i in range(40)]
    with Client(server.grpc_url, timeout=60) as client:
        expected = [client.classify_text(text) for text in texts]
        results: dict[int, object] = {}
        errors: list[BaseException] = []

        def work(offset: int) -> None:
            try:
                for i in range(offset, len(texts), 8):
                    results[i] = client.classify_text(texts[i])
                results[-offset - 1] = client.classify_text(texts)  # the parallel path too
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors
    assert [results[i] for i in range(len(texts))] == expected
    assert all(results[-k - 1] == expected for k in range(8))

    async def tasks() -> list:
        async with AsyncClient(server.grpc_url, timeout=60) as shared:
            return await asyncio.gather(*(shared.classify_text(text) for text in texts))

    assert asyncio.run(tasks()) == expected
