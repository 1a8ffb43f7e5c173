"""`mmserve`: train, export, serve, bench, soak, demo, console; products and their lifecycle
(load, unload, reload, rollback, audit); the front door (gateway, its keys and usage); jobs
(products made from examples). The command line only parses and reports; the work
lives in the training, exporters, server, bench, console and lifecycle modules.

Each command group is a module of this package with ``register(commands)``; a new group
is a new module listed in ``COMMAND_GROUPS``.
"""
from __future__ import annotations

import os
import sys
from importlib import import_module

from .common import Parser, describe

# In the order `mmserve --help` lists them.
COMMAND_GROUPS: tuple[str, ...] = ("training", "serving", "tools", "lifecycle", "audit", "gateway", "products_create")


def build_parser() -> Parser:
    parser = Parser(prog="mmserve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for group in COMMAND_GROUPS:
        import_module(f"{__name__}.{group}").register(commands)
    describe(parser)
    return parser


def _version() -> str:
    """The installed distribution's version (pyproject.toml's)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mmserve")
    except PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown (not installed: pip install -e .)"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    from mmserve.exporters.onnx_export import ExportError
    from mmserve.server import LaunchError
    from mmserve.training.errors import TrainingError

    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return 130
    except (LaunchError, ExportError, TrainingError, FileNotFoundError) as error:
        # Typed errors carry a message written for the user: no traceback.
        print(f"mmserve: {error}", file=sys.stderr)
        return 2
