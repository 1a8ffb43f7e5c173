"""Secure by default, on a real server: TLS and mutual TLS on gRPC, the admin key on the
model repository (load/unload/index, also a `load` that ships its own model.py), the
API key on inference, loopback-only HTTP under TLS, and no exposed bind without a key.

Certificates are made per run (tests/certificates.py); clients are raw tritonclient (gRPC and
HTTP), as any application would use them.
"""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from certificates import make_certificates
from tritonclient.utils import InferenceServerException

from mmserve.server import LaunchError, ServerPorts, TritonServer

MMSERVE = [sys.executable, "-m", "mmserve.cli"]
ADMIN_KEY = "admin-" + "0123456789abcdef" * 2
API_KEY = "api-" + "fedcba9876543210" * 2
# Triton checks the gRPC metadata header with its own prefix, the HTTP header as named.
GRPC_ADMIN = {"triton-grpc-protocol-admin-key": ADMIN_KEY}
GRPC_API = {"triton-grpc-protocol-api-key": API_KEY}
HTTP_ADMIN = {"admin-key": ADMIN_KEY}
PIPELINE = "text_classify"
pytestmark = pytest.mark.timeout(600)


# --- certificates --------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # a client certificate from a CA the server does not trust
    stranger_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    ours = make_certificates(tmp_path_factory.mktemp("pki"))
    theirs = make_certificates(tmp_path_factory.mktemp("other-pki"))  # another CA signed this client
    return Pki(ours.ca, ours.server_cert, ours.server_key, ours.client_cert, ours.client_key,
               theirs.client_cert, theirs.client_key)


# --- helpers ---------------------------------------------------------------------------------


def _text_input(module=grpcclient):
    text = module.InferInput("TEXT", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"where is my parcel?"]], dtype=object))
    return text


def _tls_client(url: str, pki: Pki, *, client_cert: bool) -> grpcclient.InferenceServerClient:
    extra = {"private_key": str(pki.client_key), "certificate_chain": str(pki.client_cert)} if client_cert else {}
    return grpcclient.InferenceServerClient(url, ssl=True, root_certificates=str(pki.ca), **extra)


def _refused(call, *args, **kwargs) -> str:
    with pytest.raises(InferenceServerException) as refused:
        call(*args, **kwargs)
    return str(refused.value)


