"""The `mmserve bench` arguments and handler: parse, run, print where things went."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from mmserve.bench.checkpoints import DEFAULT_MANIFEST
from mmserve.bench.perf import BenchError


def _numbers(kind: type):
    def parse(text: str) -> list:
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None

    return parse


def _checkpoint(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected PIPELINE=PATH, got {text!r}")
    return name, Path(path)


# Exit codes: a target not met is news, not a failure, unless the caller asks (CI gates).
EXIT_TARGET_MISSED = 1
EXIT_CODES = (
    "exit codes: 0 the bench ran (targets met or not), 1 a target not met with --fail-on-target, "
    "2 it could not run (no server, a bad repository or option). First use of the peers installs infinity-emb "
    "and its own torch into artifacts/bench/venv-peers (--skip-peers: none); a server started here listens on "
    "free random ports"
)


def add_bench_arguments(parser: argparse.ArgumentParser, default_repository: Path) -> None:
    parser.epilog = EXIT_CODES
    parser.add_argument("pipelines", nargs="*", metavar="PIPELINE", help="default: every pipeline the server offers")
    parser.add_argument("--repository", dest="repositories", type=Path, action="append", metavar="DIR",
                        help=f"default: {default_repository}; give it again for each other layout to measure side by "
                             "side (e.g. an ensemble and a fused export), served one after the other")
    parser.set_defaults(repository=default_repository)
    parser.add_argument("--url", help="gRPC address of a running server (default: start one over --repository)")
    parser.add_argument("--admin-key-file", type=Path,
                        help="--url's admin key, to list its pipelines (default: $MMSERVE_ADMIN_KEY, or the key of "
                             "this user's local `mmserve serve`). perf_analyzer sends no header over gRPC, so a "
                             "server that requires an inference key cannot be measured")
    parser.add_argument("--concurrency", type=_numbers(int), default=[1, 2, 4, 8, 16], help="e.g. 1,2,4,8,16")
    parser.add_argument("--request-rate", type=_numbers(float), default=[], help="open-loop rates, e.g. 50,100")
    parser.add_argument("--shared-memory", choices=("none", "system"), default="none")
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench/latest"), help="CSV, logs, plots, results.json")
    parser.add_argument("--report", action="store_true", help="(re)write docs/benchmarks.md and docs/img/*.png")
    parser.add_argument("--docs", type=Path, default=Path("docs/benchmarks.md"), help=argparse.SUPPRESS)
    parser.add_argument("--from-results", type=Path, metavar="DIR", help="render the report from a previous run")
    parser.add_argument("--skip-peers", action="store_true",
                        help="no infinity-emb / naive FastAPI side by side (nor their venv, artifacts/bench/venv-peers)")
    parser.add_argument("--fail-on-target", action="store_true",
                        help=f"exit {EXIT_TARGET_MISSED} when a target is not met (default: report it, exit 0)")
    parser.add_argument("--skip-runtimes", action="store_true", help="no torch / ORT fp32 / INT8 table")
    parser.add_argument("--tune", action="store_true", help="also run the text_embed scheduling sweep")
    parser.add_argument("--quick", action="store_true", help="short windows and baselines (a smoke run)")
    parser.add_argument("--cpus", type=_numbers(int), help="pin server, client and peers to these CPUs, e.g. 0,1")
    parser.add_argument("--checkpoint", type=_checkpoint, action="append", default=[], metavar="PIPELINE=PATH",
                        help="the checkpoint behind a pipeline (torch rows, accuracy, peers' model)")
    parser.add_argument("--checkpoints-manifest", type=Path, default=DEFAULT_MANIFEST, metavar="FILE",
                        help="JSON {pipeline: checkpoint folder}; `mmserve demo` writes one")
    parser.add_argument("--measurement-interval", type=int, help="perf_analyzer window in ms")
    parser.add_argument("--requests", type=int, default=128, help="distinct requests per pipeline's input data")
    parser.add_argument("--client", action="store_true",
                        help="instead: the typed client vs raw tritonclient (overhead) and shared memory vs gRPC")
    parser.add_argument("--real-size", action="store_true",
                        help="instead: export ViT-B-32, BERT-base and Whisper-base (random weights) into OUT/repository, "
                             "serve them, compare with in-process and measure the server's memory (--report: its section of "
                             "docs/benchmarks.md); default --out artifacts/bench/real-size")
    parser.add_argument("--gateway", action="store_true",
                        help="instead: `mmserve gateway` (REST) vs direct gRPC, text_embed and image_embed, c=1 and "
                        "c=8 (with --report: its section of docs/benchmarks.md only)")


def repositories(args: argparse.Namespace) -> list[Path]:
    """Every --repository in the order given; the default when none was."""
    return list(args.repositories or [args.repository])


def command_line(args: argparse.Namespace) -> str:
    parts = ["mmserve", "bench", *args.pipelines]
    given = repositories(args)
    if given != [Path("model_repository")]:
        for repository in given:
            parts += ["--repository", str(repository)]
    if args.url:
        parts += ["--url", args.url]
    if args.concurrency != [1, 2, 4, 8, 16]:
        parts += ["--concurrency", ",".join(map(str, args.concurrency))]
    if args.request_rate:
        parts += ["--request-rate", ",".join(f"{r:g}" for r in args.request_rate)]
    if args.shared_memory != "none":
        parts += ["--shared-memory", args.shared_memory]
    for flag in ("report", "skip_peers", "skip_runtimes", "tune", "quick"):
        if getattr(args, flag):
            parts.append("--" + flag.replace("_", "-"))
    if args.cpus:
        parts += ["--cpus", ",".join(map(str, args.cpus))]
    for name, path in args.checkpoint:
        parts += ["--checkpoint", f"{name}={path}"]
    if args.checkpoints_manifest != DEFAULT_MANIFEST:
        parts += ["--checkpoints-manifest", str(args.checkpoints_manifest)]
    if args.measurement_interval:
        parts += ["--measurement-interval", str(args.measurement_interval)]
    if args.requests != 128:
        parts += ["--requests", str(args.requests)]
    return " ".join(shlex.quote(p) for p in parts)


def _admin_key(args: argparse.Namespace) -> str | None:
    from mmserve.launch import LaunchError
    from mmserve.launch.keys import resolve_key

    try:
        return resolve_key(None, args.admin_key_file, "MMSERVE_ADMIN_KEY", "admin key")
    except LaunchError as error:
        raise BenchError(str(error)) from None


def bench_command(args: argparse.Namespace) -> int:
    from mmserve.bench.report import load_results, write_report, write_run_summary
    from mmserve.bench.run import BenchConfig, run_bench

    first, *others = repositories(args)
    if args.real_size:
        from mmserve.bench.realsize import DEFAULT_OUT, RealSizeConfig, run_real_size, summary_lines

        out = DEFAULT_OUT if args.out == Path("artifacts/bench/latest") else args.out
        command = "mmserve bench --real-size" + (f" --out {shlex.quote(str(out))}" if out != DEFAULT_OUT else "")
        results = run_real_size(RealSizeConfig(out=out, docs=args.docs, report=args.report, command=command))
        for line in summary_lines(results):
            print(line)
        print(f"results: {out / 'results.json'}" + (f"; report: {args.docs}" if args.report else ""))
        return 0
    if args.client:
        from mmserve.bench.client import client_command

        client_command(first, args.url, calls=3000, quick=args.quick)
        return 0
    if args.gateway:
        from mmserve.bench.gateway import gateway_command

        command = f"mmserve bench --gateway --repository {shlex.quote(str(first))}" + (" --quick" if args.quick else "")
        gateway_command(first, args.url, quick=args.quick, report=args.docs if args.report else None, command=command)
        return 0
    if args.from_results:
        if not (args.from_results / "results.json").exists():
            raise BenchError(f"{args.from_results} holds no results.json; run `mmserve bench --out DIR` first")
        results = load_results(args.from_results)
        print(f"report: {write_report(results, args.docs)}")
        return 0
    config = BenchConfig(
        repository=first, compare_with=tuple(others), pipelines=tuple(args.pipelines), url=args.url,
        concurrency=tuple(args.concurrency),
        request_rates=tuple(args.request_rate), shared_memory=args.shared_memory, out=args.out,
        skip_peers=args.skip_peers, skip_runtimes=args.skip_runtimes, quick=args.quick, tune=args.tune,
        cpus=tuple(args.cpus) if args.cpus else None, checkpoints=dict(args.checkpoint),
        checkpoints_manifest=args.checkpoints_manifest, measurement_interval_ms=args.measurement_interval,
        requests=args.requests, command=command_line(args), admin_key=_admin_key(args),
    )
    results = run_bench(config)
    summary = write_run_summary(results, config.out.resolve())
    from mmserve.bench.report import headlines, targets

    for line in headlines(results):
        print(line)
    missed = []
    for target, measured, verdict in targets(results):
        print(f"- {target}: {measured.replace('**', '')} -> {verdict.strip('*')}")
        if verdict.strip("*") == "not met":
            missed.append(target)
    print(f"results: {config.out / 'results.json'}, {config.out / 'results.csv'}; summary: {summary}")
    if args.report:
        print(f"report: {write_report(results, args.docs)}")
    if missed and args.fail_on_target:
        print(f"mmserve bench: {len(missed)} target(s) not met (--fail-on-target): exit {EXIT_TARGET_MISSED}")
        return EXIT_TARGET_MISSED
    return 0
