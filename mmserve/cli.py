"""`mmserve`: train, export, serve, demo. The command line only parses and reports;
the work lives in the training, exporters and server modules."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_REPOSITORY = Path("model_repository")


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
        **overrides,
    )
    result = train_text(config)
    print(result.report)
    print(f"checkpoint: {result.checkpoint}")
    return 0


def _export_text(args: argparse.Namespace) -> int:
    from mmserve.exporters.text import export_text

    result = export_text(
        args.checkpoint, args.repository, name=args.name, int8=args.int8, profile=args.profile,
        max_length=args.max_length,
    )
    print(result.summary())
    print(f"written to {args.repository.resolve()}; (re)load with `mmserve serve --repository {args.repository}`")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from mmserve.server import ServerPorts, TritonServer

    server = TritonServer(
        args.repository,
        ServerPorts(grpc=args.grpc_port, http=args.http_port, metrics=args.metrics_port),
        host=args.host,
        models=args.model or None,
        log_file=args.log,
        verbose=args.verbose,
    )
    server.start()
    print(
        f"Triton is ready: gRPC {args.host}:{args.grpc_port}, HTTP {args.host}:{args.http_port}, "
        f"metrics :{args.metrics_port}/metrics. Ctrl-C stops it.",
        flush=True,
    )
    return server.wait()


def _demo(args: argparse.Namespace) -> int:
    from mmserve.demo import run_demo

    return run_demo(workdir=args.workdir, fresh=args.fresh)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmserve", description=__doc__)
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
    text.set_defaults(handler=_train_text)

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
    export_text.set_defaults(handler=_export_text)

    serve = commands.add_parser("serve", help="run tritonserver over a repository")
    serve.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen on every interface")
    serve.add_argument("--model", action="append", help="load only this model (repeatable)")
    serve.add_argument("--log", type=Path, help="write Triton's log here")
    serve.add_argument("--verbose", action="store_true")
    serve.set_defaults(handler=_serve)

    demo = commands.add_parser("demo", help="train, export, serve and call every pipeline")
    demo.add_argument("--workdir", type=Path, default=Path("artifacts/demo"))
    demo.add_argument("--fresh", action="store_true", help="retrain even if checkpoints exist")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    from mmserve.exporters.onnx_export import ExportError
    from mmserve.server import ServerError
    from mmserve.training.errors import TrainingError

    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return 130
    except (ServerError, ExportError, TrainingError, FileNotFoundError) as error:
        # Typed errors carry a message written for the user: no traceback.
        print(f"mmserve: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
