"""Self-healing for `mmserve serve`: bring a model back when its Python stub dies.

What Triton 2.51 does on its own when a Python-backend stub is killed (the OOM killer,
a segfault in a native library): nothing. The model stays READY, its dead stub lingers
as a zombie, and every request routed to it fails with "Stub process ... is not
healthy" until the server restarts. This watchdog thread notices and reloads the model
through the repository API, without a server restart:

- every `poll_s` it lists the server's `triton_python_backend_stub` children from
  /proc (Linux); a stub that is gone or a zombie, with no live stub of the same model
  instance replacing it, while the model still says READY, means a broken model.
  (A stub that ends because the operator unloaded or reloaded the model is not a
  failure: the model is then not ready, or a new stub of the same instance runs.)
- every few polls it reads the repository index: a model that was READY and is now
  UNAVAILABLE for any reason but "unloaded" (the operator's unload) is loaded again.
- a reload of an unchanged model is a no-op in Triton, so the broken model is loaded
  with its own configuration plus the parameter `mmserve_recovery=<n>`: Triton builds
  new instances, then retires the broken ones. A failed attempt is retried with
  back-off (1, 2, 4 ... 60 s).

Operators read it at http://HOST:<supervisor port>/metrics (Prometheus text:
`mmserve_model_recoveries_total{model=...}`, `mmserve_model_recovery_failures_total`)
and /status (JSON, with the recent events); each recovery is also logged on stderr.
"""
from __future__ import annotations

import collections
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Protocol


class SupervisedServer(Protocol):
    """What the supervisor needs of the server it watches (mmserve.server.TritonServer):
    named here so the supervisor does not import the launcher that starts it (no import circle)."""

    @property
    def pid(self) -> int | None: ...
    @property
    def effective_http_host(self) -> str: ...
    @property
    def served_models(self) -> list[str]: ...
    ports: Any  # .supervisor: the port the supervisor's status endpoint listens on
    def model_ready(self, model: str) -> bool: ...
    def request(self, path: str, body: dict | None = None, timeout_s: float = 2.0) -> tuple[int, Any]: ...

STUB_BINARY = "triton_python_backend_stub"
RECOVERY_PARAMETER = "mmserve_recovery"
MAX_BACKOFF_S = 60.0


@dataclass(frozen=True)
class Stub:
    """One Python-backend stub process: the model instance it runs and its shared memory."""

    pid: int
    model: str
    instance: str
    shm_region: str


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) from /proc/PID/stat; None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields_after_name = text.rpartition(")")[2].split()  # the name may hold spaces and parentheses
    return fields_after_name[0], int(fields_after_name[1])


def python_stubs(server_pid: int) -> dict[int, Stub]:
    """The live (not zombie) Python-backend stubs of a tritonserver process."""
    stubs: dict[int, Stub] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is None or stat[1] != server_pid or stat[0] == "Z":
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in argv if a]
        # argv: stub, <repo>/<model>/<version>/model.py, shm region, ..., <instance name>, <runtime>
        if len(argv) < 9 or not argv[0].endswith(STUB_BINARY):
            continue
        model = Path(argv[1]).parent.parent.name
        stubs[int(entry.name)] = Stub(int(entry.name), model, argv[-2], argv[2])
    return stubs


@dataclass
class _Broken:
    reason: str
    since: float
    attempts: int = 0
    next_attempt: float = 0.0


