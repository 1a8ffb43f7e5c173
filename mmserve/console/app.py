"""The console's web app: pages, playground, live data and admin actions.

It reaches Triton only through :class:`mmserve.client.Client` (inference, model
control) and Triton's statistics and metrics (the live view); products, versions,
cards and the audit log come from the lifecycle core (:mod:`mmserve.lifecycle`),
the same one the CLI uses. Pages render on the server (Jinja2); htmx swaps the
fragments answered to forms, uPlot draws the live charts; both are vendored, and
the Content-Security-Policy allows scripts and styles from this origin only.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from mmserve.client import Client, InvalidInputError, MmserveError, PermissionDeniedError
from mmserve.lifecycle import AuditEntry, Lifecycle, LifecycleError, Product
from mmserve.pipelines import Kind

from . import cards, playground, sampler
from .auth import (
    COOKIE_NAME,
    CSRF_FIELD,
    CSRF_HEADER,
    Session,
    SessionCodec,
    clean_actor,
    csrf_ok,
    keys_match,
)
from .settings import ADMIN_KEY_ENV, ConsoleSettings

HERE = Path(__file__).parent
ACTIONS = ("load", "unload", "reload", "rollback")
ACTION_NOTES = {
    "load": "Loads the product and its steps. Requests start being answered once it is ready.",
    "unload": "Unloads the product (and steps no other loaded product uses): its requests will FAIL until it is loaded again.",
    "reload": "Reloads the product and its steps in place; requests in flight keep being answered.",
    "rollback": "Makes an earlier version active and reloads what changed; requests keep being answered.",
}
SIGN_IN_FAILURE_DELAY_S = 0.5  # slows key guessing; keys should be long and random anyway
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


class Console:
    """The app's state: settings, the session signer, the clients and the sampler."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self.settings = settings
        self.sessions = SessionCodec()
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
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["when"] = cards.when
    templates.env.filters["facts"] = cards.card_facts
    templates.env.filters["card_json"] = cards.card_json
    templates.env.filters["ms"] = _ms
    templates.env.filters["shown_labels"] = shown_labels
    templates.env.filters["by_modality"] = playground.by_modality
    templates.env.globals["kind_title"] = lambda kind: playground.KIND_TITLES.get(Kind(kind), str(kind))
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    # --- sessions and headers on every response ----------------------------------------

    @app.middleware("http")
    async def session_and_headers(request: Request, call_next: Callable[[Request], Any]) -> Response:
        cookie = request.cookies.get(COOKIE_NAME)
        session = console.sessions.loads(cookie)
        request.state.session = session or Session.new()
        request.state.new_session = None
        response = await call_next(request)
        replaced: Session | None = request.state.new_session
        if replaced is not None or session is None:
            response.set_cookie(
                COOKIE_NAME, console.sessions.dumps(replaced or request.state.session),
                httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/",
            )
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if not request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    def page(request: Request, name: str, context: dict[str, Any] | None = None, status_code: int = 200) -> HTMLResponse:
        session: Session = request.state.new_session or request.state.session
        base = {
            "session": session,
            "csrf_field": CSRF_FIELD,
            "admin_enabled": settings.admin_enabled,
            "server": settings.server,
            "path": request.url.path,
            "partial": _is_htmx(request),
        }
        return templates.TemplateResponse(request, name, {**base, **(context or {})}, status_code=status_code)

    async def checked_form(request: Request, *, admin: bool) -> Any:
        """The POST's form after the CSRF check (403) and, for admin routes, the sign-in check (401)."""
        size = request.headers.get("content-length", "")
        if size.isdigit() and int(size) > settings.max_upload_bytes:
            raise HTTPException(413, f"the upload is {int(size) / 1e6:.1f} MB; the console takes at most "
                                     f"{settings.max_upload_bytes / 1e6:.3g} MB per request")
        form = await request.form(max_files=playground.MAX_FILES, max_part_size=settings.max_upload_bytes)
        session: Session = request.state.session
        token = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD)
        if not csrf_ok(session, token if isinstance(token, str) else None):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
        if admin and not session.is_admin:
            raise HTTPException(401, "sign in with the admin key first")
        return form

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": error.detail}, status_code=error.status_code)
        # htmx puts the answer into a part of the page: a fragment there, a page for <main>.
        fragment = _is_htmx(request) and request.headers.get("HX-Target", "").split("#")[0] != "main"
        current = urlsplit(request.headers.get("HX-Current-URL", "")).path
        next_path = _local(current) if current else request.url.path
        return page(request, "_error.html" if fragment else "error.html",
                    {"status": error.status_code, "message": error.detail, "next_path": next_path},
                    status_code=error.status_code)

    # --- pages ------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def index() -> RedirectResponse:
        return RedirectResponse("/products", status_code=303)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, Any]:
        return {"console": "ok", "server_ready": console.client.ready(timeout=2.0)}

    @app.get("/products", response_class=HTMLResponse)
    def products_page(request: Request) -> HTMLResponse:
        products, error = _products(console)
        return page(request, "products.html", {"products": products, "error": error})

    @app.get("/products/{name}", response_class=HTMLResponse)
    def product_page(request: Request, name: str) -> HTMLResponse:
        product = _product_or_404(console, name)
        return page(request, "product.html", {"product": product, "actions": ACTIONS})

    def live_context(product: str | None) -> dict[str, Any]:
        products, error = _products(console)
        samples = console.sampler.samples()
        overview = [(p, sampler.totals(samples, p.name, 60.0), sampler.totals(samples, p.name, 300.0)) for p in products]
        names = [p.name for p in products]
        chosen = product if product in names else _busiest(samples, names)
        return {
            "overview": overview, "chosen": next((p for p in products if p.name == chosen), None),
            "error": "; ".join(e for e in (error, console.sampler.last_error) if e) or None,
            "metrics_note": console.sampler.metrics_note,
            "interval_s": settings.sample_interval_s, "history_s": settings.history_s,
        }

    @app.get("/live", response_class=HTMLResponse)
    def live_page(request: Request, product: str | None = None) -> HTMLResponse:
        return page(request, "live.html", live_context(product))

    @app.get("/live/overview", response_class=HTMLResponse)
    def live_overview(request: Request, product: str | None = None) -> HTMLResponse:
        """The all-products table alone: htmx polls it while the page is open."""
        return page(request, "_live_overview.html", live_context(product))

    @app.get("/api/live")
    def live_data(product: str) -> JSONResponse:
        chosen = _product_or_404(console, product)
        samples = console.sampler.samples()
        models = [chosen.name, *(step.name for step in chosen.steps)]
        data = {name: sampler.series(samples, name).as_json() for name in models}
        return JSONResponse({
            "product": chosen.name,
            "steps": [step.name for step in chosen.steps],
            "time": data[chosen.name]["time"],
            "models": data,
            "error": console.sampler.last_error,
            "metrics_note": console.sampler.metrics_note,
        })

    @app.get("/playground", response_class=HTMLResponse)
    def playground_index(request: Request) -> HTMLResponse:
        products, error = _products(console)
        return page(request, "playground_index.html", {"products": products, "error": error})

    @app.get("/playground/{name}", response_class=HTMLResponse)
    def playground_page(request: Request, name: str) -> HTMLResponse:
        products, _ = _products(console)
        product = _product_or_404(console, name, products)
        return page(request, "playground.html", _playground_context(product, products))

    @app.post("/playground/{name}", response_class=HTMLResponse)
    async def playground_run(request: Request, name: str) -> HTMLResponse:
        form = await checked_form(request, admin=False)
        products, _ = await run_in_threadpool(_products, console)
        product = _product_or_404(console, name, products)
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
        uploads = [
            playground.Upload(item.filename or f"file {i + 1}", await item.read())
            for i, item in enumerate(form.getlist("files"))
            if isinstance(item, UploadFile) and (item.filename or item.size)
        ]
        context = _playground_context(product, products, fields)
        partner = fields.get("partner") or context["partner"]
        status = 200
        try:
            context["result"] = await run_in_threadpool(
                playground.run, console.client, product.kind, product.name, fields, uploads, product.labels, partner
            )
        except MmserveError as error:
            context["error"] = error
            status = _status_for(error)
        template = "_playground_result.html" if _is_htmx(request) else "playground.html"
        return page(request, template, context, status_code=status)

    @app.get("/audit", response_class=HTMLResponse)
    def audit_page(request: Request, limit: int = 200) -> HTMLResponse:
        lifecycle = console.lifecycle()
        log = lifecycle.audit_log
        try:  # inside the repository: say so rather than print a long absolute path
            shown = f"REPOSITORY/{log.resolve().relative_to(settings.repository.resolve())}"
        except ValueError:
            shown = str(log)
        return page(request, "audit.html", {
            "entries": lifecycle.audit(limit=max(1, min(limit, 5000))), "log": log, "log_shown": shown,
        })

    # --- sign-in --------------------------------------------------------------------

    @app.get("/signin", response_class=HTMLResponse)
    def signin_page(request: Request, next: str = "/products") -> HTMLResponse:
        return page(request, "signin.html", {"next": _local(next), "env": ADMIN_KEY_ENV})

    @app.post("/signin", response_class=HTMLResponse)
    async def signin(request: Request) -> Response:
        form = await checked_form(request, admin=False)
        target = _local(str(form.get("next", "/products")))
        if not keys_match(str(form.get("admin_key", "")), settings.login_key):
            await asyncio.sleep(SIGN_IN_FAILURE_DELAY_S)
            message = "wrong admin key" if settings.admin_enabled else (
                f"this console has no admin key to sign in with: start it with {ADMIN_KEY_ENV} set"
            )
            return page(request, "signin.html", {"next": target, "env": ADMIN_KEY_ENV, "error": message},
                        status_code=401)
        request.state.new_session = request.state.session.signed_in_as(clean_actor(str(form.get("name", ""))))
        return RedirectResponse(target, status_code=303)

    @app.post("/signout")
    async def signout(request: Request) -> Response:
        await checked_form(request, admin=False)
        request.state.new_session = request.state.session.signed_out()
        return RedirectResponse("/products", status_code=303)

    # --- admin actions ----------------------------------------------------------------

    @app.post("/products/{name}/{action}", response_class=HTMLResponse)
    async def admin_action(request: Request, name: str, action: str) -> HTMLResponse:
        form = await checked_form(request, admin=True)
        if action not in ACTIONS:
            raise HTTPException(404, f"no action '{action}'; actions: {', '.join(ACTIONS)}")
        product = await run_in_threadpool(_product_or_404, console, name)
        to = _version_or_none(str(form.get("to", "")))
        context: dict[str, Any] = {"product": product, "action": action, "to": to, "note": ACTION_NOTES[action]}
        status = 200
        if form.get("confirm") != "yes":
            template = "_confirm.html"
        else:
            template = "_action_result.html"
            session: Session = request.state.session
            lifecycle = console.lifecycle(actor=session.actor or "console")
            try:
                if action == "rollback":
                    entry: AuditEntry = await run_in_threadpool(lifecycle.rollback, name, to)
                else:
                    entry = await run_in_threadpool(getattr(lifecycle, action), name)
                context["entry"] = entry
            except (LifecycleError, MmserveError) as error:
                context["error"] = str(error)
                status = 409 if isinstance(error, LifecycleError) else _status_for(error)
            context["product"] = await run_in_threadpool(_product_or_404, console, name)
        if template == "_confirm.html" and _is_htmx(request):
            return page(request, template, context, status_code=status)
        # Done (or without JavaScript): the whole page, so versions and states are current;
        # htmx swaps its <main> in place of the old one.
        return page(request, "product.html", {**context, "actions": ACTIONS, "panel": template}, status_code=status)

    return app


