"""`mmserve gateway` (the public REST front door), `mmserve keys` (tenants' API keys) and
`mmserve usage` (metered usage, CSV for billing). The work lives in mmserve.gateway."""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

from .common import DEFAULT_REPOSITORY, Parser

METRICS_KEY_ENV = "MMSERVE_GATEWAY_METRICS_KEY"
DEFAULT_PORT = 8090


def _store(args: argparse.Namespace):
    from mmserve.gateway.store import open_store

    return open_store(args.store, args.repository)


def _with_store(args: argparse.Namespace, work):  # noqa: ANN001, ANN202
    """``await work(store)`` and close the store, in one event loop (a Redis connection
    belongs to the loop that opened it)."""
    from mmserve.gateway.store import run

    async def go():  # noqa: ANN202
        store = _store(args)
        try:
            return await work(store)
        finally:
            await store.close()

    return run(go())


def _fail(message: str) -> int:
    print(f"mmserve: {message}", file=sys.stderr)
    return 2


def gateway_config(args: argparse.Namespace, server: str, api_key: str | None):
    """The app's configuration from the command's options (shared with `serve --gateway`)."""
    from mmserve.gateway.app import GatewayConfig
    from mmserve.gateway.catalog import Catalog
    from mmserve.server import resolve_key

    if not Path(args.repository).is_dir():
        raise FileNotFoundError(f"no repository at {args.repository}: give --repository (the one Triton serves)")
    client_options = {
        # The inference key only: the gateway never holds Triton's admin key ("" stops the
        # client from finding a local server's), so nothing it does can change what is served.
        "api_key": api_key, "admin_key": "",
        "ssl": bool(getattr(args, "triton_tls", False) or getattr(args, "triton_tls_ca", None)),
        "root_certificates": getattr(args, "triton_tls_ca", None),
    }
    return GatewayConfig(
        server=server, catalog=Catalog(args.repository), store=_store(args), client_options=client_options,
        timeout_s=args.timeout, max_items=args.max_items, max_body_bytes=args.max_body,
        metrics_key=resolve_key(None, args.metrics_key_file, METRICS_KEY_ENV, "metrics key"),
    )


def listen_of(args: argparse.Namespace, host: str, port: int):
    from mmserve.gateway.server import Listen

    return Listen(host=host, port=port, tls_cert=args.gateway_tls_cert, tls_key=args.gateway_tls_key,
                  insecure=args.insecure)


def _gateway(args: argparse.Namespace) -> int:
    from mmserve.gateway.server import GatewayError, run_gateway
    from mmserve.gateway.store import StoreError
    from mmserve.server import resolve_key

    try:
        api_key = resolve_key(None, args.triton_api_key_file, "MMSERVE_API_KEY", "Triton API key")
        config = gateway_config(args, args.server, api_key)
        listen = listen_of(args, args.host, args.port)
        listen.check()
    except (GatewayError, StoreError) as error:
        return _fail(str(error))
    print(f"gateway: {listen.url} (OpenAPI at {listen.url}/docs) -> Triton {args.server}; "
          f"store {getattr(config.store, 'url', getattr(config.store, 'path', ''))}. Ctrl-C stops it.", flush=True)
    return run_gateway(config, listen)


def add_gateway_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """Options `mmserve gateway` and `mmserve serve --gateway` share."""
    group = parser.add_argument_group("the gateway (docs/api.md)")
    group.add_argument(f"--{prefix}store", dest="store", default=None,
                       help="keys, limits and usage: sqlite:///PATH, a path, or redis://HOST:PORT/DB for replicas "
                       "(default: $MMSERVE_GATEWAY_STORE or REPOSITORY/.mmserve-gateway.sqlite3)")
    group.add_argument(f"--{prefix}tls-cert" if prefix else "--tls-cert", dest="gateway_tls_cert", type=Path,
                       help="the gateway's own certificate (PEM): HTTPS")
    group.add_argument(f"--{prefix}tls-key" if prefix else "--tls-key", dest="gateway_tls_key", type=Path,
                       help="its private key (PEM)")
    group.add_argument(f"--{prefix}max-body", dest="max_body", type=int, default=16 * 1024 * 1024,
                       help="bytes per request body, refused (413) before parsing")
    group.add_argument(f"--{prefix}max-items", dest="max_items", type=int, default=2048,
                       help="items (texts, images, clips) per request")
    group.add_argument(f"--{prefix}timeout", dest="timeout", type=float, default=30.0,
                       help="seconds a request may take at Triton")
    group.add_argument(f"--{prefix}metrics-key-file", dest="metrics_key_file", type=Path,
                       help=f"the key Prometheus sends for /metrics (default: ${METRICS_KEY_ENV}; none: /metrics refused)")


