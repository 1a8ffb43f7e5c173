"""Training output a person can read: third-party loading noise out, one line of our own in.

Loading a base model for fine-tuning makes transformers print a multi-line load report
(or, before 5.x, "Some weights of ... were not initialized ... You should probably TRAIN
this model"), progress bars for loading and writing shards, and the hub its own bars.
All of that is expected when a head is replaced, so during training it is kept out of
the way (errors still show) and `load_pretrained` prints one line saying what the report
meant: which tensors are new (randomly initialised, trained below), resized or unused.
Our own progress bars (tqdm over batches) are untouched.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from contextlib import ContextDecorator
from typing import Any

_NAMES_SHOWN = 6  # more tensors than this are summarised by module


class quiet_libraries(ContextDecorator):
    """Within the block: transformers logs errors only, shows no progress bars nor FutureWarnings, nor does the hub."""

    def __enter__(self) -> "quiet_libraries":
        from transformers.utils import logging as hf_logging

        # e.g. peft calling transformers' deprecated names: the libraries' business, not the user's
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft|huggingface_hub)(\.|$)")
        self._verbosity = hf_logging.get_verbosity()
        self._bars = hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self._hub_bars = _hub_progress_bars(enable=False)
        return self

    def __exit__(self, *exc: object) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(self._verbosity)
        if self._bars:
            hf_logging.enable_progress_bar()
        if self._hub_bars:
            _hub_progress_bars(enable=True)
        self._warnings.__exit__(*exc)


def _hub_progress_bars(enable: bool) -> bool:
    """Switch huggingface_hub's bars; returns whether they were on before."""
    try:
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    except ImportError:
        return False
    was_on = not are_progress_bars_disabled()
    (enable_progress_bars if enable else disable_progress_bars)()
    return was_on


def load_pretrained(model_class: Any, path: Any, **kwargs: Any) -> Any:
    """`model_class.from_pretrained(path, **kwargs)` without the library's report, plus our one-line summary."""
    with quiet_libraries():
        model, info = model_class.from_pretrained(path, output_loading_info=True, **kwargs)
    for line in describe_loading(info):
        print(line)
    return model


def describe_loading(info: dict[str, Any]) -> list[str]:
    """What a from_pretrained loading report means for fine-tuning, one line per kind of change."""
    lines = []
    mismatched = list(info.get("mismatched_keys") or [])
    resized = {entry[0] for entry in mismatched}
    new = sorted(set(info.get("missing_keys") or []) - resized)
    if new:
        lines.append(f"new head: {tensor_names(new)} (randomly initialised, trained below)")
    if mismatched:
        shapes = ", ".join(
            f"{key} {_shape(before)} -> {_shape(after)}" for key, before, after in sorted(mismatched, key=lambda e: e[0])
        )
        lines.append(f"resized for this label set: {shapes} (re-initialised, trained below)")
    unused = sorted(info.get("unexpected_keys") or [])
    if unused:
        lines.append(f"not used from the base: {tensor_names(unused)}; this task's model has no place for them")
    return lines


def tensor_names(names: Sequence[str]) -> str:
    """Tensor names in full when few, else grouped by module ("encoder.layers.* (96 tensors)")."""
    if len(names) <= _NAMES_SHOWN:
        return ", ".join(names)
    groups: dict[str, int] = {}
    for name in names:
        module = name.split(".")[0]
        groups[module] = groups.get(module, 0) + 1
    return ", ".join(f"{module}.* ({count} tensors)" for module, count in groups.items())


def _shape(shape: Iterable[int] | Any) -> str:
    try:
        return "[" + ", ".join(str(int(d)) for d in shape) + "]"
    except TypeError:
        return str(shape)
