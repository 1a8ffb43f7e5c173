"""Starting and stopping `mmserve serve` as an operator meets it: a taken port or an
unknown model is named at once, readiness comes from our own process, Triton's log is
kept and its tail shown on failure, and no signal or exit path leaves a tritonserver or
a Python stub behind. Real tritonserver, real signals."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mmserve.server import LaunchError, ServerPorts, TritonServer
from mmserve.supervisor import python_stubs

MMSERVE = [sys.executable, "-m", "mmserve.cli"]
ADMIN_KEY = "launch-" + "0123456789abcdef" * 2
pytestmark = pytest.mark.timeout(600)


def _port_flags(ports: ServerPorts) -> list[str]:
    return ["--grpc-port", str(ports.grpc), "--http-port", str(ports.http), "--metrics-port", str(ports.metrics),
            "--supervisor-port", str(ports.supervisor)]


def _serve(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*MMSERVE, "serve", *args], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, **(env or {})})


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _children(pid: int, name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields and int(fields[1]) == pid and fields[0] != "Z":
                try:
                    if (entry / "comm").read_text().strip() == name[:15]:
                        found.append(int(entry.name))
                except OSError:
                    continue
    return found


def _process_group(pgid: int) -> list[int]:
    """Live members of a process group (tritonserver leads its own, with its stubs)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields and int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def _wait_for(condition, timeout_s: float = 120.0, every_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"not true after {timeout_s:.0f} s: {condition}")


# --- named at once --------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["grpc", "http", "metrics"])
def test_a_taken_port_is_named_before_anything_starts(repository: Path, tmp_path: Path, which: str):
    ports = ServerPorts.free()
    with socket.socket() as other_server:
        other_server.bind(("127.0.0.1", getattr(ports, which)))
        other_server.listen()
        result = _serve("--repository", str(repository), *_port_flags(ports), "--log", str(tmp_path / "triton.log"))
    assert result.returncode == 2, result.stderr
    label = {"grpc": "gRPC", "http": "HTTP", "metrics": "metrics"}[which]
    assert f"port {getattr(ports, which)} ({label}) is already in use" in result.stderr
    assert f"--{which}-port" in result.stderr
    assert "Triton is ready" not in result.stdout
    assert not (tmp_path / "triton.log").exists(), "tritonserver was started"


