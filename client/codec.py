"""Request building and response parsing for every pipeline kind, without any I/O.

The sync and asyncio clients share this module and differ only in how they send
the requests of a :class:`Plan`. Tensor names, dtypes and shapes come from
:mod:`mmserve.pipelines` (the public contract); nothing here spells a tensor name.

A plan is the requests for one client call (inputs chunked to at most
``MAX_BATCH_SIZE`` items each) plus how to turn their responses back into the
call's result. ``plan.finish(outputs)`` takes one ``{output name: array}`` mapping
per request, in request order.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar, Union

import numpy as np
import tritonclient.grpc as grpcclient

from mmserve import kinds
from mmserve.kinds import AnswerShape, InputShape
from mmserve.pipelines import (
    AUDIO,
    EMBEDDING,
    ENTITIES,
    IMAGE,
    LABEL,
    LABELS,
    MAX_BATCH_SIZE,
    PROBS,
    SAMPLE_RATE,
    TEXT,
    Kind,
    TensorSpec,
    spec,
)

from .errors import InvalidInputError, ServerError
from .media import (
    AudioInput,
    ImageFormat,
    ImageInput,
    encode_image,
    is_single_audio,
    is_single_image,
    load_audio,
)
from .results import Classification, Entity, ZeroShotResult

__all__ = [
    "TextInput",
    "Outputs",
    "Request",
    "Plan",
    "plan",
    "chunk_ranges",
    "encode_texts",
    "plan_embed_text",
    "plan_classify_text",
    "plan_extract_entities",
    "plan_embed_images",
    "plan_zero_shot",
    "plan_classify_audio",
    "plan_embed_audio",
    "parse_embeddings",
    "parse_classifications",
    "parse_entities",
    "parse_zero_shot",
    "to_triton",
    "read_outputs",
]

T = TypeVar("T")
TextInput = Union[str, bytes, Iterable[Union[str, bytes]]]
Outputs = Mapping[str, np.ndarray]

_NUMPY_DTYPES: dict[str, type[np.generic]] = {
    "BYTES": np.object_,
    "FP32": np.float32,
    "INT32": np.int32,
}


@dataclass(frozen=True, slots=True)
class Request:
    """One inference request: input tensors (batch first) and the outputs wanted."""

    inputs: tuple[tuple[TensorSpec, np.ndarray], ...]
    outputs: tuple[str, ...]

    @property
    def batch_size(self) -> int:
        return int(self.inputs[0][1].shape[0])

    def input(self, name: str) -> np.ndarray:
        return next(array for tensor, array in self.inputs if tensor.name == name)


@dataclass(frozen=True, slots=True)
class Plan(Generic[T]):
    """The requests of one client call and how their responses become its result."""

    requests: tuple[Request, ...]
    parse: Callable[[Outputs, int], list[Any]]  # one response -> one value per item
    collect: Callable[[list[Any]], T]  # all items' values -> the call's result

    def finish(self, outputs: Sequence[Outputs]) -> T:
        if len(outputs) != len(self.requests):
            raise ServerError(f"expected {len(self.requests)} responses, got {len(outputs)}")
        values: list[Any] = []
        for request, output in zip(self.requests, outputs):
            values.extend(self.parse(output, request.batch_size))
        return self.collect(values)


@dataclass(frozen=True, slots=True)
class Batch:
    """A call's data as requests: whether it was one item, and (zero-shot) its labels."""

    requests: tuple[Request, ...]
    single: bool
    labels: tuple[str, ...] = ()


def chunk_ranges(n: int, max_batch: int = MAX_BATCH_SIZE) -> list[tuple[int, int]]:
    """[start, end) ranges of at most ``max_batch`` items covering ``range(n)``."""
    if max_batch < 1:
        raise InvalidInputError(f"max_batch_size must be >= 1, not {max_batch}")
    return [(start, min(start + max_batch, n)) for start in range(0, n, max_batch)]


