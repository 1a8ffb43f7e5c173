"""What every page of the console shares: the app's state, the session, the templates,
the access rule every route runs first (CSRF before the body, then sign-in), reading a
form, and small helpers for products and errors.

A page module (``mmserve/console/pages/``) imports from here and nowhere else in the
console's web layer, so the rules (who may see what, how a POST is checked, how an
error is shown) live in one place.
"""
from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape

from mmserve import kinds
from mmserve.client import InvalidInputError, MmserveError, PermissionDeniedError
from mmserve.kinds import AnswerShape
from mmserve.lifecycle import Lifecycle, LifecycleError, Product, version_changes

from . import cards, playground
from .auth import CSRF_FIELD, CSRF_HEADER, Session, csrf_ok
from .runtime import Console

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))


def console_of(request: Request) -> Console:
    """The app's one :class:`Console` (set by :func:`mmserve.console.app.create_app`)."""
    return request.app.state.console


def session_of(request: Request) -> Session:
    """This request's session: the one signed in during this request, else the cookie's."""
    return request.state.new_session or request.state.session


def render(request: Request, name: str, context: dict[str, Any] | None = None, status_code: int = 200,
           headers: Mapping[str, str] | None = None) -> HTMLResponse:
    """A template with what every page needs (session, CSRF field, nav state) in its context.

    ``show_paths``: local paths (checkpoints, data, the audit log) only for a signed-in
    person; a ``--public-read`` visitor sees names, never where they are on disk."""
    settings = console_of(request).settings
    session = session_of(request)
    base = {
        "session": session,
        "csrf_field": CSRF_FIELD,
        "csrf_query": f"?{CSRF_FIELD}={session.csrf}",  # a form's action carries it: checked before the body
        "admin_enabled": settings.admin_enabled,
        "public_read": settings.public_read,
        "show_paths": session.is_admin,
        "server": settings.server,
        "path": request.url.path,
        "partial": is_htmx(request),
    }
    return templates.TemplateResponse(request, name, {**base, **(context or {})}, status_code=status_code,
                                      headers=headers)


# --- who may do what ---------------------------------------------------------------------------


class Access(Enum):
    """Who may use a page's routes (every route of a page has one, see pages.PAGES)."""

    PUBLIC = "public"  # anyone: the landing page, sign-in
    READ = "read"  # signed in, or anyone when the console runs with --public-read (products, live)
    SIGNED_IN = "signed-in"  # signed in with the admin key: playground (spends the API key), audit, actions


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class SignInRequired(HTTPException):
    def __init__(self) -> None:
        super().__init__(401, "sign in with the admin key first")


def guard(access: Access) -> Callable[[Request], Awaitable[None]]:
    """The dependency every route of a page runs first: for a POST the CSRF token (403),
    from the ``X-CSRF-Token`` header or the ``csrf_token`` query parameter, so it is
    checked before a byte of the body is read or parsed; then the sign-in (401)."""

    async def check(request: Request) -> None:
        session: Session = request.state.session
        if request.method not in SAFE_METHODS:
            token = request.headers.get(CSRF_HEADER) or request.query_params.get(CSRF_FIELD)
            if not csrf_ok(session, token):
                raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
        if access is Access.PUBLIC or session.is_admin:
            return
        if access is Access.READ and console_of(request).settings.public_read:
            return
        raise SignInRequired()

    return check


async def read_form(request: Request) -> Any:
    """The POST's form (after :func:`guard`), its size bounded as it streams in
    (:class:`mmserve.console.guards.BodyLimit`, 413) and per part."""
    settings = console_of(request).settings
    return await request.form(max_files=playground.MAX_FILES, max_part_size=settings.max_upload_bytes)


# --- products ---------------------------------------------------------------------------------


def products_of(console: Console) -> tuple[list[Product], str | None]:
    """The lifecycle's products; the server being down is shown, not raised."""
    try:
        return console.lifecycle().products(), None
    except MmserveError as error:
        try:
            return Lifecycle(console.settings.repository, None).products(), f"server {console.settings.server}: {error}"
        except (OSError, LifecycleError) as inner:
            return [], f"{error}; {inner}"


def product_or_404(console: Console, name: str, products: list[Product] | None = None) -> Product:
    products = products if products is not None else products_of(console)[0]
    for product in products:
        if product.name == name:
            return product
    listed = ", ".join(p.name for p in products) or "none"
    raise HTTPException(404, f"no product '{name}'; products: {listed}")


def shown_labels(product: Product) -> tuple[str, ...]:
    """What a person reads as the product's classes: an entity kind's BIO tags as entity types."""
    if kinds.info(product.kind).answer is not AnswerShape.ENTITIES:
        return product.labels
    types: dict[str, None] = {}
    for tag in product.labels:
        if tag != "O":
            types[tag.split("-", 1)[-1]] = None
    return tuple(types)


# --- requests and errors ----------------------------------------------------------------------


def status_for(error: MmserveError) -> int:
    """The HTTP status a page answers with when the client raised ``error``."""
    if isinstance(error, InvalidInputError):
        return 400
    if isinstance(error, PermissionDeniedError):
        return 403
    if error.status in ("UNAVAILABLE", "NOT_FOUND"):
        return 503
    if error.status == "DEADLINE_EXCEEDED":
        return 504
    return 502


def is_htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def local_path(target: str) -> str:
    """Only redirect within the console (no open redirect via ?next=)."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/products"


_PATH = re.compile(r"(?<![\w.:/])(?:~|\.{1,2})?/(?:[^\s'\"/:;,()\[\]<>]+/)*([^\s'\"/:;,()\[\]<>]*)")


def no_paths(text: str) -> str:
    """``text`` with every absolute or relative path cut to its last part ("…/model.onnx"):
    what a --public-read visitor reads of a server's message."""
    return _PATH.sub(lambda m: f"…/{m.group(1)}", str(text or ""))


# How the pages (and the audit page) name the lifecycle's actions.
ACTION_TITLES = {"load": "Load", "unload": "Unload", "reload": "Reload", "rollback": "Roll back",
                 "roll-forward": "Roll forward", "make-live": "Make live", "export": "Export"}


def code_spans(text: str) -> Markup:
    """Escaped ``text`` with its `backticked` commands shown as code (drift and audit texts)."""
    return Markup(re.sub(r"`([^`<>]+)`", r"<code>\1</code>", str(escape(str(text or "")))))


def _ms(value: float | None) -> str:
    return "—" if value is None else (f"{value:.1f} ms" if value >= 10 else f"{value:.2f} ms")


templates.env.filters["when"] = cards.when
templates.env.filters["facts"] = cards.card_facts
templates.env.filters["card_json"] = cards.card_json
templates.env.filters["ms"] = _ms
templates.env.filters["no_paths"] = no_paths
templates.env.filters["code_spans"] = code_spans
templates.env.globals["version_changes"] = version_changes
templates.env.globals["action_title"] = lambda action: ACTION_TITLES.get(action, str(action).capitalize())
templates.env.filters["shown_labels"] = shown_labels
templates.env.filters["by_modality"] = playground.by_modality
templates.env.globals["kind_title"] = playground.kind_title
templates.env.globals["kind_info"] = kinds.info
