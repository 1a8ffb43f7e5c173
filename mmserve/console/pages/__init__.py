"""The console's pages: one FastAPI router per page, in a module of its own.

Adding a page
-------------
1. Write a module in this package (say ``reports.py``) with ``router = APIRouter()`` and its routes.
   Take what every page shares from :mod:`mmserve.console.deps`: ``console_of(request)``
   (settings, client, lifecycle), ``render(request, "NAME.html", context)`` (a template
   under ``mmserve/console/templates/`` that extends ``base.html``), ``read_form`` for a
   POST's body, ``products_of`` / ``product_or_404``.
2. Add a :class:`Page` for it to :data:`PAGES` below, with who may use it (``access``,
   signed-in by default) and, to show it in the top bar, a ``nav`` entry ``(href, label)``
   (its link is marked active on every path under ``href``). Every route of the page
   then runs ``deps.guard(access)`` first: a POST's CSRF token (before its body is
   read) and the sign-in; the page's own code never checks either.
3. Test it in ``tests/test_console_api.py`` (every page answers) and, if it has a script,
   in ``tests/test_console_browser.py``.

Nothing else changes: :func:`mmserve.console.app.create_app` includes every router listed
here, and ``base.html`` draws the nav from the same list.
"""
from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter

from ..deps import Access
from . import actions, audit, landing, live, new_product, playground, products, signin, usage


@dataclass(frozen=True)
class Page:
    """One page: its routes, who may use them and, if it has one, its entry in the top bar."""

    router: APIRouter
    nav: tuple[str, str] | None = None  # (href, label)
    access: Access = Access.SIGNED_IN


PAGES: tuple[Page, ...] = (
    Page(landing.router, access=Access.PUBLIC),
    Page(products.router, ("/products", "Products"), Access.READ),
    Page(actions.router),
    Page(live.router, ("/live", "Live"), Access.READ),
    Page(playground.router, ("/playground", "Playground")),
    Page(audit.router, ("/audit", "Audit")),
    Page(usage.router, ("/usage", "Usage")),  # admin only: billing data; revoking a key is audited
    Page(new_product.router, ("/new", "New product")),  # admin only: it trains, and publishes with a confirmation
    Page(signin.router, access=Access.PUBLIC),
)


def nav_entries() -> list[tuple[str, str, str]]:
    """The top bar's links (href, label, access), in the order of :data:`PAGES`; base.html
    shows a visitor only those they may open."""
    return [(*page.nav, page.access.value) for page in PAGES if page.nav is not None]
