"""The asyncio client: the same :mod:`codec` plans sent with ``tritonclient.grpc.aio``.

Only transport lives here (options and bookkeeping are :class:`ClientBase`'s). The
gRPC channel is opened on first use, inside the running event loop (grpc.aio
channels belong to one loop): share one AsyncClient among the tasks of one loop.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar, overload

import numpy as np
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from mmserve.pipelines import Kind

from . import _shm, codec
from ._base import CLOSE_WAIT_S, ClientBase, pin_version
from ._transport import NOT_READY_ERRORS, READY_PROBE_TIMEOUT, SERVER, Deadline, pipeline_names, readiness_error
from .codec import Outputs, Plan, Request, TextInput
from .errors import DeadlineExceededError, MmserveError, ModelNotReadyError, ServerUnavailableError, from_triton
from .media import AudioInput, ImageInput
from .products import ProductInfo, products_from
from .results import Classification, Entity, ModelInfo, ZeroShotResult

__all__ = ["AsyncClient"]

T = TypeVar("T")


class AsyncClient(ClientBase):
    """Typed asyncio gRPC client for mmserve pipelines: :class:`Client` as coroutines,
    safe to share among the tasks of one event loop. Options: see :class:`ClientBase`.
    """

    def _open(self) -> None:
        self._client: aioclient.InferenceServerClient | None = None

    @property
    def _grpc(self) -> aioclient.InferenceServerClient:
        if self._client is None:
            self._client = self._connection.aio_client()
        return self._client

    # --- lifecycle ------------------------------------------------------------------

    async def close(self) -> None:
        """Unregister and unlink shared memory, close the channel. Without shared memory a
        later call would open a new channel; with it, the client cannot be used afterwards."""
        if self._pool is not None:
            waited = time.monotonic() + CLOSE_WAIT_S
            while self._pool.busy and time.monotonic() < waited:
                await asyncio.sleep(0.01)
            await self._retire(self._pool.close(), closing=True)
            if self._finalizer is not None and not self._pool.busy:
                self._finalizer.detach()  # nothing left for the exit clean-up
        await self._close_channel()

    async def _close_channel(self) -> None:
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
                return bool(await self._call(self._grpc.is_server_ready, deadline=deadline))
            return bool(await self._call(self._grpc.is_model_ready, pipeline, deadline=deadline, pipeline=pipeline))
        except NOT_READY_ERRORS:
            return False

    # --- admin (the server's admin key: admin_key=) -----------------------------------

    async def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Every model and pipeline in the repository index, with its state and reason."""
        index = await self._call(self._grpc.get_model_repository_index, deadline=self._deadline(timeout), admin=True)
        return [ModelInfo(m.name, m.version, m.state, m.reason) for m in index.models]

    async def load(self, name: str, *, version: int | None = None, timeout: float | None = None) -> None:
        """Load a model or pipeline, or reload a loaded one in place; see :meth:`Client.load`."""
        deadline = self._deadline(timeout)
        config = None
        if version is not None:
            current = await self._call(self._grpc.get_model_config, name, as_json=True, deadline=deadline, pipeline=name)
            config = pin_version(current, version)
        await self._call(self._grpc.load_model, name, config=config, deadline=deadline, admin=True, pipeline=name)

    async def unload(self, name: str, *, timeout: float | None = None) -> None:
        """Unload a model or pipeline (its steps stay loaded)."""
        await self._call(self._grpc.unload_model, name, deadline=self._deadline(timeout), admin=True, pipeline=name)

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
                response = await self._call(self._grpc.get_model_config, name, deadline=deadline, pipeline=name)
            except ModelNotReadyError:
                continue  # unloaded since the index was read
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
            except NOT_READY_ERRORS as error:  # unreachable, or the deadline ran out during the probe
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
        probe = Deadline(rpc_timeout)
        if not names:
            return [] if await self._call(self._grpc.is_server_ready, deadline=probe) else [SERVER]
        flags = await asyncio.gather(*(self._call(self._grpc.is_model_ready, name, deadline=probe) for name in names))
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

    async def _call(
        self,
        rpc: Callable[..., Awaitable[T]],
        *args: Any,
        deadline: Deadline,
        admin: bool = False,
        pipeline: str | None = None,
        **kwargs: Any,
    ) -> T:
        """One RPC with the client's headers (and admin key) under ``deadline``; typed errors."""
        try:
            return await rpc(
                *args,
                headers=self._admin_headers if admin else self._headers,
                client_timeout=deadline.remaining(),
                **kwargs,
            )
        except InferenceServerException as exc:
            error = from_triton(exc, pipeline)  # a refused TLS handshake is told by a probe, off the loop
            raise (await asyncio.get_running_loop().run_in_executor(None, self._explained, error)) from exc

    async def _run(self, pipeline: str, plan: Plan[T], timeout: float | None) -> T:
        deadline = self._deadline(timeout)
        return plan.finish(await self._infer_all(pipeline, plan.requests, deadline))

    async def _infer_one(self, pipeline: str, request: Request, deadline: Deadline) -> Outputs:
        """One request, sent again while the server is unavailable (see RetryPolicy)."""
        attempts = None  # made on the first failure: nothing to pay on the happy path
        while True:
            try:
                return await self._infer_once(pipeline, request, deadline)
            except MmserveError as error:
                if isinstance(error, ModelNotReadyError):
                    restarting = attempts is not None and attempts.failures > 0
                    error = await self._unless_server_exiting(error, deadline, restarting)
                attempts = attempts or self._attempts(deadline)
                pause = attempts.after(error)
            await asyncio.sleep(pause)

    async def _unless_server_exiting(
        self, error: ModelNotReadyError, deadline: Deadline, restarting: bool = False
    ) -> MmserveError:
        """ServerUnavailableError instead when the server is shutting down (see ClientBase).

        ``restarting``: this request found the server unreachable moments ago; if no time
        is left to ask the server, that decides.
        """
        try:
            await self._call(self._grpc.is_server_live, deadline=Deadline(deadline.capped(READY_PROBE_TIMEOUT)))
        except ServerUnavailableError as down:
            return self._server_exiting(error, down.server_message or "not live")
        except DeadlineExceededError:
            if restarting:
                return self._server_exiting(error, "unreachable moments before; no time left to ask again")
        except MmserveError:
            pass
        return error

    async def _infer_once(self, pipeline: str, request: Request, deadline: Deadline) -> Outputs:
        if self._pool is None:
            inputs, outputs = codec.to_triton(request)
            result = await self._call(
                self._grpc.infer, pipeline, inputs, outputs=outputs, deadline=deadline, pipeline=pipeline
            )
            return codec.read_outputs(result, request.outputs)
        lease = await self._lease(pipeline, request, deadline)
        try:
            result = await self._call(
                self._grpc.infer, pipeline, lease.inputs, outputs=lease.outputs, deadline=deadline, pipeline=pipeline
            )
            return lease.read(result)
        except MmserveError as error:
            raise self._shm_failure(error) from error
        finally:
            if self._pool.release(lease.region):  # close() did not wait for this request
                await self._retire([lease.region])
                await self._close_channel()  # the channel the retirement opened again

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

    # --- shared memory ----------------------------------------------------------------

    async def _lease(self, pipeline: str, request: Request, deadline: Deadline) -> _shm.Lease:
        """The request's inputs written into a registered region of the pool."""
        assert self._pool is not None
        lease, retired = _shm.lease(self._pool, request, await self._output_bytes(pipeline, deadline))
        await self._retire(retired)
        region = lease.region
        if not region.registered:
            self._pool.registering(region)
            try:
                register, arguments = region.registration(self._grpc)
                await self._call(register, *arguments, deadline=deadline, admin=True)
            except MmserveError as error:
                self._pool.discard(region, answered=_shm.registration_refused(error))
                raise self._registration_error(error) from error
            region.registered = True
        return lease

    async def _output_bytes(self, pipeline: str, deadline: Deadline) -> dict[str, int]:
        """Bytes per item of the pipeline's fixed-size outputs (its metadata, asked once)."""
        sizes = self._item_bytes.get(pipeline)
        if sizes is None:
            metadata = await self._call(self._grpc.get_model_metadata, pipeline, deadline=deadline, pipeline=pipeline)
            sizes = self._item_bytes[pipeline] = _shm.output_item_bytes(metadata)
        return sizes

    async def _retire(self, regions: list[_shm.Region], *, closing: bool = False) -> None:
        """Unregister (each with a second, longer try) and unlink regions no request uses
        any more; when closing, also the names whose registration's answer was lost, unless
        the server already failed to answer (as ``_shm.clean_up`` does for the sync client)."""
        try:
            if await self._unregister_each([r.name for r in regions if r.registered]) and closing:
                assert self._pool is not None
                await self._unregister_each(self._pool.left_on_server())
        finally:
            for region in regions:
                region.destroy()

    async def _unregister_each(self, names: list[str]) -> bool:
        """``_shm.unregister_each`` over the asyncio channel: False when a name failed both tries."""
        assert self._pool is not None
        for name in names:
            unregister = getattr(self._grpc, f"unregister_{self._pool.kind}_shared_memory")
            for timeout in _shm.UNREGISTER_TIMEOUTS_S:
                try:
                    await unregister(name, headers=self._admin_headers, client_timeout=timeout)
                except Exception:  # noqa: BLE001 - the server may be gone; unlinking still matters
                    continue
                self._pool.unregistered(name)
                break
            else:
                return False
        return True
