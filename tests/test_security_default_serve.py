"""The attacks of issue 18 on `mmserve serve` as the README starts it (loopback, no key
typed), against one real server over a one-model repository: a web page's text/plain POST
loading a model.py, a module planted where the server was launched, keys in `ps`, a
second server on taken ports, the OOM killer's `kill -9` of the launcher.

Each test states the attack and checks it is refused or harmless; where it matters, the
same attack with the key shows it would have worked (the test can fail)."""
from __future__ import annotations

import base64
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mmserve.server import ServerPorts
from mmserve.supervisor import python_stubs

# The installed command, as a user runs it (`python -m` would put the launch folder on the launcher's own path).
MMSERVE = [str(Path(sys.executable).parent / "mmserve")]
pytestmark = pytest.mark.timeout(300)

ECHO_CONFIG = """name: "echo"
backend: "python"
max_batch_size: 0
input [{ name: "X" data_type: TYPE_FP32 dims: [1] }]
output [{ name: "Y" data_type: TYPE_FP32 dims: [1] }]
instance_group [{ kind: KIND_CPU count: 1 }]
"""
ECHO_MODEL = """import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy())])
                for r in requests]
"""


def _tiny_repository(folder: Path) -> Path:
    (folder / "echo" / "1").mkdir(parents=True)
    (folder / "echo" / "config.pbtxt").write_text(ECHO_CONFIG)
    (folder / "echo" / "1" / "model.py").write_text(ECHO_MODEL)
    return folder


def _port_flags(ports: ServerPorts) -> list[str]:
    return ["--grpc-port", str(ports.grpc), "--http-port", str(ports.http), "--metrics-port", str(ports.metrics),
            "--supervisor-port", str(ports.supervisor)]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _tritonserver_of(launcher: int) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
                if int(fields[1]) == launcher and (entry / "comm").read_text().strip() == "tritonserver":
                    return int(entry.name)
            except OSError:
                continue
    raise AssertionError(f"no tritonserver child of {launcher}")


def _wait_for(condition, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"not true after {timeout_s:.0f} s: {condition}")


