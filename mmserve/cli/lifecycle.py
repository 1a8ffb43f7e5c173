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


def _open_lifecycle(args: argparse.Namespace, client):
    """The lifecycle of --repository, or, without one, of the server's own repository: found
    for this user's server on this host, else ./model_repository when the server serves
    it, else (products only) what the server itself reports."""
    from mmserve.lifecycle import Lifecycle, RepositoryMismatchError

    if args.repository is not None:
        return Lifecycle(args.repository, client, audit_log=args.audit_log)
    lifecycle = Lifecycle(None, client, audit_log=args.audit_log)
    if lifecycle.repository is None and DEFAULT_REPOSITORY.is_dir():
        beside = Lifecycle(DEFAULT_REPOSITORY, client, audit_log=args.audit_log)
        try:
            beside.check_repository()
            return beside
        except RepositoryMismatchError:
            pass  # another repository: list what the server reports instead
    return lifecycle


def _lifecycle(args: argparse.Namespace, action) -> int:
    """Run one lifecycle action with its client; user-facing messages and exit codes."""
    from mmserve.client.errors import (
        MmserveError,
        PermissionDeniedError,
        ServerUnavailableError,
        TLSError,
    )
    from mmserve.lifecycle import Lifecycle, LifecycleError, SwitchFailedError

    try:
        if getattr(args, "offline", False):
            return action(Lifecycle(args.repository or DEFAULT_REPOSITORY, audit_log=args.audit_log))
        with _lifecycle_client(args) as client:
            return action(_open_lifecycle(args, client))
    except SwitchFailedError as error:  # the server did not load the new version; nothing changed
        print(f"mmserve: {error}", file=sys.stderr)
        return EXIT_FAILED
    except LifecycleError as error:
        print(f"mmserve: {error}", file=sys.stderr)
        return EXIT_USAGE
    except TLSError as error:  # before ServerUnavailableError: a handshake refused is not a server down
        print(f"mmserve: {_in_flags(str(error))}", file=sys.stderr)
        return EXIT_DENIED
    except PermissionDeniedError as error:
        print(f"mmserve: the server at {args.server} refused: {error.server_message or error}. Pass its admin key "
              "with --admin-key-file, --admin-key or MMSERVE_ADMIN_KEY (and a client certificate with --tls-cert/--tls-key where it "
              "asks for one).", file=sys.stderr)
        return EXIT_DENIED
    except ServerUnavailableError as error:
        repository = args.repository or DEFAULT_REPOSITORY
        print(f"mmserve: no server reachable at {args.server} ({error.server_message or error}). Start one with "
              f"`mmserve serve --repository {repository}` or point --server at it"
              + ("; `mmserve products --offline` lists the repository without one." if args.command == "products" else "."),
              file=sys.stderr)
        return EXIT_UNREACHABLE
    except MmserveError as error:
        print(f"mmserve: {args.command} {getattr(args, 'product', '')} failed: {error}. "
              "The server's log says more; the audit log keeps the attempt.", file=sys.stderr)
        return EXIT_FAILED


# The client's TLS advice names its options; the CLI's flags say the same.
_TLS_FLAGS = (
    ("certificate_chain= and private_key=", "--tls-cert and --tls-key"), ("root_certificates=", "--tls-ca"),
    ("tls_server_name=", "--tls-server-name"), ("ssl=True", "--tls"), ("its --tls-ca", "the server's --tls-ca"),
)


def _in_flags(text: str) -> str:
    for option, flag in _TLS_FLAGS:
        text = text.replace(option, flag)
    return text


def _version_cell(version: int | None, state: str) -> str:
    if state == "UNKNOWN":
        return "?"  # no server asked
    return "-" if version is None else str(version)


