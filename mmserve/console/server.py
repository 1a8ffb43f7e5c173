"""Running the console: blocking for `mmserve console`, or on a thread beside Triton.

uvicorn serves the app; on a thread (tests, `mmserve serve --console`) the server is
stopped cleanly by setting its exit flag, so no process or port is left behind.
"""
from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

import uvicorn

from .app import create_app
from .settings import ConsoleError, ConsoleSettings

STARTUP_TIMEOUT_S = 30.0


def _config(settings: ConsoleSettings) -> uvicorn.Config:
    """uvicorn for the console: its own TLS when given a certificate, and X-Forwarded-*
    believed only from --forwarded-allow-ips (then the scheme a TLS proxy reports makes
    the session cookie Secure)."""
    settings.check()
    return uvicorn.Config(
        create_app(settings), host=settings.host, port=settings.port, log_level="warning",
        access_log=False, server_header=False, lifespan="on",
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips or "",
        ssl_certfile=str(settings.https_cert) if settings.https_cert else None,
        ssl_keyfile=str(settings.https_key) if settings.https_key else None,
    )


def run_console(settings: ConsoleSettings) -> int:
    """Serve until Ctrl-C / SIGTERM (uvicorn handles both and shuts down cleanly)."""
    server = uvicorn.Server(_config(settings))
    _check_port_free(settings)
    print(f"mmserve console: {url_of(settings)} (Triton {settings.server}). Ctrl-C stops it.", flush=True)
    server.run()
    return 0


def url_of(settings: ConsoleSettings) -> str:
    host = settings.host if settings.host not in ("0.0.0.0", "::") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if settings.https else 'http'}://{host}:{settings.port}/"


def _check_port_free(settings: ConsoleSettings) -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((settings.host, settings.port))
        except OSError as error:
            raise ConsoleError(
                f"cannot listen on {settings.host}:{settings.port} ({error.strerror}); pick another with --port"
            ) from error


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class ConsoleServer:
    """The console on a background thread; a context manager."""

    settings: ConsoleSettings
    _server: uvicorn.Server | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return url_of(self.settings)

    def start(self) -> "ConsoleServer":
        _check_port_free(self.settings)
        self._server = uvicorn.Server(_config(self.settings))
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign] - not the main thread
        self._thread = threading.Thread(target=self._server.run, name="mmserve-console", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ConsoleError(f"the console did not start on {self.url}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        self._server, self._thread = None, None

    def __enter__(self) -> "ConsoleServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
