"""Start and stop a real `tritonserver` over a model repository.

One launcher for `mmserve serve`, the tests and the demo. It finds the binary
($TRITONSERVER, then `tritonserver` on PATH, then the one bundled in the
`nvidia-pytriton` wheel), assembles the Python backend with the stub for this
interpreter, loads every model of the repository explicitly and waits until
each one is ready.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


class ServerError(RuntimeError):
    """The server could not be found, started or made ready; the message says what to do."""


@dataclass(frozen=True)
class ServerPorts:
    grpc: int = 8001
    http: int = 8000
    metrics: int = 8002

    @classmethod
    def free(cls) -> "ServerPorts":
        """Three ports nobody listens on, for tests and side-by-side runs."""
        socks = [socket.socket() for _ in range(3)]
        try:
            for s in socks:
                s.bind(("127.0.0.1", 0))
            grpc, http, metrics = (s.getsockname()[1] for s in socks)
        finally:
            for s in socks:
                s.close()
        return cls(grpc=grpc, http=http, metrics=metrics)


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    backend_directory: Path | None  # None: the binary's own default (NGC container)


def _bundled_triton_root() -> Path | None:
    import importlib.util

    # find_spec does not run pytriton's __init__, whose own requirements we do not install.
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    return root if (root / "bin" / "tritonserver").exists() else None


def _python_backend_ready(backends: Path) -> Path:
    """Put the stub built for this Python next to the bundled Python backend (idempotent)."""
    python_backend = backends / "python"
    stub = python_backend / "triton_python_backend_stub"
    if not stub.exists():
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        source = backends.parent / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not source.exists():
            raise ServerError(
                f"The bundled Triton has no Python backend stub for Python {version} "
                f"(looked for {source}). Use Python 3.11, or set TRITONSERVER to a full install."
            )
        shutil.copy2(source, stub)
    return backends


def find_triton() -> TritonInstall:
    explicit = os.environ.get("TRITONSERVER")
    if explicit:
        binary = Path(explicit)
        if not binary.exists():
            raise ServerError(f"TRITONSERVER={explicit} does not exist; point it at a tritonserver binary.")
        return TritonInstall(binary, _backend_dir_for(binary))
    on_path = shutil.which("tritonserver")
    if on_path:
        return TritonInstall(Path(on_path), _backend_dir_for(Path(on_path)))
    bundled = _bundled_triton_root()
    if bundled is None:
        raise ServerError(
            "No tritonserver found: set TRITONSERVER, put tritonserver on PATH, or install the "
            "bundled one with `pip install --no-deps nvidia-pytriton==0.7.0` (`make setup` does)."
        )
    return TritonInstall(bundled / "bin" / "tritonserver", _python_backend_ready(bundled / "backends"))


def _backend_dir_for(binary: Path) -> Path | None:
    """A bundled-layout binary needs its sibling backends folder; a system install knows its own."""
    sibling = binary.resolve().parent.parent / "backends"
    if (sibling / "python").exists() and (sibling.parent / "python_backend_stubs").exists():
        return _python_backend_ready(sibling)
    return None


def repository_models(repository: Path) -> list[str]:
    """The model folders Triton should load: every sub-folder with a config.pbtxt."""
    return sorted(p.parent.name for p in repository.glob("*/config.pbtxt"))


@dataclass
class TritonServer:
    """A running `tritonserver` process; use as a context manager or call start()/stop()."""

    repository: Path
    ports: ServerPorts = field(default_factory=ServerPorts)
    host: str = "127.0.0.1"  # 0.0.0.0 in a container
    models: list[str] | None = None  # None: every model in the repository
    log_file: Path | None = None
    verbose: bool = False
    extra_args: tuple[str, ...] = ()
    startup_timeout_s: float = 180.0
    _process: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _log: IO | None = field(default=None, init=False, repr=False)

    @property
    def pid(self) -> int | None:
        """The running tritonserver's process id (its Python-backend stubs are its children)."""
        return self._process.pid if self._process is not None else None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.ports.http}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.metrics}/metrics"

    def command(self) -> list[str]:
        install = find_triton()
        repository = self.repository.resolve()
        models = self.models if self.models is not None else repository_models(repository)
        if not models:
            raise ServerError(
                f"{repository} holds no models (no */config.pbtxt). Export one first, e.g. "
                "`mmserve export text CHECKPOINT --repository DIR`."
            )
        cmd = [
            str(install.binary),
            f"--model-repository={repository}",
            "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in models),
            "--strict-model-config=true",
            "--exit-on-error=false",
            "--exit-timeout-secs=10",
            f"--grpc-port={self.ports.grpc}",
            f"--http-port={self.ports.http}",
            f"--metrics-port={self.ports.metrics}",
            f"--grpc-address={self.host}",
            f"--http-address={self.host}",
            f"--metrics-address={self.host}",
            f"--log-verbose={1 if self.verbose else 0}",
            *self.extra_args,
        ]
        if install.backend_directory is not None:
            cmd.append(f"--backend-directory={install.backend_directory}")
        return cmd

    def _environment(self) -> dict[str, str]:
        """The stub takes its Python prefix from the first python3 on PATH: make it ours."""
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def start(self) -> "TritonServer":
        if self._process is not None:
            return self
        cmd = self.command()
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_file, "w")
        self._process = subprocess.Popen(
            cmd,
            stdout=self._log if self._log else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=self._environment(),
            start_new_session=True,  # Ctrl-C reaches us; we forward it once, cleanly
        )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=2) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return 0

    def model_ready(self, model: str) -> bool:
        return self._get(f"/v2/models/{model}/ready") == 200

    def wait_ready(self) -> None:
        models = self.models if self.models is not None else repository_models(self.repository.resolve())
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise ServerError(
                    f"tritonserver exited with code {self._process.returncode} while starting. "
                    f"{self._log_hint()}"
                )
            if self._get("/v2/health/live") == 200:
                failed = [m for m in models if self._model_failed(m)]
                if failed:
                    raise ServerError(f"model(s) failed to load: {', '.join(failed)}. {self._log_hint()}")
                if all(self.model_ready(m) for m in models):
                    return
            time.sleep(0.25)
        raise ServerError(f"tritonserver not ready after {self.startup_timeout_s:.0f} s. {self._log_hint()}")

    def _model_failed(self, model: str) -> bool:
        """A model whose load ended in UNAVAILABLE with a reason will not become ready."""
        import json

        try:
            request = urllib.request.Request(f"http://{self.http_url}/v2/repository/index", data=b"{}")
            with urllib.request.urlopen(request, timeout=2) as response:
                index = json.load(response)
        except (urllib.error.URLError, OSError, ValueError):
            return False
        return any(
            entry.get("name") == model and entry.get("state") == "UNAVAILABLE" and entry.get("reason")
            for entry in index
        )

    def _log_hint(self) -> str:
        if self.log_file is None:
            return "Re-run with a log file (mmserve serve --log FILE) to see Triton's messages."
        tail = self.log_file.read_text(errors="replace").splitlines()[-15:] if self.log_file.exists() else []
        errors = [line for line in tail if line.startswith("E") or "error" in line.lower()]
        return f"Triton log {self.log_file}:\n" + "\n".join(errors or tail)

    def stop(self, timeout_s: float = 40.0) -> int | None:
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log:
            self._log.close()
            self._log = None
        return process.returncode

    def wait(self) -> int:
        """Block until the server exits; Ctrl-C/SIGTERM here stop it cleanly."""
        assert self._process is not None, "start() first"

        def forward(signum: int, _frame: object) -> None:
            if self._process is not None and self._process.poll() is None:
                self._process.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGINT, forward)
        signal.signal(signal.SIGTERM, forward)
        code = self._process.wait()
        self.stop()
        return code

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
