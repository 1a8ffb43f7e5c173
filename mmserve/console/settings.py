"""What the console is started with: which server, which repository, which keys.

Keys come from the environment (or a file), never from the command line, so they do
not show in `ps`. The console holds the admin key itself: the browser signs in with
it once and afterwards only carries a signed session cookie.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from mmserve.server import LaunchError, is_loopback, resolve_key

ADMIN_KEY_ENV = "MMSERVE_ADMIN_KEY"
API_KEY_ENV = "MMSERVE_API_KEY"


class ConsoleError(RuntimeError):
    """The console cannot start as asked; the message says what to do."""


@dataclass(frozen=True)
class ConsoleSettings:
    """Everything the console needs; frozen so request handlers cannot change it."""

    server: str = "127.0.0.1:8001"  # Triton's gRPC address
    repository: Path = Path("model_repository")
    host: str = "127.0.0.1"
    port: int = 8080
    metrics_url: str | None = None  # Triton's Prometheus text; None: http://<server host>:8002/metrics
    admin_key: str | None = field(default=None, repr=False)  # Triton's; also what signs a person in
    api_key: str | None = field(default=None, repr=False)
    # Signs a person in when Triton has no admin key (a loopback console prints a one-time key).
    sign_in_key: str | None = field(default=None, repr=False)
    tls: bool = False  # implied by any of the files below
    tls_ca: Path | None = None  # the CA that signed Triton's certificate (default: the system's)
    tls_cert: Path | None = None  # a client certificate for mutual TLS, with tls_key
    tls_key: Path | None = None
    tls_server_name: str | None = None  # the name in Triton's certificate, if not the host
    sample_interval_s: float = 2.0
    history_s: float = 600.0  # how far back the live charts reach
    request_timeout_s: float = 30.0
    audit_log: Path | None = None  # None: the lifecycle core's default beside the repository
    max_upload_bytes: int = 32 * 1024 * 1024

    @property
    def login_key(self) -> str | None:
        """The key a person signs in with: the one-time key if given, else the admin key."""
        return self.sign_in_key or self.admin_key

    @property
    def admin_enabled(self) -> bool:
        """Sign-in (and so every admin action) needs a key to compare against."""
        return bool(self.login_key)

    def default_metrics_url(self) -> str:
        """Triton serves its metrics over plain HTTP, on port 8002 unless told otherwise."""
        host = self.server.rsplit(":", 1)[0] if ":" in self.server else self.server
        return self.metrics_url or f"http://{host}:8002/metrics"

    def check(self) -> None:
        """Everything that would make the console useless, refused before it starts."""
        self.check_bind()
        if not self.repository.is_dir():
            raise ConsoleError(
                f"no repository at {self.repository}: pass --repository, the folder the server serves"
            )

    def check_bind(self) -> None:
        """Refuse a bind beyond loopback without an admin key, as `mmserve serve` does."""
        if not is_loopback(self.host) and not self.admin_key:
            raise ConsoleError(
                f"refusing to listen on {self.host}: beyond this machine the console needs an admin key "
                f"to sign in with. Set {ADMIN_KEY_ENV} (or --admin-key-file), or bind to 127.0.0.1."
            )


def one_time_key() -> str:
    """A sign-in key for this run only, printed to the terminal that started the console."""
    return secrets.token_urlsafe(18)


def read_key(env: str, file: Path | None) -> str | None:
    """A key from a file (trailing newline stripped) or else from the environment: the
    launcher's rule (mmserve.server.resolve_key), with the console's error type."""
    try:
        return resolve_key(None, file, env, "key")
    except LaunchError as error:
        raise ConsoleError(str(error)) from None
