"""What the sync and asyncio clients share apart from I/O: options, policies, bookkeeping.

:class:`ClientBase` takes every constructor option once, for both clients, and holds
the state that is the same whichever way the bytes travel: the connection settings,
the retry policy and budget, the shared-memory pool and what is known of each
pipeline's outputs. The subclasses add only the calls (blocking or awaited).
"""
from __future__ import annotations

import json
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import tritonclient.grpc as grpcclient

from mmserve.pipelines import MAX_BATCH_SIZE

from . import _shm, codec
from ._channel import MAX_MESSAGE_SIZE, Connection, Pem
from ._transport import DEFAULT_MAX_CONCURRENCY, Deadline, normalize_url
from .errors import (
    InvalidInputError,
    MmserveError,
    PermissionDeniedError,
    ServerError,
    ServerUnavailableError,
    is_tls_failure,
    tls_error,
)
from .media import ImageFormat
from .retry import Attempts, Resend, RetryBudget, RetryPolicy

__all__ = ["ClientBase", "SharedMemory", "pin_version", "CLOSE_WAIT_S"]

SharedMemory = Literal["none", "system", "cuda"]
CLOSE_WAIT_S = 10.0  # close() waits this long for requests still using shared memory


class ClientBase:
    """Options and state common to :class:`Client` and :class:`AsyncClient`.

    ``timeout`` is each method call's default deadline in seconds (None: no deadline);
    every method takes ``timeout=`` to override it for one call.

    Security: ``api_key`` is sent with every call, ``admin_key`` only with admin calls
    (``models``, ``load``, ``unload``, shared-memory registration), each as header
    ``api-key`` / ``admin-key`` and as ``triton-grpc-protocol-api-key`` /
    ``...-admin-key`` (what Triton's ``--grpc-restricted-protocol`` checks); ``headers``
    adds metadata of your own to every call. TLS is on with ``ssl=True`` or as soon as
    a certificate is given: ``root_certificates`` (the CA that signed the server;
    default: the system's), ``certificate_chain`` and ``private_key`` (a client
    certificate, for mutual TLS); each a file path or PEM bytes.
    ``tls_server_name`` checks the server's certificate against that name instead of
    the URL's host. With no ``admin_key`` and a loopback URL, the key a local
    `mmserve serve` of this user generated for that port is used (mmserve.local_servers).

    Channel: one gRPC channel per client, shared by all threads or tasks; ``keepalive``
    (tritonclient's ``KeepAliveOptions``), ``max_send_message_size`` /
    ``max_receive_message_size`` in bytes, and raw ``channel_args`` that override ours.

    ``retry``: see :class:`RetryPolicy` (None: never retry). ``shared_memory="system"``:
    tensors travel through pooled POSIX shared memory when the app runs on the
    server's host (needs ``admin_key`` when the server restricts shared memory);
    ``shared_memory="cuda"``: the same through CUDA shared memory on GPU 0, for an app
    with an NVIDIA GPU on the server's host (raises MmserveError at once where none is
    usable, saying what is missing).
    """

    def __init__(
        self,
        url: str = "localhost:8001",
        timeout: float | None = 10.0,
        *,
        api_key: str | None = None,
        admin_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        ssl: bool = False,
        root_certificates: Pem | None = None,
        certificate_chain: Pem | None = None,
        private_key: Pem | None = None,
        tls_server_name: str | None = None,
        retry: RetryPolicy | None = RetryPolicy(),
        keepalive: grpcclient.KeepAliveOptions | None = None,
        max_send_message_size: int = MAX_MESSAGE_SIZE,
        max_receive_message_size: int = MAX_MESSAGE_SIZE,
        channel_args: Sequence[tuple[str, Any]] = (),
        shared_memory: SharedMemory = "none",
        max_batch_size: int = MAX_BATCH_SIZE,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        image_format: ImageFormat = "auto",
    ) -> None:
        Deadline(timeout)  # validates
        codec.chunk_ranges(0, max_batch_size)  # validates
        if shared_memory not in ("none", "system", "cuda"):
            raise InvalidInputError(f"shared_memory must be 'none', 'system' or 'cuda', not {shared_memory!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise InvalidInputError(f"retry must be a RetryPolicy or None, not {type(retry).__name__}")
        self.url = normalize_url(url)
        if admin_key is None:
            from mmserve.local_servers import admin_key_for

            admin_key = admin_key_for(self.url)
        self.timeout = timeout
        self.max_batch_size = max_batch_size
        self.max_concurrency = max(1, int(max_concurrency))
        self.image_format = image_format
        self.shared_memory = shared_memory
        self._connection = Connection.build(
            self.url,
            api_key=api_key,
            admin_key=admin_key,
            headers=headers,
            ssl=ssl,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            tls_server_name=tls_server_name,
            keepalive=keepalive,
            max_send_message_size=max_send_message_size,
            max_receive_message_size=max_receive_message_size,
            channel_args=channel_args,
        )
        self._headers = self._connection.headers
        self._admin_headers = self._connection.admin_headers
        self._retry = retry
        self._budget = RetryBudget(retry.budget, retry.budget_per_second) if retry is not None else None
        # "cuda" checks for tritonclient's CUDA utilities and a device here: an MmserveError naming what is missing
        self._pool = _shm.RegionPool(shared_memory) if shared_memory != "none" else None
        self._item_bytes: dict[str, dict[str, int]] = {}  # pipeline -> output -> bytes per item
        # Regions left when the client is dropped without close(), or at interpreter exit.
        self._finalizer = (
            weakref.finalize(self, _release_regions, self._pool, self._connection) if self._pool is not None else None
        )
        self._open()

    def _open(self) -> None:
        """The transport's own set-up (its channel), after the options are in place."""
        raise NotImplementedError

    def __repr__(self) -> str:
        extras = "".join(
            f", {text}"
            for text, on in (
                ("tls", self._connection.tls),
                (f"shared_memory={self.shared_memory!r}", self._pool is not None),
            )
            if on
        )
        return f"{type(self).__name__}({self.url!r}, timeout={self.timeout}{extras})"

    # --- pieces the transports call ---------------------------------------------------

    def _deadline(self, timeout: float | None) -> Deadline:
        return Deadline(self.timeout if timeout is None else timeout)

    def _attempts(self, deadline: Deadline) -> Attempts:
        return Attempts(self._retry, self._budget, deadline, self.url, self._explained)

    def _explained(self, error: MmserveError) -> MmserveError:
        """A TLS error naming the cause, when "server unavailable" was a refused handshake
        (client/_tls.py probes once); the error itself otherwise."""
        if not isinstance(error, ServerUnavailableError):
            return error
        cls = self._connection.probe.diagnose(self.url, error.server_message)
        return tls_error(cls, self.url, error.server_message, error.pipeline) if cls is not None else error

    def _retry_missing(self, error: MmserveError) -> bool:
        """Whether requests of a call that failed on their first try go again one by one."""
        return isinstance(error, Resend) or (
            self._retry is not None and isinstance(error, ServerUnavailableError) and not is_tls_failure(error)
        )

    def _server_exiting(self, error: MmserveError, why: str) -> ServerUnavailableError:
        """A pipeline "not found" while the server itself is going away is an outage, not a
        missing pipeline: Triton unloads every model first when it shuts down."""
        return ServerUnavailableError(
            f"server at {self.url} is shutting down or restarting ({why}); it answered: {error}",
            status="UNAVAILABLE",
            server_message=error.server_message,
            pipeline=error.pipeline,
        )

    def _shm_failure(self, error: MmserveError) -> MmserveError:
        """A failed shared-memory request: Resend when the server forgot our regions."""
        if self._pool is not None and _shm.regions_lost(error):
            self._pool.forget_registrations()
            self._item_bytes.clear()  # the restarted server may serve a re-exported model
            return Resend(error)
        return error

    def _registration_error(self, error: MmserveError) -> MmserveError:
        if isinstance(error, PermissionDeniedError):
            return PermissionDeniedError(
                f"registering shared memory (shared_memory={self.shared_memory!r}) is an admin call on this server: "
                f"pass Client(..., admin_key=...) [{error.status}] {error.server_message}",
                status=error.status,
                server_message=error.server_message,
            )
        if not isinstance(error, (ServerError, InvalidInputError)):
            return error  # unreachable, out of time: nothing to do with shared memory
        return ServerError(  # the server answered, but could not open or map the region
            f"the server could not map a shared-memory region: {error}. "
            f"{_shm.CUDA_ADVICE if self.shared_memory == 'cuda' else _shm.SHM_ADVICE}",
            status=error.status,
            server_message=error.server_message,
        )


def pin_version(config: Mapping[str, Any], version: int) -> str:
    """A model's configuration (as ``get_model_config(as_json=True)`` gives it) serving only ``version``."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidInputError(f"version must be a whole number >= 1, not {version!r}")
    body = dict(config.get("config", config))
    body["version_policy"] = {"specific": {"versions": [version]}}
    return json.dumps(body)


def _release_regions(pool: _shm.RegionPool, connection: Connection) -> None:
    """Unregister and unlink a dropped client's regions, over a channel of its own."""
    regions = pool.snapshot()
    pool.close()

    if not any(r.registered for r in regions) and not pool.left_on_server():
        _shm.clean_up(pool, regions, lambda name, timeout: None)  # nothing registered: unlink only
        return
    client = connection.sync_client()

    def unregister(name: str, timeout: float) -> None:
        getattr(client, f"unregister_{pool.kind}_shared_memory")(
            name, headers=connection.admin_headers, client_timeout=timeout
        )

    try:
        _shm.clean_up(pool, regions, unregister, closing=True)
    finally:
        client.close()
