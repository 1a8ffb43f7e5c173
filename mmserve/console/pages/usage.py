"""Usage and Keys: what each tenant used of each product through the gateway, and its keys.

Reads the gateway's store (``$MMSERVE_GATEWAY_STORE``, else the repository's
``.mmserve-gateway.sqlite3``, as `mmserve gateway` and `mmserve keys` do). Admin only:
usage is billing data, and creating or revoking a key is audited under the signed-in
person's name (:mod:`mmserve.gateway.admin`, as `mmserve keys` does). A new key is shown
once, in the answer to the form's POST (never in a URL, a cookie, a log line or the audit
log; ``Cache-Control: no-store``): the store keeps only its hash.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from mmserve.gateway.store import StoreError, open_store, since_time
from mmserve.gateway.usage import summarise

from ..auth import Session
from ..deps import Console, console_of, products_of, read_form, render

router = APIRouter()

SPANS = {"24h": "hour", "7d": "day", "30d": "day", "365d": "month"}


def _chart(lines) -> dict[str, Any]:  # noqa: ANN001 - UsageLines by period
    """Requests per period for each tenant / product: uPlot's columns (x as Unix seconds)."""
    periods = sorted({line.period for line in lines})
    series = sorted({f"{line.tenant} / {line.product}" for line in lines if line.tenant and line.product})
    values = {name: [0] * len(periods) for name in series}
    errors = [0] * len(periods)  # refused or failed, whatever the product (a refused one may have none)
    for line in lines:
        if not line.tenant:
            continue
        i = periods.index(line.period)
        if line.product:
            values[f"{line.tenant} / {line.product}"][i] += line.requests
        if line.status != 200:
            errors[i] += line.requests
    moments = [int(datetime.fromisoformat(_full(p)).timestamp()) for p in periods]
    return {"time": moments, "series": [{"label": name, "values": values[name]} for name in series],
            "errors": errors}


def _full(period: str) -> str:
    return {7: period + "-01T00:00:00+00:00", 10: period + "T00:00:00+00:00"}.get(len(period), period)


@router.get("/usage", response_class=HTMLResponse)
async def usage_page(request: Request, since: str = "7d") -> HTMLResponse:
    return render(request, "usage.html", await _page(console_of(request), since))


async def _page(console: Console, since: str, products: list[str] | None = None) -> dict[str, Any]:
    """The page's context: usage since ``since``, the keys, and the products a key may name."""
    span = since if since in SPANS else "7d"
    context: dict[str, Any] = {"since": span, "spans": list(SPANS), "totals": [], "keys": [], "chart": None,
                               "products": products if products is not None else _product_names(console),
                               "form": {}}
    try:
        store = open_store(None, console.settings.repository, create=False)
    except StoreError as error:
        context["error"] = str(error)
        return context
    try:
        rows = await store.usage(since_time(span))
        keys = await store.keys()
        used = {record.id: await store.quota_used(record) for record in keys if record.quota}
    except StoreError as error:
        context["error"] = str(error)
        return context
    finally:
        await store.close()
    context["chart"] = _chart(summarise(rows, SPANS[span]))
    context["totals"] = [line for line in summarise(rows, "total") if line.tenant]
    context["keys"] = [(record, used.get(record.id)) for record in keys]
    return context


def _product_names(console: Console) -> list[str]:
    """The products a key may name: those the console knows (the Products page's list)."""
    return [p.name for p in products_of(console)[0]]


KEY_FIELDS = ("tenant", "rate", "quota", "expires")


@router.post("/usage/keys", response_class=HTMLResponse)
async def create(request: Request) -> HTMLResponse:
    """A new key from the page's form: the options checked as `mmserve keys create` checks
    them, the products also against those the console knows; a bad one is a 400 naming it,
    nothing created. The key is in this answer only, once."""
    from mmserve.gateway.admin import create_key
    from mmserve.gateway.keys import KeyOptionError, make_record

    form = await read_form(request)
    console = console_of(request)
    session: Session = request.state.session
    fields = {name: str(form.get(name) or "").strip() for name in KEY_FIELDS}
    chosen = [str(name) for name in form.getlist("products")]
    options = {"rate": fields["rate"] or None, "quota": fields["quota"] or None, "expires": fields["expires"] or None}
    known = _product_names(console)  # asked once: the check and the page answered both use it
    try:
        _, checked = make_record(fields["tenant"], chosen, **options)  # before the store is opened (or created)
        unknown = [name for name in checked.products if name not in known]
        if unknown:
            verb = "is not a product" if len(unknown) == 1 else "are not products"
            raise KeyOptionError(f"products: {', '.join(map(repr, unknown))} {verb} of this console "
                                 f"(its products: {', '.join(known) or 'none'})")
    except KeyOptionError as error:
        context = await _page(console, "7d", known)
        context.update(form={**fields, "products": chosen}, form_error=str(error))
        return render(request, "usage.html", context, status_code=400, headers={"Cache-Control": "no-store"})
    try:
        store = open_store(None, console.settings.repository)  # the first key creates it, as the CLI's does
    except StoreError as error:
        raise HTTPException(503, str(error)) from None
    try:
        key, record = await create_key(store, console.lifecycle().audit_log, session.actor or "console",
                                       fields["tenant"], list(checked.products), **options)
    except StoreError as error:
        raise HTTPException(503, f"the key was not created: {error}") from None
    finally:
        await store.close()
    context = await _page(console, "7d", known)
    context["created"] = {"key": key, "record": record}
    return render(request, "usage.html", context, headers={"Cache-Control": "no-store"})


@router.post("/usage/keys/{key_id}/revoke")
async def revoke(request: Request, key_id: str) -> RedirectResponse:
    from mmserve.gateway.admin import revoke_key

    await read_form(request)
    console = console_of(request)
    session: Session = request.state.session
    try:
        store = open_store(None, console.settings.repository, create=False)
    except StoreError as error:
        raise HTTPException(404, str(error)) from None
    try:
        record = await revoke_key(store, console.lifecycle().audit_log, session.actor or "console", key_id)
    finally:
        await store.close()
    if record is None:
        raise HTTPException(404, f"no key {key_id}")
    return RedirectResponse("/usage#keys", status_code=303)
