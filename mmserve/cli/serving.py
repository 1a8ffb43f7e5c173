"""`mmserve serve` (tritonserver over a repository, optionally with the console) and `mmserve console`."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mmserve.launch.process import EXIT_TIMEOUT_S, STOP_GRACE_S

from .common import DEFAULT_REPOSITORY


def _seconds(text: str) -> float:
    """--stop-grace / --exit-timeout: seconds, more than 0 and less than an hour."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < seconds < 3600:
        raise argparse.ArgumentTypeError(f"{text} s: give more than 0 and less than an hour")
    return seconds


def _whole_seconds(text: str) -> int:
    """--exit-timeout: tritonserver's --exit-timeout-secs takes whole seconds."""
    seconds = _seconds(text)
    if seconds != int(seconds):
        raise argparse.ArgumentTypeError(f"{text} s: tritonserver's exit timeout is in whole seconds")
    return int(seconds)

if TYPE_CHECKING:
    from mmserve.console.server import ConsoleServer
    from mmserve.server import TritonServer


def _serve(args: argparse.Namespace) -> int:
    import signal

    from mmserve.server import ServerPorts, TritonServer, new_run_dir, other_users_see_arguments, resolve_key

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # a signal during start-up: unwind through start(), which stops Triton

    # SIGINT too: a shell that starts us in the background hands SIGINT down as ignored, and
    # Python keeps an inherited "ignore"; Ctrl-C or `kill -INT` must stop the server regardless.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)
    admin_key = resolve_key(args.admin_key, args.admin_key_file, "MMSERVE_ADMIN_KEY", "admin key")
    api_key = resolve_key(args.api_key, args.api_key_file, "MMSERVE_API_KEY", "API key")
    run_dir = new_run_dir()  # tritonserver's private working directory; the generated admin key's home
    log = args.log or run_dir / "triton.log"
    server = TritonServer(
        args.repository,
        ServerPorts(grpc=args.grpc_port, http=args.http_port, metrics=args.metrics_port, supervisor=args.supervisor_port),
        host=args.host,
        models=args.model or None,
        log_file=log,
        verbose=args.verbose,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_ca=args.tls_ca,
        admin_key=admin_key,
        api_key=api_key,
        insecure=args.insecure,
        http_host=args.http_host,
        supervise=not args.no_supervise,
        run_dir=run_dir,
        generate_admin_key=admin_key is None,  # model control is never open: a new key per start
        stop_grace_s=args.stop_grace,
        exit_timeout_s=args.exit_timeout,
    )
    try:
        server.start()
    except BaseException:
        if not any(run_dir.iterdir()):
            run_dir.rmdir()  # stopped before Triton started: no empty run folder left behind
        raise
    http = server.effective_http_host
    print(
        f"Triton is ready: gRPC {args.host}:{args.grpc_port}{' (TLS)' if args.tls_cert else ''}, "
        f"HTTP {http}:{args.http_port}, metrics {http}:{args.metrics_port}/metrics"
        + (f", supervisor {http}:{args.supervisor_port}/metrics" if server.supervise else "")
        + f"; log {log}. Ctrl-C stops it.",
        flush=True,
    )
    if server.admin_key_file is not None:
        print(f"admin key (new for this run): {server.admin_key_file}; the mmserve commands, the client and the "
              "console on this host read it from there (docs/security.md)", flush=True)
    if server.admin_key is not None and not server.keys_hidden and other_users_see_arguments():
        print("mmserve: note: Triton takes its keys on its command line, which other users of this host can read "
              "with ps; on a shared host mount /proc with hidepid=2 (docs/security.md)", file=sys.stderr, flush=True)
    if args.gateway:
        from .gateway import gateway_beside

        try:
            gateway_beside(server, args, api_key)  # a daemon thread: it ends with this process
        except BaseException:
            server.stop()
            raise
    if not args.console:
        return server.wait()
    try:
        console = _console_beside(server, args, server.admin_key, api_key)
    except BaseException:
        server.stop()
        raise
    try:
        return server.wait()
    finally:
        console.stop()