# --- helpers ------------------------------------------------------------------------------


def _products(console: Console) -> tuple[list[Product], str | None]:
    """The lifecycle's products; the server being down is shown, not raised."""
    try:
        return console.lifecycle().products(), None
    except MmserveError as error:
        try:
            return Lifecycle(console.settings.repository, None).products(), f"server {console.settings.server}: {error}"
        except (OSError, LifecycleError) as inner:
            return [], f"{error}; {inner}"


def _product_or_404(console: Console, name: str, products: list[Product] | None = None) -> Product:
    products = products if products is not None else _products(console)[0]
    for product in products:
        if product.name == name:
            return product
    listed = ", ".join(p.name for p in products) or "none"
    raise HTTPException(404, f"no product '{name}'; products: {listed}")


def _playground_context(product: Product, products: list[Product], fields: dict[str, str] | None = None) -> dict[str, Any]:
    """The form's products, the image-text partner and the fields to show again."""
    partner_kind = {Kind.IMAGE_EMBED: Kind.CLIP_TEXT_EMBED, Kind.CLIP_TEXT_EMBED: Kind.IMAGE_EMBED}.get(product.kind)
    partners = [p.name for p in products if partner_kind is not None and p.kind == partner_kind]
    return {
        "product": product,
        "products": products,
        "partners": partners,
        "partner": clip_partner(product, partners),
        "fields": fields or {},
        "examples": playground.EXAMPLES,
        "result": None,
        "error": None,
    }


