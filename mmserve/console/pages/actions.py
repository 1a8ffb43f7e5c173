"""A signed-in admin's actions on a product: load, unload, reload, rollback.

The first POST only describes the action (a confirmation panel); the confirming POST
acts through the lifecycle core, which writes the audit log.
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from mmserve.client import MmserveError
from mmserve.lifecycle import AuditEntry, LifecycleError

from ..auth import Session
from ..deps import console_of, is_htmx, product_or_404, read_form, render, status_for

router = APIRouter()

ACTIONS = ("load", "unload", "reload", "rollback")
ACTION_NOTES = {
    "load": "Loads the product and its steps. Requests start being answered once it is ready.",
    "unload": "Unloads the product (and steps no other loaded product uses): its requests will FAIL until it is loaded again.",
    "reload": "Reloads the product and its steps in place; requests in flight keep being answered.",
    "rollback": "Makes an earlier version active and reloads what changed; requests keep being answered.",
}


@router.post("/products/{name}/{action}", response_class=HTMLResponse)
async def admin_action(request: Request, name: str, action: str) -> HTMLResponse:
    form = await read_form(request)
    if action not in ACTIONS:
        raise HTTPException(404, f"no action '{action}'; actions: {', '.join(ACTIONS)}")
    console = console_of(request)
    product = await run_in_threadpool(product_or_404, console, name)
    to = version_or_none(str(form.get("to", "")))
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
            status = 409 if isinstance(error, LifecycleError) else status_for(error)
        context["product"] = await run_in_threadpool(product_or_404, console, name)
    if template == "_confirm.html" and is_htmx(request):
        return render(request, template, context, status_code=status)
    # Done (or without JavaScript): the whole page, so versions and states are current;
    # htmx swaps its <main> in place of the old one.
    return render(request, "product.html", {**context, "actions": ACTIONS, "panel": template}, status_code=status)


def version_or_none(text: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    if not text.isdigit():
        raise HTTPException(400, f"version must be a whole number, not {text!r}")
    return int(text)
