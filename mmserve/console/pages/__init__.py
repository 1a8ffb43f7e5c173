"""The console's pages: one FastAPI router per page, in a module of its own.

Adding a page
-------------
1. Write ``mmserve/console/pages/NAME.py`` with ``router = APIRouter()`` and its routes.
   Take what every page shares from :mod:`mmserve.console.deps`: ``console_of(request)``
   (settings, client, lifecycle), ``render(request, "NAME.html", context)`` (a template
   under ``mmserve/console/templates/`` that extends ``base.html``), ``checked_form`` for
   a POST (CSRF and sign-in checked), ``products_of`` / ``product_or_404``.
2. Add a :class:`Page` for it to :data:`PAGES` below; give it a ``nav`` entry
   ``(href, label)`` to show it in the top bar (its link is marked active on every path
   under ``href``).
3. Test it in ``tests/test_console_api.py`` (every page answers) and, if it has a script,
   in ``tests/test_console_browser.py``.

Nothing else changes: :func:`mmserve.console.app.create_app` includes every router listed
here, and ``base.html`` draws the nav from the same list.
"""
from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter

from . import actions, audit, live, playground, products, signin


@dataclass(frozen=True)
class Page:
    """One page: its routes and, if it has one, its entry in the top bar."""

    router: APIRouter
    nav: tuple[str, str] | None = None  # (href, label)


PAGES: tuple[Page, ...] = (
    Page(products.router, ("/products", "Products")),
    Page(actions.router),
    Page(live.router, ("/live", "Live")),
    Page(playground.router, ("/playground", "Playground")),
    Page(audit.router, ("/audit", "Audit")),
    Page(signin.router),
)


def nav_entries() -> list[tuple[str, str]]:
    """The top bar's links, in the order of :data:`PAGES`."""
    return [page.nav for page in PAGES if page.nav is not None]