def _request(kind: Kind, arrays: Mapping[str, np.ndarray]) -> Request:
    """A request for ``kind`` with its contract's input order, dtypes and outputs."""
    pipeline = spec(kind)
    inputs = []
    for tensor in pipeline.inputs:
        array = arrays[tensor.name]
        expected = _NUMPY_DTYPES[tensor.triton_dtype]
        if array.dtype.type is not expected:  # a bug here, never the caller's
            raise TypeError(f"{tensor.name} must be {expected.__name__}, got {array.dtype}")
        if array.ndim != 1 + len(tensor.dims):
            raise TypeError(f"{tensor.name} must have {1 + len(tensor.dims)} dims, got {array.shape}")
        inputs.append((tensor, array))
    return Request(tuple(inputs), tuple(t.name for t in pipeline.outputs))


def _one_or_list(single: bool) -> Callable[[list[Any]], Any]:
    return (lambda values: values[0]) if single else (lambda values: values)


def _one_or_stack(single: bool) -> Callable[[list[np.ndarray]], np.ndarray]:
    def collect(rows: list[np.ndarray]) -> np.ndarray:
        if single:
            return rows[0]
        if not rows:
            return np.empty((0, 0), dtype=np.float32)
        return np.stack(rows).astype(np.float32, copy=False)

    return collect


# --- text -------------------------------------------------------------------------


def _text_items(texts: TextInput) -> tuple[list[str | bytes], bool]:
    if isinstance(texts, (str, bytes)):
        return [texts], True
    if isinstance(texts, Iterable):
        return list(texts), False
    raise InvalidInputError(
        f"expected a str or a list of str, got {type(texts).__name__}"
    )


def encode_texts(texts: Sequence[str | bytes]) -> np.ndarray:
    """[N, 1] object array of UTF-8 bytes (``bytes`` items are sent unchanged)."""
    out = np.empty((len(texts), 1), dtype=np.object_)
    for i, text in enumerate(texts):
        if isinstance(text, str):
            try:
                out[i, 0] = text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidInputError(
                    f"text {i} is not valid Unicode ({exc.reason} at {exc.start}); "
                    "remove lone surrogates"
                ) from exc
        elif isinstance(text, (bytes, bytearray)):
            out[i, 0] = bytes(text)
        else:
            raise InvalidInputError(f"text {i} has type {type(text).__name__}; pass str")
    return out


def _text_batch(
    kind: Kind, texts: TextInput, *, max_batch: int = MAX_BATCH_SIZE, **_: Any
) -> Batch:
    items, single = _text_items(texts)
    encoded = encode_texts(items)
    requests = tuple(
        _request(kind, {TEXT.name: encoded[start:end]})
        for start, end in chunk_ranges(len(items), max_batch)
    )
    return Batch(requests, single)


def plan_embed_text(
    texts: TextInput, *, kind: Kind = Kind.TEXT_EMBED, max_batch: int = MAX_BATCH_SIZE
) -> Plan[np.ndarray]:
    """str -> [D]; list -> [N, D] (``[0, 0]`` for an empty list). Also CLIP text."""
    return plan(kind, texts, max_batch=max_batch)


def plan_classify_text(
    texts: TextInput, *, max_batch: int = MAX_BATCH_SIZE
) -> Plan[Classification | list[Classification]]:
    return plan(Kind.TEXT_CLASSIFY, texts, max_batch=max_batch)


def plan_extract_entities(
    texts: TextInput, *, max_batch: int = MAX_BATCH_SIZE
) -> Plan[list[Entity] | list[list[Entity]]]:
    return plan(Kind.TEXT_NER, texts, max_batch=max_batch)


# --- images -----------------------------------------------------------------------


def _image_items(images: ImageInput | Iterable[ImageInput]) -> tuple[list[ImageInput], bool]:
    if is_single_image(images):
        return [images], True  # type: ignore[list-item]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images), False
    if isinstance(images, Iterable) and not isinstance(images, np.ndarray):
        return list(images), False
    shape = f" of shape {list(images.shape)}" if isinstance(images, np.ndarray) else ""
    raise InvalidInputError(
        f"expected an image or a list of images, got {type(images).__name__}{shape}; "
        "pass a path, encoded bytes, a PIL.Image or an HxWxC uint8 array"
    )


