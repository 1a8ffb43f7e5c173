"""Playground: a form per product, answered through the typed client
(the per-kind forms and views are :mod:`mmserve.console.playground`)."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from mmserve import kinds
from mmserve.client import InvalidInputError, MmserveError
from mmserve.lifecycle import LifecycleError, Product

from .. import playground as forms
from ..deps import console_of, is_htmx, product_or_404, products_of, read_form, render, status_for
from ..runtime import Console

router = APIRouter()


@router.get("/playground", response_class=HTMLResponse)
def playground_index(request: Request) -> HTMLResponse:
    products, error = products_of(console_of(request))
    return render(request, "playground_index.html", {"products": products, "error": error})


@router.get("/playground/{name}", response_class=HTMLResponse)
def playground_page(request: Request, name: str) -> HTMLResponse:
    console = console_of(request)
    products, _ = products_of(console)
    product = product_or_404(console, name, products)
    return render(request, "playground.html", playground_context(product, products))


@router.post("/playground/{name}", response_class=HTMLResponse)
async def playground_run(request: Request, name: str) -> HTMLResponse:
    form = await read_form(request)
    console = console_of(request)
    products, _ = await run_in_threadpool(products_of, console)
    product = product_or_404(console, name, products)
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    uploads = [
        forms.Upload(item.filename or f"file {i + 1}", await item.read())
        for i, item in enumerate(form.getlist("files"))
        if isinstance(item, UploadFile) and (item.filename or item.size)
    ]
    context = playground_context(product, products, fields)
    status = 200
    try:
        partner = checked_partner(fields.get("partner"), context)
        result = await run_in_threadpool(
            forms.run, console.client, product.kind, product.name, fields, uploads, product.labels, partner
        )
        context["result"] = replace(result, answered_by=await run_in_threadpool(
            answered_by, console, product.name, product.served_version))
    except MmserveError as error:
        context["error"] = error
        status = status_for(error)
    template = "_playground_result.html" if is_htmx(request) else "playground.html"
    return render(request, template, context, status_code=status)


def playground_context(product: Product, products: list[Product], fields: dict[str, str] | None = None) -> dict[str, Any]:
    """The form (from the kind table's row), the partner products served and the fields to show again."""
    row = kinds.info(product.kind)
    partners = [p.name for p in products if row.partner is not None and p.kind == row.partner and p.state == "READY"]
    return {
        "product": product,
        "row": row,
        "products": products,
        "partners": partners,
        "partner": twin_partner(product, partners),
        "fields": fields or {},
        "result": None,
        "error": None,
    }


def checked_partner(asked: str | None, context: dict[str, Any]) -> str | None:
    """The partner product to call: one the form offered (a served product of the partner
    kind), never any model name a request carries."""
    if not asked:
        return context["partner"]
    if asked not in context["partners"]:
        row = context["row"]
        offered = ", ".join(context["partners"]) or "none is served"
        raise InvalidInputError(
            f"partner {asked!r} is not a served {row.partner.value if row.partner else 'partner'} product; "
            f"choose one of: {offered}"
        )
    return asked


def twin_partner(product: Product, partners: list[str]) -> str | None:
    """The other tower exported with this one (NAME_<kind> <-> NAME_<partner kind>), else the first served."""
    row = kinds.info(product.kind)
    if row.partner is None or not partners:
        return None
    mine, theirs = row.kind.value, row.partner.value
    if product.name.endswith(mine):
        twin = product.name[: -len(mine)] + theirs
        if twin in partners:
            return twin
    return partners[0]


def answered_by(console: Console, name: str, before: int | None) -> str:
    """Which version answered: the one served before and after the request (Triton serves one
    version of a product at a time; a switch during the request shows both)."""
    try:
        after = console.lifecycle().product(name).served_version
    except (MmserveError, LifecycleError):
        after = None
    seen = sorted({v for v in (before, after) if v is not None})
    return " or ".join(f"v{v}" for v in seen)