def _console_beside(server: "TritonServer", args: argparse.Namespace, admin_key: str | None,
                    api_key: str | None) -> "ConsoleServer":
    """`serve --console`: the console on a thread of this process, talking to this server on loopback."""
    from mmserve.console.server import ConsoleServer
    from mmserve.console.settings import (
        ADMIN_KEY_ENV,
        ConsoleError,
        ConsoleSettings,
        one_time_key,
    )
    from mmserve.server import LaunchError

    if args.tls_cert:
        raise LaunchError(
            "--console does not reach a TLS server from inside `mmserve serve`; start it on its own with "
            "`mmserve console --tls-ca CA --tls-cert CERT --tls-key KEY` (docs/console.md)"
        )
    settings = ConsoleSettings(
        server=server.grpc_url, repository=args.repository, port=args.console_port,
        metrics_url=server.metrics_url, admin_key=admin_key, api_key=api_key,
        sign_in_key=one_time_key() if server.admin_key_file is not None else None,  # a generated key: nobody typed it
    )
    try:
        console = ConsoleServer(settings).start()
    except ConsoleError as error:  # e.g. its port is taken: said like the server's own start-up errors
        raise LaunchError(str(error)) from error
    if settings.sign_in_key:
        print(f"{ADMIN_KEY_ENV} is not set: sign in to the console with this one-time key: {settings.sign_in_key}")
    print(f"console: {console.url}", flush=True)
    return console


def _console(args: argparse.Namespace) -> int:
    from mmserve.console.settings import (
        ADMIN_KEY_ENV,
        API_KEY_ENV,
        ConsoleError,
        ConsoleSettings,
        is_loopback,
        one_time_key,
        read_key,
    )
    from mmserve.console.options import web_options

    try:
        admin_key = read_key(ADMIN_KEY_ENV, args.admin_key_file)
        from mmserve.local_servers import admin_key_for

        # A local `mmserve serve` of this user generated its key: the console reaches Triton with it,
        # and people still sign in with the one-time key below (nobody typed the generated one).
        triton_key = admin_key or admin_key_for(args.server)
        settings = ConsoleSettings(
            server=args.server, repository=args.repository, host=args.host, port=args.port,
            metrics_url=args.metrics_url, admin_key=triton_key, api_key=read_key(API_KEY_ENV, args.api_key_file),
            sign_in_key=None if admin_key or not is_loopback(args.host) else one_time_key(),
            tls=args.tls, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
            tls_server_name=args.tls_server_name, audit_log=args.audit_log, sample_interval_s=args.sample_interval,
            **web_options(args),
        )
        settings.check()
        from mmserve.console.server import run_console

        if settings.sign_in_key:
            print(f"{ADMIN_KEY_ENV} is not set: sign in to the console with this one-time key: {settings.sign_in_key}")
        return run_console(settings)
    except ConsoleError as error:
        print(f"mmserve: {error}", file=sys.stderr)
        return 2


def _add_console_command(commands) -> None:
    console = commands.add_parser(
        "console", help="web console: products, live statistics, playground, signed-in admin actions, audit log",
        description="A web console for a running mmserve server. Keys come from the environment "
        "(MMSERVE_ADMIN_KEY, MMSERVE_API_KEY) or files, never from the command line.",
    )
    console.add_argument("--server", default=os.environ.get("MMSERVE_SERVER", "localhost:8001"),
                         help="Triton's gRPC HOST:PORT (default: $MMSERVE_SERVER or localhost:8001)")
    console.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY,
                         help="the repository that server serves (products, versions, cards, audit log)")
    console.add_argument("--host", default="127.0.0.1",
                         help="where the console listens (default 127.0.0.1; beyond loopback needs MMSERVE_ADMIN_KEY and --https-cert, or --insecure)")
    console.add_argument("--port", type=int, default=8080, help="the console's port (default 8080)")
    console.add_argument("--metrics-url", help="Triton's Prometheus metrics (default: http://SERVER-HOST:8002/metrics)")
    console.add_argument("--admin-key-file", type=Path, help="file holding the admin key (default: $MMSERVE_ADMIN_KEY)")
    console.add_argument("--api-key-file", type=Path, help="file holding the API key (default: $MMSERVE_API_KEY)")
    console.add_argument("--tls", action="store_true", help="reach Triton over TLS (implied by the --tls-* files)")
    console.add_argument("--tls-ca", type=Path, help="PEM of the CA that signed Triton's certificate")
    console.add_argument("--tls-cert", type=Path, help="client certificate (PEM) for mutual TLS, with --tls-key")
    console.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    console.add_argument("--tls-server-name", help="the name Triton's certificate carries, if not the host")
    console.add_argument("--audit-log", type=Path, default=os.environ.get("MMSERVE_AUDIT_LOG"),
                         help="append-only audit log (default: $MMSERVE_AUDIT_LOG or the lifecycle's, in the repository)")
    console.add_argument("--sample-interval", type=float, default=2.0, help="seconds between statistics samples")
    from mmserve.console.options import add_web_options  # stdlib only

    add_web_options(console)
    console.set_defaults(handler=_console)