class Served:
    def __init__(self, process: subprocess.Popen, ports: ServerPorts, lines: list[str], launch_dir: Path,
                 runs: Path, repository: Path):
        self.process, self.ports, self.lines, self.launch_dir = process, ports, lines, launch_dir
        self.runs, self.repository = runs, repository
        self.triton = _tritonserver_of(process.pid)
        self.key_file = Path(next(line for line in lines if line.startswith("admin key")).split(": ", 1)[1].split(";")[0])

    @property
    def run_dir(self) -> Path:
        (folder,) = self.runs.glob("serve-*")
        return folder


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Served:
    """`mmserve serve --repository REPO` from a folder holding a planted json.py (every Python
    program imports json, the Python backend's own utilities included)."""
    root = tmp_path_factory.mktemp("default-serve")
    repository = _tiny_repository(root / "repo")
    launch_dir = root / "launch"
    launch_dir.mkdir()
    marker = root / "planted-module-ran"
    (launch_dir / "json.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nfrom _json import *\n")
    runs = root / "runs"
    ports = ServerPorts.free()
    env = {k: v for k, v in os.environ.items() if k not in ("MMSERVE_ADMIN_KEY", "MMSERVE_API_KEY")}
    env["MMSERVE_RUNS"] = str(runs)
    process = subprocess.Popen([*MMSERVE, "serve", "--repository", str(repository), *_port_flags(ports)],
                               cwd=launch_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        while not any(line.startswith("admin key") for line in lines):  # printed right after "Triton is ready"
            line = process.stdout.readline()
            assert line, f"mmserve serve ended before it was ready: {process.stderr.read()}"
            lines.append(line.strip())
        yield Served(process, ports, lines, launch_dir, runs, repository)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def _load_request(served: Served, name: str, code: str, headers: dict[str, str]) -> int:
    """What a web page can send to 127.0.0.1 without a CORS preflight: a text/plain POST."""
    config = {"name": name, "backend": "python", "max_batch_size": 0,
              "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [1]}],
              "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [1]}]}
    body = {"parameters": {"config": json.dumps(config),
                           "file:1/model.py": base64.b64encode(code.encode()).decode()}}
    request = urllib.request.Request(f"http://127.0.0.1:{served.ports.http}/v2/repository/models/{name}/load",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "text/plain", **headers})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_the_generated_admin_key_is_a_private_file_named_at_start(served: Served):
    assert served.key_file.parent == served.run_dir and served.key_file.name == "admin.key"
    mode = stat.S_IMODE(served.key_file.stat().st_mode)
    assert mode == 0o600, oct(mode)
    assert stat.S_IMODE(served.run_dir.stat().st_mode) == 0o700
    assert len(served.key_file.read_text().strip()) == 64


def test_a_text_plain_model_upload_without_the_key_is_refused(served: Served, tmp_path: Path):
    """Finding 1: a base64 model.py in a text/plain POST ran inside the server."""
    marker = tmp_path / "uploaded-model-ran"
    code = (f"open({str(marker)!r}, 'w').write('ran')\n" + ECHO_MODEL)
    assert _load_request(served, "uploaded", code, {}) == 403
    assert not marker.exists()
    # The same request with the key loads and runs the code: the refusal above is the key's doing.
    assert _load_request(served, "uploaded", code, {"admin-key": served.key_file.read_text().strip()}) == 200
    assert marker.exists()


def test_a_module_planted_in_the_launch_folder_never_runs(served: Served):
    """Finding 6: tritonserver ran in the launch folder, and the stub imported a json.py planted there."""
    assert not (served.launch_dir.parent / "planted-module-ran").exists()
    assert Path(os.readlink(f"/proc/{served.triton}/cwd")) == served.run_dir
    stubs = python_stubs(served.triton)
    assert stubs
    for pid in stubs:
        assert Path(os.readlink(f"/proc/{pid}/cwd")) == served.run_dir
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"PYTHONSAFEPATH=1" in environ
        assert not any(e.startswith((b"MMSERVE_ADMIN_KEY=", b"MMSERVE_API_KEY=")) for e in environ)


def test_what_ps_shows(served: Served):
    """Finding 8, measured: Triton takes keys on its command line only, which any local user reads
    in /proc/PID/cmdline. Where a C compiler is at hand, mmserve/hide_keys.py masks them there
    (Triton still enforces them: the other tests here use the key); elsewhere they stay visible
    and `mmserve serve` says so. The launcher's own argv never holds a key."""
    import shutil

    key = served.key_file.read_text().strip()
    triton_argv = Path(f"/proc/{served.triton}/cmdline").read_bytes().decode()
    launcher_argv = Path(f"/proc/{served.process.pid}/cmdline").read_bytes().decode()
    assert key not in launcher_argv
    if shutil.which("cc") or shutil.which("gcc"):
        assert key not in triton_argv and "admin-key=" + "*" * len(key) in triton_argv
        for stub in python_stubs(served.triton):  # the library went no further than tritonserver
            assert b"LD_PRELOAD=" not in Path(f"/proc/{stub}/environ").read_bytes()
    else:  # what remains without a compiler (docs/security.md)
        assert key in triton_argv


def test_the_launcher_says_when_other_users_can_read_the_keys(tmp_path: Path):
    from mmserve.server import other_users_see_arguments

    mounts = tmp_path / "mounts"
    mounts.write_text("proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n")
    assert other_users_see_arguments(mounts)
    mounts.write_text("proc /proc proc rw,nosuid,nodev,noexec,relatime,hidepid=invisible 0 0\n")
    assert not other_users_see_arguments(mounts)


def test_the_registry_is_trusted_only_when_private(tmp_path: Path, monkeypatch):
    """The key lookup reads only this user's 0700 folder and 0600 key files, for loopback URLs,
    and only while the server it names runs with the id it was started with."""
    from mmserve import local_servers

    monkeypatch.setenv(local_servers.STATE_ENV, str(tmp_path / "state"))
    key_file = tmp_path / "admin.key"
    local_servers.write_private(key_file, "k" * 64 + "\n")
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--id=mmserve-fake"])
    try:
        _wait_for(lambda: Path(f"/proc/{server.pid}/cmdline").read_bytes())  # its exec has finished
        local_servers.register("mmserve-fake", pid=server.pid, key_file=str(key_file), ports={"grpc": 1, "http": 2})
        assert local_servers.admin_key_for("127.0.0.1:1") == "k" * 64
        assert local_servers.admin_key_for("localhost:2") == "k" * 64
        assert local_servers.admin_key_for("10.0.0.1:1") is None  # a remote server's key is never guessed
        key_file.chmod(0o644)
        assert local_servers.admin_key_for("127.0.0.1:1") is None  # readable by others: not a key of ours
        key_file.chmod(0o600)
        (tmp_path / "state").chmod(0o770)
        assert local_servers.admin_key_for("127.0.0.1:1") is None  # a folder others may write: not trusted
        (tmp_path / "state").chmod(0o700)
    finally:
        server.kill()
        server.wait()
    assert local_servers.admin_key_for("127.0.0.1:1") is None  # its server is gone
    assert local_servers.entries() == []


def test_local_tools_find_the_generated_key(served: Served):
    """The quick start stays two commands: the client and `mmserve products` need no key typed."""
    from mmserve.client import Client

    with Client(f"127.0.0.1:{served.ports.grpc}", timeout=30) as client:
        assert "echo" in {m.name for m in client.models()}
    env = {k: v for k, v in os.environ.items() if k != "MMSERVE_ADMIN_KEY"}
    listed = subprocess.run([*MMSERVE, "products", "--server", f"localhost:{served.ports.grpc}",
                             "--repository", str(served.repository)], capture_output=True, text=True, env=env,
                            timeout=120)
    assert listed.returncode == 0, listed.stderr
    # A raw client without the key is refused: the key is what lets the tools in.
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    with grpcclient.InferenceServerClient(f"127.0.0.1:{served.ports.grpc}") as raw:
        with pytest.raises(InferenceServerException, match="restricted"):
            raw.get_model_repository_index()


def test_lifecycle_commands_take_the_key_from_a_file(served: Served, tmp_path: Path):
    """Finding 10: lifecycle and soak took `--admin-key VALUE` (in `ps`) and no --admin-key-file."""
    wrong = tmp_path / "wrong.key"
    wrong.write_text("wrong-" + "0" * 32 + "\n")
    env = {k: v for k, v in os.environ.items() if k != "MMSERVE_ADMIN_KEY"}
    base = [*MMSERVE, "products", "--server", f"127.0.0.1:{served.ports.grpc}", "--repository",
            str(served.repository)]
    denied = subprocess.run([*base, "--admin-key-file", str(wrong)], capture_output=True, text=True, env=env,
                            timeout=120)
    assert denied.returncode == 4, denied.stderr  # the file's key was used, and refused
    right = subprocess.run([*base, "--admin-key-file", str(served.key_file)], capture_output=True, text=True,
                           env=env, timeout=120)
    assert right.returncode == 0, right.stderr
    soak_help = subprocess.run([*MMSERVE, "soak", "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "--admin-key-file" in soak_help and "--api-key-file" in soak_help


def test_a_second_serve_names_the_server_holding_the_ports(served: Served, tmp_path: Path):
    """Finding 7's second half: a server of ours on the ports is named (pid, run folder), not a bare "in use"."""
    result = subprocess.run([*MMSERVE, "serve", "--repository", str(served.repository), *_port_flags(served.ports)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env={**os.environ, "MMSERVE_RUNS": str(tmp_path / "runs")})
    assert result.returncode == 2, result.stderr
    assert f"tritonserver pid {served.triton}" in result.stderr, result.stderr
    assert str(served.run_dir) in result.stderr and f"kill {served.process.pid}" in result.stderr


def test_killing_the_launcher_takes_tritonserver_and_its_stubs(served: Served):
    """Finding 7: `kill -9` of `mmserve serve` (the OOM killer) left tritonserver serving, unsupervised."""
    stubs = list(python_stubs(served.triton))
    assert stubs
    served.process.kill()
    served.process.wait(timeout=30)
    _wait_for(lambda: not _alive(served.triton) and not any(_alive(p) for p in stubs), timeout_s=30)
    with socket.socket() as probe:  # its port is free again
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", served.ports.grpc))
