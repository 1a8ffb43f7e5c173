"""The command line as a user meets it: clear messages, clean shutdown."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from mmserve.server import ServerPorts

MMSERVE = [sys.executable, "-m", "mmserve.cli"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MMSERVE, *args], capture_output=True, text=True, timeout=120)


def test_serve_an_empty_repository_says_what_to_do(tmp_path: Path):
    result = run("serve", "--repository", str(tmp_path))
    assert result.returncode == 2
    assert "holds no models" in result.stderr and "mmserve export text" in result.stderr


def test_export_a_missing_checkpoint_says_so(tmp_path: Path):
    result = run("export", "text", str(tmp_path / "nope"), "--repository", str(tmp_path / "repo"))
    assert result.returncode == 2 and "not a folder" in result.stderr
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_serve_runs_until_ctrl_c_and_exits_cleanly(repository: Path):
    ports = ServerPorts.free()
    process = subprocess.Popen(
        [*MMSERVE, "serve", "--repository", str(repository), "--grpc-port", str(ports.grpc),
         "--http-port", str(ports.http), "--metrics-port", str(ports.metrics)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        line = process.stdout.readline()
        assert "Triton is ready" in line, line
        from mmserve.client import Client

        with Client(f"127.0.0.1:{ports.grpc}") as client:
            assert client.embed_text("still here").ndim == 1
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        assert time.monotonic() - started < 30
    finally:
        if process.poll() is None:
            process.kill()