def _encode_images(items: Sequence[ImageInput], image_format: ImageFormat) -> np.ndarray:
    out = np.empty((len(items), 1), dtype=np.object_)
    for i, image in enumerate(items):
        out[i, 0] = encode_image(image, image_format, index=i)
    return out


def _image_batch(
    kind: Kind,
    images: ImageInput | Iterable[ImageInput],
    *,
    image_format: ImageFormat = "auto",
    max_batch: int = MAX_BATCH_SIZE,
    **_: Any,
) -> Batch:
    items, single = _image_items(images)
    encoded = _encode_images(items, image_format)
    requests = tuple(
        _request(kind, {IMAGE.name: encoded[start:end]})
        for start, end in chunk_ranges(len(items), max_batch)
    )
    return Batch(requests, single)


def plan_embed_images(
    images: ImageInput | Iterable[ImageInput],
    *,
    image_format: ImageFormat = "auto",
    max_batch: int = MAX_BATCH_SIZE,
) -> Plan[np.ndarray]:
    return plan(Kind.IMAGE_EMBED, images, image_format=image_format, max_batch=max_batch)


def _labels(labels: Sequence[str]) -> tuple[str, ...]:
    if isinstance(labels, (str, bytes)):
        raise InvalidInputError(
            f"labels must be a list of strings, not one string {labels!r}: pass labels=[...]"
        )
    try:
        result = tuple(labels)
    except TypeError as exc:
        raise InvalidInputError(f"labels must be a list of strings, got {type(labels).__name__}") from exc
    if not result:
        raise InvalidInputError("labels is empty: pass at least one candidate label")
    for i, label in enumerate(result):
        if not isinstance(label, str):
            raise InvalidInputError(f"label {i} has type {type(label).__name__}; pass str")
    return result


def _image_and_labels_batch(
    kind: Kind,
    images: ImageInput | Iterable[ImageInput],
    *,
    labels: Sequence[str] = (),
    image_format: ImageFormat = "auto",
    max_batch: int = MAX_BATCH_SIZE,
    **_: Any,
) -> Batch:
    """Every image against the same candidate labels: ``LABELS`` is [N, K]."""
    names = _labels(labels)
    items, single = _image_items(images)
    encoded = _encode_images(items, image_format)
    row = encode_texts(names)[:, 0]
    requests = []
    for start, end in chunk_ranges(len(items), max_batch):
        label_rows = np.empty((end - start, len(names)), dtype=np.object_)
        label_rows[:, :] = row[None, :]
        requests.append(
            _request(
                kind,
                {IMAGE.name: encoded[start:end], LABELS.name: label_rows},
            )
        )
    return Batch(tuple(requests), single, names)


def plan_zero_shot(
    images: ImageInput | Iterable[ImageInput],
    labels: Sequence[str],
    *,
    image_format: ImageFormat = "auto",
    max_batch: int = MAX_BATCH_SIZE,
) -> Plan[ZeroShotResult | list[ZeroShotResult]]:
    """Every image against the same candidate labels: ``LABELS`` is [N, K]."""
    return plan(Kind.ZERO_SHOT_IMAGE, images, labels=labels, image_format=image_format, max_batch=max_batch)


# --- audio ------------------------------------------------------------------------


