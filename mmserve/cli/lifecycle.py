"""`mmserve products` and the admin commands (load, unload, reload, rollback), all through mmserve.lifecycle."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .common import DEFAULT_REPOSITORY, Parser

# Exit codes of the lifecycle commands, so scripts can tell the failures apart.
EXIT_FAILED = 1  # the server tried and failed (a model that does not load)
EXIT_USAGE = 2  # unknown product or version: fix the command
EXIT_UNREACHABLE = 3  # no server at --server
EXIT_DENIED = 4  # the server refused: admin key or TLS client certificate missing/wrong
_LIFECYCLE_EPILOG = (
    "exit codes: 0 done, 1 the server failed the action, 2 unknown product or version, "
    "3 server not reachable, 4 permission denied (admin key / TLS)"
)


def _lifecycle_client(args: argparse.Namespace):
    """A client for the admin calls, keys and TLS from the options (or the environment)."""
    from mmserve.client import Client
    from mmserve.server import key_option

    return Client(
        args.server, timeout=args.timeout, admin_key=key_option(args.admin_key, args.admin_key_file, "admin key"),
        ssl=args.tls, root_certificates=args.tls_ca, private_key=args.tls_key, certificate_chain=args.tls_cert,
        tls_server_name=args.tls_server_name,
    )


def _lifecycle(args: argparse.Namespace, action) -> int:
    """Run one lifecycle action with its client; user-facing messages and exit codes."""
    from mmserve.client.errors import (
        MmserveError,
        PermissionDeniedError,
        ServerUnavailableError,
    )
    from mmserve.lifecycle import Lifecycle, LifecycleError, SwitchFailedError

    try:
        if getattr(args, "offline", False):
            return action(Lifecycle(args.repository, audit_log=args.audit_log))
        with _lifecycle_client(args) as client:
            return action(Lifecycle(args.repository, client, audit_log=args.audit_log))
    except SwitchFailedError as error:  # the server did not load the new version; nothing changed
        print(f"mmserve: {error}", file=sys.stderr)
        return EXIT_FAILED
    except LifecycleError as error:
        print(f"mmserve: {error}", file=sys.stderr)
        return EXIT_USAGE
    except PermissionDeniedError as error:
        print(f"mmserve: the server at {args.server} refused: {error.server_message or error}. Pass its admin key "
              "with --admin-key or MMSERVE_ADMIN_KEY (and a client certificate with --tls-cert/--tls-key where it "
              "asks for one).", file=sys.stderr)
        return EXIT_DENIED
    except ServerUnavailableError as error:
        print(f"mmserve: no server reachable at {args.server} ({error.server_message or error}). Start one with "
              f"`mmserve serve --repository {args.repository}` or point --server at it"
              + ("; `mmserve products --offline` lists the repository without one." if args.command == "products" else "."),
              file=sys.stderr)
        return EXIT_UNREACHABLE
    except MmserveError as error:
        print(f"mmserve: {args.command} {getattr(args, 'product', '')} failed: {error}. "
              "The server's log says more; the audit log keeps the attempt.", file=sys.stderr)
        return EXIT_FAILED


def _products(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    def show(lifecycle) -> int:
        products = lifecycle.products()
        if args.json:
            print(json.dumps([asdict(p) for p in products], indent=2, default=str))
            return 0
        if not products:
            print(f"no products in {args.repository}: export one with `mmserve export ... --repository {args.repository}`")
            return 0
        rows = [("PRODUCT", "KIND", "VERSION", "STATE", "HEADLINE")]
        for p in products:
            versions = ",".join(str(v.version) for v in p.versions)
            active = "-" if p.active_version is None else str(p.active_version)
            rows.append((p.name, p.kind.value, active + (f" of {versions}" if len(p.versions) > 1 else ""),
                         p.state, p.headline))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        for p in products:
            if p.reason and p.state != "READY":
                print(f"{p.name}: {p.reason}")
        return 0

    return _lifecycle(args, show)


def _admin_action(args: argparse.Namespace) -> int:
    def act(lifecycle) -> int:
        if args.command == "rollback":
            entry = lifecycle.rollback(args.product, to=args.to)
        else:
            entry = getattr(lifecycle, args.command)(args.product)
        print(entry.detail)
        return 0

    return _lifecycle(args, act)


def register(commands) -> None:
    """`mmserve products` and the admin commands, all through mmserve.lifecycle."""
    connection = Parser(add_help=False)
    connection.add_argument("--server", default=os.environ.get("MMSERVE_SERVER", "localhost:8001"),
                            help="the server's gRPC HOST:PORT (default: $MMSERVE_SERVER or localhost:8001)")
    connection.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY,
                            help="the repository that server serves: products, versions, cards, audit log")
    connection.add_argument("--admin-key", default=os.environ.get("MMSERVE_ADMIN_KEY"),
                            help="the server's admin key (default: $MMSERVE_ADMIN_KEY)")
    connection.add_argument("--admin-key-file", type=Path,
                            help="read the admin key from this file instead (a mounted secret; never in `ps`)")
    connection.add_argument("--tls", action="store_true", help="connect with TLS (implied by the --tls-* files)")
    connection.add_argument("--tls-ca", type=Path, help="PEM of the CA that signed the server's certificate")
    connection.add_argument("--tls-cert", type=Path, help="client certificate (PEM) for mutual TLS, with --tls-key")
    connection.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    connection.add_argument("--tls-server-name", help="the name the server's certificate carries, if not the host")
    connection.add_argument("--timeout", type=float, default=300.0, help="seconds one call may take (loads can be slow)")
    connection.add_argument("--audit-log", type=Path, default=os.environ.get("MMSERVE_AUDIT_LOG"),
                            help="append-only audit log (default: $MMSERVE_AUDIT_LOG or REPOSITORY/.mmserve-audit.jsonl)")

    products = commands.add_parser(
        "products", parents=[connection], epilog=_LIFECYCLE_EPILOG,
        help="list the products (pipelines, not their internal steps): kind, versions, state, card headline",
    )
    products.add_argument("--json", action="store_true", help="everything, with steps and product cards, as JSON")
    products.add_argument("--offline", action="store_true", help="read the repository only; states are UNKNOWN")
    products.set_defaults(handler=_products)
    actions = {
        "load": "load a product (and the steps it calls) on the server",
        "unload": "unload a product and the steps no other loaded product calls",
        "reload": "pick up a new export of a product on a live server, without a failed request",
        "rollback": "serve an earlier version of a product (default: the one before the active one)",
    }
    for name, text in actions.items():
        command = commands.add_parser(name, parents=[connection], help=text, description=text, epilog=_LIFECYCLE_EPILOG)
        command.add_argument("product", help="the product's name (`mmserve products` lists them)")
        if name == "rollback":
            command.add_argument("--to", type=int, metavar="VERSION", help="the version to serve (default: the previous one)")
        command.set_defaults(handler=_admin_action)
