"""The blocking client: :mod:`codec` plans sent with ``tritonclient.grpc``.

Only transport lives here (options and bookkeeping are :class:`ClientBase`'s). A
call's requests (chunks of a big batch, or audio clips of different lengths) are sent
concurrently with ``async_infer``, at most ``max_concurrency`` in flight, all under
the call's one deadline; requests that found the server unavailable then go again
one by one under the retry policy.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from types import TracebackType
from typing import Any, TypeVar, overload

import numpy as np
import tritonclient.grpc as grpcclient
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

__all__ = ["Client"]

T = TypeVar("T")


class Client(ClientBase):
    """Typed, blocking gRPC client for mmserve pipelines; one channel, safe to share
    across threads. Options: see :class:`ClientBase`.
    """

    def _open(self) -> None:
        self._grpc = self._connection.sync_client()
        # tritonclient keeps a new async_infer future in one attribute before wiring its
        # callback: two threads issuing at once could swap them. Issuing is cheap.
        self._issue_lock = threading.Lock()

    # --- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        """Unregister and unlink shared memory, close the channel; the client cannot be used afterwards."""
        if self._pool is not None:
            self._pool.wait_idle(CLOSE_WAIT_S)
            self._retire(self._pool.close(), closing=True)
            if self._finalizer is not None and not self._pool.busy:
                self._finalizer.detach()  # nothing left for the exit clean-up
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
                return bool(self._call(self._grpc.is_server_ready, deadline=deadline))
            return bool(self._call(self._grpc.is_model_ready, pipeline, deadline=deadline, pipeline=pipeline))
        except NOT_READY_ERRORS:
            return False

    def server_id(self, *, timeout: float | None = None) -> str:
        """The id the server reports (Triton's server metadata name; open, no key). mmserve's
        launcher puts the served repository's id in it (mmserve.served_repository)."""
        return str(self._call(self._grpc.get_server_metadata, deadline=self._deadline(timeout)).name)

    # --- admin (the server's admin key: admin_key=) -----------------------------------

    def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Every model and pipeline in the repository index, with its state and reason."""
        index = self._call(self._grpc.get_model_repository_index, deadline=self._deadline(timeout), admin=True)
        return [ModelInfo(m.name, m.version, m.state, m.reason) for m in index.models]

    def load(self, name: str, *, version: int | None = None, timeout: float | None = None) -> None:
        """Load a model or pipeline; on a loaded one, reload it in place (new files are
        picked up, requests in flight keep being served).

        ``version=N`` serves only version N of a loaded model, until the next load or
        server restart (the configuration on disk is not changed).
        """
        deadline = self._deadline(timeout)
        config = None
        if version is not None:
            current = self._call(self._grpc.get_model_config, name, as_json=True, deadline=deadline, pipeline=name)
            config = pin_version(current, version)
        self._call(self._grpc.load_model, name, config=config, deadline=deadline, admin=True, pipeline=name)

    def unload(self, name: str, *, timeout: float | None = None) -> None:
        """Unload a model or pipeline (its steps stay loaded); its requests then fail with ModelNotReadyError."""
        self._call(self._grpc.unload_model, name, deadline=self._deadline(timeout), admin=True, pipeline=name)

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
                response = self._call(self._grpc.get_model_config, name, deadline=deadline, pipeline=name)
            except ModelNotReadyError:
                continue  # unloaded since the index was read
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
            except NOT_READY_ERRORS as error:  # unreachable, or the deadline ran out during the probe
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
        probe = Deadline(rpc_timeout)
        if not names:
            return [] if self._call(self._grpc.is_server_ready, deadline=probe) else [SERVER]
        return [name for name in names if not self._call(self._grpc.is_model_ready, name, deadline=probe)]

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

    def _call(
        self,
        rpc: Callable[..., T],
        *args: Any,
        deadline: Deadline,
        admin: bool = False,
        pipeline: str | None = None,
        **kwargs: Any,
    ) -> T:
        """One RPC with the client's headers (and admin key) under ``deadline``; typed errors."""
        try:
            return rpc(
                *args,
                headers=self._admin_headers if admin else self._headers,
                client_timeout=deadline.remaining(),
                **kwargs,
            )
        except InferenceServerException as exc:
            raise self._explained(from_triton(exc, pipeline)) from exc

    def _run(self, pipeline: str, plan: Plan[T], timeout: float | None) -> T:
        deadline = self._deadline(timeout)
        return plan.finish(self._infer_all(pipeline, plan.requests, deadline))

    def _infer_all(self, pipeline: str, requests: Sequence[Request], deadline: Deadline) -> list[Outputs]:
        if not requests:
            return []
        if len(requests) == 1:
            return [self._infer_one(pipeline, requests[0], deadline)]
        return self._infer_parallel(pipeline, requests, deadline)

    def _infer_one(self, pipeline: str, request: Request, deadline: Deadline) -> Outputs:
        """One request, sent again while the server is unavailable (see RetryPolicy)."""
        attempts = None  # made on the first failure: nothing to pay on the happy path
        while True:
            try:
                return self._infer_once(pipeline, request, deadline)
            except MmserveError as error:
                if isinstance(error, ModelNotReadyError):
                    restarting = attempts is not None and attempts.failures > 0
                    error = self._unless_server_exiting(error, deadline, restarting)
                attempts = attempts or self._attempts(deadline)
                pause = attempts.after(error)
            time.sleep(pause)

    def _unless_server_exiting(
        self, error: ModelNotReadyError, deadline: Deadline, restarting: bool = False
    ) -> MmserveError:
        """ServerUnavailableError instead when the server is shutting down (see ClientBase).

        ``restarting``: this request found the server unreachable moments ago; if no time
        is left to ask the server, that decides.
        """
        try:
            self._call(self._grpc.is_server_live, deadline=Deadline(deadline.capped(READY_PROBE_TIMEOUT)))
        except ServerUnavailableError as down:
            return self._server_exiting(error, down.server_message or "not live")
        except DeadlineExceededError:
            if restarting:
                return self._server_exiting(error, "unreachable moments before; no time left to ask again")
        except MmserveError:
            pass
        return error

    def _infer_once(self, pipeline: str, request: Request, deadline: Deadline) -> Outputs:
        if self._pool is None:
            inputs, outputs = codec.to_triton(request)
            result = self._call(self._grpc.infer, pipeline, inputs, outputs=outputs, deadline=deadline, pipeline=pipeline)
            return codec.read_outputs(result, request.outputs)
        lease = self._lease(pipeline, request, deadline)
        try:
            result = self._call(
                self._grpc.infer, pipeline, lease.inputs, outputs=lease.outputs, deadline=deadline, pipeline=pipeline
            )
            return lease.read(result)
        except MmserveError as error:
            raise self._shm_failure(error) from error
        finally:
            if self._pool.release(lease.region):
                self._retire([lease.region])  # close() did not wait for this request

    def _infer_parallel(self, pipeline: str, requests: Sequence[Request], deadline: Deadline) -> list[Outputs]:
        """All requests via async_infer, bounded in flight; the first error cancels the rest.

        If that error was the server being unavailable (or forgetting our shared memory),
        the requests left without an answer go again one by one, each under the retry policy.
        """
        flight = _Flight(len(requests))
        calls: list[grpcclient.CallContext] = []
        try:
            for index, request in enumerate(requests):
                if not flight.acquire(self.max_concurrency):
                    break  # an earlier request failed: send no more
                lease = None
                try:
                    lease = self._lease(pipeline, request, deadline) if self._pool is not None else None
                    inputs, outputs = (lease.inputs, lease.outputs) if lease else codec.to_triton(request)
                    callback = partial(self._on_response, flight, index, request, lease)
                    with self._issue_lock:
                        call = self._grpc.async_infer(
                            pipeline,
                            inputs,
                            callback=callback,
                            outputs=outputs,
                            headers=self._headers,
                            client_timeout=deadline.remaining(),
                        )
                    lease = None  # the callback frees it from now on
                    calls.append(call)
                except BaseException as exc:  # noqa: BLE001 - re-raised below
                    if lease is not None and self._pool is not None and self._pool.release(lease.region):
                        self._retire([lease.region])  # close() did not wait for this request
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
            error = flight.error
            if isinstance(error, InferenceServerException):
                error = self._shm_failure(from_triton(error, pipeline))
                error.__cause__ = flight.error
            if isinstance(error, ModelNotReadyError):
                error = self._unless_server_exiting(error, deadline)
            if not (isinstance(error, MmserveError) and self._retry_missing(error)):
                raise error
            for index, request in enumerate(requests):
                if flight.results[index] is None:
                    flight.results[index] = self._infer_one(pipeline, request, deadline)
        return flight.results

    def _on_response(
        self,
        flight: _Flight,
        index: int,
        request: Request,
        lease: _shm.Lease | None,
        result: grpcclient.InferResult | None,
        error: InferenceServerException | None,
    ) -> None:
        """gRPC's callback: read the outputs (from shared memory too) and free the region."""
        outputs = None
        try:
            if error is None:
                outputs = lease.read(result) if lease else codec.read_outputs(result, request.outputs)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            error = exc  # type: ignore[assignment]
        finally:
            if lease is not None and self._pool is not None and self._pool.release(lease.region):
                lease.region.destroy()  # close() did not wait; its channel may be gone: unlink only
        flight.done(index, outputs, error)

    # --- shared memory ----------------------------------------------------------------

    def _lease(self, pipeline: str, request: Request, deadline: Deadline) -> _shm.Lease:
        """The request's inputs written into a registered region of the pool."""
        assert self._pool is not None
        lease, retired = _shm.lease(self._pool, request, self._output_bytes(pipeline, deadline))
        self._retire(retired)
        region = lease.region
        if not region.registered:
            self._pool.registering(region)
            try:
                register, arguments = region.registration(self._grpc)
                self._call(register, *arguments, deadline=deadline, admin=True)
            except MmserveError as error:
                self._pool.discard(region, answered=_shm.registration_refused(error))
                raise self._registration_error(error) from error
            region.registered = True
        return lease

    def _output_bytes(self, pipeline: str, deadline: Deadline) -> dict[str, int]:
        """Bytes per item of the pipeline's fixed-size outputs (its metadata, asked once)."""
        sizes = self._item_bytes.get(pipeline)
        if sizes is None:  # two threads may both ask once: harmless
            metadata = self._call(self._grpc.get_model_metadata, pipeline, deadline=deadline, pipeline=pipeline)
            sizes = self._item_bytes[pipeline] = _shm.output_item_bytes(metadata)
        return sizes

    def _retire(self, regions: list[_shm.Region], *, closing: bool = False) -> None:
        """Unregister (each with a second try) and unlink regions no request uses any more;
        when closing, also the names whose registration's answer was lost."""
        assert self._pool is not None

        def unregister(name: str, timeout: float) -> None:
            getattr(self._grpc, f"unregister_{self.shared_memory}_shared_memory")(
                name, headers=self._admin_headers, client_timeout=timeout
            )

        if regions or closing:
            _shm.clean_up(self._pool, regions, unregister, closing=closing)


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