def _audio_batch(
    kind: Kind,
    audio: AudioInput | Iterable[AudioInput],
    *,
    sample_rate: int | None = None,
    max_batch: int = MAX_BATCH_SIZE,
    **_: Any,
) -> Batch:
    single = is_single_audio(audio)
    if single:
        clips: list[AudioInput] = [audio]  # type: ignore[list-item]
    elif isinstance(audio, Iterable):
        clips = list(audio)
    else:
        raise InvalidInputError(
            f"expected a clip or a list of clips, got {type(audio).__name__}; pass a numpy "
            "array (with sample_rate=), a path, or WAV/FLAC/OGG bytes"
        )
    loaded = [load_audio(clip, sample_rate, index=i) for i, clip in enumerate(clips)]
    if not loaded:
        return Batch((), single)
    rates = {rate for _, rate in loaded}
    lengths = {samples.shape[0] for samples, _ in loaded}
    if len(rates) == 1 and len(lengths) == 1:  # one batch: nothing to pad
        rate = rates.pop()
        requests = tuple(
            _request(
                kind,
                {
                    AUDIO.name: np.stack([samples for samples, _ in loaded[start:end]]),
                    SAMPLE_RATE.name: np.full((end - start, 1), rate, dtype=np.int32),
                },
            )
            for start, end in chunk_ranges(len(loaded), max_batch)
        )
    else:  # different lengths: one request per clip, sent in parallel by the transport
        requests = tuple(
            _request(
                kind,
                {
                    AUDIO.name: samples[None, :],
                    SAMPLE_RATE.name: np.array([[rate]], dtype=np.int32),
                },
            )
            for samples, rate in loaded
        )
    return Batch(requests, single)


def plan_classify_audio(
    audio: AudioInput | Iterable[AudioInput],
    sample_rate: int | None = None,
    *,
    max_batch: int = MAX_BATCH_SIZE,
) -> Plan[Classification | list[Classification]]:
    return plan(Kind.AUDIO_CLASSIFY, audio, sample_rate=sample_rate, max_batch=max_batch)


def plan_embed_audio(
    audio: AudioInput | Iterable[AudioInput],
    sample_rate: int | None = None,
    *,
    max_batch: int = MAX_BATCH_SIZE,
) -> Plan[np.ndarray]:
    return plan(Kind.AUDIO_EMBED, audio, sample_rate=sample_rate, max_batch=max_batch)


# --- responses --------------------------------------------------------------------


def _output(outputs: Outputs, name: str) -> np.ndarray:
    array = outputs.get(name)
    if array is None:
        raise ServerError(f"malformed response: no output {name}")
    return array


def _rows(array: np.ndarray, n: int, name: str) -> np.ndarray:
    """``array`` as [n, -1]; the batch dimension must match the request's."""
    if n == 0 or array.size % n != 0 or (array.ndim >= 1 and array.shape[0] != n):
        raise ServerError(
            f"malformed response: {name} has shape {list(array.shape)} for {n} items"
        )
    return array.reshape(n, -1)


def _decode(value: object, name: str) -> str:
    if isinstance(value, np.bytes_):
        value = bytes(value)
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ServerError(f"malformed response: {name} is not UTF-8") from exc
    return str(value)


def parse_embeddings(outputs: Outputs, n: int) -> list[np.ndarray]:
    """``EMBEDDING`` [n, D] -> n writable float32 rows."""
    rows = _rows(_output(outputs, EMBEDDING.name), n, EMBEDDING.name)
    return list(np.array(rows, dtype=np.float32, copy=True))


def parse_classifications(outputs: Outputs, n: int) -> list[Classification]:
    """``PROBS`` [n, C] and ``LABEL`` [n, 1] -> n :class:`Classification`."""
    probs = np.array(_rows(_output(outputs, PROBS.name), n, PROBS.name), dtype=np.float32)
    labels = _rows(_output(outputs, LABEL.name), n, LABEL.name)[:, 0]
    # max over Python floats: for a handful of classes cheaper than a numpy reduction per call
    scores = [max(row) if row else float("nan") for row in probs.tolist()]
    return [Classification(label=_decode(labels[i], LABEL.name), score=scores[i], probs=probs[i]) for i in range(n)]


