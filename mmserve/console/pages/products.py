"""Products: a card per product (``/products``) and a product's page (``/products/NAME``)."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from ..deps import console_of, product_or_404, products_of, render

router = APIRouter()


@router.get("/products", response_class=HTMLResponse)
def products_page(request: Request) -> HTMLResponse:
    products, error = products_of(console_of(request))
    return render(request, "products.html", {"products": products, "error": error})


@router.get("/products/{name}", response_class=HTMLResponse)
def product_page(request: Request, name: str) -> HTMLResponse:
    product = product_or_404(console_of(request), name)
    return render(request, "product.html", {"product": product})
