"""Checks that run before the app sees a request (plain ASGI middleware).

- :class:`HostAllowlist`: a ``Host`` the console does not answer to gets 400 before
  anything else, so a page on an attacker's name that resolves to 127.0.0.1 (DNS
  rebinding) cannot drive a loopback console.
- :class:`BodyLimit`: a body is counted as it streams in; past the limit the request
  gets 413, whatever Content-Length said or whether it had one (chunked bodies).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def host_name(header: str) -> str:
    """The name part of a Host header: lower case, port and IPv6 brackets removed."""
    header = header.strip().lower()
    if header.startswith("["):  # [::1]:8080
        return header[1:].split("]", 1)[0]
    if header.count(":") == 1:
        return header.split(":", 1)[0]
    return header


async def _plain(send: Send, status: int, text: str) -> None:
    body = text.encode("utf-8")
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"), (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": body})


class HostAllowlist:
    """400 for a request whose Host is not one of ``names``."""

    def __init__(self, app: ASGIApp, names: frozenset[str]) -> None:
        self.app, self.names = app, names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = dict(scope.get("headers") or [])
            name = host_name(headers.get(b"host", b"").decode("latin-1"))
            if name not in self.names:
                if scope["type"] == "http":
                    await _plain(send, 400, f"this console does not answer to the host name {name!r}; "
                                            "its operator can allow it with --allowed-host")
                return
        await self.app(scope, receive, send)


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over {limit / 1e6:.3g} MB, the most the console takes per request")


class BodyLimit:
    """413 for a body over ``limit`` bytes, raised inside the app where the error page is
    drawn, on the app's first read when Content-Length says so, else once the streamed
    bytes pass it. The app reads a body only after its CSRF and sign-in checks."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        seen = int(length) if length.isdigit() and int(length) > self.limit else 0

        async def counted() -> Message:
            nonlocal seen
            if seen > self.limit:
                raise BodyTooLarge(self.limit)
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)
