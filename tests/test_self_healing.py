"""Self-healing on a real `mmserve serve`: four clients call text_classify in a loop, the
encoder's Python stub is SIGKILLed (what the OOM killer does), and the supervisor
reloads the model without a server restart. The test asserts that the product serves
again and that the failures stop; it prints the measured failure window.

An operator's own unload is not undone by the supervisor."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from mmserve.server import ServerPorts
from mmserve.supervisor import python_stubs

MMSERVE = [sys.executable, "-m", "mmserve.cli"]
ADMIN_KEY = "healing-" + "0123456789abcdef" * 2
PIPELINE = "text_classify"
# The model whose stub is killed: the encoder step of the ensemble layout, the whole pipeline of the fused one.
KILLED = {"ensemble": "text_classify_encoder", "fused": "text_classify"}
CLIENTS = 4
GENEROUS_S = 60.0  # a bound on "it comes back", not a performance target
pytestmark = pytest.mark.timeout(600)


@dataclass
class Served:
    process: subprocess.Popen
    ports: ServerPorts
    triton_pid: int
    stderr: Path
    crashed_shm: list[str]  # shared-memory regions of killed stubs: gone once the server stops
    stub_model: str  # the model whose stub the tests kill and unload

    def recoveries(self) -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports.supervisor}/metrics", timeout=5) as response:
            text = response.read().decode()
        return {m: int(n) for m, n in re.findall(r'mmserve_model_recoveries_total\{model="([^"]+)"\} (\d+)', text)}


@pytest.fixture(scope="module", params=sorted(KILLED))
def served(request, tmp_path_factory) -> Served:
    repository = request.getfixturevalue("repository" if request.param == "ensemble" else "fused_repository")
    folder = tmp_path_factory.mktemp("healing")
    ports = ServerPorts.free()
    stdout, stderr = folder / "stdout", folder / "stderr"
    with stdout.open("w") as out, stderr.open("w") as err:
        process = subprocess.Popen(
            [*MMSERVE, "serve", "--repository", str(repository), "--model", PIPELINE,
             "--grpc-port", str(ports.grpc), "--http-port", str(ports.http), "--metrics-port", str(ports.metrics),
             "--supervisor-port", str(ports.supervisor), "--log", str(folder / "triton.log"),
             # a model whose stub was killed never finishes unloading: the stop waits out this timeout
             "--exit-timeout", "2"],
            stdout=out, stderr=err, env={**os.environ, "MMSERVE_ADMIN_KEY": ADMIN_KEY},
        )
    deadline = time.monotonic() + 300
    while "Triton is ready" not in stdout.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"mmserve serve did not start: {stderr.read_text()}")
        time.sleep(0.2)
    triton = next(p for p in _children(process.pid) if Path(f"/proc/{p}/comm").read_text().strip() == "tritonserver")
    running = Served(process, ports, triton, stderr, [], KILLED[request.param])
    yield running
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0, stderr.read_text()
    assert not [r for r in running.crashed_shm if Path("/dev/shm", r).exists()], "a crashed stub's region was left"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@dataclass(frozen=True)
class Call:
    started: float
    ended: float
    ok: bool


def _call_in_a_loop(url: str, stop: threading.Event, calls: list[Call]) -> None:
    client = grpcclient.InferenceServerClient(url)
    text = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"where is my parcel?"]], dtype=object))
    while not stop.is_set():
        started = time.monotonic()
        try:
            ok = client.infer(PIPELINE, [text], client_timeout=30).as_numpy("LABEL") is not None
        except Exception:  # noqa: BLE001 - any failure counts as a failed request
            ok = False
        calls.append(Call(started, time.monotonic(), ok))
    client.close()


def test_a_killed_stub_is_reloaded_without_a_restart(served: Served):
    stop, calls = threading.Event(), []
    clients = [threading.Thread(target=_call_in_a_loop, args=(f"127.0.0.1:{served.ports.grpc}", stop, calls))
               for _ in range(CLIENTS)]
    for client in clients:
        client.start()
    try:
        deadline = time.monotonic() + GENEROUS_S
        while sum(c.ok for c in calls) < 20:  # all four are being served
            assert time.monotonic() < deadline, "no successful calls before the kill"
            time.sleep(0.05)
        before = [s for s in python_stubs(served.triton_pid).values() if s.model == served.stub_model]
        assert len(before) == 1
        served.crashed_shm.append(before[0].shm_region)
        killed_at = time.monotonic()
        os.kill(before[0].pid, signal.SIGKILL)

        # Serving again: 40 successful calls in a row, all started after the kill.
        while True:
            assert time.monotonic() - killed_at < GENEROUS_S, "text_classify did not come back"
            after = [c for c in list(calls) if c.started > killed_at]
            if len(after) >= 40 and all(c.ok for c in after[-40:]):
                break
            time.sleep(0.05)
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=60)

    failed = [c for c in calls if not c.ok]
    assert all(c.ended >= killed_at for c in failed), "calls failed before the kill"
    last_failure = max((c.ended for c in failed), default=killed_at)
    back = min(c.ended for c in calls if c.ok and c.started >= killed_at)
    print(f"\nself-healing: {len(failed)} failed of {len(calls)} calls by {CLIENTS} clients; failures ended "
          f"{last_failure - killed_at:.2f} s after the kill; first success after the kill at "
          f"{back - killed_at:.2f} s")
    assert all(c.ok for c in calls if c.started > last_failure), "failures did not stop"
    assert last_failure - killed_at < GENEROUS_S
    assert served.process.poll() is None, "the server restarted or died"
    assert served.recoveries().get(served.stub_model) == 1
    now = {s.pid for s in python_stubs(served.triton_pid).values() if s.model == served.stub_model}
    assert len(now) == 1, "the encoder has no live stub again"
    assert f"supervisor: {served.stub_model} reloaded" in served.stderr.read_text()


def test_an_operator_unload_is_not_undone(served: Served):
    """The stub ends on an unload too: the supervisor must tell it from a crash."""
    http = httpclient.InferenceServerClient(f"127.0.0.1:{served.ports.http}")
    admin = {"admin-key": ADMIN_KEY}
    before = served.recoveries()
    http.unload_model(served.stub_model, headers=admin)
    deadline = time.monotonic() + GENEROUS_S
    while any(s.model == served.stub_model for s in python_stubs(served.triton_pid).values()):
        assert time.monotonic() < deadline, "the unloaded encoder's stub did not end"
        time.sleep(0.1)
    time.sleep(5)  # ten stub polls and several repository-index reads of the supervisor
    assert not http.is_model_ready(served.stub_model), "the supervisor reloaded a model the operator unloaded"
    assert served.recoveries() == before
    http.load_model(served.stub_model, headers=admin)
    http.load_model(PIPELINE, headers=admin)
    assert http.is_model_ready(PIPELINE)