def _primary_address() -> str | None:
    """This machine's address on its default route, if it has one beyond loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.254", 9))  # no packet is sent: only picks the outgoing interface
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if ipaddress.ip_address(address).is_loopback else address


def _connects(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def _injected_model(marker: Path) -> tuple[str, dict[str, bytes]]:
    """What an attacker would send: a config and a model.py that runs at load time."""
    config = {
        "name": "injected", "backend": "python", "max_batch_size": 0,
        "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [1]}],
        "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [1]}],
    }
    code = (
        "import pathlib\n"
        "class TritonPythonModel:\n"
        "    def initialize(self, args):\n"
        f"        pathlib.Path({str(marker)!r}).write_text('code ran in the server')\n"
        "    def execute(self, requests):\n"
        "        return []\n"
    )
    return json.dumps(config), {"file:1/model.py": code.encode()}


# --- a server on every interface: TLS on gRPC, the admin key, HTTP on loopback ----------------


@pytest.fixture(scope="module")
def exposed(repository: Path, pki: Pki, tmp_path_factory):
    """`mmserve serve --host 0.0.0.0` with TLS and an admin key from a file (the container's way)."""
    folder = tmp_path_factory.mktemp("exposed")
    key_file = folder / "admin-key"
    key_file.write_text(ADMIN_KEY + "\n")
    ports = ServerPorts.free()
    process = subprocess.Popen(
        [*MMSERVE, "serve", "--repository", str(repository), "--model", PIPELINE, "--host", "0.0.0.0",
         "--grpc-port", str(ports.grpc), "--http-port", str(ports.http), "--metrics-port", str(ports.metrics),
         "--supervisor-port", str(ports.supervisor), "--tls-cert", str(pki.server_cert),
         "--tls-key", str(pki.server_key), "--admin-key-file", str(key_file), "--log", str(folder / "triton.log")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "MMSERVE_ADMIN_KEY": ""},
    )
    line = process.stdout.readline()
    if "Triton is ready" not in line:
        process.kill()
        pytest.fail(f"mmserve serve did not start: {line}{process.stderr.read()}")
    yield process, ports
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0


def test_plaintext_grpc_is_refused_by_a_tls_server(exposed, pki):
    _, ports = exposed
    plain = grpcclient.InferenceServerClient(f"localhost:{ports.grpc}")
    _refused(plain.is_server_live, client_timeout=10)
    with _tls_client(f"localhost:{ports.grpc}", pki, client_cert=False) as tls:
        assert tls.is_server_live() and tls.is_model_ready(PIPELINE)


def test_open_calls_need_no_key(exposed, pki):
    """Inference, health, metadata, model config and statistics: anyone with TLS."""
    _, ports = exposed
    with _tls_client(f"localhost:{ports.grpc}", pki, client_cert=False) as tls:
        assert tls.is_server_ready() and tls.is_model_ready(PIPELINE)
        assert tls.get_server_metadata().version == "2.51.0"
        assert [o.name for o in tls.get_model_metadata(PIPELINE).outputs]
        assert tls.get_model_config(PIPELINE).config.name == PIPELINE
        label = tls.infer(PIPELINE, [_text_input()]).as_numpy("LABEL")
        assert label.shape == (1, 1) and label[0, 0]
        stats = tls.get_inference_statistics(PIPELINE).model_stats[0]
        assert stats.inference_stats.success.count >= 1
    http = httpclient.InferenceServerClient(f"127.0.0.1:{ports.http}")
    assert http.is_model_ready(PIPELINE) and http.get_model_config(PIPELINE)["name"] == PIPELINE
    assert http.infer(PIPELINE, [_text_input(httpclient)]).as_numpy("LABEL").shape == (1, 1)
    assert "model_stats" in http.get_inference_statistics(PIPELINE)


def test_grpc_model_control_needs_the_admin_key(exposed, pki, tmp_path):
    _, ports = exposed
    marker = tmp_path / "ran"
    config, files = _injected_model(marker)
    with _tls_client(f"localhost:{ports.grpc}", pki, client_cert=False) as tls:
        for call, args in ((tls.get_model_repository_index, ()), (tls.unload_model, (PIPELINE,)),
                           (tls.load_model, (PIPELINE,))):
            assert "triton-grpc-protocol-admin-key" in _refused(call, *args)
        assert "restricted" in _refused(tls.load_model, "injected", config=config, files=files)
        assert not marker.exists()
        assert tls.is_model_ready(PIPELINE), "a refused unload unloaded anyway"

        wrong = {"triton-grpc-protocol-admin-key": "not-the-key-at-all"}
        assert "restricted" in _refused(tls.get_model_repository_index, headers=wrong)

        index = tls.get_model_repository_index(headers=GRPC_ADMIN)
        assert {m.name: m.state for m in index.models}[PIPELINE] == "READY"
        tls.unload_model(PIPELINE, headers=GRPC_ADMIN)
        assert not tls.is_model_ready(PIPELINE)
        tls.load_model(PIPELINE, headers=GRPC_ADMIN)
        assert tls.is_model_ready(PIPELINE)
        # With the key, a load may bring its own model.py: this is what the key protects.
        tls.load_model("injected", config=config, files=files, headers=GRPC_ADMIN)
        assert marker.read_text() == "code ran in the server"
        tls.unload_model("injected", headers=GRPC_ADMIN)


def test_http_model_control_needs_the_admin_key(exposed, tmp_path):
    _, ports = exposed
    marker = tmp_path / "ran"
    config, files = _injected_model(marker)
    http = httpclient.InferenceServerClient(f"127.0.0.1:{ports.http}")
    for call, args in ((http.get_model_repository_index, ()), (http.unload_model, (PIPELINE,)),
                       (http.load_model, (PIPELINE,))):
        assert "expecting header 'admin-key'" in _refused(call, *args)
    assert "admin-key" in _refused(http.load_model, "injected", config=config, files=files)
    assert not marker.exists() and http.is_model_ready(PIPELINE)

    assert any(m["name"] == PIPELINE for m in http.get_model_repository_index(headers=HTTP_ADMIN))
    http.unload_model(PIPELINE, headers=HTTP_ADMIN)
    assert not http.is_model_ready(PIPELINE)
    http.load_model(PIPELINE, headers=HTTP_ADMIN)
    assert http.is_model_ready(PIPELINE)
    http.load_model("injected", config=config, files=files, headers=HTTP_ADMIN)
    assert marker.exists()
    http.unload_model("injected", headers=HTTP_ADMIN)


def test_with_tls_http_and_metrics_stay_on_loopback(exposed):
    """Triton's HTTP has no TLS: under TLS it listens on 127.0.0.1 only, gRPC everywhere."""
    _, ports = exposed
    address = _primary_address()
    if address is None:
        pytest.skip("this machine has no address beyond loopback to try")
    assert _connects(address, ports.grpc), "gRPC should listen on every interface (--host 0.0.0.0)"
    for port in (ports.http, ports.metrics, ports.supervisor):
        assert not _connects(address, port), f"port {port} is reachable from {address}"
        assert _connects("127.0.0.1", port)


def test_the_key_from_a_file_stays_out_of_mmserves_command_line(exposed):
    process, _ = exposed
    assert ADMIN_KEY not in Path(f"/proc/{process.pid}/cmdline").read_bytes().decode()


# --- mutual TLS and the API key -----------------------------------------------------------------


@pytest.fixture(scope="module")
def mutual(repository: Path, pki: Pki, tmp_path_factory):
    """Client certificates required; inference behind an API key as well."""
    with TritonServer(repository, ServerPorts.free(), models=[PIPELINE], tls_cert=pki.server_cert,
                      tls_key=pki.server_key, tls_ca=pki.ca, admin_key=ADMIN_KEY, api_key=API_KEY,
                      log_file=tmp_path_factory.mktemp("mutual") / "triton.log") as server:
        yield server


def test_mutual_tls_refuses_a_client_without_a_certificate(mutual, pki):
    url = f"localhost:{mutual.ports.grpc}"
    _refused(_tls_client(url, pki, client_cert=False).is_server_live, client_timeout=10)
    stranger = grpcclient.InferenceServerClient(url, ssl=True, root_certificates=str(pki.ca),
                                                private_key=str(pki.stranger_key),
                                                certificate_chain=str(pki.stranger_cert))
    _refused(stranger.is_server_live, client_timeout=10)
    _refused(grpcclient.InferenceServerClient(url).is_server_live, client_timeout=10)
    with _tls_client(url, pki, client_cert=True) as trusted:
        assert trusted.is_server_live() and trusted.is_model_ready(PIPELINE)


def test_the_api_key_guards_inference_only(mutual, pki):
    with _tls_client(f"localhost:{mutual.ports.grpc}", pki, client_cert=True) as client:
        assert "triton-grpc-protocol-api-key" in _refused(client.infer, PIPELINE, [_text_input()])
        assert client.infer(PIPELINE, [_text_input()], headers=GRPC_API).as_numpy("LABEL").shape == (1, 1)
        # health, metadata, config and statistics stay open; the admin key is separate
        assert client.is_model_ready(PIPELINE) and client.get_model_config(PIPELINE).config.name == PIPELINE
        assert client.get_inference_statistics(PIPELINE).model_stats
        assert "admin-key" in _refused(client.get_model_repository_index, headers=GRPC_API)
    http = httpclient.InferenceServerClient(mutual.http_url)
    assert "api-key" in _refused(http.infer, PIPELINE, [_text_input(httpclient)])
    answer = http.infer(PIPELINE, [_text_input(httpclient)], headers={"api-key": API_KEY})
    assert answer.as_numpy("LABEL").shape == (1, 1)


# --- refusals before anything starts -----------------------------------------------------------


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*MMSERVE, "serve", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MMSERVE_ADMIN_KEY": "", **(env or {})})


@pytest.mark.parametrize("flags, refusal, remedy", [
    (("--host", "0.0.0.0"), "refusing to serve gRPC on 0.0.0.0 without TLS", "--tls-cert"),
    (("--http-host", "0.0.0.0"), "refusing to listen on 0.0.0.0 without an admin key", "--admin-key-file"),
])
def test_an_exposed_bind_without_tls_or_an_admin_key_is_refused(repository, tmp_path, flags, refusal, remedy):
    ports = ServerPorts.free()
    result = _serve("--repository", str(repository), "--grpc-port", str(ports.grpc), "--http-port", str(ports.http),
                    "--metrics-port", str(ports.metrics), "--log", str(tmp_path / "triton.log"), *flags)
    assert result.returncode == 2, result.stderr
    assert refusal in result.stderr
    assert remedy in result.stderr and "--insecure" in result.stderr
    assert not (tmp_path / "triton.log").exists(), "tritonserver was started"
    for port in (ports.grpc, ports.http):
        assert not _connects("127.0.0.1", port)


def test_bad_security_settings_say_what_to_do(repository, tmp_path, pki):
    key_file = tmp_path / "empty"
    key_file.write_text("\n")
    cases = [
        (("--admin-key", "short"), "at least 16"),
        (("--admin-key-file", str(key_file)), "is empty"),
        (("--admin-key-file", str(tmp_path / "missing")), "cannot read the admin key file"),
        (("--tls-cert", str(pki.server_cert)), "needs both --tls-cert and --tls-key"),
        (("--tls-cert", str(pki.server_cert), "--tls-key", str(tmp_path / "missing.key")), "cannot read"),
        (("--tls-ca", str(pki.ca)), "needs TLS"),
    ]
    for flags, message in cases:
        result = _serve("--repository", str(repository), "--log", str(tmp_path / "triton.log"), *flags)
        assert result.returncode == 2 and message in result.stderr, (flags, result.stderr)
    assert not (tmp_path / "triton.log").exists()


def test_the_launcher_refuses_too(repository):
    with pytest.raises(LaunchError, match="without an admin key"):
        TritonServer(repository, ServerPorts.free(), http_host="0.0.0.0").start()
    insecure = TritonServer(repository, ServerPorts.free(), host="0.0.0.0", insecure=True)
    insecure.check()  # the operator said so: no refusal
    # Finding 5: a key over plaintext gRPC beyond loopback crossed the network readable.
    with pytest.raises(LaunchError, match="without TLS"):
        TritonServer(repository, ServerPorts.free(), host="0.0.0.0", admin_key=ADMIN_KEY).check()
    assert ADMIN_KEY not in repr(TritonServer(repository, admin_key=ADMIN_KEY, api_key=API_KEY))
    assert API_KEY not in repr(TritonServer(repository, admin_key=ADMIN_KEY, api_key=API_KEY))