def _entity(item: object) -> Entity:
    if not isinstance(item, Mapping):
        raise ServerError(f"malformed response: entity {item!r} is not an object")
    try:
        return Entity(
            text=str(item["text"]),
            label=str(item["label"]),
            start=int(item["start"]),
            end=int(item["end"]),
            score=float(item["score"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ServerError(f"malformed response: entity {item!r}: {exc!r}") from exc


def parse_entities(outputs: Outputs, n: int) -> list[list[Entity]]:
    """``ENTITIES`` [n, 1] JSON lists -> n lists of :class:`Entity`."""
    cells = _rows(_output(outputs, ENTITIES.name), n, ENTITIES.name)[:, 0]
    result = []
    for cell in cells:
        try:
            items = json.loads(_decode(cell, ENTITIES.name))
        except json.JSONDecodeError as exc:
            raise ServerError(f"malformed response: {ENTITIES.name} is not JSON: {exc}") from exc
        if not isinstance(items, list):
            raise ServerError(f"malformed response: {ENTITIES.name} is not a JSON list")
        result.append([_entity(item) for item in items])
    return result


def parse_zero_shot(outputs: Outputs, n: int, labels: tuple[str, ...]) -> list[ZeroShotResult]:
    """``PROBS`` [n, K] in the order of ``labels`` -> n :class:`ZeroShotResult`."""
    probs = np.array(_rows(_output(outputs, PROBS.name), n, PROBS.name), dtype=np.float32)
    if probs.shape[1] != len(labels):
        raise ServerError(
            f"malformed response: {probs.shape[1]} probabilities for {len(labels)} labels"
        )
    results = []
    for i in range(n):
        best = int(np.argmax(probs[i]))
        results.append(
            ZeroShotResult(labels=labels, probs=probs[i], label=labels[best], score=float(probs[i, best]))
        )
    return results


# --- one plan per kind, from the kind table's shapes -------------------------------

# How a call's data becomes requests, per input shape, and how responses become its result,
# per answer shape (mmserve/kinds.py). A new kind of known shapes needs nothing here;
# tests/test_kind_table.py checks every row's shapes have an entry.
BATCHERS: dict[InputShape, Callable[..., Batch]] = {
    InputShape.TEXT: _text_batch,
    InputShape.IMAGE: _image_batch,
    InputShape.IMAGE_AND_LABELS: _image_and_labels_batch,
    InputShape.AUDIO: _audio_batch,
}
READERS: dict[AnswerShape, Callable[[Batch], tuple[Callable[[Outputs, int], list[Any]], Callable[[list[Any]], Any]]]] = {
    AnswerShape.EMBEDDING: lambda batch: (parse_embeddings, _one_or_stack(batch.single)),
    AnswerShape.CLASSIFICATION: lambda batch: (parse_classifications, _one_or_list(batch.single)),
    AnswerShape.ZERO_SHOT: lambda batch: (partial(parse_zero_shot, labels=batch.labels), _one_or_list(batch.single)),
    AnswerShape.ENTITIES: lambda batch: (parse_entities, _one_or_list(batch.single)),
}


def plan(kind: Kind | str, data: Any, *, max_batch: int = MAX_BATCH_SIZE, **options: Any) -> Plan[Any]:
    """The plan of one call of ``kind`` (its row of the kind table picks how ``data`` is sent
    and how answers are read). ``options``: ``labels`` (zero-shot), ``image_format`` (images),
    ``sample_rate`` (audio)."""
    row = kinds.info(kind)
    batch = BATCHERS[row.input](row.kind, data, max_batch=max_batch, **options)
    parse, collect = READERS[row.answer](batch)
    return Plan(batch.requests, parse, collect)


# --- tritonclient glue (shared by both transports) --------------------------------


def to_triton(
    request: Request,
) -> tuple[list[grpcclient.InferInput], list[grpcclient.InferRequestedOutput]]:
    """tritonclient's input/output objects for ``request`` (the aio client uses the same)."""
    inputs = []
    for tensor, array in request.inputs:
        infer_input = grpcclient.InferInput(tensor.name, list(array.shape), tensor.triton_dtype)
        infer_input.set_data_from_numpy(array)
        inputs.append(infer_input)
    return inputs, [grpcclient.InferRequestedOutput(name) for name in request.outputs]


def read_outputs(result: grpcclient.InferResult, names: Sequence[str]) -> dict[str, np.ndarray]:
    """``{name: array}`` for the outputs a request asked for."""
    outputs = {}
    for name in names:
        array = result.as_numpy(name)
        if array is None:
            raise ServerError(f"malformed response: no output {name}")
        outputs[name] = array
    return outputs
