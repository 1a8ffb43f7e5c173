"""Typed errors of the mmserve client, each carrying the server's own words.

Apps catch these instead of ``tritonclient``'s single ``InferenceServerException`` so
they can tell "fix your input" from "retry later" from "page someone".

Mapping (``tritonclient.utils.InferenceServerException.status()`` -> class):

=============================================  ============================
server status / message                        raised
=============================================  ============================
``PERMISSION_DENIED``, ``UNAUTHENTICATED``     :class:`PermissionDeniedError`
any status, message "This protocol is          :class:`PermissionDeniedError`
restricted" (Triton's answer, as
``UNAVAILABLE``, to a missing or wrong key)
``INVALID_ARGUMENT``                           :class:`InvalidInputError`
``RESOURCE_EXHAUSTED``, message larger than    :class:`InvalidInputError`
a gRPC channel's limit
``NOT_FOUND``                                  :class:`ModelNotReadyError`
``UNAVAILABLE`` and the message names a model  :class:`ModelNotReadyError`
any status, message says "is not ready"        :class:`ModelNotReadyError`
``UNAVAILABLE`` otherwise (connection refused, :class:`ServerUnavailableError`
server shutting down, no route)
``DEADLINE_EXCEEDED``                          :class:`DeadlineExceededError`
``UNAVAILABLE``, the TLS handshake failed      a :class:`TLSError`: which one
(gRPC's text, or a handshake probe when gRPC   says whose certificate is wrong
only says "Socket closed", see client/_tls.py) and what to pass instead
anything else (``INTERNAL``, ``UNKNOWN``, ...) :class:`ServerError`
=============================================  ============================

Only :class:`ServerUnavailableError` is retried by the client (inference calls only,
see :class:`mmserve.client.RetryPolicy`); a refusal (a key, a certificate) is never retried.

Every error has ``.status`` (the gRPC status name without the ``StatusCode.``
prefix, e.g. ``"INVALID_ARGUMENT"``) and ``.server_message`` (the server's text,
``None`` for errors raised on the client before anything was sent); ``str(err)``
always contains ``server_message`` verbatim. The client also raises
:class:`InvalidInputError` itself, before sending, for input that is wrong on its
face (wrong type, audio without a sample rate, an empty image); its message says
what to do instead.
"""
from __future__ import annotations

from typing import Any

import grpc
from tritonclient.utils import InferenceServerException

__all__ = [
    "MmserveError",
    "InvalidInputError",
    "ModelNotReadyError",
    "ServerUnavailableError",
    "DeadlineExceededError",
    "ServerError",
    "PermissionDeniedError",
    "TLSError",
    "ServerCertificateError",
    "ServerNameMismatchError",
    "ClientCertificateRequiredError",
    "ClientCertificateRejectedError",
    "TLSRequiredError",
    "from_triton",
    "is_tls_failure",
    "status_name",
]


