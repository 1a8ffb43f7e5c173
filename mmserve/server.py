"""Start and stop a real `tritonserver` over a model repository.

One launcher for `mmserve serve`, the tests, the demo and the bench. It finds the binary
($TRITONSERVER, then `tritonserver` on PATH, then the one bundled in the
`nvidia-pytriton` wheel), assembles the Python backend with the stub for this
interpreter, loads every model of the repository explicitly and waits until each one
is ready -- on *its own* process: the probes check the server id it was started with,
so another server already on the port can never pass for it.

Security (docs/security.md): gRPC over TLS (`tls_cert`/`tls_key`, mutual with
`tls_ca`), Triton's restricted protocols behind an admin key (model repository, shared
memory, trace, logging) and optionally an API key (inference). `generate_admin_key`
(what `mmserve serve` does when given none) makes a new key per start, kept in a 0600
file of the run folder, so model control is never open. gRPC beyond loopback without
TLS, or without an admin key, is refused unless `insecure`. tritonserver runs in its
private run folder (its working directory: nothing planted where it was launched is
imported) and dies with the process that started it (parent-death signal).

The parts live in mmserve/launch/ (install, network, keys, process, probes); this module
puts them together and keeps every name its callers import from here.
"""
from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from mmserve import local_servers
from mmserve.launch import LaunchError
from mmserve.launch import probes
from mmserve.launch.install import TritonInstall, find_triton, no_models_error, repository_models
from mmserve.launch.keys import (
    ADMIN_KEY_NAME,
    ADMIN_PROTOCOLS,
    API_KEY_NAME,
    API_PROTOCOLS,
    MIN_KEY_LENGTH,
    check_key,
    check_tls,
    generate_admin_key,
    key_option,
    other_users_see_arguments,
    resolve_key,
    security_args,
)
from mmserve.launch.network import LOOPBACK, ServerPorts, is_loopback, port_taken, probe_host
from mmserve.launch.process import (
    EXIT_TIMEOUT_S,
    STOP_GRACE_S,
    child_environment,
    die_with_launcher,
    kill_group,
    new_run_dir,
    private_work_dir,
    runs_root,
    terminate_group,
)

__all__ = [
    "ADMIN_KEY_NAME", "ADMIN_PROTOCOLS", "API_KEY_NAME", "API_PROTOCOLS", "LOOPBACK", "MIN_KEY_LENGTH",
    "STOP_GRACE_S", "LaunchError", "ServerPorts", "TritonInstall", "TritonServer", "find_triton", "is_loopback",
    "key_option", "new_run_dir", "other_users_see_arguments", "repository_models", "resolve_key", "runs_root",
]


