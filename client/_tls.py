"""Why a connection that gRPC reports only as "Socket closed" failed: a handshake probe.

A server that requires a client certificate (mutual TLS) closes the connection when none
or a foreign one is shown, and a TLS-only server closes a plaintext one; gRPC then says
only ``UNAVAILABLE: Socket closed``, as for a server that went down. One TLS handshake
with Python's ``ssl`` (the same certificates, a 2-second budget) tells them apart from
the alert the server sends, so the client raises the :class:`~.errors.TLSError` that
names the cause instead of retrying an outage that is not one.
"""
from __future__ import annotations

import os
import socket
import ssl
import tempfile
from dataclasses import dataclass, field

from .errors import (
    ClientCertificateRejectedError,
    ClientCertificateRequiredError,
    TLSError,
    TLSRequiredError,
)

PROBE_TIMEOUT_S = 2.0
# gRPC's words for a connection the other side closed: what a refused handshake looks like.
CLOSED = ("socket closed", "connection reset")
# The server's alerts when it refuses the client's certificate (OpenSSL's reason names).
_REQUIRED = ("certificate_required", "certificate required", "handshake_failure", "closed")
_REJECTED = ("unknown_ca", "unknown ca", "bad_certificate", "bad certificate", "certificate_unknown",
             "decrypt_error", "certificate_expired", "certificate_revoked", "access_denied")


@dataclass(frozen=True)
class TlsProbe:
    """What a probe needs of the client's settings: whether it speaks TLS, and its certificate."""

    tls: bool
    certificate_chain: bytes | None = field(default=None, repr=False)
    private_key: bytes | None = field(default=None, repr=False)

    def diagnose(self, url: str, server_message: str | None) -> type[TLSError] | None:
        """The TLS failure behind a closed connection; None when it is not one (or cannot be told)."""
        if not any(words in (server_message or "").lower() for words in CLOSED):
            return None
        host, _, port = url.rpartition(":")
        if not port.isdigit() or not host:
            return None
        try:
            alert = _handshake(host.strip("[]"), int(port), self)
        except OSError:
            return None  # nothing listens, or the network fails: an outage after all
        if alert is None:
            return None
        if not self.tls:
            return TLSRequiredError  # it answered a TLS hello: a TLS server
        if any(word in alert for word in _REQUIRED) and self.certificate_chain is None:
            return ClientCertificateRequiredError
        if any(word in alert for word in _REQUIRED + _REJECTED):
            return ClientCertificateRejectedError if self.certificate_chain is not None else ClientCertificateRequiredError
        return None


def _handshake(host: str, port: int, probe: TlsProbe) -> str | None:
    """One TLS handshake (the server's certificate not checked: gRPC reports that itself) and
    a first read. Returns the server's alert in lower case ("closed": it hung up after the
    handshake), "" when a plaintext client met a TLS server, None when the server accepted
    the client (or speaks no TLS)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    with tempfile.TemporaryDirectory(prefix="mmserve-tls-probe-") as folder:  # ssl reads the pair from files
        if probe.tls and probe.certificate_chain is not None and probe.private_key is not None:
            chain, key = os.path.join(folder, "chain.pem"), os.path.join(folder, "key.pem")
            for path, data in ((chain, probe.certificate_chain), (key, probe.private_key)):
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "wb") as handle:
                    handle.write(data)
            context.load_cert_chain(chain, key)
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S) as raw:
            try:
                with context.wrap_socket(raw, server_hostname=host) as tls:
                    if not probe.tls:
                        return ""  # it completed a TLS handshake: a TLS server
                    tls.settimeout(PROBE_TIMEOUT_S / 2)
                    # TLS 1.3: the server judges the client certificate after the handshake; gRPC's
                    # server then closes without an alert (an empty read), or greets with HTTP/2 SETTINGS.
                    return None if tls.recv(1) else "closed"
            except ssl.SSLError as error:
                text = f"{error.reason or ''} {error}".lower()
                if isinstance(error, ssl.SSLEOFError) or any(w in text for w in ("wrong_version_number", "eof")):
                    return None  # a plaintext server, or one that closed without a word
                return text or "refused"
            except (TimeoutError, socket.timeout):
                return "" if not probe.tls else None  # handshake accepted; it waits for gRPC's preface
            except (ConnectionError, OSError):
                return None
    return "" if not probe.tls else None
