"""`mmserve bench`, `mmserve soak` and `mmserve demo`: the tools that measure and show the products."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .common import DEFAULT_REPOSITORY


def _bench(args: argparse.Namespace) -> int:
    from mmserve.bench.cli import bench_command
    from mmserve.bench.perf import BenchError

    try:
        return bench_command(args)
    except BenchError as error:  # a message written for the user: no traceback
        print(f"mmserve: {error}", file=sys.stderr)
        return 2


def _soak(args: argparse.Namespace) -> int:
    from mmserve.client.errors import MmserveError
    from mmserve.server import key_option
    from mmserve.soak import SoakConfig, SoakError, default_out, run_soak

    try:
        config = SoakConfig(
            minutes=args.minutes, concurrency=args.concurrency, out=args.out or default_out(), url=args.url,
            repository=None if args.url else args.repository, window_s=args.window,
            max_rss_growth_pct=args.max_rss_growth, min_rss_growth_mib=args.min_rss_growth, request_timeout_s=args.request_timeout, server_pid=args.server_pid,
            admin_key=key_option(args.admin_key, args.admin_key_file, "admin key"),
            api_key=key_option(args.api_key, args.api_key_file, "API key"), tls=args.tls, tls_ca=args.tls_ca,
            tls_cert=args.tls_cert, tls_key=args.tls_key, tls_server_name=args.tls_server_name,
        )
        return run_soak(config)["exit_code"]
    except (ValueError, SoakError) as error:
        print(f"mmserve: soak: {error}", file=sys.stderr)
        return 2
    except MmserveError as error:  # listing the products failed: unreachable, or the admin key
        print(f"mmserve: soak: cannot list the server's products: {error}. Pass --admin-key where the server "
              "restricts its repository index, and check --url.", file=sys.stderr)
        return 2


def _add_soak_command(commands) -> None:
    soak = commands.add_parser(
        "soak", help="a long mixed load over every product: errors, p50/p99 per window and product, RSS growth",
        description="Drive every READY product with realistic inputs at a fixed concurrency for a while, "
        "sampling the server's and each Python stub's memory; write results.json, summary.md and soak.png.",
        epilog="exit codes: 0 pass, 1 a request failed, 2 cannot run, "
        "3 RSS grew more than --max-rss-growth and --min-rss-growth",
    )
    soak.add_argument("--minutes", type=float, default=10.0, help="how long the load runs")
    soak.add_argument("--concurrency", type=int, default=16, help="client threads, each with one request in flight")
    target = soak.add_mutually_exclusive_group()
    target.add_argument("--url", help="a running server's gRPC HOST:PORT (default: start one over --repository)")
    target.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY,
                        help="start a server over this repository on free loopback ports (default: %(default)s)")
    soak.add_argument("--out", type=Path, help="report folder (default: runs/soak-<UTC time>/; $MMSERVE_RUNS moves runs/)")
    soak.add_argument("--window", type=float, default=30.0, help="seconds per latency window")
    soak.add_argument("--max-rss-growth", type=float, default=5.0,
                      help="percent a process's RSS may grow after warm-up (the first 20%% of the run)")
    soak.add_argument("--min-rss-growth", type=float, default=8.0,
                      help="MiB a process may grow whatever the percentage (allocator and arena steps)")
    soak.add_argument("--request-timeout", type=float, default=30.0, help="seconds one request may take")
    soak.add_argument("--server-pid", type=int, help="with --url: the tritonserver to sample (default: found by port)")
    soak.add_argument("--admin-key", default=os.environ.get("MMSERVE_ADMIN_KEY"),
                      help="the server's admin key, to list its products (default: $MMSERVE_ADMIN_KEY)")
    soak.add_argument("--api-key", default=os.environ.get("MMSERVE_API_KEY"),
                      help="the server's API key, for inference (default: $MMSERVE_API_KEY)")
    soak.add_argument("--admin-key-file", type=Path, help="read the admin key from this file instead (never in `ps`)")
    soak.add_argument("--api-key-file", type=Path, help="read the API key from this file instead (never in `ps`)")
    soak.add_argument("--tls", action="store_true", help="connect with TLS (implied by the --tls-* files)")
    soak.add_argument("--tls-ca", type=Path, help="PEM of the CA that signed the server's certificate")
    soak.add_argument("--tls-cert", type=Path, help="client certificate (PEM) for mutual TLS, with --tls-key")
    soak.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    soak.add_argument("--tls-server-name", help="the name the server's certificate carries, if not the host")
    soak.set_defaults(handler=_soak)


def _demo(args: argparse.Namespace) -> int:
    from mmserve.demo import run_demo

    return run_demo(workdir=args.workdir, fresh=args.fresh)


def register(commands) -> None:
    bench = commands.add_parser(
        "bench", help="perf_analyzer per pipeline, in-process baseline, peers, runtimes -> CSV, markdown, plots"
    )
    from mmserve.bench.cli import add_bench_arguments  # noqa: PLC0415 - its module is heavy

    add_bench_arguments(bench, default_repository=DEFAULT_REPOSITORY)
    bench.set_defaults(handler=_bench)
    demo = commands.add_parser("demo", help="train, export, serve and call every pipeline")
    demo.add_argument("--workdir", type=Path, default=Path("artifacts/demo"))
    demo.add_argument("--fresh", action="store_true", help="retrain even if checkpoints exist")
    demo.set_defaults(handler=_demo)
    _add_soak_command(commands)
