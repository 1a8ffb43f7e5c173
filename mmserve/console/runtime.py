"""The console's long-lived state: its settings, the session signer, the one client it
reaches Triton with, and the statistics sampler of the live view.

One :class:`Console` per app (``app.state.console``); every page reaches it through
:func:`mmserve.console.deps.console_of`.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any

from mmserve.client import Client
from mmserve.lifecycle import Lifecycle

from . import sampler
from .auth import SessionCodec, SignInLimiter
from .settings import ConsoleSettings


class Console:
    """The app's state: settings, the session signer, the clients and the sampler."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self.settings = settings
        self.sessions = SessionCodec()
        self.sign_ins = SignInLimiter()
        self.sign_in_lock = asyncio.Lock()  # one key check at a time, with a pause after each failure
        self.one_time_lock = threading.Lock()
        self.one_time_key_used = False  # the one-time sign-in key signs in once
        self.client = make_client(settings)
        self.statistics = StatisticsReader(settings)
        self.sampler = sampler.StatsSampler(
            self.statistics, settings.default_metrics_url(),
            interval_s=settings.sample_interval_s, history_s=settings.history_s,
        )

    def lifecycle(self, actor: str = "console") -> Lifecycle:
        kwargs: dict[str, Any] = {"actor": actor}
        if self.settings.audit_log is not None:
            kwargs["audit_log"] = self.settings.audit_log
        return Lifecycle(self.settings.repository, self.client, **kwargs)

    def close(self) -> None:
        self.sampler.stop()
        self.statistics.close()
        self.client.close()


def client_options(settings: ConsoleSettings) -> dict[str, Any]:
    """Keys and TLS for every connection the console opens; the browser sees none of it."""
    return {
        "api_key": settings.api_key,
        "admin_key": settings.admin_key,
        "ssl": settings.tls,
        "root_certificates": settings.tls_ca,
        "certificate_chain": settings.tls_cert,
        "private_key": settings.tls_key,
        "tls_server_name": settings.tls_server_name,
    }


def make_client(settings: ConsoleSettings) -> Client:
    """The one client the console uses for inference and model control."""
    return Client(settings.server, timeout=settings.request_timeout_s, **client_options(settings))


class StatisticsReader:
    """Triton's per-model statistics over gRPC, on a channel of its own built exactly like
    the client's (TLS, keys), so the sampler never waits behind a playground request."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self._settings = settings
        self._grpc: Any = None
        self._headers: Any = None

    def __call__(self) -> list[dict[str, Any]]:
        if self._grpc is None:
            from mmserve.client._channel import Connection

            connection = Connection.build(
                self._settings.server, headers=None, keepalive=None, max_send_message_size=2**24,
                max_receive_message_size=2**26, channel_args=(), **client_options(self._settings),
            )
            self._grpc, self._headers = connection.sync_client(), connection.admin_headers
        stats = self._grpc.get_inference_statistics(as_json=True, headers=self._headers, client_timeout=5.0)
        return list(stats.get("model_stats", []))

    def close(self) -> None:
        if self._grpc is not None:
            self._grpc.close()
            self._grpc = None
