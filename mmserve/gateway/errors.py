"""Errors the gateway answers, shaped as the OpenAI API's: ``{"error": {message, type, param, code}}``.

The status code decides what the official SDKs raise (400 BadRequestError, 401
AuthenticationError, 403 PermissionDeniedError, 404 NotFoundError, 413, 429
RateLimitError, 5xx InternalServerError); ``type`` and ``code`` follow OpenAI's words
where one exists.
"""
from __future__ import annotations

from collections.abc import Mapping

from mmserve.client.errors import (
    DeadlineExceededError,
    InvalidInputError,
    MmserveError,
    ModelNotReadyError,
    PermissionDeniedError,
    ServerUnavailableError,
)


class ApiError(Exception):
    """One refusal or failure, with what the caller needs to fix it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, *, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def from_client_error(error: MmserveError, product: str) -> ApiError:
    """What a typed client error means to the gateway's caller.

    Bad input is the caller's (400, with the server's words); anything about reaching
    Triton is ours (503/504/502), said without the gateway's own configuration.
    """
    if isinstance(error, InvalidInputError):
        return ApiError(400, f"{product}: {error.server_message or error.message}", param="input", code="invalid_input")
    if isinstance(error, ModelNotReadyError):
        return ApiError(503, f"the product {product} is not loaded on the server right now; retry later",
                        type="server_error", code="model_not_ready", headers={"Retry-After": "5"})
    if isinstance(error, ServerUnavailableError):
        return ApiError(503, "the inference server is unavailable; retry later", type="server_error",
                        code="server_unavailable", headers={"Retry-After": "5"})
    if isinstance(error, DeadlineExceededError):
        return ApiError(504, f"{product}: the inference server did not answer in time", type="server_error",
                        code="timeout")
    if isinstance(error, PermissionDeniedError):
        # The gateway's own key to Triton is wrong: an operator's problem, not the caller's.
        return ApiError(502, "the gateway is not allowed to call the inference server (its inference key); "
                        "tell the operator", type="server_error", code="upstream_permission_denied")
    return ApiError(500, f"{product}: the inference server failed: {error.server_message or error.message}",
                    type="server_error", code="server_error")
