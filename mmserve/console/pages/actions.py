"""A signed-in admin's actions on a product: load, unload, reload, and serving another
version (make live / roll back / roll forward, :class:`mmserve.lifecycle.VersionChange`).

Only what can succeed now is offered (``Product.actions``, ``version_changes``); a POST
for anything else is refused with a sentence for the web page, and that refusal goes to
the audit log like every confirmed attempt (the lifecycle core records those, failures
included). The first POST only describes the action (a confirmation panel); the
confirming one acts.
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from mmserve.client import MmserveError
from mmserve.lifecycle import UNKNOWN, AuditEntry, LifecycleError, Product, VersionChange

from ..deps import console_of, is_htmx, product_or_404, read_form, render, status_for

router = APIRouter()

ACTIONS = ("load", "unload", "reload")
VERSION_ACTIONS = ("make-live", "rollback", "roll-forward")  # one route: the direction is the version's
ACTION_NOTES = {
    "load": "Loads the product and its steps. Requests start being answered once it is ready.",
    "unload": "Unloads the product (and steps no other loaded product uses): its requests will FAIL until it is loaded again.",
    "reload": "Serves the version on disk in place; requests in flight keep being answered.",
}


def refusal(product: Product, action: str, to: int | None) -> str | None:
    """Why ``action`` cannot succeed now, as the page says it (None: it is offered)."""
    if product.state == UNKNOWN:
        return f"the server is not reachable, so {product.name} cannot be changed now; try again once it answers"
    if action in ACTIONS:
        if action in product.actions:
            return None
        return {
            "load": f"{product.name} is {product.state} already: there is nothing to load",
            "unload": f"{product.name} is not loaded ({product.state}): there is nothing to unload",
            "reload": (f"{product.name} already serves v{product.served_version}, the version on disk: there is "
                       "nothing new to serve" if product.served_version is not None
                       else f"{product.name} is not loaded ({product.state}): load it instead"),
        }[action]
    versions = [v.version for v in product.versions]
    current = product.live_version
    if to is None:  # "roll back" with no version: the one before the served one
        earlier = [v for v in versions if current is not None and v < current]
        if not earlier:
            return (f"v{current} is the oldest version of {product.name}: there is no earlier one to roll back to"
                    if current is not None else f"{product.name} is not served: choose the version to make live")
        return None
    if to not in versions:
        return f"{product.name} has no v{to}; its versions are {', '.join(f'v{v}' for v in versions) or 'none'}"
    if to == current:
        return f"{product.name} already serves v{to}"
    return None


def change_of(product: Product, to: int | None) -> VersionChange:
    """The version change a form asks for (``to`` None: the version before the served one)."""
    current = product.live_version
    target = to if to is not None else max(v.version for v in product.versions if current and v.version < current)
    return VersionChange(product.name, current, target)


@router.post("/products/{name}/{action}", response_class=HTMLResponse)
async def admin_action(request: Request, name: str, action: str) -> HTMLResponse:
    if action not in ACTIONS + VERSION_ACTIONS:
        raise HTTPException(404, f"no action '{action}' on this page")
    form = await read_form(request)
    console = console_of(request)
    product = await run_in_threadpool(product_or_404, console, name)
    to = version_or_none(str(form.get("to", "")))
    confirmed = form.get("confirm") == "yes"
    session = request.state.session
    lifecycle = console.lifecycle(actor=session.actor or "console")
    why = refusal(product, action, to)
    if why is not None:
        if confirmed:  # an attempt, refused: audited like any other
            await run_in_threadpool(lifecycle.record, action, name, f"to v{to}" if to else "", f"refused: {why}")
        raise HTTPException(409, why)
    change = change_of(product, to) if action in VERSION_ACTIONS else None
    context: dict[str, Any] = {
        "product": product, "action": change.action if change else action, "to": to, "change": change,
        "note": change.effect if change else ACTION_NOTES[action],
    }
    if not confirmed:
        if is_htmx(request):
            return render(request, "_confirm.html", context)
        return render(request, "product.html", {**context, "panel": "_confirm.html"})
    status = 200
    try:
        if change is not None:
            entry: AuditEntry = await run_in_threadpool(lifecycle.make_live, name, change.target)
        else:
            entry = await run_in_threadpool(getattr(lifecycle, action), name)
        context["entry"] = entry
    except (LifecycleError, MmserveError) as error:
        context["error"] = str(error)
        status = 409 if isinstance(error, LifecycleError) else status_for(error)
    context["product"] = await run_in_threadpool(product_or_404, console, name)
    # The whole page, so versions and states are current; htmx swaps its <main> in place of the old one.
    return render(request, "product.html", {**context, "panel": "_action_result.html"}, status_code=status)


def version_or_none(text: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    if not text.isdigit():
        raise HTTPException(400, f"the version must be a whole number, not {text!r}")
    return int(text)
