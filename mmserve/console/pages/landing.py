"""The landing page (``/``): all an anonymous visitor gets, unless the console runs with
``--public-read``; and the health check (``/healthz``)."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from ..deps import console_of, render, session_of

router = APIRouter()


@router.get("/", include_in_schema=False)
def landing(request: Request) -> Response:
    """Signed in: the products. Otherwise a static page: what this is and where to sign in
    (nothing about the server, its products or paths)."""
    if session_of(request).is_admin:
        return RedirectResponse("/products", status_code=303)
    return render(request, "landing.html")


@router.get("/healthz", include_in_schema=False)
def healthz(request: Request) -> dict[str, Any]:
    return {"console": "ok", "server_ready": console_of(request).client.ready(timeout=2.0)}