def test_unknown_models_are_named_at_once(repository: Path, tmp_path: Path):
    result = _serve("--repository", str(repository), "--model", "nope", "--model", "text_classify",
                    "--model", "nah", *_port_flags(ServerPorts.free()), cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown model(s) nope, nah" in result.stderr and "text_classify" in result.stderr
    assert not list((tmp_path / "runs").glob("*")), "an empty run folder was left behind"


class _PortCheckSkipped(TritonServer):
    """The launcher without its port check: what a race with another server looks like."""

    def _check_ports(self) -> None:
        pass


def test_readiness_is_read_from_our_own_process(repository: Path, tmp_path: Path):
    """Another server answering our HTTP port never passes for ours."""
    with TritonServer(repository, ServerPorts.free(), models=["text_tokenize"], log_file=tmp_path / "a.log") as first:
        theirs = ServerPorts.free()
        second = _PortCheckSkipped(repository, ServerPorts(theirs.grpc, first.ports.http, theirs.metrics, theirs.supervisor),
                                   models=["text_tokenize"], log_file=tmp_path / "b.log")
        with pytest.raises(LaunchError) as failed:
            second.start()
        assert "tritonserver exited with code" in str(failed.value), failed.value
        assert "already in use" in str(failed.value)  # the tail of its log says why
        assert second.pid is None and first.model_ready("text_tokenize")


# --- the log ------------------------------------------------------------------------------------


def _broken_repository(repository: Path, folder: Path) -> Path:
    """A copy of text_tokenize whose initialize() raises: a model that fails to load."""
    broken = folder / "repo" / "text_tokenize"
    shutil.copytree(repository / "text_tokenize", broken, ignore=shutil.ignore_patterns("__pycache__"))
    (broken / "1" / "model.py").write_text(
        "from mmserve.serving.text import TextTokenizeModel\n\n\n"
        "class TritonPythonModel(TextTokenizeModel):\n"
        "    def initialize(self, args):\n"
        "        raise RuntimeError(\"broken on purpose for the test\")\n"
    )
    return folder / "repo"


def test_the_log_is_kept_in_a_run_folder_and_its_tail_shown_on_failure(repository: Path, tmp_path: Path):
    repo = _broken_repository(repository, tmp_path)
    result = _serve("--repository", str(repo), *_port_flags(ServerPorts.free()), cwd=tmp_path,
                    env={"MMSERVE_RUNS": ""})
    assert result.returncode == 2, result.stderr
    assert "model(s) failed to load: text_tokenize" in result.stderr
    assert "broken on purpose for the test" in result.stderr  # the tail of Triton's log
    logs = list((tmp_path / "runs").glob("serve-*/triton.log"))
    assert len(logs) == 1 and str(logs[0].relative_to(tmp_path)) in result.stderr
    assert "broken on purpose for the test" in logs[0].read_text()

    elsewhere = tmp_path / "elsewhere"
    again = _serve("--repository", str(repo), *_port_flags(ServerPorts.free()), cwd=tmp_path,
                   env={"MMSERVE_RUNS": str(elsewhere)})
    assert again.returncode == 2 and len(list(elsewhere.glob("serve-*/triton.log"))) == 1


# --- no orphans -----------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_start_up_leaves_no_process(repository: Path, tmp_path: Path, signum: int):
    """Every model of the repository: long enough to be stopped half-way through loading."""
    process = subprocess.Popen([*MMSERVE, "serve", "--repository", str(repository), *_port_flags(ServerPorts.free()),
                                "--log", str(tmp_path / "triton.log")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        triton = _wait_for(lambda: _children(process.pid, "tritonserver"))[0]
        _wait_for(lambda: python_stubs(triton))  # loading has begun: stubs exist
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert "Triton is ready" not in stdout, "the server was ready before the signal: nothing tested"
    assert process.returncode == 130, stderr
    assert _stat(triton) is None and _process_group(triton) == [], "tritonserver or a stub outlived mmserve serve"


def test_an_uncaught_exception_does_not_orphan_the_server(repository: Path, tmp_path: Path):
    script = textwrap.dedent(f"""
        from pathlib import Path
        from mmserve.server import ServerPorts, TritonServer
        server = TritonServer(Path({str(repository)!r}), ServerPorts.free(), models=["text_tokenize"],
                              log_file=Path({str(tmp_path / "triton.log")!r})).start()
        print(server.pid, flush=True)
        raise SystemExit("the application failed before calling stop()")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "failed before calling stop" in result.stderr
    pid = int(result.stdout.split()[0])
    assert _stat(pid) is None and _process_group(pid) == []


def test_a_server_that_dies_is_reported_with_its_log(repository: Path, tmp_path: Path):
    process = subprocess.Popen([*MMSERVE, "serve", "--repository", str(repository), "--model", "text_tokenize",
                                *_port_flags(ServerPorts.free()), "--log", str(tmp_path / "triton.log")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "Triton is ready" in process.stdout.readline()
        triton = _children(process.pid, "tritonserver")[0]
        os.kill(triton, signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 2
    assert "tritonserver exited on its own with code -9" in stderr and str(tmp_path / "triton.log") in stderr
    assert _process_group(triton) == []


def test_a_stopped_secure_supervised_server_leaves_no_process(repository: Path, tmp_path: Path):
    server = TritonServer(repository, ServerPorts.free(), models=["text_classify"], admin_key=ADMIN_KEY,
                          supervise=True, log_file=tmp_path / "triton.log").start()
    pid = server.pid
    assert {s.model for s in python_stubs(pid).values()} >= {"text_tokenize", "text_classify_encoder"}
    assert server.stop() == 0
    assert _process_group(pid) == []


# --- the console beside the server ------------------------------------------------------------


def test_serve_with_console_serves_both_and_stops_both(repository: Path, tmp_path: Path):
    """`mmserve serve --console`: the console answers, Triton publishes p50/p99
    summaries for the live charts, and one SIGTERM stops both, leaving no process behind."""
    import urllib.request

    import numpy as np
    import tritonclient.grpc as grpcclient

    ports = ServerPorts.free()
    console_port = ServerPorts.free().grpc
    process = subprocess.Popen([*MMSERVE, "serve", "--repository", str(repository), *_port_flags(ports),
                                "--model", "text_classify", "--console", "--console-port", str(console_port),
                                "--log", str(tmp_path / "triton.log")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines: list[str] = []
        while not any(line.startswith("console: ") for line in lines):
            line = process.stdout.readline()
            assert line, f"mmserve serve ended before its console started: {process.stderr.read()}"
            lines.append(line)
        assert any("one-time key" in line for line in lines), "no admin key and no sign-in key was printed"
        url = next(line for line in lines if line.startswith("console: ")).split(" ", 1)[1].strip()
        with urllib.request.urlopen(url, timeout=30) as page:  # what it shows whom: tests/test_console_*.py
            assert page.status == 200

        text = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[b"where is my parcel"]], dtype=object))
        with grpcclient.InferenceServerClient(f"127.0.0.1:{ports.grpc}") as triton:
            triton.infer("text_classify", [text])
        with urllib.request.urlopen(f"http://127.0.0.1:{ports.metrics}/metrics", timeout=10) as metrics:
            body = metrics.read().decode()
        summaries = [line for line in body.splitlines() if line.startswith("nv_inference_request_summary_us{")]
        assert any('model="text_classify"' in line and 'quantile="0.99"' in line for line in summaries), \
            "Triton publishes no p99 latency summary for the pipeline"

        triton_pid = _children(process.pid, "tritonserver")[0]
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert _stat(triton_pid) is None and _process_group(triton_pid) == []
    with socket.socket() as probe:  # nobody listens on the console's port any more (TIME_WAIT is fine)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", console_port))


def test_a_server_that_ignores_sigterm_is_killed_after_the_grace_period(repository: Path, tmp_path: Path):
    """A hung tritonserver (here: really stopped with SIGSTOP, so SIGTERM cannot reach it) must not keep
    `mmserve serve`, or its ports, forever: after the grace period (--stop-grace) its process group is killed."""
    grace = 12.0
    process = subprocess.Popen([*MMSERVE, "serve", "--repository", str(repository), *_port_flags(ServerPorts.free()),
                                "--model", "text_tokenize", "--log", str(tmp_path / "triton.log"),
                                "--stop-grace", str(grace)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "Triton is ready" in process.stdout.readline()
        triton = _children(process.pid, "tritonserver")[0]
        os.kill(triton, signal.SIGSTOP)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=grace + 60)
        waited = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1 and "did not stop within 12 s" in stderr, stderr
    assert waited >= grace  # not killed before the grace period it was given
    assert _stat(triton) is None and _process_group(triton) == []
