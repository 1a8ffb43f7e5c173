"""Audit: the lifecycle's append-only log, newest first."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from ..deps import console_of, render

router = APIRouter()


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, limit: int = 200) -> HTMLResponse:
    console = console_of(request)
    lifecycle = console.lifecycle()
    log = lifecycle.audit_log
    try:  # inside the repository: say so rather than print a long absolute path
        shown = f"REPOSITORY/{log.resolve().relative_to(console.settings.repository.resolve())}"
    except ValueError:
        shown = str(log)
    return render(request, "audit.html", {
        "entries": lifecycle.audit(limit=max(1, min(limit, 5000))), "log": log, "log_shown": shown,
    })
