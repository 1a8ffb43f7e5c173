"""Live: Triton's counters as charts per product and a table of all products."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse

from .. import sampler
from ..deps import console_of, product_or_404, products_of, render
from ..runtime import Console

router = APIRouter()


def live_context(console: Console, product: str | None) -> dict[str, Any]:
    products, error = products_of(console)
    samples = console.sampler.samples()
    overview = [(p, sampler.totals(samples, p.name, 60.0), sampler.totals(samples, p.name, 300.0)) for p in products]
    names = [p.name for p in products]
    chosen = product if product in names else busiest(samples, names)
    return {
        "overview": overview, "chosen": next((p for p in products if p.name == chosen), None),
        "error": "; ".join(e for e in (error, console.sampler.last_error) if e) or None,
        "metrics_note": console.sampler.metrics_note,
        "interval_s": console.settings.sample_interval_s, "history_s": console.settings.history_s,
        "samples": len(samples),
    }


@router.get("/live", response_class=HTMLResponse)
def live_page(request: Request, product: str | None = None) -> HTMLResponse:
    return render(request, "live.html", live_context(console_of(request), product))


@router.get("/live/overview", response_class=HTMLResponse)
def live_overview(request: Request, product: str | None = None) -> HTMLResponse:
    """The all-products table alone: htmx polls it while the page is open."""
    return render(request, "_live_overview.html", live_context(console_of(request), product))


@router.get("/api/live")
def live_data(request: Request, product: str) -> JSONResponse:
    console = console_of(request)
    chosen = product_or_404(console, product)
    samples = console.sampler.samples()
    models = [chosen.name, *(step.name for step in chosen.steps)]
    data = {name: sampler.series(samples, name).as_json() for name in models}
    return JSONResponse({
        "product": chosen.name,
        "steps": [step.name for step in chosen.steps],
        "time": data[chosen.name]["time"],
        "models": data,
        "error": console.sampler.last_error,
        "metrics_note": console.sampler.metrics_note,
    })


def busiest(samples: list[sampler.Sample], names: list[str]) -> str | None:
    """The product with the most requests in the buffer, else the first one."""
    if not names:
        return None
    if len(samples) < 2:
        return names[0]
    first, last = samples[0].models, samples[-1].models

    def answered(name: str) -> float:
        a, b = first.get(name), last.get(name)
        return (b.success - a.success) if a and b else 0.0

    return max(names, key=lambda name: (answered(name), -names.index(name)))
