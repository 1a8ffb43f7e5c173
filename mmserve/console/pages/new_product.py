"""New product: make a product from labelled examples (admin only).

``/new`` takes a CSV (text) or a zip of clips (audio), a name, a kind and a mode; a head is
trained and reported while the page waits (seconds), a fine-tune is queued and run by the
console's one job worker (mmserve/products/jobs.py), its progress on ``/new/runs/ID``
refreshed every second. Publishing asks for a confirmation, then goes through the same
core as `mmserve products publish` (a new version, a live switch, the audit log).
"""
from __future__ import annotations

import re
import secrets
import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from mmserve.client import MmserveError
from mmserve.exporters.onnx_export import ExportError
from mmserve.kinds import AnswerShape, answering
from mmserve.lifecycle import LifecycleError
from mmserve.products import jobs
from mmserve.products.create import CreateError, create, publish
from mmserve.products.data import DataProblem
from mmserve.products.report import CONFUSION_PNG, read_report
from mmserve.products.runs import FINAL_STATES, RUNNING, CreateRequest, all_runs, find_run, products_root

from ..deps import console_of, read_form, render, session_of

router = APIRouter()

UPLOADS = "uploads"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_worker_lock = threading.Lock()
_worker: threading.Thread | None = None


def start_worker() -> None:
    """The console's job worker: a thread that runs the queue while it has jobs (one at a time;
    a worker elsewhere -- `mmserve jobs work` -- holding the queue makes this one step aside)."""
    global _worker
    with _worker_lock:
        if _worker is not None and _worker.is_alive():
            return
        _worker = threading.Thread(target=jobs.work, name="mmserve-jobs", daemon=True)
        _worker.start()


def _kinds() -> list[Any]:
    return list(answering(AnswerShape.CLASSIFICATION))


async def _save_upload(upload: Any, folder: Path) -> Path | None:
    if upload is None or not getattr(upload, "filename", ""):
        return None
    name = _SAFE_NAME.sub("_", Path(upload.filename).name).lstrip(".") or "data"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    target.write_bytes(await upload.read())
    return target


@router.get("/new", response_class=HTMLResponse)
def new_product_page(request: Request) -> HTMLResponse:
    runs = list(reversed(all_runs()))[:12]
    return render(request, "new_product.html", {"kinds": _kinds(), "runs": runs, "form": {}})


@router.post("/new", response_class=HTMLResponse)
async def new_product(request: Request):
    form = await read_form(request)
    console = console_of(request)
    folder = products_root() / UPLOADS / secrets.token_hex(8)
    data = await _save_upload(form.get("data"), folder)
    heldout = await _save_upload(form.get("heldout"), folder / "heldout")
    fields = {key: str(form.get(key, "")).strip() for key in ("name", "kind", "mode", "head", "base", "epochs")}
    context = {"kinds": _kinds(), "runs": list(reversed(all_runs()))[:12], "form": fields}
    if data is None:
        return render(request, "new_product.html", {**context, "error": "choose a file of examples"}, status_code=400)
    request_ = CreateRequest(
        name=fields["name"], kind=fields["kind"], data=str(data), mode=fields["mode"] or "head",
        repository=str(Path(console.settings.repository).resolve()), heldout=str(heldout) if heldout else None,
        head=fields["head"] or "logreg", lora=form.get("lora") == "on", actor=session_of(request).actor,
        base=fields["base"] or None, epochs=int(fields["epochs"]) if fields["epochs"].isdigit() else None,
    )
    try:
        run = await run_in_threadpool(create, request_, console.client)
    except (DataProblem, CreateError, ExportError, ValueError) as error:
        return render(request, "new_product.html", {**context, "error": str(error)}, status_code=400)
    if request_.mode == "finetune":
        start_worker()
    return RedirectResponse(f"/new/runs/{run.id}", status_code=303)


def _run_or_404(run_id: str):
    try:
        return find_run(run_id)
    except LookupError as error:
        raise HTTPException(404, str(error)) from None


def _run_context(run) -> dict[str, Any]:
    status = run.status()
    if run.request.mode == "finetune" and status.state not in FINAL_STATES:
        start_worker()  # a queued job after a console restart, or one whose worker died: resumed
    return {"run": run, "job": run.request, "status": status, "report": read_report(run.folder),
            "live": status.state not in FINAL_STATES, "running": status.state == RUNNING}


@router.get("/new/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: str) -> HTMLResponse:
    return render(request, "new_run.html", _run_context(_run_or_404(run_id)))


@router.get("/new/runs/{run_id}/status", response_class=HTMLResponse)
def run_status(request: Request, run_id: str) -> HTMLResponse:
    return render(request, "_run_status.html", _run_context(_run_or_404(run_id)))


@router.get("/new/runs/{run_id}/confusion.png")
def run_confusion(run_id: str) -> FileResponse:
    path = _run_or_404(run_id).path(CONFUSION_PNG)
    if not path.is_file():
        raise HTTPException(404, "no report yet")
    return FileResponse(path, media_type="image/png")


@router.post("/new/runs/{run_id}/cancel", response_class=HTMLResponse)
async def run_cancel(request: Request, run_id: str) -> HTMLResponse:
    await read_form(request)
    run = _run_or_404(run_id)
    try:
        message = jobs.cancel(run)
    except ValueError as error:
        message = str(error)
    return render(request, "new_run.html", {**_run_context(run), "message": message})


@router.post("/new/runs/{run_id}/publish", response_class=HTMLResponse)
async def run_publish(request: Request, run_id: str) -> HTMLResponse:
    form = await read_form(request)
    run = _run_or_404(run_id)
    context = _run_context(run)
    if form.get("confirm") != "yes":
        return render(request, "new_run.html", {**context, "confirm": True})
    lifecycle = console_of(request).lifecycle(actor=session_of(request).actor or "console")
    try:
        entry = await run_in_threadpool(publish, run, lifecycle)
    except (CreateError, LifecycleError, MmserveError) as error:
        return render(request, "new_run.html", {**_run_context(run), "error": str(error)}, status_code=409)
    except Exception as error:  # noqa: BLE001 - an export that failed: said on the page (and in the audit log)
        return render(request, "new_run.html", {**_run_context(run), "error": f"publishing failed: "
                      f"{type(error).__name__}: {error}"}, status_code=500)
    return render(request, "new_run.html", {**_run_context(run), "message": f"published: {entry.detail}"})
