"""The mmserve management console: products, live statistics, a playground per kind,
and signed-in admin actions with an audit log (`mmserve console`, docs/console.md).

Needs the ``console`` extra (FastAPI, uvicorn, Jinja2, python-multipart).
"""
from __future__ import annotations

from .settings import ADMIN_KEY_ENV, API_KEY_ENV, ConsoleError, ConsoleSettings

__all__ = ["ConsoleSettings", "ConsoleError", "ConsoleServer", "create_app", "run_console", "ADMIN_KEY_ENV", "API_KEY_ENV"]


def __getattr__(name: str):  # the web stack is imported only when used
    if name == "create_app":
        from .app import create_app

        return create_app
    if name in ("ConsoleServer", "run_console"):
        from . import server

        return getattr(server, name)
    raise AttributeError(name)
