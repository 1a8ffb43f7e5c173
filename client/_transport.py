"""Small pieces both transports share: deadlines, URL checks, readiness verdicts."""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from .errors import (
    DeadlineExceededError,
    InvalidInputError,
    MmserveError,
    ModelNotReadyError,
    ServerUnavailableError,
)
from .results import ModelInfo

DEFAULT_MAX_CONCURRENCY = 8  # requests of one call in flight at once (chunks, audio clips)
READY_PROBE_TIMEOUT = 5.0  # one readiness RPC never waits longer than this
SERVER = "<server>"  # stands for "the server itself" in a list of things not ready yet

# Errors that mean "not ready yet, keep polling" to ready() and wait_ready().
NOT_READY_ERRORS = (ServerUnavailableError, ModelNotReadyError, DeadlineExceededError)


class Deadline:
    """One call's time budget, shared by all the RPCs the call makes."""

    __slots__ = ("timeout", "_end")

    def __init__(self, timeout: float | None) -> None:
        if timeout is not None and timeout <= 0:
            raise InvalidInputError(f"timeout must be > 0 seconds or None, not {timeout!r}")
        self.timeout = timeout
        self._end = None if timeout is None else time.monotonic() + timeout

    def left(self) -> float | None:
        """Seconds left (may be <= 0), None without a deadline."""
        return None if self._end is None else self._end - time.monotonic()

    def remaining(self) -> float | None:
        """Seconds left for the next RPC; raises once the budget is spent."""
        left = self.left()
        if left is not None and left <= 0:
            raise DeadlineExceededError(
                f"deadline of {self.timeout}s exceeded before all requests were sent"
            )
        return left

    def capped(self, cap: float) -> float:
        left = self.remaining()
        return cap if left is None else min(cap, left)


def normalize_url(url: str) -> str:
    """``host:port`` as tritonclient's gRPC client wants it (``grpc://`` tolerated)."""
    if not isinstance(url, str) or not url:
        raise InvalidInputError(f"url must be 'host:port', not {url!r}")
    if url.startswith("grpc://"):
        url = url[len("grpc://") :]
    if "://" in url:
        raise InvalidInputError(
            f"url {url!r}: pass 'host:port' of Triton's gRPC endpoint (usually port 8001)"
        )
    return url.rstrip("/")


def pipeline_names(pipelines: str | Iterable[str]) -> tuple[str, ...]:
    """``"x"`` and ``["x"]`` both mean the pipeline x (a bare str is a common slip)."""
    if isinstance(pipelines, str):
        return (pipelines,)
    names = tuple(pipelines)
    for name in names:
        if not isinstance(name, str) or not name:
            raise InvalidInputError(f"pipeline names must be non-empty str, got {name!r}")
    return names


def readiness_error(
    url: str,
    timeout: float | None,
    pending: Sequence[str],
    last_error: MmserveError | None,
    index: Sequence[ModelInfo] | None,
) -> MmserveError:
    """The error ``wait_ready`` raises when time ran out, saying what was missing and why."""
    if isinstance(last_error, (ServerUnavailableError, DeadlineExceededError)):
        return ServerUnavailableError(
            f"server at {url} not reachable within {timeout}s: {last_error.server_message or last_error}",
            status=last_error.status,
            server_message=last_error.server_message,
        )
    by_name = {info.name: info for info in index or ()}
    if SERVER in pending:  # server up but not ready: some model is loading or failed
        names = [info.name for info in index or () if info.state != "READY"]
    else:
        names = list(pending)
    details = []
    for name in names:
        info = by_name.get(name)
        if info is None:
            details.append(f"{name}: not in the model repository" if index is not None else name)
        else:
            details.append(f"{name}: {info.state or 'UNKNOWN'}" + (f" ({info.reason.strip()})" if info.reason.strip() else ""))
    what = "server" if SERVER in pending else "pipelines"
    return ModelNotReadyError(
        f"{what} at {url} not ready within {timeout}s"
        + (": " + "; ".join(details) if details else ""),
        status=last_error.status if last_error else None,
        server_message=last_error.server_message if last_error else None,
        pipeline=names[0] if len(names) == 1 else None,
    )
