"""Sign-in and sign-out with the admin key (or a loopback console's one-time key).

A sign-in attempt is counted before its form is read (per client and overall,
:class:`mmserve.console.auth.SignInLimiter`: 429 past the limit), attempts are checked
one at a time with a pause after each failure, the one-time key signs in once, and the
admin key must be one the server itself takes for model control.
"""
from __future__ import annotations

import asyncio
import math

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from mmserve.client import MmserveError, PermissionDeniedError
from mmserve.server import MIN_KEY_LENGTH

from ..auth import clean_actor, keys_match
from ..deps import console_of, local_path, read_form, render
from ..runtime import Console
from ..settings import ADMIN_KEY_ENV

router = APIRouter()

SIGN_IN_FAILURE_DELAY_S = 0.5  # after each failure, with attempts checked one at a time


@router.get("/signin", response_class=HTMLResponse)
def signin_page(request: Request, next: str = "/products") -> HTMLResponse:
    return render(request, "signin.html", {"next": local_path(next), "env": ADMIN_KEY_ENV})


@router.post("/signin", response_class=HTMLResponse)
async def signin(request: Request) -> Response:
    console = console_of(request)
    who = request.client.host if request.client else "unknown"
    wait = console.sign_ins.reserve(who)
    if wait is not None:
        seconds = max(1, math.ceil(wait))
        raise HTTPException(429, f"too many sign-in attempts: try again in {seconds} s",
                            headers={"Retry-After": str(seconds)})
    form = await read_form(request)
    target = local_path(str(form.get("next", "/products")))
    async with console.sign_in_lock:
        refusal = await run_in_threadpool(key_refusal, console, str(form.get("admin_key", "")))
        if refusal is not None:
            await asyncio.sleep(SIGN_IN_FAILURE_DELAY_S)
    if refusal is not None:
        return render(request, "signin.html", {"next": target, "env": ADMIN_KEY_ENV, "error": refusal},
                      status_code=401)
    console.sign_ins.refund(who)
    request.state.new_session = request.state.session.signed_in_as(clean_actor(str(form.get("name", ""))))
    return RedirectResponse(target, status_code=303)


def key_refusal(console: Console, typed: str) -> str | None:
    """Why ``typed`` does not sign in (None: it does; a one-time key is then spent)."""
    settings = console.settings
    if not settings.admin_enabled:
        return f"this console has no admin key to sign in with: start it with {ADMIN_KEY_ENV} set"
    if len(typed) < MIN_KEY_LENGTH:
        return f"wrong admin key (an admin key has at least {MIN_KEY_LENGTH} characters)"
    if settings.sign_in_key is not None:
        if not keys_match(typed, settings.sign_in_key):
            return "wrong admin key"
        with console.one_time_lock:
            if console.one_time_key_used:
                return ("the one-time key has been used: it signs in once. Restart the console for a new one, "
                        f"or start it with {ADMIN_KEY_ENV} set")
            console.one_time_key_used = True
        return None
    if not keys_match(typed, settings.admin_key):
        return "wrong admin key"
    try:  # the key the console holds must be the one the server enforces for model control
        console.client.models(timeout=5.0)
    except PermissionDeniedError:
        return (f"the server refuses this key for model control: the console's {ADMIN_KEY_ENV} is not "
                "the server's admin key, so no action would succeed. Start the console with the server's key.")
    except MmserveError:
        pass  # the server is down: the pages say so; its key is checked again by every action
    return None


@router.post("/signout")
async def signout(request: Request) -> Response:
    request.state.new_session = request.state.session.signed_out()
    return RedirectResponse("/", status_code=303)
