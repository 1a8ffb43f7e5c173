"""What tells a started tritonserver is ready: it is the process we started (the id it was
given answers on the port) and each model is ready, or its load failed for a reason."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Callable

from mmserve.launch import LaunchError

Request = Callable[..., "tuple[int, Any]"]  # (path, body=None) -> (status, parsed JSON or None)


def http_request(url: str, path: str, headers: dict[str, str], body: dict | None = None,
                 timeout_s: float = 2.0) -> tuple[int, Any]:
    """One HTTP call (POST when body is given). Returns (status, parsed JSON or None);
    status 0 when nothing answered."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{url}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, payload = error.code, error.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0, None
    try:
        return status, json.loads(payload) if payload else None
    except ValueError:
        return status, None


def is_ours(request: Request, server_id: str) -> bool:
    """The server answering on the HTTP port is the one started with server_id (not another)."""
    status, metadata = request("/v2")
    return status == 200 and isinstance(metadata, dict) and metadata.get("name") == server_id


def model_ready(request: Request, model: str) -> bool:
    return request(f"/v2/models/{model}/ready")[0] == 200


def failed_models(request: Request, models: list[str]) -> list[str]:
    """Models whose load ended in UNAVAILABLE with a reason: they will not become ready."""
    status, index = request("/v2/repository/index", body={})
    if status == 403:
        raise LaunchError("the server refused the repository index: the admin key does not match")
    if status != 200 or not isinstance(index, list):
        return []
    failed = {e.get("name") for e in index if e.get("state") == "UNAVAILABLE" and e.get("reason")}
    return [m for m in models if m in failed]
