"""Retrying inference while the server is unreachable (restarting, rolling over, not up yet).

Only :class:`ServerUnavailableError` is retried, and only for inference: a refused key,
bad input, a missing pipeline, a failed TLS handshake or an admin call is never repeated. Each retry waits an
exponentially growing, jittered pause, and stops at whichever comes first: the call's
deadline, ``max_attempts``, or the client's retry budget (a token bucket shared by all
the calls of one client, so a thousand callers of a down server do not multiply the
load on it when it comes back). The last error is then raised as a
:class:`ServerUnavailableError` that says how many attempts were made over how long.
"""
from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ._transport import Deadline
from .errors import DeadlineExceededError, InvalidInputError, MmserveError, ServerUnavailableError, TLSError, is_tls_failure

__all__ = ["RetryPolicy", "RetryBudget", "Attempts", "Resend"]


@dataclass(frozen=True)
class RetryPolicy:
    """How a client retries inference on ``ServerUnavailableError``.

    The defaults ride out a server restart of a few seconds within the default 10 s
    deadline. ``RetryPolicy(max_attempts=1)`` (or ``retry=None`` on the client) turns
    retrying off.
    """

    max_attempts: int = 8  # tries per request, the first one included
    initial_backoff: float = 0.1  # s before the first retry (then x multiplier each time)
    max_backoff: float = 2.0  # s, the longest single pause
    multiplier: float = 2.0
    jitter: float = 0.5  # each pause is drawn from [(1 - jitter) * p, p]: callers spread out
    budget: float = 20.0  # retries one client may make in a burst ...
    budget_per_second: float = 2.0  # ... refilled at this rate

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise InvalidInputError(f"max_attempts must be >= 1, not {self.max_attempts}")
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff or self.multiplier < 1:
            raise InvalidInputError(
                "retry backoff needs 0 <= initial_backoff <= max_backoff and multiplier >= 1, got "
                f"{self.initial_backoff}, {self.max_backoff}, {self.multiplier}"
            )
        if not 0 <= self.jitter <= 1:
            raise InvalidInputError(f"jitter must be within [0, 1], not {self.jitter}")
        if self.budget < 0 or self.budget_per_second < 0:
            raise InvalidInputError("budget and budget_per_second must be >= 0")

    def backoff(self, retry: int) -> float:
        """The pause before retry number ``retry`` (1-based), jitter applied."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return ceiling * (1.0 - self.jitter * random.random())


class RetryBudget:
    """A token bucket of retries, shared by all calls (threads, tasks) of one client."""

    def __init__(self, capacity: float, per_second: float) -> None:
        self._capacity = capacity
        self._per_second = per_second
        self._tokens = capacity
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> bool:
        """One retry's token, if one is left."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._per_second)
            self._stamp = now
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True


class Resend(MmserveError):
    """The server dropped state the request relied on (its shared-memory registrations,
    after a restart): the transport re-creates it and sends the request again at once."""

    def __init__(self, error: MmserveError) -> None:
        super().__init__(str(error), status=error.status, server_message=error.server_message, pipeline=error.pipeline)
        self.error = error


class Attempts:
    """The retry state of one request: decides, after each failure, to wait or to give up.

    The sync and asyncio clients run the same loop around it and differ only in how
    they sleep::

        attempts = Attempts(policy, budget, deadline, url)
        while True:
            try:
                return send()
            except MmserveError as error:
                pause = attempts.after(error)  # raises unless the request may go again
            sleep(pause)
    """

    def __init__(
        self,
        policy: RetryPolicy | None,
        budget: RetryBudget | None,
        deadline: Deadline,
        url: str,
        explain: Callable[[MmserveError], MmserveError] | None = None,
    ) -> None:
        self._policy = policy
        self._explain = explain  # a closed connection that was a refused TLS handshake (client/_tls.py)
        self._budget = budget
        self._deadline = deadline
        self._url = url
        self._started = time.monotonic()
        self.failures = 0
        self._resent = False

    def after(self, error: MmserveError) -> float:
        """Seconds to wait before sending again; raises the error to give the caller otherwise."""
        if isinstance(error, Resend):
            if self._resent:  # lost again right after re-creating it: something else is wrong
                raise error.error
            self._resent = True
            return 0.0
        if isinstance(error, ServerUnavailableError) and not is_tls_failure(error):
            if self.failures == 0 and self._explain is not None:
                explained = self._explain(error)
                if isinstance(explained, TLSError):
                    raise explained  # a certificate to fix, not an outage to wait out
            return self.pause_after(error)
        if isinstance(error, DeadlineExceededError):
            raise self.timed_out(error)
        raise error

    def pause_after(self, error: ServerUnavailableError) -> float:
        """Seconds to wait before the next try; raises the final error when there is none."""
        self.failures += 1
        policy = self._policy
        if policy is None or self.failures >= policy.max_attempts:
            raise self._give_up(error, "attempts")
        pause = policy.backoff(self.failures)
        left = self._deadline.left()
        if left is not None and left <= pause:
            raise self._give_up(error, "deadline")
        if self._budget is not None and not self._budget.take():
            raise self._give_up(error, "retry budget")
        return pause

    def timed_out(self, error: DeadlineExceededError) -> MmserveError:
        """A try that ran out of time after earlier ones found no server: still unavailable."""
        if self.failures == 0:
            return error
        return self._give_up(error, "deadline")

    def _give_up(self, error: MmserveError, why: str) -> ServerUnavailableError:
        if self.failures <= 1 and why == "attempts":
            return error if isinstance(error, ServerUnavailableError) else ServerUnavailableError(str(error))
        spent = time.monotonic() - self._started
        reason = {
            "attempts": "all attempts used",
            "deadline": f"the call's deadline of {self._deadline.timeout}s left no time for another",
            "retry budget": "the client's retry budget is spent (many calls are retrying at once)",
        }[why]
        return ServerUnavailableError(
            f"server at {self._url} unavailable after {self.failures} attempt(s) over {spent:.1f}s "
            f"({reason}); last error: {error}",
            status="UNAVAILABLE",
            server_message=error.server_message,
            pipeline=error.pipeline,
        )
