"""Running the gateway: uvicorn on its own port, TLS on the gateway itself, and the bind rule.

A bind beyond loopback needs TLS (``--tls-cert``/``--tls-key``) or an explicit
``--insecure`` (a network whose transport you trust, e.g. behind a TLS-terminating
ingress); keys travel in headers, so plain HTTP on a shared network gives them away.
"""
from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path

from mmserve.server import is_loopback

from .app import GatewayConfig, create_app


class GatewayError(RuntimeError):
    """The gateway cannot start as asked; the message says what to change."""


@dataclass(frozen=True)
class Listen:
    host: str = "127.0.0.1"
    port: int = 8090
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure: bool = False

    def check(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise GatewayError("give --tls-cert and --tls-key together (the gateway's certificate and its key)")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not Path(path).is_file():
                raise GatewayError(f"no such file {path}")
        if not self.tls_cert and not self.insecure and not is_loopback(self.host):
            raise GatewayError(
                f"--host {self.host} is reachable from other machines, and API keys would cross the network in "
                "clear: give --tls-cert and --tls-key, or --insecure behind a TLS-terminating proxy you trust"
            )

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def uvicorn_config(config: GatewayConfig, listen: Listen):  # noqa: ANN201 - uvicorn.Config
    import uvicorn

    listen.check()
    return uvicorn.Config(
        create_app(config), host=listen.host, port=listen.port, log_level="warning", access_log=False,
        ssl_certfile=str(listen.tls_cert) if listen.tls_cert else None,
        ssl_keyfile=str(listen.tls_key) if listen.tls_key else None,
        server_header=False, timeout_graceful_shutdown=10,
    )


def run_gateway(config: GatewayConfig, listen: Listen) -> int:
    """Serve until SIGINT/SIGTERM (uvicorn's handlers); 0 after a clean stop."""
    import uvicorn

    server = uvicorn.Server(uvicorn_config(config, listen))
    server.run()
    return 0 if server.started else 1


class GatewayThread:
    """The gateway on a thread of this process (`mmserve serve --gateway`, tests)."""

    def __init__(self, config: GatewayConfig, listen: Listen) -> None:
        import uvicorn

        self.listen = listen
        self._server = uvicorn.Server(uvicorn_config(config, listen))
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign] - the main thread's
        self._thread = threading.Thread(target=self._run, name="mmserve-gateway", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._server.serve())

    def start(self, timeout: float = 30.0) -> "GatewayThread":
        import time

        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise GatewayError(f"the gateway did not start on {self.listen.url} (is the port taken?)")
            time.sleep(0.02)
        return self

    def stop(self, grace_s: float = 2.0) -> None:
        """Stop taking requests, let those in flight finish for ``grace_s``, then close idle
        keep-alive connections too (uvicorn would otherwise wait for their clients)."""
        self._server.should_exit = True
        self._thread.join(timeout=grace_s)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout=15)

    @property
    def url(self) -> str:
        return self.listen.url