def _audit_log(args: argparse.Namespace) -> Path:
    from mmserve.audit import AUDIT_LOG

    return Path(args.audit_log) if args.audit_log else Path(args.repository) / AUDIT_LOG


def _keys_create(args: argparse.Namespace) -> int:
    from mmserve.audit import actor_for
    from mmserve.gateway.admin import create_key
    from mmserve.gateway.keys import KeyOptionError

    try:
        key, record = _with_store(args, lambda store: create_key(
            store, _audit_log(args), actor_for(), args.tenant, args.products,
            rate=args.rate, quota=args.quota, expires=args.expires))
    except KeyOptionError as error:
        return _fail(str(error))
    unknown = _unknown_products(args.repository, record.products)
    if args.json:
        print(json.dumps({"key": key, **record.public()}))
    else:
        print(key)
        print(f"{record.id}: tenant {record.tenant}, products {','.join(record.products)}"
              f"{f', {record.rate:g} requests/s' if record.rate else ''}"
              f"{f', {record.quota} items/month' if record.quota else ''}"
              f"{f', expires {record.expires}' if record.expires else ''}. "
              "The key is shown once and stored only as a hash: give it to the tenant now.", file=sys.stderr)
    if unknown:
        print(f"note: {', '.join(unknown)} not in {args.repository} (yet)", file=sys.stderr)
    return 0


def _unknown_products(repository: Path, products) -> list[str]:  # noqa: ANN001
    try:
        from mmserve.gateway.catalog import Catalog

        names = set(Catalog(repository).names())
    except Exception:  # noqa: BLE001 - only a hint
        return []
    return [p for p in products if p not in names]


def _keys_list(args: argparse.Namespace) -> int:
    records = _with_store(args, lambda store: store.keys())
    if args.json:
        print(json.dumps([r.public() for r in records], indent=2))
        return 0
    print(f"{'ID':16} {'TENANT':16} {'PRODUCTS':32} {'RATE/S':>7} {'QUOTA/MONTH':>12} {'EXPIRES':26} STATE")
    for r in records:
        state = f"revoked {r.revoked}" if r.revoked else ("expired" if r.expired() else "active")
        print(f"{r.id:16} {r.tenant:16} {','.join(r.products):32} {(f'{r.rate:g}' if r.rate else '-'):>7} "
              f"{(str(r.quota) if r.quota else '-'):>12} {(r.expires or '-'):26} {state}")
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    from mmserve.audit import actor_for
    from mmserve.gateway.admin import revoke_key

    record = _with_store(args, lambda store: revoke_key(store, _audit_log(args), actor_for(), args.id))
    if record is None:
        return _fail(f"no key {args.id!r}: `mmserve keys list` shows the ids")
    print(f"revoked {record.id} (tenant {record.tenant}) at {record.revoked}; it is refused from now on")
    return 0


def _usage(args: argparse.Namespace) -> int:
    from mmserve.gateway.store import since_time
    from mmserve.gateway.usage import summarise

    try:
        since = since_time(args.since)
        until = since_time(args.until) if args.until else None
    except ValueError as error:
        return _fail(str(error))
    rows = _with_store(args, lambda store: store.usage(since, until))
    rows = summarise(rows, args.by, tenant=args.tenant, product=args.product)
    fields = ["period", "tenant", "product", "status", "requests", "items", "bytes"]
    if args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(fields)
        writer.writerows([[getattr(r, f) for f in fields] for r in rows])
        return 0
    print(f"{'PERIOD':26} {'TENANT':16} {'PRODUCT':20} {'STATUS':>6} {'REQUESTS':>9} {'ITEMS':>9} {'BYTES':>12}")
    for r in rows:
        print(f"{r.period:26} {r.tenant:16} {r.product:20} {r.status:>6} {r.requests:>9} {r.items:>9} {r.bytes:>12}")
    return 0


def _store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY,
                        help="the repository the gateway serves (where its store and audit log live unless given)")
    parser.add_argument("--store", help="sqlite:///PATH, a path, or redis://HOST:PORT/DB "
                        "(default: $MMSERVE_GATEWAY_STORE or REPOSITORY/.mmserve-gateway.sqlite3)")


