"""The console's web app: the pages of :mod:`mmserve.console.pages` behind one set of
rules: the Host allowlist and the body limit before anything (:mod:`.guards`), sessions
and security headers on every response, each page's access rule (:func:`.deps.guard`)
before its routes, and one error page.

It reaches Triton only through :class:`mmserve.client.Client` (inference, model
control) and Triton's statistics and metrics (the live view); products, versions,
cards and the audit log come from the lifecycle core (:mod:`mmserve.lifecycle`),
the same one the CLI uses. Pages render on the server (Jinja2); htmx swaps the
fragments answered to forms, uPlot draws the live charts; both are vendored, and
the Content-Security-Policy allows scripts and styles from this origin only.
"""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

from urllib.parse import quote

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .auth import Session, cookie_name
from .deps import HERE, console_of, guard, is_htmx, local_path, render, templates
from .guards import BodyLimit, HostAllowlist
from .pages import PAGES, nav_entries
from .runtime import Console, make_client
from .settings import ConsoleSettings

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "microphone=(self), camera=(), geolocation=()",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def create_app(settings: ConsoleSettings) -> FastAPI:
    """The console app; the sampler runs while the app runs (lifespan)."""
    console = Console(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        console.sampler.start()
        try:
            yield
        finally:
            await run_in_threadpool(console.close)

    app = FastAPI(title="mmserve console", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.console = console
    templates.env.globals["nav"] = nav_entries()
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)  # inside: its 413 is drawn as a page
    app.middleware("http")(session_and_headers)
    app.add_middleware(HostAllowlist, names=settings.host_names())  # outermost: before anything else
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type] - FastAPI's too
    for page in PAGES:
        app.include_router(page.router, dependencies=[Depends(guard(page.access))])
    return app


async def session_and_headers(request: Request, call_next: Callable[[Request], Any]) -> Response:
    """Every request gets its session (a new one for a missing or bad cookie); every
    response gets the security headers, and the cookie when the session is new or changed."""
    console = console_of(request)
    secure = request.url.scheme == "https"  # TLS here, or a trusted proxy's X-Forwarded-Proto
    name = cookie_name(secure)
    session = console.sessions.loads(request.cookies.get(name))
    request.state.session = session or Session.new()
    request.state.new_session = None
    response = await call_next(request)
    replaced: Session | None = request.state.new_session
    if replaced is not None or session is None:
        response.set_cookie(
            name, console.sessions.dumps(replaced or request.state.session),
            httponly=True, samesite="strict", secure=secure, path="/",
        )
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if not request.url.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


async def http_error(request: Request, error: StarletteHTTPException) -> Response:
    """JSON for /api/, else a page: the error fragment where htmx swaps a part of the
    page, the whole error page for <main> or a plain request."""
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)
    if error.status_code == 401 and request.method == "GET" and not is_htmx(request):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/signin?next={quote(target, safe='')}", status_code=303)
    fragment = is_htmx(request) and request.headers.get("HX-Target", "").split("#")[0] != "main"
    current = urlsplit(request.headers.get("HX-Current-URL", "")).path
    next_path = local_path(current) if current else request.url.path
    return render(request, "_error.html" if fragment else "error.html",
                  {"status": error.status_code, "message": error.detail, "next_path": next_path},
                  status_code=error.status_code, headers=error.headers)


__all__ = ["create_app", "Console", "make_client"]
