"""Sign-in and sign-out with the admin key (or a loopback console's one-time key)."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ..auth import clean_actor, keys_match
from ..deps import checked_form, console_of, local_path, render
from ..settings import ADMIN_KEY_ENV

router = APIRouter()

SIGN_IN_FAILURE_DELAY_S = 0.5  # slows key guessing; keys should be long and random anyway


@router.get("/signin", response_class=HTMLResponse)
def signin_page(request: Request, next: str = "/products") -> HTMLResponse:
    return render(request, "signin.html", {"next": local_path(next), "env": ADMIN_KEY_ENV})


@router.post("/signin", response_class=HTMLResponse)
async def signin(request: Request) -> Response:
    settings = console_of(request).settings
    form = await checked_form(request, admin=False)
    target = local_path(str(form.get("next", "/products")))
    if not keys_match(str(form.get("admin_key", "")), settings.login_key):
        await asyncio.sleep(SIGN_IN_FAILURE_DELAY_S)
        message = "wrong admin key" if settings.admin_enabled else (
            f"this console has no admin key to sign in with: start it with {ADMIN_KEY_ENV} set"
        )
        return render(request, "signin.html", {"next": target, "env": ADMIN_KEY_ENV, "error": message},
                      status_code=401)
    request.state.new_session = request.state.session.signed_in_as(clean_actor(str(form.get("name", ""))))
    return RedirectResponse(target, status_code=303)


@router.post("/signout")
async def signout(request: Request) -> Response:
    await checked_form(request, admin=False)
    request.state.new_session = request.state.session.signed_out()
    return RedirectResponse("/products", status_code=303)
