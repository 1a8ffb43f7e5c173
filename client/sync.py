"""The blocking client: :mod:`codec` plans sent with ``tritonclient.grpc``.

Only transport lives here. A call's requests (chunks of a big batch, or audio
clips of different lengths) are sent concurrently with ``async_infer``, at most
``max_concurrency`` in flight, all under the call's one deadline.
"""
from __future__ import annotations

import threading
import time
from functools import partial
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar, overload

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from mmserve.pipelines import MAX_BATCH_SIZE, Kind

from . import codec
from ._transport import (
    DEFAULT_MAX_CONCURRENCY,
    NOT_READY_ERRORS,
    READY_PROBE_TIMEOUT,
    SERVER,
    Deadline,
    normalize_url,
    pipeline_names,
    readiness_error,
)
from .codec import Outputs, Plan, Request, TextInput
from .errors import MmserveError, ModelNotReadyError, from_triton
from .media import AudioInput, ImageFormat, ImageInput
from .products import ProductInfo, products_from
from .results import Classification, Entity, ModelInfo, ZeroShotResult

__all__ = ["Client"]

T = TypeVar("T")


class Client:
    """Typed, blocking gRPC client for mmserve pipelines; thread-safe.

    ``timeout`` is each method call's default deadline in seconds (None: no
    deadline); every method takes ``timeout=`` to override it for one call.
    """

    def __init__(
        self,
        url: str = "localhost:8001",
        timeout: float | None = 10.0,
        *,
        headers: dict[str, str] | None = None,
        ssl: bool = False,
        root_certificates: str | None = None,
        max_batch_size: int = MAX_BATCH_SIZE,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        image_format: ImageFormat = "auto",
    ) -> None:
        Deadline(timeout)  # validates
        codec.chunk_ranges(0, max_batch_size)  # validates
        self.url = normalize_url(url)
        self.timeout = timeout
        self.max_batch_size = max_batch_size
        self.max_concurrency = max(1, int(max_concurrency))
        self.image_format = image_format
        self._headers = dict(headers) if headers else None
        self._grpc = grpcclient.InferenceServerClient(
            self.url, ssl=ssl, root_certificates=root_certificates
        )
        self._issue_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Client({self.url!r}, timeout={self.timeout})"

    # --- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        """Close the channel; the client cannot be used afterwards."""
        self._grpc.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- health ---------------------------------------------------------------------

    def ready(self, pipeline: str | None = None, *, timeout: float | None = None) -> bool:
        """Whether the server (or that pipeline) is ready; False when unreachable."""
        deadline = self._deadline(timeout)
        try:
            if pipeline is None:
                return bool(self._grpc.is_server_ready(headers=self._headers, client_timeout=deadline.remaining()))
            return bool(
                self._grpc.is_model_ready(pipeline, headers=self._headers, client_timeout=deadline.remaining())
            )
        except InferenceServerException as exc:
            error = from_triton(exc, pipeline)
            if isinstance(error, NOT_READY_ERRORS):
                return False
            raise error from exc

    def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Every model and pipeline in the repository index, with its state and reason."""
        deadline = self._deadline(timeout)
        try:
            index = self._grpc.get_model_repository_index(
                headers=self._headers, client_timeout=deadline.remaining()
            )
        except InferenceServerException as exc:
            raise from_triton(exc) from exc
        return [ModelInfo(m.name, m.version, m.state, m.reason) for m in index.models]

    def products(self, *, timeout: float | None = None) -> list[ProductInfo]:
        """The pipelines the server has loaded, without their internal steps (tokenizers,
        encoders, post-processing), each with its kind, steps and state.

        Reads the repository index (the admin key where the server sets one) and each
        model's config; a product never loaded has no config on the server to read, so
        the whole repository, unloaded products included, is `mmserve products`' to list.
        """
        deadline = self._deadline(timeout)
        index = self.models(timeout=deadline.remaining())
        configs = {}
        for name in sorted({info.name for info in index if info.state}):
            try:
                response = self._grpc.get_model_config(
                    name, headers=self._headers, client_timeout=deadline.remaining()
                )
            except InferenceServerException as exc:
                error = from_triton(exc, name)
                if isinstance(error, ModelNotReadyError):
                    continue  # unloaded since the index was read
                raise error from exc
            configs[name] = response.config
        return products_from(index, configs)

    def wait_ready(
        self,
        pipelines: str | Iterable[str] = (),
        timeout: float | None = 60.0,
        *,
        poll_interval: float = 0.5,
    ) -> None:
        """Block until the pipelines (or, with none given, the server) are ready.

        Raises ServerUnavailableError if the server stayed unreachable, else
        ModelNotReadyError naming what is missing with the server's reason.
        """
        names = pipeline_names(pipelines)
        deadline = Deadline(timeout)
        pending: list[str] = list(names) or [SERVER]
        last_error: MmserveError | None = None
        while True:
            try:
                pending = self._not_ready(names, deadline.capped(READY_PROBE_TIMEOUT))
                last_error = None
                if not pending:
                    return
            except InferenceServerException as exc:
                error = from_triton(exc)
                if not isinstance(error, NOT_READY_ERRORS):
                    raise error from exc
                last_error = error
            except NOT_READY_ERRORS as error:  # the deadline ran out during the probe
                last_error = error
            left = deadline.left()
            if left is not None and left <= poll_interval:
                break
            time.sleep(poll_interval)
        index = None
        if last_error is None:
            try:
                index = self.models(timeout=READY_PROBE_TIMEOUT)
            except MmserveError:
                pass
        raise readiness_error(self.url, timeout, pending, last_error, index)

    def _not_ready(self, names: Sequence[str], rpc_timeout: float) -> list[str]:
        if not names:
            ok = self._grpc.is_server_ready(headers=self._headers, client_timeout=rpc_timeout)
            return [] if ok else [SERVER]
        return [
            name
            for name in names
            if not self._grpc.is_model_ready(name, headers=self._headers, client_timeout=rpc_timeout)
        ]

    # --- text -----------------------------------------------------------------------

    def embed_text(
        self, text_or_texts: TextInput, pipeline: str = Kind.TEXT_EMBED.value, *, timeout: float | None = None
    ) -> np.ndarray:
        """str -> [D] float32; list -> [N, D]."""
        plan = codec.plan_embed_text(text_or_texts, max_batch=self.max_batch_size)
        return self._run(pipeline, plan, timeout)

    @overload
    def classify_text(  # type: ignore[overload-overlap]
        self, text_or_texts: str, pipeline: str = ..., *, timeout: float | None = ...
    ) -> Classification: ...
    @overload
    def classify_text(
        self, text_or_texts: Iterable[str], pipeline: str = ..., *, timeout: float | None = ...
    ) -> list[Classification]: ...
    def classify_text(
        self, text_or_texts: TextInput, pipeline: str = Kind.TEXT_CLASSIFY.value, *, timeout: float | None = None
    ) -> Classification | list[Classification]:
        """str -> Classification; list -> list of them."""
        plan = codec.plan_classify_text(text_or_texts, max_batch=self.max_batch_size)
        return self._run(pipeline, plan, timeout)

    @overload
    def extract_entities(  # type: ignore[overload-overlap]
        self, text_or_texts: str, pipeline: str = ..., *, timeout: float | None = ...
    ) -> list[Entity]: ...
    @overload
    def extract_entities(
        self, text_or_texts: Iterable[str], pipeline: str = ..., *, timeout: float | None = ...
    ) -> list[list[Entity]]: ...
    def extract_entities(
        self, text_or_texts: TextInput, pipeline: str = Kind.TEXT_NER.value, *, timeout: float | None = None
    ) -> list[Entity] | list[list[Entity]]:
        """str -> its entities; list -> one list of entities per text."""
        plan = codec.plan_extract_entities(text_or_texts, max_batch=self.max_batch_size)
        return self._run(pipeline, plan, timeout)

    # --- vision-text ----------------------------------------------------------------

    def embed_images(
        self,
        images: ImageInput | Iterable[ImageInput],
        pipeline: str = Kind.IMAGE_EMBED.value,
        *,
        timeout: float | None = None,
    ) -> np.ndarray:
        """One image -> [D]; a list (or [N, H, W, C] array) -> [N, D]."""
        plan = codec.plan_embed_images(images, image_format=self.image_format, max_batch=self.max_batch_size)
        return self._run(pipeline, plan, timeout)

    def embed_clip_texts(
        self, texts: TextInput, pipeline: str = Kind.CLIP_TEXT_EMBED.value, *, timeout: float | None = None
    ) -> np.ndarray:
        """Text embeddings in the image space: str -> [D]; list -> [N, D]."""
        plan = codec.plan_embed_text(texts, kind=Kind.CLIP_TEXT_EMBED, max_batch=self.max_batch_size)
        return self._run(pipeline, plan, timeout)

    @overload
    def zero_shot(
        self, image: ImageInput, labels: Sequence[str], pipeline: str = ..., *, timeout: float | None = ...
    ) -> ZeroShotResult: ...
    @overload
    def zero_shot(
        self, image: Iterable[ImageInput], labels: Sequence[str], pipeline: str = ..., *, timeout: float | None = ...
    ) -> list[ZeroShotResult]: ...
    def zero_shot(
        self,
        image: ImageInput | Iterable[ImageInput],
        labels: Sequence[str],
        pipeline: str = Kind.ZERO_SHOT_IMAGE.value,
        *,
        timeout: float | None = None,
    ) -> ZeroShotResult | list[ZeroShotResult]:
        """Probabilities over ``labels`` for one image, or a list for a list of images."""
        plan = codec.plan_zero_shot(image, labels, image_format=self.image_format, max_batch=self.max_batch_size)
        return self._run(pipeline, plan, timeout)

    # --- speech ---------------------------------------------------------------------

    @overload
    def classify_audio(
        self, audio: AudioInput, sample_rate: int | None = ..., pipeline: str = ..., *, timeout: float | None = ...
    ) -> Classification: ...
    @overload
    def classify_audio(
        self,
        audio: Iterable[AudioInput],
        sample_rate: int | None = ...,
        pipeline: str = ...,
        *,
        timeout: float | None = ...,
    ) -> list[Classification]: ...
    def classify_audio(
        self,
        audio: AudioInput | Iterable[AudioInput],
        sample_rate: int | None = None,
        pipeline: str = Kind.AUDIO_CLASSIFY.value,
        *,
        timeout: float | None = None,
    ) -> Classification | list[Classification]:
        """One clip -> Classification; a list of clips -> list (sent in parallel)."""
        plan = codec.plan_classify_audio(audio, sample_rate, max_batch=self.max_batch_size)
        return self._run(pipeline, plan, timeout)

    def embed_audio(
        self,
        audio: AudioInput | Iterable[AudioInput],
        sample_rate: int | None = None,
        pipeline: str = Kind.AUDIO_EMBED.value,
        *,
        timeout: float | None = None,
    ) -> np.ndarray:
        """One clip -> [D]; a list of clips -> [N, D] (sent in parallel)."""
        plan = codec.plan_embed_audio(audio, sample_rate, max_batch=self.max_batch_size)
        return self._run(pipeline, plan, timeout)

    # --- transport ------------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> Deadline:
        return Deadline(self.timeout if timeout is None else timeout)

    def _run(self, pipeline: str, plan: Plan[T], timeout: float | None) -> T:
        deadline = self._deadline(timeout)
        return plan.finish(self._infer_all(pipeline, plan.requests, deadline))

    def _infer_all(self, pipeline: str, requests: Sequence[Request], deadline: Deadline) -> list[Outputs]:
        if not requests:
            return []
        if len(requests) == 1:
            request = requests[0]
            inputs, outputs = codec.to_triton(request)
            try:
                result = self._grpc.infer(
                    pipeline,
                    inputs,
                    outputs=outputs,
                    headers=self._headers,
                    client_timeout=deadline.remaining(),
                )
            except InferenceServerException as exc:
                raise from_triton(exc, pipeline) from exc
            return [codec.read_outputs(result, request.outputs)]
        return self._infer_parallel(pipeline, requests, deadline)

    def _infer_parallel(
        self, pipeline: str, requests: Sequence[Request], deadline: Deadline
    ) -> list[Outputs]:
        """All requests via async_infer, bounded in flight; the first error cancels the rest."""
        flight = _Flight(len(requests))
        calls: list[grpcclient.CallContext] = []
        try:
            for index, request in enumerate(requests):
                if not flight.acquire(self.max_concurrency):
                    break  # an earlier request failed: send no more
                try:
                    inputs, outputs = codec.to_triton(request)
                    # tritonclient keeps the new future in one attribute before wiring the
                    # callback: two threads issuing at once could swap them. Issuing is cheap.
                    with self._issue_lock:
                        call = self._grpc.async_infer(
                            pipeline,
                            inputs,
                            callback=partial(flight.done, index),
                            outputs=outputs,
                            headers=self._headers,
                            client_timeout=deadline.remaining(),
                        )
                    calls.append(call)
                except BaseException as exc:  # noqa: BLE001 - re-raised below
                    flight.done(index, None, exc)
                    break
            if flight.wait_failed_or_all_done():
                for call in calls:
                    call.cancel()
                flight.wait_all_done()
        except BaseException:  # KeyboardInterrupt while waiting: stop the server work too
            for call in calls:
                call.cancel()
            raise
        if flight.error is not None:
            if isinstance(flight.error, InferenceServerException):
                raise from_triton(flight.error, pipeline) from flight.error
            raise flight.error
        return [codec.read_outputs(result, request.outputs) for result, request in zip(flight.results, requests)]


class _Flight:
    """Book-keeping of one call's concurrent requests (filled by gRPC's callback threads)."""

    def __init__(self, n: int) -> None:
        self.results: list[Any] = [None] * n
        self.error: BaseException | None = None
        self._in_flight = 0
        self._cond = threading.Condition()

    def acquire(self, limit: int) -> bool:
        """Wait for a free slot; False once a request has failed."""
        with self._cond:
            self._cond.wait_for(lambda: self._in_flight < limit or self.error is not None)
            if self.error is not None:
                return False
            self._in_flight += 1
            return True

    def done(self, index: int, result: Any, error: BaseException | None) -> None:
        with self._cond:
            self._in_flight -= 1
            if error is not None:
                if self.error is None:
                    self.error = error
            else:
                self.results[index] = result
            self._cond.notify_all()

    def wait_failed_or_all_done(self) -> bool:
        """True if a request failed (others may still be in flight)."""
        with self._cond:
            self._cond.wait_for(lambda: self._in_flight == 0 or self.error is not None)
            return self.error is not None

    def wait_all_done(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._in_flight == 0)
