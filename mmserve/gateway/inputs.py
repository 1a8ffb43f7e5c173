"""A request's items as the typed client takes them, read by the kind table's ``InputShape``.

Texts are strings. Images and audio travel in JSON as strings too (mmserve's extension
of the OpenAI API): a data URL (``data:image/png;base64,...``, ``data:audio/wav;base64,...``)
or bare base64 of the encoded file. Decoded bytes go to the client as bytes -- never as
a string, which the client would take for a path -- and get the client's own media checks
(image formats and size before any pixel; audio headers before any sample).
"""
from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mmserve.client.errors import InvalidInputError
from mmserve.client.media import open_image
from mmserve.kinds import InputShape, KindInfo

from .errors import bad_request

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)
_MEDIA_PREFIX = {InputShape.IMAGE: "image/", InputShape.IMAGE_AND_LABELS: "image/", InputShape.AUDIO: "audio/"}
_WHAT = {InputShape.TEXT: "a string (or a list of strings)",
         InputShape.IMAGE: "an image as a data URL or base64 (or a list of them)",
         InputShape.IMAGE_AND_LABELS: "an image as a data URL or base64 (or a list of them), with 'labels'",
         InputShape.AUDIO: "a WAV/FLAC/OGG clip as a data URL or base64 (or a list of them)"}


@dataclass(frozen=True)
class Items:
    """What the client method gets: the items and, for zero-shot, the labels."""

    values: list[Any]
    labels: tuple[str, ...] = ()


def items_of(info: KindInfo, raw: Any, *, max_items: int, labels: Any = None) -> Items:
    """The request's ``input`` for a product of this kind; ApiError (400) naming the problem."""
    values = _as_list(raw, info)
    if not values:
        raise bad_request("'input' is empty: send at least one item", param="input", code="empty_input")
    if len(values) > max_items:
        raise bad_request(f"'input' has {len(values)} items; at most {max_items} per request: split it",
                          param="input", code="too_many_inputs")
    decode = _DECODERS[info.input]
    items = Items([decode(value, i, info) for i, value in enumerate(values)])
    if info.input is InputShape.IMAGE_AND_LABELS:
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
            raise bad_request(f"{info.title} needs 'labels': a non-empty list of candidate label strings",
                              param="labels", code="missing_labels")
        items = Items(items.values, tuple(labels))
    return items


def _as_list(raw: Any, info: KindInfo) -> list[Any]:
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list):
        if raw and all(isinstance(x, int) for x in raw) or any(isinstance(x, list) for x in raw):
            raise bad_request(
                "'input' holds token arrays; mmserve products tokenize in the server: send the text itself",
                param="input", code="token_arrays_not_supported",
            )
        if all(isinstance(x, str) for x in raw):
            return raw
    raise bad_request(f"'input' must be {_WHAT[info.input]} for {info.title.lower()}", param="input",
                      code="invalid_type")


def _text(value: str, index: int, info: KindInfo) -> str:
    return value


def _media_bytes(value: str, index: int, info: KindInfo) -> bytes:
    where = f"input[{index}]"
    payload = value
    match = _DATA_URL.match(value)
    if match:
        mime = (match["mime"] or "").lower()
        if mime and not mime.startswith(_MEDIA_PREFIX[info.input]):
            raise bad_request(f"{where} is a {mime} data URL; {info.title.lower()} takes {_WHAT[info.input]}",
                              param="input", code="invalid_media")
        if not match["b64"]:
            raise bad_request(f"{where}: only base64 data URLs are accepted (';base64,')", param="input",
                              code="invalid_media")
        payload = value[match.end():]
    elif value.startswith(("http://", "https://", "/", "file:")):
        raise bad_request(f"{where} looks like a URL or a path; the gateway never fetches: send the file's bytes "
                          "as a data URL or base64", param="input", code="invalid_media")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{where} is not valid base64 ({len(payload)} characters)", param="input",
                          code="invalid_media") from None
    if not data:
        raise bad_request(f"{where} is empty", param="input", code="invalid_media")
    return data


def _image(value: str, index: int, info: KindInfo) -> bytes:
    data = _media_bytes(value, index, info)
    try:  # the client's format allowlist and size check, from the header: no pixel decoded here
        open_image(data, where=f"input[{index}]").close()
    except InvalidInputError as error:
        raise bad_request(str(error), param="input", code="invalid_image") from None
    return data


_DECODERS: dict[InputShape, Callable[[str, int, KindInfo], Any]] = {
    InputShape.TEXT: _text,
    InputShape.IMAGE: _image,
    InputShape.IMAGE_AND_LABELS: _image,
    InputShape.AUDIO: _media_bytes,  # decoded by the client (soundfile), its header checked first
}


def call_args(info: KindInfo, items: Items) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional arguments of the kind's client method (``KindInfo.client_method``)."""
    if info.input is InputShape.IMAGE_AND_LABELS:
        return (items.values, list(items.labels)), {}
    if info.input is InputShape.AUDIO:
        return (items.values, None), {}  # the files' own sample rates
    return (items.values,), {}


__all__ = ["Items", "items_of", "call_args"]
