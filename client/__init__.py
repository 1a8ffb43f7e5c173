"""mmserve.client: the typed gRPC client production apps use to call mmserve pipelines.

Depends only on tritonclient[grpc], grpcio, numpy and Pillow (``soundfile`` too, and
only when you pass encoded audio files); never on torch or the training code.

Usage::

    from mmserve.client import Client, InvalidInputError, ModelNotReadyError

    with Client("localhost:8001", timeout=10.0) as c:       # default deadline per call, s
        c.wait_ready(["text_embed", "text_classify"], timeout=60)
        c.embed_text("hello")                                 # np.ndarray [D], L2-normalised
        c.embed_text(["a", "b"])                              # [2, D]
        c.classify_text("great product").label                # Classification(label, score, probs)
        c.classify_text(texts, pipeline="sentiment")          # any pipeline of that kind
        c.extract_entities("Ada Lovelace was born in London") # [Entity(text, label, start, end, score)]
        c.embed_images(["cat.jpg", pil_image, hwc_uint8])     # [3, D]
        c.embed_clip_texts(["a cat", "a dog"])                # [2, D], same space as images
        r = c.zero_shot("cat.jpg", ["cat", "dog"])            # ZeroShotResult(labels, probs, label, score)
        c.classify_audio(samples, sample_rate=16000)          # float32 [-1, 1] or int16; stereo ok
        c.embed_audio(["a.wav", "b.flac"])                    # files: decoded with soundfile
        c.models()                                            # [ModelInfo(name, version, state, reason)]
        c.products()                                          # loaded pipelines only: [ProductInfo(name, kind, steps, state, ...)]
        c.embed_text("x", timeout=2.0)                        # one call's own deadline

    async with AsyncClient("localhost:8001") as ac:          # the same methods, awaited
        vectors = await ac.embed_text(["a", "b"])

Production options (the same for ``Client`` and ``AsyncClient``; see ``ClientBase``)::

    Client("triton.internal:8001",
           root_certificates="ca.pem",                        # TLS; path or PEM bytes
           certificate_chain="app.pem", private_key="app.key",  # mutual TLS
           api_key=os.environ["MMSERVE_API_KEY"],             # header api-key, every call
           admin_key=os.environ.get("MMSERVE_ADMIN_KEY"),     # header admin-key, admin calls only
           headers={"x-request-source": "checkout"},          # your own metadata, every call
           retry=RetryPolicy(max_attempts=8),                 # UNAVAILABLE only, inference only
           keepalive=KeepAliveOptions(keepalive_time_ms=60_000),
           max_send_message_size=64 << 20,
           shared_memory="system")                            # same host: tensors via /dev/shm
    c.load("sentiment"); c.unload("sentiment")                # admin: needs admin_key

One client holds one gRPC channel: share it across threads (``Client``) or the tasks
of one event loop (``AsyncClient``). It reconnects by itself after a server restart;
inference calls retry while the server is unavailable, within their deadline and the
client's retry budget, then raise ``ServerUnavailableError``.

One item in, one result out; a list in, a list (or an [N, D] array) out. An empty
list returns an empty result without a call. Lists longer than
``mmserve.pipelines.MAX_BATCH_SIZE`` are split into several requests, sent
concurrently under the call's one deadline. PIL images and arrays are encoded once
on the client (RGB as JPEG q95, anything else as PNG; ``Client(image_format="png")``
for lossless); paths and bytes are sent as they are.

Errors are typed (see :mod:`mmserve.client.errors` for the mapping from gRPC
statuses) and keep the server's message: ``InvalidInputError`` (fix the input; also
raised locally before sending), ``ModelNotReadyError``, ``ServerUnavailableError``,
``DeadlineExceededError``, ``PermissionDeniedError`` (a missing or wrong key),
``TLSError`` (a refused TLS handshake; its subclass says whose certificate is wrong),
``ServerError``, all subclasses of ``MmserveError``.
"""
from __future__ import annotations

from tritonclient.grpc import KeepAliveOptions

from .aio import AsyncClient
from .errors import (
    DeadlineExceededError,
    InvalidInputError,
    MmserveError,
    ModelNotReadyError,
    PermissionDeniedError,
    ServerError,
    ServerUnavailableError,
    TLSError,
)
from .products import ProductInfo
from .results import Classification, Entity, ModelInfo, ZeroShotResult
from .retry import RetryPolicy
from .sync import Client

__all__ = [
    "Client",
    "AsyncClient",
    "Classification",
    "Entity",
    "ZeroShotResult",
    "ModelInfo",
    "ProductInfo",
    "RetryPolicy",
    "KeepAliveOptions",
    "MmserveError",
    "InvalidInputError",
    "ModelNotReadyError",
    "ServerUnavailableError",
    "DeadlineExceededError",
    "ServerError",
    "PermissionDeniedError",
    "TLSError",
]
