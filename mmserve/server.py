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
"""
from __future__ import annotations

import atexit
import ctypes
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any

from mmserve import local_servers

# Triton's restricted-protocol groups. The key names are what Triton checks: the HTTP
# header as is, the gRPC metadata header with the prefix Triton adds
# ("triton-grpc-protocol-admin-key"); the client (client/_channel.py) sends both.
ADMIN_KEY_NAME = "admin-key"
API_KEY_NAME = "api-key"
ADMIN_PROTOCOLS = ("model-repository", "shared-memory", "trace", "logging")
API_PROTOCOLS = ("inference",)
MIN_KEY_LENGTH = 16
# How long a stopping tritonserver gets (its own --exit-timeout-secs is 10) before its process
# group is killed.
STOP_GRACE_S = 40.0
LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class LaunchError(RuntimeError):
    """The server could not be found, started or made ready; the message says what to do.

    (The client's ``mmserve.client.ServerError`` is a different thing: a served request
    that failed.)"""


@dataclass(frozen=True)
class ServerPorts:
    grpc: int = 8001
    http: int = 8000
    metrics: int = 8002
    supervisor: int = 8003  # mmserve's own /metrics and /status (mmserve/supervisor.py)

    @classmethod
    def free(cls) -> "ServerPorts":
        """Ports nobody listens on, for tests and side-by-side runs."""
        socks = [socket.socket() for _ in fields(cls)]
        try:
            for s in socks:
                s.bind((LOOPBACK, 0))
            return cls(*(s.getsockname()[1] for s in socks))
        finally:
            for s in socks:
                s.close()


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
            raise LaunchError(
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
            raise LaunchError(f"TRITONSERVER={explicit} does not exist; point it at a tritonserver binary.")
        return TritonInstall(binary, _backend_dir_for(binary))
    on_path = shutil.which("tritonserver")
    if on_path:
        return TritonInstall(Path(on_path), _backend_dir_for(Path(on_path)))
    bundled = _bundled_triton_root()
    if bundled is None:
        raise LaunchError(
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
    """The model folders Triton should load: every sub-folder with a config.pbtxt, except
    dot-folders (an export's staging folder, mmserve's own state)."""
    return sorted(p.parent.name for p in repository.glob("*/config.pbtxt") if not p.parent.name.startswith("."))


def runs_root() -> Path:
    """Where `mmserve serve` keeps a folder per run (its Triton log): $MMSERVE_RUNS, else ./runs."""
    return Path(os.environ.get("MMSERVE_RUNS") or "runs")


def new_run_dir(root: Path | None = None) -> Path:
    """A fresh `serve-<UTC time>` folder under runs_root(); never reuses an earlier run's."""
    root = root or runs_root()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    for suffix in ("", *(f"-{i}" for i in range(1, 100))):
        path = root / f"serve-{stamp}{suffix}"
        try:
            root.mkdir(parents=True, exist_ok=True)
            path.mkdir(mode=0o700)  # private: tritonserver's working directory, the generated admin key
            return path
        except FileExistsError:
            continue
        except OSError as error:
            raise LaunchError(f"cannot create the run folder {path}: {error}. Set MMSERVE_RUNS or pass --log FILE.")
    raise LaunchError(f"{root} already has 100 runs started this second")


def resolve_key(value: str | None, file: Path | None, env: str, what: str) -> str | None:
    """A secret from the command line, a file (a mounted Kubernetes Secret) or the environment.

    The file and the environment keep the key out of `ps` for mmserve itself."""
    if value is not None and file is not None:
        raise LaunchError(f"give the {what} once: as a value or as a file, not both")
    if file is not None:
        try:
            value = file.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise LaunchError(f"cannot read the {what} file {file}: {error.strerror or error}") from None
        if not value:
            raise LaunchError(f"the {what} file {file} is empty")
    elif value is None:
        value = os.environ.get(env) or None
    return value


def key_option(value: str | None, file: Path | None, what: str) -> str | None:
    """A client command's key: from its --...-key-file when given (the value never reaches
    `ps`), else the value (whose default is the environment's)."""
    if file is not None:
        return resolve_key(None, file, "", what)
    return value or None


def _check_key(key: str, what: str) -> None:
    if len(key) < MIN_KEY_LENGTH or not key.isprintable() or any(c.isspace() for c in key):
        raise LaunchError(
            f"the {what} must be at least {MIN_KEY_LENGTH} printable characters without spaces; "
            "generate one with `openssl rand -hex 32`"
        )


