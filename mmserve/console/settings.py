"""What the console is started with: which server, which repository, which keys, and
how it is reached (bind, TLS, the Host names it answers to, the proxy it trusts).

Keys come from the environment (or a file), never from the command line, so they do
not show in `ps`. The console holds the admin key itself: the browser signs in with
it once and afterwards only carries a signed session cookie.
"""
from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from mmserve.server import MIN_KEY_LENGTH, LaunchError, is_loopback, resolve_key

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
    max_upload_bytes: int = 32 * 1024 * 1024  # per request body, counted as it streams in
    # How the console itself is reached.
    public_read: bool = False  # anonymous visitors see products and live figures (no paths, no playground)
    allowed_hosts: tuple[str, ...] = ()  # Host names answered beyond loopback's (DNS rebinding)
    forwarded_allow_ips: str | None = None  # proxies whose X-Forwarded-Proto/-For are believed
    https_cert: Path | None = None  # the console's own TLS certificate (PEM), with https_key
    https_key: Path | None = None
    insecure: bool = False  # allow a bind beyond loopback over plain HTTP

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

    @property
    def https(self) -> bool:
        return self.https_cert is not None

    def host_names(self) -> frozenset[str]:
        """The Host header values (without port) the console answers: loopback names, the
        address it is bound to when that is a literal IP, and --allowed-host. A page on
        another name (DNS rebinding) gets 400."""
        names = {"localhost", "127.0.0.1", "::1", *(h.lower().strip("[]") for h in self.allowed_hosts)}
        try:
            if not ipaddress.ip_address(self.host).is_unspecified:
                names.add(self.host.lower())
        except ValueError:
            pass
        return frozenset(names)

    def check_bind(self) -> None:
        """Refuse, beyond loopback, a console without an admin key (as `mmserve serve` does)
        and one that would take the key over plain HTTP (unless --insecure)."""
        if (self.https_cert is None) != (self.https_key is None):
            raise ConsoleError("--https-cert and --https-key go together: the certificate and its private key")
        for path in (self.https_cert, self.https_key):
            if path is not None and not path.is_file():
                raise ConsoleError(f"no file at {path} (--https-cert/--https-key)")
        key = self.admin_key
        if key is not None and (len(key) < MIN_KEY_LENGTH or not key.isprintable() or any(c.isspace() for c in key)):
            raise ConsoleError(
                f"the admin key must be at least {MIN_KEY_LENGTH} printable characters without spaces "
                "(what the server takes); generate one with `openssl rand -hex 32`"
            )
        if is_loopback(self.host):
            return
        if not self.admin_key:
            raise ConsoleError(
                f"refusing to listen on {self.host}: beyond this machine the console needs an admin key "
                f"to sign in with. Set {ADMIN_KEY_ENV} (or --admin-key-file), or bind to 127.0.0.1."
            )
        if not self.https and not self.insecure:
            raise ConsoleError(
                f"refusing to listen on {self.host} over plain HTTP: the admin key typed at sign-in and the "
                "session cookie would cross the network readable. Give the console its certificate with "
                "--https-cert CERT --https-key KEY, or bind to 127.0.0.1 behind a TLS proxy "
                "(--forwarded-allow-ips 127.0.0.1), or pass --insecure on a network you trust."
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
