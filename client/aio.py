"""The asyncio client: the same :mod:`codec` plans sent with ``tritonclient.grpc.aio``.

Only transport lives here. The gRPC channel is opened on first use, inside the
running event loop (grpc.aio channels belong to one loop); use one AsyncClient
per event loop.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import TypeVar, overload

import numpy as np
import tritonclient.grpc.aio as aioclient
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

__all__ = ["AsyncClient"]

T = TypeVar("T")


class AsyncClient:
    """Typed asyncio gRPC client for mmserve pipelines: :class:`Client` as coroutines.

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
        self._ssl = ssl
        self._root_certificates = root_certificates
        self._client: aioclient.InferenceServerClient | None = None

    def __repr__(self) -> str:
        return f"AsyncClient({self.url!r}, timeout={self.timeout})"

    @property
    def _grpc(self) -> aioclient.InferenceServerClient:
        if self._client is None:
            self._client = aioclient.InferenceServerClient(
                self.url, ssl=self._ssl, root_certificates=self._root_certificates
            )
        return self._client

    # --- lifecycle ------------------------------------------------------------------

    async def close(self) -> None:
        """Close the channel (a later call would open a new one)."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- health ---------------------------------------------------------------------

    async def ready(self, pipeline: str | None = None, *, timeout: float | None = None) -> bool:
        """Whether the server (or that pipeline) is ready; False when unreachable."""
        deadline = self._deadline(timeout)
        try:
            if pipeline is None:
                return bool(
                    await self._grpc.is_server_ready(headers=self._headers, client_timeout=deadline.remaining())
                )
            return bool(
                await self._grpc.is_model_ready(
                    pipeline, headers=self._headers, client_timeout=deadline.remaining()
                )
            )
        except InferenceServerException as exc:
            error = from_triton(exc, pipeline)
            if isinstance(error, NOT_READY_ERRORS):
                return False
            raise error from exc

    async def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Every model and pipeline in the repository index, with its state and reason."""
        deadline = self._deadline(timeout)
        try:
            index = await self._grpc.get_model_repository_index(
                headers=self._headers, client_timeout=deadline.remaining()
            )
        except InferenceServerException as exc:
            raise from_triton(exc) from exc
        return [ModelInfo(m.name, m.version, m.state, m.reason) for m in index.models]

    async def products(self, *, timeout: float | None = None) -> list[ProductInfo]:
        """The pipelines the server has loaded, without their internal steps (tokenizers,
        encoders, post-processing), each with its kind, steps and state.

        Reads the repository index (the admin key where the server sets one) and each
        model's config; a product never loaded has no config on the server to read, so
        the whole repository, unloaded products included, is `mmserve products`' to list.
        """
        deadline = self._deadline(timeout)
        index = await self.models(timeout=deadline.remaining())
        configs = {}
        for name in sorted({info.name for info in index if info.state}):
            try:
                response = await self._grpc.get_model_config(
                    name, headers=self._headers, client_timeout=deadline.remaining()
                )
            except InferenceServerException as exc:
                error = from_triton(exc, name)
                if isinstance(error, ModelNotReadyError):
                    continue  # unloaded since the index was read
                raise error from exc
            configs[name] = response.config
        return products_from(index, configs)

    async def wait_ready(
        self,
        pipelines: str | Iterable[str] = (),
        timeout: float | None = 60.0,
        *,
        poll_interval: float = 0.5,
    ) -> None:
        """Wait until the pipelines (or, with none given, the server) are ready.

        Raises ServerUnavailableError if the server stayed unreachable, else
        ModelNotReadyError naming what is missing with the server's reason.
        """
        names = pipeline_names(pipelines)
        deadline = Deadline(timeout)
        pending: list[str] = list(names) or [SERVER]
        last_error: MmserveError | None = None
        while True:
            try:
                pending = await self._not_ready(names, deadline.capped(READY_PROBE_TIMEOUT))
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
            await asyncio.sleep(poll_interval)
        index = None
        if last_error is None:
            try:
                index = await self.models(timeout=READY_PROBE_TIMEOUT)
            except MmserveError:
                pass
        raise readiness_error(self.url, timeout, pending, last_error, index)

    async def _not_ready(self, names: Sequence[str], rpc_timeout: float) -> list[str]:
        if not names:
            ok = await self._grpc.is_server_ready(headers=self._headers, client_timeout=rpc_timeout)
            return [] if ok else [SERVER]
        flags = await asyncio.gather(
            *(
                self._grpc.is_model_ready(name, headers=self._headers, client_timeout=rpc_timeout)
                for name in names
            )
        )
        return [name for name, ok in zip(names, flags) if not ok]

    # --- text -----------------------------------------------------------------------

    async def embed_text(
        self, text_or_texts: TextInput, pipeline: str = Kind.TEXT_EMBED.value, *, timeout: float | None = None
    ) -> np.ndarray:
        """str -> [D] float32; list -> [N, D]."""
        plan = codec.plan_embed_text(text_or_texts, max_batch=self.max_batch_size)
        return await self._run(pipeline, plan, timeout)

    @overload
    async def classify_text(  # type: ignore[overload-overlap]
        self, text_or_texts: str, pipeline: str = ..., *, timeout: float | None = ...
    ) -> Classification: ...
    @overload
    async def classify_text(
        self, text_or_texts: Iterable[str], pipeline: str = ..., *, timeout: float | None = ...
    ) -> list[Classification]: ...
    async def classify_text(
        self, text_or_texts: TextInput, pipeline: str = Kind.TEXT_CLASSIFY.value, *, timeout: float | None = None
    ) -> Classification | list[Classification]:
        """str -> Classification; list -> list of them."""
        plan = codec.plan_classify_text(text_or_texts, max_batch=self.max_batch_size)
        return await self._run(pipeline, plan, timeout)

    @overload
    async def extract_entities(  # type: ignore[overload-overlap]
        self, text_or_texts: str, pipeline: str = ..., *, timeout: float | None = ...
    ) -> list[Entity]: ...
    @overload
    async def extract_entities(
        self, text_or_texts: Iterable[str], pipeline: str = ..., *, timeout: float | None = ...
    ) -> list[list[Entity]]: ...
    async def extract_entities(
        self, text_or_texts: TextInput, pipeline: str = Kind.TEXT_NER.value, *, timeout: float | None = None
    ) -> list[Entity] | list[list[Entity]]:
        """str -> its entities; list -> one list of entities per text."""
        plan = codec.plan_extract_entities(text_or_texts, max_batch=self.max_batch_size)
        return await self._run(pipeline, plan, timeout)

    # --- vision-text ----------------------------------------------------------------

    async def embed_images(
        self,
        images: ImageInput | Iterable[ImageInput],
        pipeline: str = Kind.IMAGE_EMBED.value,
        *,
        timeout: float | None = None,
    ) -> np.ndarray:
        """One image -> [D]; a list (or [N, H, W, C] array) -> [N, D]."""
        plan = codec.plan_embed_images(images, image_format=self.image_format, max_batch=self.max_batch_size)
        return await self._run(pipeline, plan, timeout)

    async def embed_clip_texts(
        self, texts: TextInput, pipeline: str = Kind.CLIP_TEXT_EMBED.value, *, timeout: float | None = None
    ) -> np.ndarray:
        """Text embeddings in the image space: str -> [D]; list -> [N, D]."""
        plan = codec.plan_embed_text(texts, kind=Kind.CLIP_TEXT_EMBED, max_batch=self.max_batch_size)
        return await self._run(pipeline, plan, timeout)

    @overload
    async def zero_shot(
        self, image: ImageInput, labels: Sequence[str], pipeline: str = ..., *, timeout: float | None = ...
    ) -> ZeroShotResult: ...
    @overload
    async def zero_shot(
        self, image: Iterable[ImageInput], labels: Sequence[str], pipeline: str = ..., *, timeout: float | None = ...
    ) -> list[ZeroShotResult]: ...
    async def zero_shot(
        self,
        image: ImageInput | Iterable[ImageInput],
        labels: Sequence[str],
        pipeline: str = Kind.ZERO_SHOT_IMAGE.value,
        *,
        timeout: float | None = None,
    ) -> ZeroShotResult | list[ZeroShotResult]:
        """Probabilities over ``labels`` for one image, or a list for a list of images."""
        plan = codec.plan_zero_shot(image, labels, image_format=self.image_format, max_batch=self.max_batch_size)
        return await self._run(pipeline, plan, timeout)

    # --- speech ---------------------------------------------------------------------

    @overload
    async def classify_audio(
        self, audio: AudioInput, sample_rate: int | None = ..., pipeline: str = ..., *, timeout: float | None = ...
    ) -> Classification: ...
    @overload
    async def classify_audio(
        self,
        audio: Iterable[AudioInput],
        sample_rate: int | None = ...,
        pipeline: str = ...,
        *,
        timeout: float | None = ...,
    ) -> list[Classification]: ...
    async def classify_audio(
        self,
        audio: AudioInput | Iterable[AudioInput],
        sample_rate: int | None = None,
        pipeline: str = Kind.AUDIO_CLASSIFY.value,
        *,
        timeout: float | None = None,
    ) -> Classification | list[Classification]:
        """One clip -> Classification; a list of clips -> list (sent concurrently)."""
        plan = codec.plan_classify_audio(audio, sample_rate, max_batch=self.max_batch_size)
        return await self._run(pipeline, plan, timeout)

    async def embed_audio(
        self,
        audio: AudioInput | Iterable[AudioInput],
        sample_rate: int | None = None,
        pipeline: str = Kind.AUDIO_EMBED.value,
        *,
        timeout: float | None = None,
    ) -> np.ndarray:
        """One clip -> [D]; a list of clips -> [N, D] (sent concurrently)."""
        plan = codec.plan_embed_audio(audio, sample_rate, max_batch=self.max_batch_size)
        return await self._run(pipeline, plan, timeout)

    # --- transport ------------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> Deadline:
        return Deadline(self.timeout if timeout is None else timeout)

    async def _run(self, pipeline: str, plan: Plan[T], timeout: float | None) -> T:
        deadline = self._deadline(timeout)
        return plan.finish(await self._infer_all(pipeline, plan.requests, deadline))

    async def _infer_one(self, pipeline: str, request: Request, deadline: Deadline) -> Outputs:
        inputs, outputs = codec.to_triton(request)
        try:
            result = await self._grpc.infer(
                pipeline,
                inputs,
                outputs=outputs,
                headers=self._headers,
                client_timeout=deadline.remaining(),
            )
        except InferenceServerException as exc:
            raise from_triton(exc, pipeline) from exc
        return codec.read_outputs(result, request.outputs)

    async def _infer_all(self, pipeline: str, requests: Sequence[Request], deadline: Deadline) -> list[Outputs]:
        """All requests concurrently, bounded in flight; the first error cancels the rest."""
        if not requests:
            return []
        if len(requests) == 1:
            return [await self._infer_one(pipeline, requests[0], deadline)]
        slots = asyncio.Semaphore(self.max_concurrency)

        async def bounded(request: Request) -> Outputs:
            async with slots:
                return await self._infer_one(pipeline, request, deadline)

        tasks = [asyncio.ensure_future(bounded(request)) for request in requests]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
        errors = [t.exception() for t in tasks if t.done() and not t.cancelled()]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first
        return [task.result() for task in tasks]
