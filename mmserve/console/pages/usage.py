"""Usage and Keys: what each tenant used of each product through the gateway, and its keys.

Reads the gateway's store (``$MMSERVE_GATEWAY_STORE``, else the repository's
``.mmserve-gateway.sqlite3``, as `mmserve gateway` and `mmserve keys` do). Admin only:
usage is billing data, and revoking a key is audited under the signed-in person's name.
Creating keys stays on the command line, where the new key is shown once to the one who
asked (`mmserve keys create`).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from mmserve.gateway.store import StoreError, open_store, since_time
from mmserve.gateway.usage import summarise

from ..auth import Session
from ..deps import console_of, read_form, render

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
    console = console_of(request)
    span = since if since in SPANS else "7d"
    context: dict[str, Any] = {"since": span, "spans": list(SPANS), "totals": [], "keys": [], "chart": None}
    try:
        store = open_store(None, console.settings.repository, create=False)
    except StoreError as error:
        context["error"] = str(error)
        return render(request, "usage.html", context)
    try:
        rows = await store.usage(since_time(span))
        keys = await store.keys()
        used = {record.id: await store.quota_used(record) for record in keys if record.quota}
    except StoreError as error:
        context["error"] = str(error)
        return render(request, "usage.html", context)
    finally:
        await store.close()
    context["chart"] = _chart(summarise(rows, SPANS[span]))
    context["totals"] = [line for line in summarise(rows, "total") if line.tenant]
    context["keys"] = [(record, used.get(record.id)) for record in keys]
    return render(request, "usage.html", context)


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