class MmserveError(Exception):
    """Base of every error the client raises on purpose."""

    default_status: str | None = None

    def __init__(
        self,
        message: str,
        *,
        status: str | None = None,
        server_message: str | None = None,
        pipeline: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status if status is not None else self.default_status
        self.server_message = server_message
        self.pipeline = pipeline

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only fields would be lost by the default Exception pickling
        # (multiprocessing, concurrent.futures.ProcessPoolExecutor).
        return (
            _rebuild,
            (type(self), self.message, self.status, self.server_message, self.pipeline),
        )


def _rebuild(
    cls: type[MmserveError],
    message: str,
    status: str | None,
    server_message: str | None,
    pipeline: str | None,
) -> MmserveError:
    return cls(message, status=status, server_message=server_message, pipeline=pipeline)


class InvalidInputError(MmserveError, ValueError):
    """The input is wrong: fix it, retrying will not help."""

    default_status = "INVALID_ARGUMENT"


class ModelNotReadyError(MmserveError):
    """The pipeline is missing, still loading, or failed to load."""

    default_status = "UNAVAILABLE"


class ServerUnavailableError(MmserveError):
    """The server cannot be reached (down, restarting, wrong address): retry later."""

    default_status = "UNAVAILABLE"


class DeadlineExceededError(MmserveError):
    """The call did not finish within its timeout."""

    default_status = "DEADLINE_EXCEEDED"


class ServerError(MmserveError):
    """The server failed while handling a valid request (INTERNAL and the rest)."""

    default_status = "INTERNAL"


class PermissionDeniedError(MmserveError):
    """The server refused the call for want of the right key or certificate: retrying will not help."""

    default_status = "PERMISSION_DENIED"


class TLSError(MmserveError):
    """The TLS handshake failed: a certificate setting is wrong, the server is up; retrying
    will not help. The subclass says whose certificate and what to pass instead."""

    default_status = "UNAVAILABLE"


class ServerCertificateError(TLSError):
    """The client does not trust the server's certificate (signed by another CA than the
    one given, expired, or not a TLS server at all)."""


class ServerNameMismatchError(TLSError):
    """The server's certificate is for another name than the one dialled."""


class ClientCertificateRequiredError(TLSError):
    """The server asks for a client certificate (mutual TLS) and none was given."""


class ClientCertificateRejectedError(TLSError):
    """The server does not trust the client certificate given (another CA signed it)."""


class TLSRequiredError(TLSError):
    """A plaintext client called a server that speaks only TLS."""


# Triton answers a call to a restricted protocol (--grpc-restricted-protocol) without the
# right header with UNAVAILABLE and this text; it is a refusal, not an outage.
RESTRICTED_PROTOCOL = "This protocol is restricted"
# gRPC's own words when a message exceeds a channel's max send/receive size.
MESSAGE_TOO_LARGE = ("larger than max", "message too large")
# ... and when TLS fails (untrusted certificate, wrong name): no retry fixes that.
TLS_HANDSHAKE_FAILED = "handshake failed"
NAME_MISMATCH = "hostname verification check failed"
NOT_TLS = "wrong_version_number"  # a TLS client's hello answered by a plaintext server

# What to pass instead, per TLS failure (the client's options; the CLI adds its flags).
TLS_ADVICE: dict[type[TLSError], str] = {
    ServerCertificateError: "the server's certificate is not trusted: pass root_certificates= (the CA that signed "
                            "it); if the server does not use TLS at all, connect without TLS",
    ServerNameMismatchError: "the server's certificate is for another name: dial that name, or pass "
                             "tls_server_name= with the name it carries",
    ClientCertificateRequiredError: "the server requires a client certificate (mutual TLS): pass "
                                    "certificate_chain= and private_key=",
    ClientCertificateRejectedError: "the server does not trust this client certificate: pass one signed by "
                                    "the CA the server trusts (its --tls-ca)",
    TLSRequiredError: "the server speaks TLS only: pass root_certificates= (or ssl=True)",
}


def tls_error(cls: type[TLSError], url: str, server_message: str | None, pipeline: str | None = None) -> TLSError:
    """A TLS error whose message names the cause and what to do."""
    said = f" (gRPC said: {server_message})" if server_message else ""
    return cls(f"TLS with {url} failed: {TLS_ADVICE[cls]}{said}", status="UNAVAILABLE",
               server_message=server_message, pipeline=pipeline)


def is_tls_failure(error: MmserveError) -> bool:
    """The TLS handshake failed: the client's certificate settings are wrong, not the server down."""
    return isinstance(error, TLSError) or TLS_HANDSHAKE_FAILED in (error.server_message or "").lower()


def tls_failure_class(server_message: str) -> type[TLSError] | None:
    """The TLS error gRPC's own text names (None: it names none; "Socket closed" may still
    be one, which only a handshake probe tells)."""
    lowered = server_message.lower()
    if NAME_MISMATCH in lowered:
        return ServerNameMismatchError
    if TLS_HANDSHAKE_FAILED in lowered:
        return ServerCertificateError
    return None


def status_name(status: object) -> str:
    """``"StatusCode.INVALID_ARGUMENT"`` / ``grpc.StatusCode`` -> ``"INVALID_ARGUMENT"``."""
    if isinstance(status, grpc.StatusCode):
        return status.name
    text = "" if status is None else str(status)
    return text.rsplit(".", 1)[-1] if text.startswith("StatusCode.") else text


def _classify(status: str, message: str, pipeline: str | None) -> type[MmserveError]:
    lowered = message.lower()
    if status in ("PERMISSION_DENIED", "UNAUTHENTICATED") or RESTRICTED_PROTOCOL in message:
        return PermissionDeniedError
    if status == "RESOURCE_EXHAUSTED" and any(words in lowered for words in MESSAGE_TOO_LARGE):
        return InvalidInputError
    if status == "INVALID_ARGUMENT":
        return InvalidInputError
    if status == "DEADLINE_EXCEEDED":
        return DeadlineExceededError
    if status == "NOT_FOUND" or "is not ready" in lowered:
        return ModelNotReadyError
    if status == "UNAVAILABLE" and tls_failure_class(message) is not None:
        return tls_failure_class(message)  # type: ignore[return-value]
    if status == "UNAVAILABLE":
        names_model = "model" in lowered or (bool(pipeline) and f"'{pipeline}'" in message)
        return ModelNotReadyError if names_model else ServerUnavailableError
    return ServerError


def from_triton(
    error: InferenceServerException | grpc.RpcError, pipeline: str | None = None
) -> MmserveError:
    """The typed error for a tritonclient (or raw gRPC) error; raise it ``from error``."""
    if isinstance(error, InferenceServerException):
        status = status_name(error.status())
        server_message = error.message() or ""
    elif isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        status = status_name(error.code())  # type: ignore[attr-defined]
        server_message = error.details() or ""  # type: ignore[attr-defined]
    else:  # pragma: no cover - defensive: only the two above reach here
        status, server_message = "", str(error)
    cls = _classify(status, server_message, pipeline)
    if issubclass(cls, TLSError):
        return tls_error(cls, _address(server_message), server_message, pipeline)
    where = f"pipeline '{pipeline}' " if pipeline else ""
    shown = status or "CLIENT"
    message = f"{where}[{shown}] {server_message}" + _advice(cls, server_message)
    return cls(message, status=status or None, server_message=server_message, pipeline=pipeline)


def _address(server_message: str) -> str:
    """The server's address as gRPC's text names it ("ipv4:127.0.0.1:8001: ..."), else "the server"."""
    for word in server_message.split():
        if word.startswith(("ipv4:", "ipv6:")):
            return word.split(":", 1)[1].rstrip(":")
    return "the server"


def _advice(cls: type[MmserveError], server_message: str) -> str:
    """What to do about an error whose server text alone would not say it."""
    if cls is PermissionDeniedError:
        if "admin-key" in server_message:
            return " -- this call needs the server's admin key: pass Client(..., admin_key=...)"
        if "api-key" in server_message:
            return " -- pass the server's API key: Client(..., api_key=...)"
        return " -- check the client's api_key/admin_key, headers and TLS client certificate"
    if TLS_HANDSHAKE_FAILED in server_message.lower():
        return (
            " -- TLS failed: pass root_certificates= (the CA that signed the server's certificate), "
            "tls_server_name= if the certificate names another host, and for mutual TLS "
            "certificate_chain= and private_key="
        )
    if cls is InvalidInputError and any(words in server_message.lower() for words in MESSAGE_TOO_LARGE):
        return (
            " -- send fewer items per call (Client(max_batch_size=...)), raise "
            "max_send_message_size/max_receive_message_size, or use shared_memory='system' "
            "when the app runs on the server's host"
        )
    return ""