def clip_partner(product: Product, partners: list[str]) -> str | None:
    """The other tower exported with this one: NAME_image_embed <-> NAME_clip_text_embed."""
    swap = {Kind.IMAGE_EMBED: (Kind.IMAGE_EMBED.value, Kind.CLIP_TEXT_EMBED.value),
            Kind.CLIP_TEXT_EMBED: (Kind.CLIP_TEXT_EMBED.value, Kind.IMAGE_EMBED.value)}.get(product.kind)
    if swap is None or not partners:
        return None
    mine, theirs = swap
    if product.name.endswith(mine):
        twin = product.name[: -len(mine)] + theirs
        if twin in partners:
            return twin
    return partners[0]


def _busiest(samples: list[sampler.Sample], names: list[str]) -> str | None:
    """The product with the most requests in the buffer, else the first one."""
    if not names:
        return None
    if len(samples) < 2:
        return names[0]
    first, last = samples[0].models, samples[-1].models
    def answered(name: str) -> float:
        a, b = first.get(name), last.get(name)
        return (b.success - a.success) if a and b else 0.0
    return max(names, key=lambda name: (answered(name), -names.index(name)))


def _status_for(error: MmserveError) -> int:
    if isinstance(error, InvalidInputError):
        return 400
    if isinstance(error, PermissionDeniedError):
        return 403
    if error.status in ("UNAVAILABLE", "NOT_FOUND"):
        return 503
    if error.status == "DEADLINE_EXCEEDED":
        return 504
    return 502


def _is_htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def _local(target: str) -> str:
    """Only redirect within the console (no open redirect via ?next=)."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/products"


def _version_or_none(text: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    if not text.isdigit():
        raise HTTPException(400, f"version must be a whole number, not {text!r}")
    return int(text)


def shown_labels(product: Product) -> tuple[str, ...]:
    """What a person reads as the product's classes: NER's BIO tags as entity types."""
    if product.kind != Kind.TEXT_NER:
        return product.labels
    types: dict[str, None] = {}
    for tag in product.labels:
        if tag != "O":
            types[tag.split("-", 1)[-1]] = None
    return tuple(types)


def _ms(value: float | None) -> str:
    return "—" if value is None else (f"{value:.1f} ms" if value >= 10 else f"{value:.2f} ms")


__all__ = ["create_app", "Console", "make_client", "clip_partner"]
