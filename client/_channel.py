"""How a client reaches the server: TLS credentials, channel arguments, headers.

Both transports build their one gRPC channel from the same frozen :class:`Connection`,
so a sync and an asyncio client given the same options behave alike, and the
shared-memory clean-up at exit can open a short-lived channel of its own without
holding on to the client.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import grpc
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient

from ._tls import TlsProbe
from .errors import InvalidInputError

__all__ = [
    "Pem",
    "API_KEY_HEADERS",
    "ADMIN_KEY_HEADERS",
    "MAX_MESSAGE_SIZE",
    "DEFAULT_KEEPALIVE",
    "Connection",
]

# A certificate or key: a file path, or the PEM text itself (bytes, or a str that starts
# with "-----BEGIN").
Pem = Union[str, os.PathLike, bytes]

# The keys travel as these gRPC metadata headers. Triton's --grpc-restricted-protocol
# checks "triton-grpc-protocol-<header>"; gateways and the HTTP side see the bare name.
API_KEY_HEADERS = ("api-key", "triton-grpc-protocol-api-key")
ADMIN_KEY_HEADERS = ("admin-key", "triton-grpc-protocol-admin-key")

MAX_MESSAGE_SIZE = 2**31 - 1  # what tritonclient and Triton's gRPC server allow by default

# Pings only while calls are in flight (Triton refuses idle pings unless told otherwise),
# every 60 s: a dead connection under a long call is found within 80 s, and Triton's
# default ping policing (at most one ping per 5 min without data, 2 strikes) still
# leaves calls of up to about 3 minutes alone.
DEFAULT_KEEPALIVE = grpcclient.KeepAliveOptions(
    keepalive_time_ms=60_000,
    keepalive_timeout_ms=20_000,
    keepalive_permit_without_calls=False,
    http2_max_pings_without_data=2,
)

# After a failed connect gRPC waits before the next one, by default up to 120 s: a
# restarted server would stay unreachable for that long. 1 s keeps reconnecting prompt.
_RECONNECT_ARGS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


def read_pem(value: Pem | None, what: str) -> bytes | None:
    """PEM bytes from a path or from the PEM itself; InvalidInputError naming ``what``."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    elif isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        data = value.encode("ascii")
    elif isinstance(value, (str, os.PathLike)):
        try:
            data = Path(value).read_bytes()
        except OSError as exc:
            raise InvalidInputError(f"{what}: cannot read {os.fspath(value)!r} ({exc.strerror}); pass a PEM file path or PEM bytes") from exc
    else:
        raise InvalidInputError(f"{what} must be a file path or PEM bytes, not {type(value).__name__}")
    if b"-----BEGIN" not in data:
        raise InvalidInputError(f"{what} is not PEM (no '-----BEGIN' line); pass a PEM file or PEM bytes")
    return data


def _metadata(headers: Mapping[str, str] | None) -> dict[str, str]:
    """gRPC metadata keys must be lower-case; values are sent as given."""
    result = {}
    for key, value in (headers or {}).items():
        if not isinstance(key, str) or not key:
            raise InvalidInputError(f"header names must be non-empty str, got {key!r}")
        result[key.lower()] = value
    return result


@dataclass(frozen=True)
class Connection:
    """Everything needed to open a channel to the server and to authenticate calls."""

    url: str
    credentials: grpc.ChannelCredentials | None  # None: plaintext
    channel_args: tuple[tuple[str, Any], ...]
    headers: Mapping[str, str] | None  # every call: metadata + api key
    admin_headers: Mapping[str, str] | None  # admin calls: the above + admin key
    # what a handshake probe needs to tell a refused certificate from a server down (client/_tls.py)
    probe: TlsProbe = TlsProbe(False)

    @classmethod
    def build(
        cls,
        url: str,
        *,
        api_key: str | None,
        admin_key: str | None,
        headers: Mapping[str, str] | None,
        ssl: bool,
        root_certificates: Pem | None,
        private_key: Pem | None,
        certificate_chain: Pem | None,
        tls_server_name: str | None,
        keepalive: grpcclient.KeepAliveOptions | None,
        max_send_message_size: int,
        max_receive_message_size: int,
        channel_args: Sequence[tuple[str, Any]],
    ) -> Connection:
        if (private_key is None) != (certificate_chain is None):
            raise InvalidInputError(
                "a client certificate needs both certificate_chain= (the certificate) and private_key= (its key)"
            )
        roots = read_pem(root_certificates, "root_certificates")
        key = read_pem(private_key, "private_key")
        chain = read_pem(certificate_chain, "certificate_chain")
        tls = ssl or any(x is not None for x in (roots, key, chain))
        if tls_server_name is not None and not tls:
            raise InvalidInputError("tls_server_name= needs TLS: pass ssl=True or root_certificates=")
        credentials = grpc.ssl_channel_credentials(roots, key, chain) if tls else None
        for name, size in (("max_send_message_size", max_send_message_size), ("max_receive_message_size", max_receive_message_size)):
            if not isinstance(size, int) or not 0 < size <= MAX_MESSAGE_SIZE:
                raise InvalidInputError(f"{name} must be 1..{MAX_MESSAGE_SIZE} bytes, not {size!r}")
        keep = keepalive or DEFAULT_KEEPALIVE
        args: dict[str, Any] = {
            "grpc.max_send_message_length": max_send_message_size,
            "grpc.max_receive_message_length": max_receive_message_size,
            "grpc.keepalive_time_ms": keep.keepalive_time_ms,
            "grpc.keepalive_timeout_ms": keep.keepalive_timeout_ms,
            "grpc.keepalive_permit_without_calls": int(keep.keepalive_permit_without_calls),
            "grpc.http2.max_pings_without_data": keep.http2_max_pings_without_data,
            **dict(_RECONNECT_ARGS),
        }
        if tls_server_name is not None:
            args["grpc.ssl_target_name_override"] = tls_server_name
        args.update(dict(channel_args))  # the caller's own arguments win
        base = _metadata(headers)
        for header in API_KEY_HEADERS if api_key else ():
            base[header] = api_key  # type: ignore[assignment]
        admin = dict(base)
        for header in ADMIN_KEY_HEADERS if admin_key else ():
            admin[header] = admin_key  # type: ignore[assignment]
        return cls(url, credentials, tuple(args.items()), base or None, admin or None, TlsProbe(tls, chain, key))

    @property
    def tls(self) -> bool:
        return self.credentials is not None

    def sync_client(self) -> grpcclient.InferenceServerClient:
        """A blocking tritonclient over a new channel with these settings."""
        return grpcclient.InferenceServerClient(
            self.url, creds=self.credentials, channel_args=list(self.channel_args)
        )

    def aio_client(self) -> aioclient.InferenceServerClient:
        """An asyncio tritonclient over a new channel (open it inside the running loop)."""
        return aioclient.InferenceServerClient(
            self.url, creds=self.credentials, channel_args=list(self.channel_args)
        )