def register(commands) -> None:
    gateway = commands.add_parser(
        "gateway", help="the public REST front door: OpenAI-compatible embeddings and a route per kind, with keys",
        description="Serve the products of a running Triton over REST (docs/api.md): POST /v1/embeddings "
        "(OpenAI-compatible), GET /v1/models, one route per other kind, OpenAPI at /docs.",
    )
    gateway.add_argument("--server", default=os.environ.get("MMSERVE_SERVER", "localhost:8001"),
                         help="Triton's gRPC HOST:PORT (default: $MMSERVE_SERVER or localhost:8001)")
    gateway.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY,
                         help="the repository that server serves: which products exist and their kinds")
    gateway.add_argument("--host", default="127.0.0.1",
                         help="where the gateway listens (default 127.0.0.1; beyond loopback needs TLS or --insecure)")
    gateway.add_argument("--port", type=int, default=DEFAULT_PORT)
    gateway.add_argument("--insecure", action="store_true",
                         help="listen beyond loopback without TLS (behind a TLS-terminating proxy you trust)")
    gateway.add_argument("--triton-api-key-file", type=Path,
                         help="Triton's inference key, if it sets one (default: $MMSERVE_API_KEY); never the admin key")
    gateway.add_argument("--triton-tls-ca", type=Path, help="reach Triton over TLS: the CA (PEM) that signed it")
    add_gateway_options(gateway)
    gateway.set_defaults(handler=_gateway)

    keys = commands.add_parser("keys", help="tenants' API keys for the gateway: create, list, revoke")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, parser_class=Parser)
    create = keys_commands.add_parser("create", help="a new key, shown once; stored only as its hash")
    create.add_argument("--tenant", required=True, help="who the key belongs to (usage is counted per tenant)")
    create.add_argument("--products", required=True, help="the products it may use, comma-separated")
    create.add_argument("--rate", help="requests per second (R, R/s, R/min); default: unlimited")
    create.add_argument("--quota", help="items per calendar month, UTC (N, N/month, 100k); default: unlimited")
    create.add_argument("--expires", help="a date (2027-01-31, end of day UTC) or ISO 8601 time; default: never")
    create.add_argument("--json", action="store_true", help="print the key and its record as JSON")
    create.add_argument("--audit-log", type=Path, help="default: REPOSITORY/.mmserve-audit.jsonl")
    _store_options(create)
    create.set_defaults(handler=_keys_create)
    listing = keys_commands.add_parser("list", help="every key's id, tenant, products, limits and state (no secrets)")
    listing.add_argument("--json", action="store_true")
    _store_options(listing)
    listing.set_defaults(handler=_keys_list)
    revoke = keys_commands.add_parser("revoke", help="refuse a key from now on (kept in the list as revoked)")
    revoke.add_argument("id", help="the key's id (key_...), from `mmserve keys list`")
    revoke.add_argument("--audit-log", type=Path, help="default: REPOSITORY/.mmserve-audit.jsonl")
    _store_options(revoke)
    revoke.set_defaults(handler=_keys_revoke)

    usage = commands.add_parser("usage", help="metered gateway usage per tenant x product x status (CSV for billing)")
    usage.add_argument("--since", default="30d", help="a date, an ISO time or a span back from now (24h, 7d)")
    usage.add_argument("--until", help="the end (exclusive), same forms; default: now")
    usage.add_argument("--by", choices=("hour", "day", "month", "total"), default="day", help="one row per ...")
    usage.add_argument("--tenant", help="only this tenant")
    usage.add_argument("--product", help="only this product")
    usage.add_argument("--csv", action="store_true", help="CSV on stdout")
    _store_options(usage)
    usage.set_defaults(handler=_usage)


def add_serve_gateway_options(serve: argparse.ArgumentParser) -> None:
    """`mmserve serve --gateway`: the options, prefixed where `serve` has its own."""
    serve.add_argument("--gateway", action="store_true",
                       help="also serve the REST front door (docs/api.md) on --gateway-port, calling this server")
    serve.add_argument("--gateway-host", default="127.0.0.1",
                       help="where the gateway listens (beyond loopback: --gateway-tls-cert/-key, or --insecure)")
    serve.add_argument("--gateway-port", type=int, default=DEFAULT_PORT)
    add_gateway_options(serve, prefix="gateway-")


def gateway_beside(server, args: argparse.Namespace, api_key: str | None):  # noqa: ANN001, ANN201
    """The gateway on a thread of `mmserve serve`, calling its server on loopback (inference key only)."""
    from mmserve.gateway.server import GatewayError, GatewayThread
    from mmserve.gateway.store import StoreError
    from mmserve.server import LaunchError

    if args.tls_cert:
        raise LaunchError("--gateway does not reach a TLS server from inside `mmserve serve`; start it on its own "
                          "with `mmserve gateway --triton-tls-ca CA` (docs/api.md)")
    try:
        gateway = GatewayThread(gateway_config(args, server.grpc_url, api_key),
                                listen_of(args, args.gateway_host, args.gateway_port)).start()
    except (GatewayError, StoreError) as error:
        raise LaunchError(str(error)) from error
    print(f"gateway: {gateway.url} (OpenAPI at {gateway.url}/docs)", flush=True)
    return gateway