def register(commands) -> None:
    serve = commands.add_parser("serve", help="run tritonserver over a repository")
    serve.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--supervisor-port", type=int, default=8003, help="the supervisor's /metrics and /status")
    serve.add_argument("--host", default="127.0.0.1",
                       help="gRPC address; 0.0.0.0 listens on every interface (needs TLS, or --insecure)")
    serve.add_argument("--http-host", help="HTTP, metrics and supervisor address (default: --host; 127.0.0.1 with TLS)")
    serve.add_argument("--model", action="append", help="load only this model (repeatable)")
    serve.add_argument("--log", type=Path,
                       help="write Triton's log here (default: runs/serve-<UTC time>/triton.log; $MMSERVE_RUNS moves runs/)")
    serve.add_argument("--verbose", action="store_true",
                       help="Triton's verbose log (--log-verbose=1): every load step and request, in the log file")
    serve.add_argument("--stop-grace", type=_seconds, default=STOP_GRACE_S, metavar="SECONDS",
                       help=f"after SIGTERM or Ctrl-C, how long tritonserver gets to finish before its processes "
                            f"are killed (default {STOP_GRACE_S}; more than --exit-timeout; keep it below "
                            "Kubernetes' terminationGracePeriodSeconds)")
    serve.add_argument("--exit-timeout", type=_whole_seconds, default=EXIT_TIMEOUT_S,
                       metavar="SECONDS",
                       help=f"how long a stopping tritonserver waits for in-flight requests and unloading models "
                            f"(its --exit-timeout-secs; default {EXIT_TIMEOUT_S})")
    serve.add_argument("--no-supervise", action="store_true",
                       help="do not reload models whose Python stub died (the supervisor, on by default)")
    tls = serve.add_argument_group("TLS for gRPC (docs/security.md)")
    tls.add_argument("--tls-cert", type=Path, help="the server's certificate (PEM)")
    tls.add_argument("--tls-key", type=Path, help="the server's private key (PEM)")
    tls.add_argument("--tls-ca", type=Path, help="CA (PEM) for client certificates: mutual TLS, clients must present one")
    keys = serve.add_argument_group("access keys (prefer the files or the environment: values show in `ps`)")
    admin = keys.add_mutually_exclusive_group()
    admin.add_argument("--admin-key", help="required for load/unload/index, shared memory, trace, logging "
                       "(default: $MMSERVE_ADMIN_KEY, else a new one per start in RUN_FOLDER/admin.key, mode 0600)")
    admin.add_argument("--admin-key-file", type=Path, help="read the admin key from this file (a mounted secret)")
    api = keys.add_mutually_exclusive_group()
    api.add_argument("--api-key", help="required for inference as well (default: $MMSERVE_API_KEY)")
    api.add_argument("--api-key-file", type=Path, help="read the API key from this file")
    keys.add_argument("--insecure", action="store_true",
                      help="serve gRPC beyond loopback without TLS or without a key of yours (a network you trust only)")
    console = serve.add_argument_group("the web console beside the server (docs/console.md)")
    console.add_argument("--console", action="store_true",
                         help="also serve the management console (on loopback; the admin key signs people in)")
    console.add_argument("--console-port", type=int, default=8080, help="the console's port")
    from .gateway import add_serve_gateway_options

    add_serve_gateway_options(serve)
    serve.set_defaults(handler=_serve)
    _add_console_command(commands)
