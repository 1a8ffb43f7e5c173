"""Playground: a form per product, answered through the typed client
(the per-kind forms and views are :mod:`mmserve.console.playground`)."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from mmserve.client import MmserveError
from mmserve.lifecycle import Product
from mmserve.pipelines import Kind

from .. import playground as forms
from ..deps import console_of, is_htmx, product_or_404, products_of, read_form, render, status_for

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
    partner = fields.get("partner") or context["partner"]
    status = 200
    try:
        context["result"] = await run_in_threadpool(
            forms.run, console.client, product.kind, product.name, fields, uploads, product.labels, partner
        )
    except MmserveError as error:
        context["error"] = error
        status = status_for(error)
    template = "_playground_result.html" if is_htmx(request) else "playground.html"
    return render(request, template, context, status_code=status)


def playground_context(product: Product, products: list[Product], fields: dict[str, str] | None = None) -> dict[str, Any]:
    """The form's products, the image-text partner and the fields to show again."""
    partner_kind = {Kind.IMAGE_EMBED: Kind.CLIP_TEXT_EMBED, Kind.CLIP_TEXT_EMBED: Kind.IMAGE_EMBED}.get(product.kind)
    partners = [p.name for p in products if partner_kind is not None and p.kind == partner_kind]
    return {
        "product": product,
        "products": products,
        "partners": partners,
        "partner": clip_partner(product, partners),
        "fields": fields or {},
        "examples": forms.EXAMPLES,
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
