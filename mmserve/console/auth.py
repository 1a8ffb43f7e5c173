"""Sessions, sign-in and CSRF for the console.

Every visitor gets a session cookie signed with a secret that lives only in this
process (a restart signs everyone out, which is what an admin console wants). The
session carries a CSRF token that every POST must echo (form field or header), and,
after signing in with the admin key, who signed in and when. Keys and tokens are
compared in constant time. Standard library only: HMAC-SHA256 over a small JSON.

Served over TLS (or behind a proxy that says so) the cookie is ``Secure`` and named
``__Host-...``, which a browser only accepts from a secure origin, for the whole host
and from no subdomain. Sign-in attempts are limited per client and overall
(:class:`SignInLimiter`), so parallel guesses are refused rather than merely slowed.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

COOKIE_NAME = "mmserve_console"
SECURE_COOKIE_NAME = "__Host-mmserve_console"  # only over https: Secure, Path=/, no Domain
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SESSION_TTL_S = 8 * 3600


@dataclass(frozen=True)
class Session:
    """What the cookie carries; nothing secret beyond the CSRF token."""

    csrf: str
    issued: float
    actor: str | None = None  # set once signed in with the admin key
    signed_in: float | None = None

    @property
    def is_admin(self) -> bool:
        return self.actor is not None

    @classmethod
    def new(cls) -> Session:
        return cls(csrf=secrets.token_urlsafe(32), issued=time.time())

    def signed_in_as(self, actor: str) -> Session:
        """A fresh CSRF token on sign-in, so a token seen before cannot ride the admin session."""
        return replace(self, csrf=secrets.token_urlsafe(32), actor=actor, signed_in=time.time())

    def signed_out(self) -> Session:
        return Session.new()


class SessionCodec:
    """Signs and checks session cookies with a per-process secret."""

    def __init__(self, secret: bytes | None = None, ttl_s: float = SESSION_TTL_S) -> None:
        self._secret = secret or secrets.token_bytes(32)
        self._ttl_s = ttl_s

    def _sign(self, payload: bytes) -> str:
        return _b64(hmac.new(self._secret, payload, hashlib.sha256).digest())

    def dumps(self, session: Session) -> str:
        payload = json.dumps(asdict(session), separators=(",", ":")).encode()
        return f"{_b64(payload)}.{self._sign(payload)}"

    def loads(self, cookie: str | None) -> Session | None:
        """The session, or None for a missing, forged, malformed or expired cookie."""
        if not cookie or "." not in cookie:
            return None
        body, signature = cookie.rsplit(".", 1)
        try:
            payload = _unb64(body)
        except ValueError:
            return None
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            session = Session(**json.loads(payload))
        except (ValueError, TypeError):
            return None
        if time.time() - session.issued > self._ttl_s:
            return None
        return session


def cookie_name(secure: bool) -> str:
    """The session cookie's name: the ``__Host-`` one over https."""
    return SECURE_COOKIE_NAME if secure else COOKIE_NAME


class SignInLimiter:
    """At most ``per_client`` sign-in attempts per client and ``overall`` in all per
    ``window_s`` seconds. An attempt is counted when it starts (so 30 parallel guesses
    are 30 attempts, not 0 failures yet) and given back when it succeeds."""

    def __init__(self, per_client: int = 5, overall: int = 20, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_client, self.overall, self.window_s = per_client, overall, window_s
        self._clock = clock
        self._all: deque[tuple[float, str]] = deque()
        self._lock = threading.Lock()

    def reserve(self, client: str) -> float | None:
        """None: go ahead (the attempt is counted); else the seconds until one is allowed."""
        with self._lock:
            now = self._clock()
            while self._all and now - self._all[0][0] >= self.window_s:
                self._all.popleft()
            mine = [t for t, who in self._all if who == client]
            if len(mine) >= self.per_client:
                return self.window_s - (now - mine[0])
            if len(self._all) >= self.overall:
                return self.window_s - (now - self._all[0][0])
            self._all.append((now, client))
            return None

    def refund(self, client: str) -> None:
        """A successful attempt does not count against anyone."""
        with self._lock:
            for i in range(len(self._all) - 1, -1, -1):
                if self._all[i][1] == client:
                    del self._all[i]
                    return


def keys_match(given: str, expected: str | None) -> bool:
    """Constant-time comparison; no key configured never matches."""
    if not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def csrf_ok(session: Session | None, token: str | None) -> bool:
    return session is not None and bool(token) and hmac.compare_digest(session.csrf, token or "")


def clean_actor(name: str) -> str:
    """Who signed in, as the audit log shows it: printable, short, never empty."""
    cleaned = "".join(ch for ch in name.strip() if ch.isprintable())[:64]
    return f"console:{cleaned or 'admin'}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as error:
        raise ValueError("bad base64") from error