def _products(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    def show(lifecycle) -> int:
        products = lifecycle.products()
        where = lifecycle.repository if lifecycle.repository is not None else f"the server at {args.server}"
        if args.json:
            print(json.dumps([asdict(p) for p in products], indent=2, default=str, ensure_ascii=False))
            return 0
        if not products:
            if lifecycle.repository is None:
                print(f"the server at {args.server} serves no products")
            else:
                print(f"no products in {where}: export one with `mmserve export ... --repository {where}`")
            return 0
        if lifecycle.repository is None:
            print(f"products of the server at {args.server} (its repository is not at hand: no versions on disk "
                  "or cards; pass --repository to see them)")
        rows = [("PRODUCT", "KIND", "SERVING", "ON-DISK", "STATE", "HEADLINE")]
        for p in products:
            versions = ",".join(str(v.version) for v in p.versions)
            active = "-" if p.active_version is None else str(p.active_version)
            rows.append((p.name, p.kind.value, _version_cell(p.served_version, p.state),
                         active + (f" of {versions}" if len(p.versions) > 1 else ""), p.state, p.headline))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        for p in products:
            if p.drift:
                print(f"{p.name}: {p.drift}")
            if p.reason and p.state != "READY":
                print(f"{p.name}: {p.reason}")
        return 0

    return _lifecycle(args, show)


# What each action does to requests, said before it runs (only unload fails requests: load,
# reload and rollback switch without a failed request).
_FAILS_REQUESTS = {
    "unload": "requests to {product} will fail (ModelNotReadyError) from now until `mmserve load {product}`",
}


def _confirmed(args: argparse.Namespace, lifecycle) -> bool:
    """Ask before an action that fails requests: on a terminal, a yes; otherwise --yes."""
    warning = _FAILS_REQUESTS.get(args.command)
    if warning is None or args.yes:
        return True
    text = warning.format(product=args.product)
    if not sys.stdin.isatty():
        print(f"mmserve: {args.command} {args.product}: {text}. Not on a terminal: pass --yes to go ahead.",
              file=sys.stderr)
    else:
        answer = input(f"{args.command} {args.product}: {text}. Go ahead? [y/N] ").strip().lower()
        if answer in ("y", "yes"):
            return True
        print("mmserve: nothing done", file=sys.stderr)
    if lifecycle.audit_log is not None:
        lifecycle.record(args.command, args.product, "", "refused: not confirmed (--yes not given)")
    return False


def _admin_action(args: argparse.Namespace) -> int:
    def act(lifecycle) -> int:
        if not args.yes:  # ask only about a product that is there, on the server this repository is
            try:
                lifecycle.product(args.product)
                known = True
            except Exception:  # noqa: BLE001 - the action itself refuses it below, on the record
                known = False
            if known and not _confirmed(args, lifecycle):
                return EXIT_USAGE
        if args.command == "rollback":
            entry = lifecycle.rollback(args.product, to=args.to)
        else:
            entry = getattr(lifecycle, args.command)(args.product)
        print(entry.detail)
        return 0

    return _lifecycle(args, act)


# Every lifecycle command reads the server's repository index or changes what it serves:
# Triton's model-repository protocol, behind the admin key.
_ADMIN_KEY_NOTE = (
    "Needs the server's admin key (--admin-key-file, --admin-key or $MMSERVE_ADMIN_KEY; found by itself for "
    "your own `mmserve serve` on this host)."
)


def register(commands) -> None:
    """`mmserve products` and the admin commands, all through mmserve.lifecycle."""
    connection = Parser(add_help=False)
    connection.add_argument("--server", default=os.environ.get("MMSERVE_SERVER", "localhost:8001"),
                            help="the server's gRPC HOST:PORT (default: $MMSERVE_SERVER or localhost:8001)")
    connection.add_argument("--repository", type=Path,
                            help="the repository that server serves: products, versions, cards, audit log; refused "
                                 "when the server serves another (default: the server's own when it runs on this "
                                 f"host, else ./{DEFAULT_REPOSITORY} if the server serves it, else what the server "
                                 "reports)")
    connection.add_argument("--admin-key", default=os.environ.get("MMSERVE_ADMIN_KEY"),
                            help="the server's admin key (default: $MMSERVE_ADMIN_KEY, else the key of your own "
                                 "`mmserve serve` on this host)")
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

    listing = ("list the products (pipelines, not their internal steps): kind, the version the server serves and "
               "the one active on disk, state, card headline")
    products = commands.add_parser(
        "products", parents=[connection], epilog=_LIFECYCLE_EPILOG, help=listing,
        description=f"{listing[0].upper()}{listing[1:]}. When they differ (an export not reloaded yet) it says so, "
                    f"with the command that reconciles them. {_ADMIN_KEY_NOTE}",
    )
    products.add_argument("--json", action="store_true", help="everything, with steps and product cards, as JSON")
    products.add_argument("--offline", action="store_true",
                          help="read the repository only (no server, no key); states are UNKNOWN")
    products.set_defaults(handler=_products)
    actions = {
        "load": "load a product (and the steps it calls) on the server",
        "unload": "unload a product and the steps no other loaded product calls; its requests fail until it is "
                  "loaded again (asks first; --yes where no one can answer)",
        "reload": "pick up a new export of a product on a live server, without a failed request",
        "rollback": "serve another version of a product (default: the one before the served one), without a "
                    "failed request; a later version with --to rolls forward",
    }
    for name, text in actions.items():
        command = commands.add_parser(name, parents=[connection], help=text, epilog=_LIFECYCLE_EPILOG,
                                      description=f"{text[0].upper()}{text[1:]}. Audited, refusals and failures "
                                                  f"included. {_ADMIN_KEY_NOTE}")
        command.add_argument("product", help="the product's name (`mmserve products` lists them)")
        if name == "rollback":
            command.add_argument("--to", type=int, metavar="VERSION", help="the version to serve (default: the previous one)")
        if name in _FAILS_REQUESTS:
            command.add_argument("--yes", action="store_true",
                                 help="go ahead without asking (needed when stdin is not a terminal)")
        else:
            command.set_defaults(yes=True)
        command.set_defaults(handler=_admin_action)