def other_users_see_arguments(mounts: Path = Path("/proc/mounts")) -> bool:
    """Whether other users can read a process's command line here: /proc is not mounted with
    hidepid (1/noaccess or 2/invisible). Triton takes its keys on its command line only."""
    try:
        for line in mounts.read_text().splitlines():
            fields = line.split()
            if len(fields) > 3 and fields[1] == "/proc" and fields[2] == "proc":
                options = fields[3].split(",")
                return not any(o.startswith("hidepid=") and o.split("=", 1)[1] not in ("0", "off") for o in options)
    except OSError:
        pass
    return True


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and names that resolve only there (``localhost``): addresses
    only this machine can reach. The server and the console judge a bind by this one rule."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False  # unresolvable: assume it is reachable from elsewhere
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def _die_with_launcher() -> Any:
    """A preexec_fn asking Linux to SIGKILL the child when the thread that started it dies
    (the OOM killer's `kill -9` of `mmserve serve` included); its Python stubs notice their
    parent is gone and exit within a second. Only from the main thread: a worker thread that
    starts a server and ends would take the server with it. None elsewhere (atexit stays)."""
    if threading.current_thread() is not threading.main_thread() or not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def arm() -> None:  # runs in the child between fork and exec: no allocation-heavy work
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the launcher died before the signal was armed
            os._exit(1)

    return arm


def _probe_host(bind: str) -> str:
    """The address to reach a listener bound to `bind` from this machine, URL-ready."""
    if bind in ("0.0.0.0", ""):
        return LOOPBACK
    if bind == "::":
        return "[::1]"
    return f"[{bind}]" if ":" in bind else bind