@dataclass
class TritonServer:
    """A running `tritonserver` process; use as a context manager or call start()/stop().

    `host` is where gRPC listens; `http_host` where HTTP, Triton's metrics and the
    supervisor listen (default: `host`, or loopback when gRPC uses TLS, since Triton's
    HTTP endpoint has no TLS). `supervise` starts mmserve/supervisor.py's watchdog, which
    reloads a model whose Python stub died."""

    repository: Path
    ports: ServerPorts = field(default_factory=ServerPorts)
    host: str = LOOPBACK  # 0.0.0.0 in a container
    models: list[str] | None = None  # None: every model in the repository
    log_file: Path | None = None  # None: a temporary file, shown on failure and removed on stop
    verbose: bool = False
    extra_args: tuple[str, ...] = ()
    startup_timeout_s: float = 180.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None  # set: clients must present a certificate signed by it (mTLS)
    admin_key: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    insecure: bool = False  # allow gRPC beyond loopback without TLS or without an admin key
    http_host: str | None = None
    supervise: bool = False
    # tritonserver's working directory, where a generated admin key is kept (None: a private
    # temporary folder, removed at stop)
    run_dir: Path | None = None
    generate_admin_key: bool = False  # no admin_key given: make one for this start (`mmserve serve`)
    # after SIGTERM, how long tritonserver gets before its process group is killed (above its
    # own --exit-timeout-secs, EXIT_TIMEOUT_S; below Kubernetes' terminationGracePeriodSeconds)
    stop_grace_s: float = STOP_GRACE_S
    # tritonserver's own --exit-timeout-secs: how long a stop waits for in-flight requests and
    # unloading models (below stop_grace_s, or every stop ends in a kill)
    exit_timeout_s: int = EXIT_TIMEOUT_S
    _process: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _log: IO | None = field(default=None, init=False, repr=False)
    _log_path: Path | None = field(default=None, init=False, repr=False)
    _server_id: str = field(default_factory=lambda: f"mmserve-{secrets.token_hex(6)}", init=False)
    _supervisor: Any = field(default=None, init=False, repr=False)
    _stopping: bool = field(default=False, init=False, repr=False)
    _cwd: Path | None = field(default=None, init=False, repr=False)
    _temporary_cwd: bool = field(default=False, init=False, repr=False)
    admin_key_file: Path | None = field(default=None, init=False)  # where a generated key was written
    keys_hidden: bool = field(default=False, init=False)  # masked in tritonserver's argv (mmserve/hide_keys.py)

    # --- where it listens ------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The running tritonserver's process id (its Python-backend stubs are its children)."""
        return self._process.pid if self._process is not None else None

    @property
    def effective_http_host(self) -> str:
        if self.http_host:
            return self.http_host
        return LOOPBACK if self.tls_cert is not None else self.host

    @property
    def grpc_url(self) -> str:
        return f"{probe_host(self.host)}:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"{probe_host(self.effective_http_host)}:{self.ports.http}"

    @property
    def metrics_url(self) -> str:
        return f"http://{probe_host(self.effective_http_host)}:{self.ports.metrics}/metrics"

    @property
    def supervisor_url(self) -> str:
        return f"http://{probe_host(self.effective_http_host)}:{self.ports.supervisor}"

    @property
    def log_path(self) -> Path | None:
        """Triton's log of the current run (log_file, or the temporary one)."""
        return self._log_path

    @property
    def served_models(self) -> list[str]:
        return self.models if self.models is not None else repository_models(self.repository.resolve())

    # --- checks before anything starts --------------------------------------------------

    def check(self) -> None:
        """Everything that can be told before starting: models, TLS files, keys, binds, ports."""
        if not 0 < self.exit_timeout_s < self.stop_grace_s:
            raise LaunchError(
                f"the stop grace ({self.stop_grace_s:g} s, --stop-grace) must be longer than tritonserver's exit "
                f"timeout ({self.exit_timeout_s} s, --exit-timeout), or every stop ends in a kill"
            )
        repository = self.repository.resolve()
        if not repository.is_dir():
            raise LaunchError(f"{repository} is not a folder; pass --repository DIR (an exported model repository).")
        available = repository_models(repository)
        if not available:
            raise no_models_error(repository)
        unknown = [m for m in (self.models or []) if m not in available]
        if unknown:
            raise LaunchError(
                f"unknown model(s) {', '.join(unknown)}: {repository} has no such folder with a config.pbtxt. "
                f"It has: {', '.join(available)}"
            )
        check_tls(self.tls_cert, self.tls_key, self.tls_ca)
        for key, what in ((self.admin_key, "admin key"), (self.api_key, "API key")):
            if key is not None:
                check_key(key, what)
        if not is_loopback(self.host) and self.tls_cert is None and not self.insecure:
            raise LaunchError(
                f"refusing to serve gRPC on {self.host} without TLS: keys and data would cross the network "
                "readable. Add --tls-cert FILE --tls-key FILE (docs/security.md shows how to make them), keep "
                "--host 127.0.0.1 behind a TLS-terminating proxy, or pass --insecure on a network you trust."
            )
        exposed = [h for h in (self.host, self.effective_http_host) if not is_loopback(h)]
        if exposed and self.admin_key is None and not self.insecure:  # a generated key is for this host only
            raise LaunchError(
                f"refusing to listen on {exposed[0]} without an admin key: anyone who reaches the port could "
                "load a model and run Python code in the server. Add --admin-key-file FILE (or set "
                "MMSERVE_ADMIN_KEY; generate a key with `openssl rand -hex 32`), or pass --insecure on a "
                "network you trust. See docs/security.md."
            )
        self._check_ports()

    def _check_ports(self) -> None:
        http_host = self.effective_http_host
        wanted = [("gRPC", self.host, self.ports.grpc, "--grpc-port"), ("HTTP", http_host, self.ports.http, "--http-port"),
                  ("metrics", http_host, self.ports.metrics, "--metrics-port")]
        if self.supervise:
            wanted.append(("supervisor", http_host, self.ports.supervisor, "--supervisor-port"))
        numbers = [port for _, _, port, _ in wanted]
        if len(set(numbers)) != len(numbers):
            raise LaunchError(f"the ports must differ: {', '.join(f'{n} {p}' for n, _, p, _ in wanted)}")
        for name, host, port, flag in wanted:
            if port_taken(host, port):
                holder = local_servers.holder_of(port) or "another server (perhaps an earlier `mmserve serve`)"
                raise LaunchError(
                    f"port {port} ({name}) is already in use on {host}: {holder}. Stop it, or choose another "
                    f"port with {flag}."
                )

    # --- the command line -----------------------------------------------------------------

    def command(self) -> list[str]:
        install = find_triton()
        repository = self.repository.resolve()
        models = self.served_models
        if not models:
            raise no_models_error(repository)
        http_host = self.effective_http_host
        cmd = [
            str(install.binary),
            f"--id={self._server_id}",
            f"--model-repository={repository}",
            "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in models),
            "--strict-model-config=true",
            "--exit-on-error=false",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--grpc-port={self.ports.grpc}",
            f"--http-port={self.ports.http}",
            f"--metrics-port={self.ports.metrics}",
            f"--grpc-address={self.host}",
            f"--http-address={http_host}",
            f"--metrics-address={http_host}",
            f"--log-verbose={1 if self.verbose else 0}",
            # p50/p99 per model on the metrics endpoint (the console's live charts, dashboards)
            "--metrics-config=summary_latencies=true",
            *self._security_args(),
            *self.extra_args,
        ]
        if install.backend_directory is not None:
            cmd.append(f"--backend-directory={install.backend_directory}")
        return cmd

    def _security_args(self) -> list[str]:
        return security_args(self.tls_cert, self.tls_key, self.tls_ca, self.admin_key, self.api_key)

    def _environment(self) -> dict[str, str]:
        """The child's environment (launch.process.child_environment); the keys on Triton's
        command line masked in `ps` where the preload library builds."""
        env, self.keys_hidden = child_environment(hide_keys=bool(self.admin_key or self.api_key))
        return env

    def _prepare_run_dir(self) -> Path:
        """tritonserver's private working directory (0700), and the admin key made for this start."""
        folder, self._temporary_cwd = private_work_dir(self.run_dir)
        self._cwd = folder
        if self.admin_key is None and self.generate_admin_key:
            self.admin_key, self.admin_key_file = generate_admin_key(folder)
        return folder

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> "TritonServer":
        if self._process is not None:
            return self
        self.check()
        self.command()  # the binary and the models are found before anything is written
        # Triton reports its --id to every client: with the repository's id in it, a command
        # given another --repository is refused (mmserve/served_repository.py).
        from mmserve.served_repository import ensure_repository_id, server_name

        self._server_id = server_name(self._server_id.split(".", 1)[0], ensure_repository_id(self.repository))
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_path = self.log_file
        else:
            handle, name = tempfile.mkstemp(prefix="mmserve-triton-", suffix=".log")
            os.close(handle)
            self._log_path = Path(name)
        self._log = open(self._log_path, "w")
        self._stopping = False
        try:
            cwd = self._prepare_run_dir()
            cmd = self.command()  # with the generated key, if one was made
            self._process = subprocess.Popen(
                cmd,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=self._environment(),
                cwd=cwd,
                start_new_session=True,  # its own process group: signals are ours to forward, stop() kills the group
                preexec_fn=die_with_launcher(),
            )
            atexit.register(self.stop)  # an uncaught exception in the caller must not orphan the server
            local_servers.register(
                self._server_id, pid=self._process.pid, launcher_pid=os.getpid(), run_dir=str(cwd),
                key_file=str(self.admin_key_file) if self.admin_key_file else None, host=self.host,
                repository=str(self.repository.resolve()),
                ports={"grpc": self.ports.grpc, "http": self.ports.http, "metrics": self.ports.metrics,
                       "supervisor": self.ports.supervisor},
            )
            self.wait_ready()
            if self.supervise:
                from mmserve.supervisor import ModelSupervisor

                self._supervisor = ModelSupervisor(self).start()
        except BaseException:  # a LaunchError, Ctrl-C or SIGTERM during start-up: leave nothing behind
            self.stop()
            raise
        return self

    def _headers(self) -> dict[str, str]:
        return {ADMIN_KEY_NAME: self.admin_key} if self.admin_key else {}

    def request(self, path: str, body: dict | None = None, timeout_s: float = 2.0) -> tuple[int, Any]:
        """One HTTP call to this server (POST when body is given), with the admin key when set.

        Returns (status, parsed JSON or None); status 0 when nothing answered."""
        return probes.http_request(f"http://{self.http_url}", path, self._headers(), body, timeout_s)

    def model_ready(self, model: str) -> bool:
        return probes.model_ready(self.request, model)

    def wait_ready(self) -> None:
        models = self.served_models
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise LaunchError(
                    f"tritonserver exited with code {self._process.returncode} while starting. "
                    f"{self._log_hint()}"
                )
            if probes.is_ours(self.request, self._server_id):
                failed = probes.failed_models(self.request, models)
                if failed:
                    raise LaunchError(f"model(s) failed to load: {', '.join(failed)}. {self._log_hint()}")
                if all(self.model_ready(m) for m in models):
                    return
            time.sleep(0.25)
        raise LaunchError(f"tritonserver not ready after {self.startup_timeout_s:.0f} s. {self._log_hint()}")

    def log_tail(self, lines: int = 15) -> list[str]:
        if self._log is not None:
            self._log.flush()
        if self._log_path is None or not self._log_path.exists():
            return []
        return self._log_path.read_text(errors="replace").splitlines()[-lines:]

    def _log_hint(self) -> str:
        tail = self.log_tail(40)
        errors = [line for line in tail if line.startswith("E") or "error" in line.lower() or "fail" in line.lower()]
        where = f"Triton log {self._log_path}" if self.log_file is not None else "Triton's log"
        shown = (errors or tail)[-15:]
        return f"{where}:\n" + "\n".join(shown) if shown else f"{where} is empty."

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL for the whole process group (the server and its Python stubs)."""
        atexit.unregister(self.stop)
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.stop()
        process, self._process = self._process, None
        if process is None:
            self._close_log()
            self._forget_run()
            return None
        self._stopping = True
        try:
            terminate_group(process, self.stop_grace_s if timeout_s is None else timeout_s)  # stubs that outlived the server go with its group
        finally:
            if supervisor is not None:
                supervisor.remove_shared_memory()
            self._close_log()
            self._forget_run()
        return process.returncode

    def _forget_run(self) -> None:
        """After the process is gone: its registry entry, its generated key (a new one per start)
        and a temporary working directory go too."""
        local_servers.unregister(self._server_id)
        if self.admin_key_file is not None:
            self.admin_key_file.unlink(missing_ok=True)
            self.admin_key, self.admin_key_file = None, None
        if self._temporary_cwd and self._cwd is not None:
            shutil.rmtree(self._cwd, ignore_errors=True)
            self._temporary_cwd = False

    def _close_log(self) -> None:
        if self._log:
            self._log.close()
            self._log = None
        if self.log_file is None and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)  # a temporary log: its tail was shown if it mattered

    def wait(self) -> int:
        """Block until the server exits; Ctrl-C/SIGTERM here stop it cleanly."""
        assert self._process is not None, "start() first"

        stop_asked: list[float] = []  # when the first signal came
        killed: list[bool] = []

        def forward(signum: int, _frame: object) -> None:
            self._stopping = True
            stop_asked.append(time.monotonic())
            if self._process is not None and self._process.poll() is None:
                self._process.send_signal(signal.SIGTERM)

        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, forward)
        while True:
            try:
                code = self._process.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                # A tritonserver that ignores SIGTERM (seen once when it came right as the models
                # finished loading) must not keep us, or its ports, forever: kill its group.
                if stop_asked and time.monotonic() - stop_asked[0] > self.stop_grace_s and not killed:
                    killed.append(True)
                    kill_group(self._process.pid)
        unexpected = not self._stopping
        hint = self._log_hint() if unexpected else ""
        timed_out = code != 0 and any("Exit timeout expired" in line for line in self.log_tail(5))
        self.stop()
        if killed:
            print(f"mmserve: tritonserver did not stop within {self.stop_grace_s:g} s of the signal; its processes "
                  "were killed.", file=sys.stderr)
            return 1
        if unexpected:
            raise LaunchError(f"tritonserver exited on its own with code {code}. {hint}")
        if timed_out:
            # Seen after a recovery: the instance whose stub had died never finishes unloading.
            print("mmserve: tritonserver stopped after its exit timeout (a model instance whose Python stub had "
                  "died could not finish unloading); no request was in flight.", file=sys.stderr)
            return 0
        return code

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
