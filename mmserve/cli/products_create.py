"""`mmserve products create|publish` (products from examples) and `mmserve jobs` (the fine-tune queue).

`create` and `publish` are sub-actions of `mmserve products`, whose bare form still lists the
products (mmserve/cli/lifecycle.py); the work lives in mmserve/products/.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .common import DEFAULT_REPOSITORY, Parser

EXIT_DATA = 2  # the examples or the request are wrong: the message says what to fix
EXIT_FAILED = 1  # training or publishing failed
EXIT_UNREACHABLE = 3
EXIT_DENIED = 4


def _repository(args: argparse.Namespace) -> Path:
    return Path(getattr(args, "repository", None) or DEFAULT_REPOSITORY)


def _client(args: argparse.Namespace):
    from .lifecycle import _lifecycle_client

    return _lifecycle_client(args)


def _print_report(run) -> None:
    from mmserve.products.report import CONFUSION_PNG, REPORT_MD, read_report

    report = read_report(run.folder)
    if report is None:
        return
    scores = report["scores"]
    print(f"{report['product']}: {report['method']} on {report['train_examples']} examples")
    print(f"  held-out accuracy {100 * scores['accuracy']:.1f}%, macro-F1 {100 * scores['macro_f1']:.1f} "
          f"({scores['n']} examples, {len(scores['labels'])} labels)")
    current = report.get("current")
    if current:
        if "error" in current:
            print(f"  current version {current['version']}: {current['error']}")
        else:
            print(f"  current version {current['version']} on the same examples ({current['measured']}): accuracy "
                  f"{100 * current['accuracy']:.1f}%, macro-F1 {100 * current['macro_f1']:.1f}")
    weakest = sorted(scores["per_label"], key=lambda s: s["f1"])[:3]
    print("  weakest labels: " + ", ".join(f"{s['label']} (P {s['precision']:.2f} R {s['recall']:.2f})" for s in weakest))
    seconds = report.get("seconds") or {}
    if seconds:
        print("  time: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    print(f"  report: {run.folder / REPORT_MD}, confusion matrix: {run.folder / CONFUSION_PNG}")


def _progress_printer():
    last = {"line": ""}

    def show(run) -> None:
        status = run.status()
        line = f"[{run.id}] {status.state}: {status.stage}"
        if status.train_loss is not None:
            line += f"; epoch {status.epoch}: train loss {status.train_loss:.4f}"
        if status.dev_value is not None:
            line += f", {status.dev_metric} {status.dev_value:.4f}"
        if line != last["line"]:
            print(line, flush=True)
            last["line"] = line

    return show


def _publish(args: argparse.Namespace, run) -> int:
    from mmserve.client.errors import MmserveError, PermissionDeniedError, ServerUnavailableError
    from mmserve.lifecycle import Lifecycle, LifecycleError
    from mmserve.products.create import CreateError, publish

    try:
        if args.offline:
            entry = publish(run, Lifecycle(_repository(args), audit_log=args.audit_log))
        else:
            with _client(args) as client:
                entry = publish(run, Lifecycle(_repository(args), client, audit_log=args.audit_log))
    except (CreateError, LifecycleError) as error:
        print(f"mmserve: {error}", file=sys.stderr)
        return EXIT_DATA
    except PermissionDeniedError as error:
        print(f"mmserve: the server refused: {error}. Pass its admin key with --admin-key or MMSERVE_ADMIN_KEY.",
              file=sys.stderr)
        return EXIT_DENIED
    except ServerUnavailableError as error:
        print(f"mmserve: no server reachable at {args.server} ({error}); start one (`mmserve serve --repository "
              f"{_repository(args)}`) or publish with --offline (served from the server's next start)", file=sys.stderr)
        return EXIT_UNREACHABLE
    except MmserveError as error:
        print(f"mmserve: publishing failed: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"published {run.request.name}: {entry.detail}")
    print(f"roll back with `mmserve rollback {run.request.name} --repository {_repository(args)}`")
    return 0


def _create(args: argparse.Namespace) -> int:
    from mmserve.exporters.onnx_export import ExportError
    from mmserve.products import jobs
    from mmserve.products.create import CreateError, create
    from mmserve.products.data import DataProblem
    from mmserve.products.runs import REPORTED, CreateRequest

    request = CreateRequest(
        name=args.name, kind=args.kind, data=str(Path(args.data).resolve()), mode=args.mode,
        repository=str(_repository(args).resolve()), heldout=str(Path(args.heldout).resolve()) if args.heldout else None,
        encoder=args.encoder, head=args.head, lora=args.lora, base=str(args.base) if args.base else None,
        epochs=args.epochs, seed=args.seed,
    )
    started = time.perf_counter()
    try:
        if args.offline:
            run = create(request)
        else:
            with _client(args) as client:
                run = create(request, client)
    except (DataProblem, CreateError, ExportError) as error:
        print(f"mmserve: {error}", file=sys.stderr)
        return EXIT_DATA
    print(f"run {run.id}: {run.status().stage}")
    if request.mode == "finetune":
        if args.no_wait:
            print(f"queued; follow it with `mmserve jobs`, run the queue with `mmserve jobs work` (the console runs it too)")
            return 0
        jobs.wait_for(run, _progress_printer())
    status = run.status()
    if status.state != REPORTED:
        print(f"mmserve: run {run.id} {status.state}: {status.error or status.stage}", file=sys.stderr)
        return EXIT_FAILED
    _print_report(run)
    print(f"  ready in {time.perf_counter() - started:.1f} s")
    if not args.publish:
        print(f"nothing is served yet: `mmserve products publish {run.id}` makes it a new version of {request.name}")
        return 0
    code = _publish(args, run)
    if code == 0:
        print(f"live {time.perf_counter() - started:.1f} s after the command started")
    return code


def _publish_command(args: argparse.Namespace) -> int:
    from mmserve.products.runs import find_run

    try:
        run = find_run(args.run)
    except LookupError as error:
        print(f"mmserve: {error}", file=sys.stderr)
        return EXIT_DATA
    return _publish(args, run)


def _jobs(args: argparse.Namespace) -> int:
    from mmserve.products import jobs
    from mmserve.products.runs import find_run

    if args.action == "work":
        ran = jobs.work(on_change=_progress_printer())
        print(f"{ran} job(s) run" if ran or not jobs.queued() else "another worker runs the queue")
        return 0
    if args.action == "report":  # what the worker runs after training, in a process of its own
        return jobs.report_job(find_run(args.job))
    if args.action in ("cancel", "log", "show"):
        if not args.job:
            print(f"mmserve: jobs {args.action} needs a job id (`mmserve jobs` lists them)", file=sys.stderr)
            return EXIT_DATA
        try:
            run = find_run(args.job)
            if args.action == "cancel":
                print(jobs.cancel(run))
            elif args.action == "log":
                print(run.path(jobs.TRAIN_LOG).read_text(encoding="utf-8", errors="replace") if run.path(jobs.TRAIN_LOG).exists() else "(no log yet)")
            else:
                print(json.dumps({"id": run.id, "request": vars(run.request), "status": vars(run.status())}, indent=2, default=str))
        except (LookupError, ValueError) as error:
            print(f"mmserve: {error}", file=sys.stderr)
            return EXIT_DATA
        return 0
    listed = jobs.jobs(everything=args.all)
    if args.json:
        print(json.dumps([{"id": r.id, "request": vars(r.request), "status": vars(r.status())} for r in listed],
                         indent=2, default=str))
        return 0
    if not listed:
        print("no fine-tune jobs: `mmserve products create NAME --mode finetune ...` queues one")
        return 0
    rows = [("JOB", "PRODUCT", "STATE", "EPOCH", "TRAIN LOSS", "DEV", "STAGE")]
    for run in listed:
        s = run.status()
        rows.append((run.id, run.request.name, s.state, f"{s.epoch}/{s.epochs or '?'}",
                     "-" if s.train_loss is None else f"{s.train_loss:.4f}",
                     "-" if s.dev_value is None else f"{s.dev_metric} {s.dev_value:.4f}",
                     ((s.error or s.stage).splitlines() or [""])[0]))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _connection(parser: argparse.ArgumentParser) -> None:
    """The options `mmserve products` takes before the sub-action, also accepted after it
    (SUPPRESS: a value given before is kept when none is given after)."""
    parser.add_argument("--repository", type=Path, default=argparse.SUPPRESS,
                        help=f"the repository the product goes into (default: {DEFAULT_REPOSITORY})")
    parser.add_argument("--server", default=argparse.SUPPRESS, help="the server's gRPC HOST:PORT (default: $MMSERVE_SERVER or localhost:8001)")
    parser.add_argument("--admin-key", default=argparse.SUPPRESS, help="the server's admin key (default: $MMSERVE_ADMIN_KEY)")
    parser.add_argument("--offline", action="store_true", default=argparse.SUPPRESS,
                        help="no server: compare and publish on disk only (served from the server's next start)")


def register(commands) -> None:
    """Sub-actions of the `products` command (registered before this group) and `mmserve jobs`."""
    products = commands.choices["products"]
    actions = products.add_subparsers(dest="products_action", parser_class=Parser, metavar="{create,publish}")
    create = actions.add_parser(
        "create", help="a product from labelled examples: check, train (head or fine-tune), report; --publish serves it",
        description="Check the examples, split them, train a classifier head over a shared encoder (--mode head, "
                    "seconds) or fine-tune a model (--mode finetune, a queued job), and report held-out accuracy, "
                    "macro-F1, per-label precision/recall and a confusion matrix. Nothing is served without --publish.",
    )
    create.add_argument("name", help="the product's name (a new product, or a new version of an existing one)")
    create.add_argument("--kind", required=True, help="text_classify (CSV text,label) or audio_classify "
                        "(a folder or .zip with a sub-folder of clips per label, or a CSV path,label)")
    create.add_argument("--data", type=Path, required=True, help="the labelled examples")
    create.add_argument("--mode", choices=("head", "finetune"), required=True,
                        help="head: a classifier over a shared embedding product (no second encoder is loaded); "
                             "finetune: the full (or --lora) fine-tune as a background job")
    create.add_argument("--heldout", type=Path, help="held-out examples to measure on (default: a stratified 20%% of --data)")
    create.add_argument("--publish", action="store_true", help="serve it as a new version once reported (audited)")
    create.add_argument("--encoder", help="head: the embedding product it reads (default: text_embed / audio_embed)")
    create.add_argument("--head", choices=("logreg", "centroid"), default="logreg", help="head: the classifier")
    create.add_argument("--lora", action="store_true", help="finetune: LoRA adapters instead of every weight")
    create.add_argument("--base", type=Path, help="finetune: the base model (default: the training command's)")
    create.add_argument("--epochs", type=int, help="finetune: epochs (default: the training command's)")
    create.add_argument("--seed", type=int, default=42, help="the split's and the training's seed")
    create.add_argument("--no-wait", action="store_true", help="finetune: queue the job and return")
    _connection(create)
    create.set_defaults(handler=_create)
    publish = actions.add_parser("publish", help="serve a reported run as the product's new version (audited)")
    publish.add_argument("run", help="the run id `products create` printed (`mmserve jobs --all` lists fine-tunes)")
    _connection(publish)
    publish.set_defaults(handler=_publish_command)

    jobs = commands.add_parser("jobs", help="fine-tune jobs: list (default), cancel ID, log ID, show ID, work (run the queue)")
    jobs.add_argument("action", nargs="?", choices=("list", "cancel", "log", "show", "work", "report"), default="list")
    jobs.add_argument("job", nargs="?", help="the job id (cancel, log, show)")
    jobs.add_argument("--all", action="store_true", help="every job, not only the running ones and the last few")
    jobs.add_argument("--json", action="store_true", help="ids, requests and statuses as JSON")
    jobs.set_defaults(handler=_jobs)