def _port_taken(host: str, port: int) -> bool:
    """Whether something already listens on host:port (SO_REUSEADDR: TIME_WAIT is not "taken")."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


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
        return f"{_probe_host(self.host)}:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"{_probe_host(self.effective_http_host)}:{self.ports.http}"

    @property
    def metrics_url(self) -> str:
        return f"http://{_probe_host(self.effective_http_host)}:{self.ports.metrics}/metrics"

    @property
    def supervisor_url(self) -> str:
        return f"http://{_probe_host(self.effective_http_host)}:{self.ports.supervisor}"

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
        repository = self.repository.resolve()
        if not repository.is_dir():
            raise LaunchError(f"{repository} is not a folder; pass --repository DIR (an exported model repository).")
        available = repository_models(repository)
        if not available:
            raise LaunchError(
                f"{repository} holds no models (no */config.pbtxt). Export one first, e.g. "
                "`mmserve export text CHECKPOINT --repository DIR`."
            )
        unknown = [m for m in (self.models or []) if m not in available]
        if unknown:
            raise LaunchError(
                f"unknown model(s) {', '.join(unknown)}: {repository} has no such folder with a config.pbtxt. "
                f"It has: {', '.join(available)}"
            )
        self._check_tls()
        for key, what in ((self.admin_key, "admin key"), (self.api_key, "API key")):
            if key is not None:
                _check_key(key, what)
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

    def _check_tls(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise LaunchError("TLS needs both --tls-cert and --tls-key (PEM files)")
        if self.tls_ca is not None and self.tls_cert is None:
            raise LaunchError("--tls-ca (client certificates) needs TLS: add --tls-cert and --tls-key")
        for path in (self.tls_cert, self.tls_key, self.tls_ca):
            if path is None:
                continue
            try:
                with open(path, "rb") as pem:
                    if b"-----BEGIN" not in pem.read():
                        raise LaunchError(f"{path} is not a PEM file (no -----BEGIN line)")
            except OSError as error:
                raise LaunchError(f"cannot read {path}: {error.strerror or error}") from None

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
            if _port_taken(host, port):
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
            raise LaunchError(
                f"{repository} holds no models (no */config.pbtxt). Export one first, e.g. "
                "`mmserve export text CHECKPOINT --repository DIR`."
            )
        http_host = self.effective_http_host
        cmd = [
            str(install.binary),
            f"--id={self._server_id}",
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
        # Triton takes the keys only on its command line: they show in `ps` for the
        # tritonserver process (docs/security.md, known limitations).
        args = []
        if self.tls_cert is not None and self.tls_key is not None:
            args += ["--grpc-use-ssl=true", f"--grpc-server-cert={Path(self.tls_cert).resolve()}",
                     f"--grpc-server-key={Path(self.tls_key).resolve()}"]
            if self.tls_ca is not None:
                args += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={Path(self.tls_ca).resolve()}"]
        for key, name, protocols in ((self.admin_key, ADMIN_KEY_NAME, ADMIN_PROTOCOLS),
                                     (self.api_key, API_KEY_NAME, API_PROTOCOLS)):
            if key is not None:
                group = f"{','.join(protocols)}:{name}={key}"
                args += [f"--grpc-restricted-protocol={group}", f"--http-restricted-api={group}"]
        return args

    def _environment(self) -> dict[str, str]:
        """The stub takes its Python prefix from the first python3 on PATH: make it ours.

        Its sys.path gets no working directory (PYTHONSAFEPATH; the cwd is the private run
        folder anyway) and no relative PYTHONPATH entry, which would name the launch folder."""
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env.setdefault("OMP_NUM_THREADS", "1")
        env["PYTHONSAFEPATH"] = "1"
        if "PYTHONPATH" in env:
            kept = [entry for entry in env["PYTHONPATH"].split(os.pathsep) if entry and os.path.isabs(entry)]
            env["PYTHONPATH"] = os.pathsep.join(kept)
        for secret in ("MMSERVE_ADMIN_KEY", "MMSERVE_API_KEY"):
            env.pop(secret, None)  # model code has no business with them
        self.keys_hidden = False
        if self.admin_key or self.api_key:  # Triton takes them as arguments: mask them from `ps`
            from mmserve.hide_keys import library

            hider = library()
            if hider is not None:
                env["LD_PRELOAD"] = " ".join(filter(None, [str(hider), env.get("LD_PRELOAD")]))
                self.keys_hidden = True
        return env

    def _prepare_run_dir(self) -> Path:
        """tritonserver's private working directory (0700), and the admin key made for this start."""
        if self.run_dir is not None:
            folder = Path(self.run_dir).resolve()
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
        else:
            folder = Path(tempfile.mkdtemp(prefix="mmserve-run-"))
            self._temporary_cwd = True
        self._cwd = folder
        if self.admin_key is None and self.generate_admin_key:
            key_file = folder / local_servers.KEY_FILE
            key = secrets.token_hex(32)
            try:
                key_file.unlink(missing_ok=True)  # an earlier start's, in a reused folder
                local_servers.write_private(key_file, key + "\n")
            except OSError as error:
                raise LaunchError(f"cannot write the admin key file {key_file}: {error.strerror or error}") from None
            self.admin_key, self.admin_key_file = key, key_file
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
                preexec_fn=_die_with_launcher(),
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
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"http://{self.http_url}{path}", data=data, headers=self._headers())
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, payload = error.code, error.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return 0, None
        try:
            return status, json.loads(payload) if payload else None
        except ValueError:
            return status, None

    def _get(self, path: str) -> int:
        return self.request(path)[0]

    def model_ready(self, model: str) -> bool:
        return self._get(f"/v2/models/{model}/ready") == 200

    def _ours_and_live(self) -> bool:
        """The server answering on our HTTP port is the process we started (not another one)."""
        status, metadata = self.request("/v2")
        return status == 200 and isinstance(metadata, dict) and metadata.get("name") == self._server_id

    def wait_ready(self) -> None:
        models = self.served_models
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise LaunchError(
                    f"tritonserver exited with code {self._process.returncode} while starting. "
                    f"{self._log_hint()}"
                )
            if self._ours_and_live():
                failed = self._failed_models(models)
                if failed:
                    raise LaunchError(f"model(s) failed to load: {', '.join(failed)}. {self._log_hint()}")
                if all(self.model_ready(m) for m in models):
                    return
            time.sleep(0.25)
        raise LaunchError(f"tritonserver not ready after {self.startup_timeout_s:.0f} s. {self._log_hint()}")

    def _failed_models(self, models: list[str]) -> list[str]:
        """Models whose load ended in UNAVAILABLE with a reason: they will not become ready."""
        status, index = self.request("/v2/repository/index", body={})
        if status == 403:
            raise LaunchError("the server refused the repository index: the admin key does not match")
        if status != 200 or not isinstance(index, list):
            return []
        failed = {e.get("name") for e in index if e.get("state") == "UNAVAILABLE" and e.get("reason")}
        return [m for m in models if m in failed]

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

    def stop(self, timeout_s: float = STOP_GRACE_S) -> int | None:
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
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    pass
        finally:  # even when a second Ctrl-C interrupts the graceful wait
            try:
                os.killpg(process.pid, signal.SIGKILL)  # stubs that outlived the server, or the server itself
            except (ProcessLookupError, PermissionError):
                pass
            process.wait()
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
                if stop_asked and time.monotonic() - stop_asked[0] > STOP_GRACE_S and not killed:
                    killed.append(True)
                    try:
                        os.killpg(self._process.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
        unexpected = not self._stopping
        hint = self._log_hint() if unexpected else ""
        timed_out = code != 0 and any("Exit timeout expired" in line for line in self.log_tail(5))
        self.stop()
        if killed:
            print(f"mmserve: tritonserver did not stop within {STOP_GRACE_S:.0f} s of the signal; its processes "
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