@dataclass
class ModelSupervisor:
    """Watches one TritonServer's models and reloads the broken ones (see the module doc)."""

    server: SupervisedServer
    poll_s: float = 0.5
    index_every: int = 4  # read the repository index every this many polls
    log: Callable[[str], None] = field(default=lambda line: print(f"mmserve: {line}", file=sys.stderr, flush=True))
    recoveries: dict[str, int] = field(default_factory=lambda: collections.defaultdict(int))
    failures: dict[str, int] = field(default_factory=lambda: collections.defaultdict(int))
    events: collections.deque = field(default_factory=lambda: collections.deque(maxlen=100))
    _known: dict[int, Stub] = field(default_factory=dict)
    _broken: dict[str, _Broken] = field(default_factory=dict)
    _expected: set[str] = field(default_factory=set)  # models that should be READY
    _shm_regions: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None
    _http: ThreadingHTTPServer | None = None

    def start(self) -> "ModelSupervisor":
        self._expected = set(self.server.served_models)
        self._scan_stubs()
        self._http = ThreadingHTTPServer((self.server.effective_http_host, self.server.ports.supervisor),
                                         _handler_for(self))
        self._http.daemon_threads = True
        threading.Thread(target=self._http.serve_forever, name="mmserve-supervisor-http", daemon=True).start()
        self._thread = threading.Thread(target=self._run, name="mmserve-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()

    def remove_shared_memory(self) -> None:
        """Crashed stubs leave their /dev/shm regions behind; call once the server has exited."""
        for region in self._shm_regions:
            Path("/dev/shm", region).unlink(missing_ok=True)

    # --- the watch ----------------------------------------------------------------------

    def _run(self) -> None:
        polls = 0
        while not self._stop.wait(self.poll_s):
            try:
                self._scan_stubs()
                if polls % self.index_every == 0:
                    self._scan_index()
                self._heal_due()
            except Exception as error:  # the watchdog must outlive any one bad poll
                self.log(f"supervisor: poll failed: {error!r}")
            polls += 1

    def _scan_stubs(self) -> None:
        pid = self.server.pid
        if pid is None:
            return
        live = python_stubs(pid)
        running = {(s.model, s.instance) for s in live.values()}
        for stub in self._known.values():
            if stub.pid in live or (stub.model, stub.instance) in running or stub.model in self._broken:
                continue
            if self.server.model_ready(stub.model):  # not an unload: the model claims to serve
                self._mark_broken(stub.model, f"its Python stub {stub.instance} (pid {stub.pid}) died")
        self._known = live
        self._shm_regions.update(s.shm_region for s in live.values())

    def _scan_index(self) -> None:
        status, index = self.server.request("/v2/repository/index", body={})
        if status != 200 or not isinstance(index, list):
            return
        for entry in index:
            name, state, reason = entry.get("name"), entry.get("state"), entry.get("reason", "")
            if state == "READY":
                with self._lock:
                    self._expected.add(name)
            elif name in self._expected and state == "UNAVAILABLE":
                if reason == "unloaded":  # the operator's unload: not ours to undo
                    with self._lock:
                        self._expected.discard(name)
                        self._broken.pop(name, None)
                elif name not in self._broken:
                    self._mark_broken(name, f"it became unavailable: {reason or 'no reason given'}")

    def _mark_broken(self, model: str, reason: str) -> None:
        with self._lock:
            self._broken[model] = _Broken(reason=reason, since=time.monotonic())
        self._event(model, "broken", reason)
        self.log(f"supervisor: {model}: {reason}; reloading it")

    def _heal_due(self) -> None:
        now = time.monotonic()
        for model, broken in list(self._broken.items()):
            if now < broken.next_attempt:
                continue
            started = time.monotonic()
            error = self._reload(model)
            took = time.monotonic() - started
            with self._lock:
                if error is None:
                    del self._broken[model]
                    self.recoveries[model] += 1
                else:
                    broken.attempts += 1
                    broken.next_attempt = time.monotonic() + min(MAX_BACKOFF_S, 2.0 ** (broken.attempts - 1))
                    self.failures[model] += 1
            if error is None:
                back_after = time.monotonic() - broken.since
                self._event(model, "recovered", f"reloaded in {took:.2f} s, {back_after:.2f} s after detection")
                self.log(f"supervisor: {model} reloaded in {took:.2f} s (recovery #{self.recoveries[model]})")
            else:
                wait = broken.next_attempt - time.monotonic()
                self._event(model, "reload_failed", error)
                self.log(f"supervisor: {model}: reload failed ({error}); next try in {wait:.0f} s")

    def _reload(self, model: str) -> str | None:
        """Load the model again, forcing new instances; None on success, else Triton's message."""
        status, config = self.server.request(f"/v2/models/{model}/config")
        if status == 200 and isinstance(config, dict):
            parameters = config.setdefault("parameters", {})
            attempt = self.recoveries.get(model, 0) + self.failures.get(model, 0) + 1
            parameters[RECOVERY_PARAMETER] = {"string_value": str(attempt)}
            body = {"parameters": {"config": json.dumps(config)}}
        else:  # unavailable: its configuration is only on disk
            body = {}
        status, answer = self.server.request(f"/v2/repository/models/{model}/load", body=body, timeout_s=300)
        if status == 200:
            return None
        return (answer or {}).get("error", f"HTTP {status}") if isinstance(answer, dict) else f"HTTP {status}"

    def _event(self, model: str, kind: str, detail: str) -> None:
        with self._lock:
            self.events.append({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model": model,
                                "event": kind, "detail": detail})

    # --- what operators read ----------------------------------------------------------

    def status(self) -> dict:
        with self._lock:
            return {
                "server_pid": self.server.pid,
                "watching": sorted(self._expected),
                "broken": {m: {"reason": b.reason, "attempts": b.attempts} for m, b in self._broken.items()},
                "recoveries": dict(self.recoveries),
                "recovery_failures": dict(self.failures),
                "events": list(self.events),
            }

    def prometheus(self) -> str:
        with self._lock:
            lines = []
            for metric, counts, text in (
                ("mmserve_model_recoveries_total", self.recoveries,
                 "Models reloaded by mmserve's supervisor after a Python stub died or the model became unavailable."),
                ("mmserve_model_recovery_failures_total", self.failures,
                 "Reload attempts by mmserve's supervisor that failed (retried with back-off)."),
            ):
                lines += [f"# HELP {metric} {text}", f"# TYPE {metric} counter"]
                lines += [f'{metric}{{model="{m}"}} {n}' for m, n in sorted(counts.items())]
            lines += ["# HELP mmserve_models_broken Models the supervisor is reloading now.",
                      "# TYPE mmserve_models_broken gauge", f"mmserve_models_broken {len(self._broken)}"]
            return "\n".join(lines) + "\n"


def _handler_for(supervisor: ModelSupervisor) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            if self.path == "/metrics":
                body, kind = supervisor.prometheus().encode(), "text/plain; version=0.0.4"
            elif self.path == "/status":
                body, kind = json.dumps(supervisor.status(), indent=2).encode(), "application/json"
            else:
                self.send_error(404, "try /metrics or /status")
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # scrapes are not news
            pass

    return Handler
