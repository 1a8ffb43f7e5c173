"""The FastAPI app: ``/v1/embeddings`` and ``/v1/models`` as OpenAI answers them, and one
JSON route per other kind, all built from the kind table (``KindInfo.route``,
``.input``, ``.answer``); nothing here names a kind.

Every inference request goes the same way: the key (401), the product's scope (403),
the product (404) and its route (400), the items (400, bounded), admission -- rate
(429 + Retry-After) and monthly quota (429, not to be retried) -- then the typed client
over gRPC, and the usage counted before the answer leaves.
"""
from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, Field

from mmserve.client import AsyncClient
from mmserve.client.errors import MmserveError
from mmserve.kinds import KINDS, AnswerShape, KindInfo

from .catalog import Catalog, CatalogEntry
from .errors import ApiError, bad_request, from_client_error, unauthorized
from .inputs import Items, call_args, items_of
from .keys import KeyRecord, bearer_key, hash_key, same_hash
from .limits import BODY_BYTES, BodyLimit
from .metrics import Metrics
from .store import Store, StoreError

EMBEDDINGS_ROUTE = "/v1/embeddings"


@dataclass
class GatewayConfig:
    """What the app needs; ``mmserve gateway`` fills it from its options."""

    server: str  # Triton's gRPC HOST:PORT
    catalog: Catalog
    store: Store
    client_options: dict[str, Any] = field(default_factory=dict)  # AsyncClient options: TLS, the inference key
    timeout_s: float = 30.0
    max_items: int = 2048  # per request (OpenAI's own limit for embeddings)
    max_body_bytes: int = 16 * 1024 * 1024
    metrics_key: str | None = None


# --- request bodies (OpenAPI at /docs) ------------------------------------------------


class EmbeddingsRequest(BaseModel):
    """OpenAI's embeddings request. For image and audio products each ``input`` item is a
    data URL (``data:image/png;base64,...``) or bare base64 of the encoded file."""

    model: str = Field(description="a product name, e.g. text_embed")
    input: Union[str, list[str], list[int], list[list[int]]] = Field(
        description="a string or a list of them (token arrays are refused: the product tokenizes)")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: each vector as little-endian float32 bytes, base64-encoded")
    dimensions: Optional[int] = Field(None, description="accepted only when equal to the product's own size")
    user: Optional[str] = Field(None, description="the caller's end user (accepted, not stored)")


class KindRequest(BaseModel):
    """mmserve's request for a product of another kind."""

    model: str = Field(description="a product name, e.g. text_classify")
    input: Union[str, list[str], list[int], list[list[int]]] = Field(
        description="texts; or images / audio clips as data URLs or base64")
    labels: Optional[list[str]] = Field(None, description="zero-shot image classification: the candidate labels")
    user: Optional[str] = None


# --- answers, by the table's answer shape ---------------------------------------------


def _embedding_data(vectors: np.ndarray, encoding_format: str) -> list[dict]:
    vectors = np.asarray(vectors, dtype="<f4")
    if encoding_format == "base64":
        return [{"object": "embedding", "index": i, "embedding": base64.b64encode(v.tobytes()).decode("ascii")}
                for i, v in enumerate(vectors)]
    return [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]


def _scores(labels, probs) -> dict[str, float]:  # noqa: ANN001
    return {str(label): float(p) for label, p in zip(labels, np.asarray(probs).tolist())}


def _classification(entry: CatalogEntry, results: list) -> list[dict]:
    data = []
    for i, r in enumerate(results):
        item = {"index": i, "label": r.label, "score": float(r.score)}
        if len(entry.labels) == len(r.probs):
            item["scores"] = _scores(entry.labels, r.probs)
        data.append(item)
    return data


def _zero_shot(entry: CatalogEntry, results: list) -> list[dict]:
    return [{"index": i, "label": r.label, "score": float(r.score), "scores": _scores(r.labels, r.probs)}
            for i, r in enumerate(results)]


def _entities(entry: CatalogEntry, results: list) -> list[dict]:
    return [{"index": i, "entities": [{"text": e.text, "label": e.label, "start": e.start, "end": e.end,
                                       "score": float(e.score)} for e in ents]}
            for i, ents in enumerate(results)]


ANSWERS: dict[AnswerShape, Callable[[CatalogEntry, Any], list[dict]]] = {
    AnswerShape.CLASSIFICATION: _classification,
    AnswerShape.ZERO_SHOT: _zero_shot,
    AnswerShape.ENTITIES: _entities,
}


def store_unavailable(error: StoreError) -> Response:
    """503: without the store no key can be checked and no answer counted, so none is given."""
    logging.getLogger("mmserve.gateway").error("%s", error)
    body = ApiError(503, "the gateway's store is unavailable; retry later", type="server_error",
                    code="store_unavailable").body()
    return _json(body, 503, {"Retry-After": "5"})


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status_code=status, headers=headers,
                    media_type="application/json")


# --- the app --------------------------------------------------------------------------


class Gateway:
    """The request path shared by every route: authenticate, admit, infer, meter."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.client: AsyncClient | None = None
        self.dimensions: dict[str, int] = {}  # each embedding product's vector size, once seen

    async def start(self) -> None:
        self.client = AsyncClient(self.config.server, timeout=self.config.timeout_s, **self.config.client_options)

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
        await self.config.store.close()

    async def authenticate(self, request: Request) -> KeyRecord:
        key = bearer_key(request.headers.get("authorization"))
        if key is None:
            raise unauthorized("no API key: send 'Authorization: Bearer KEY' (keys: `mmserve keys create`)")
        digest = hash_key(key)
        record = await self.config.store.find(digest)
        if record is None or not same_hash(record.key_hash, digest):
            raise unauthorized("the API key is not valid; check it, or ask for a new one")
        if record.revoked:
            raise unauthorized(f"the API key {record.id} was revoked on {record.revoked}")
        if record.expired():
            raise unauthorized(f"the API key {record.id} expired on {record.expires}")
        return record

    def product(self, record: KeyRecord, model: str, route: str) -> CatalogEntry:
        if not record.allows(model):
            raise ApiError(403, f"this key may not use the product {model!r}; it may use: "
                           f"{', '.join(record.products)}", type="permission_error", code="model_not_allowed",
                           param="model")
        entry = self.config.catalog.get(model)
        if entry is None:
            raise ApiError(404, f"the product {model!r} does not exist on this server", code="model_not_found",
                           param="model")
        if entry.kind.route != route:
            raise bad_request(f"{model!r} is a {entry.kind.title.lower()} product: call POST {entry.kind.route}",
                              param="model", code="wrong_route")
        return entry

    async def serve(self, request: Request, route: str, model: str, raw_input: Any,
                    answer: Callable[[CatalogEntry, Any, int], dict], labels: Any = None,
                    check: Callable[[CatalogEntry], None] | None = None) -> Response:
        started = time.perf_counter()
        nbytes = request.scope.get("state", {}).get(BODY_BYTES, 0)
        record: KeyRecord | None = None
        items: Items | None = None
        admitted = False
        try:
            record = await self.authenticate(request)
            entry = self.product(record, model, route)
            if check is not None:
                check(entry)
            items = items_of(entry.kind, raw_input, max_items=self.config.max_items, labels=labels)
            admission = await self.config.store.admit(record, len(items.values))
            if not admission.ok:
                raise self._refusal(record, admission, len(items.values))
            admitted = True
            method = getattr(self.client, entry.kind.client_method)
            args, kwargs = call_args(entry.kind, items)
            try:
                result = await method(*args, pipeline=entry.name, **kwargs)
            except MmserveError as error:
                raise from_client_error(error, entry.name) from None
            body = answer(entry, result, len(items.values))
            response = _json(body)
        except ApiError as error:
            try:
                if admitted and record is not None and items is not None:
                    await self.config.store.refund(record, len(items.values))
                await self._meter(record, model, error.status, items, nbytes, started)
            except StoreError as store_error:
                return store_unavailable(store_error)
            return _json(error.body(), error.status, error.headers)
        except StoreError as error:  # nothing answered: nothing to count
            return store_unavailable(error)
        try:
            await self._meter(record, model, 200, items, nbytes, started)
        except StoreError as error:  # not counted, so not answered: the caller retries
            return store_unavailable(error)
        return response

    def _refusal(self, record: KeyRecord, admission, items: int) -> ApiError:  # noqa: ANN001
        if admission.over_quota:
            return ApiError(
                429, f"the key {record.id} has used {admission.used} of its {record.quota} items this month; "
                f"this request has {items}. The quota renews on the 1st (UTC); ask for a larger one",
                type="insufficient_quota", code="insufficient_quota", headers={"x-should-retry": "false"})
        wait = max(admission.retry_after, 0.001)
        return ApiError(
            429, f"the key {record.id} is limited to {record.rate:g} requests/s; retry after {wait:.3f} s",
            type="requests", code="rate_limit_exceeded",
            headers={"Retry-After": str(max(1, int(np.ceil(wait)))), "retry-after-ms": str(int(np.ceil(wait * 1000)))})

    async def _meter(self, record: KeyRecord | None, model: str, status: int, items: Items | None, nbytes: int,
                     started: float) -> None:
        """Counted before the answer leaves: a restart loses nothing already answered. A caller
        without a valid key has no tenant; it shows in the metrics only."""
        count = len(items.values) if items is not None else 0
        tenant = record.tenant if record is not None else ""
        product = model if record is not None and record.allows(model) else ""
        self.metrics.count(tenant, product, status, count, nbytes, time.perf_counter() - started)
        if record is not None:
            await self.config.store.record(tenant, product, status, count, nbytes)


def create_app(config: GatewayConfig) -> FastAPI:
    gateway = Gateway(config)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # noqa: ANN202
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(
        title="mmserve gateway",
        description="OpenAI-compatible embeddings and mmserve's own routes for every product kind "
        "(docs/api.md). Authorization: Bearer KEY.",
        lifespan=lifespan,
    )
    app.state.gateway = gateway

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> Response:
        first = error.errors()[0] if error.errors() else {}
        where = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = where[0] if where else None
        message = f"{'.'.join(where) or 'body'}: {first.get('msg', 'invalid request')}"
        return _json(bad_request(message, param=param, code="invalid_request").body(), 400)

    @app.exception_handler(Exception)
    async def failed(_request: Request, error: Exception) -> Response:
        logging.getLogger("mmserve.gateway").exception("unexpected error")
        return _json(ApiError(500, "the gateway failed on this request; see its log", type="server_error",
                              code="server_error").body(), 500)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        key = bearer_key(request.headers.get("authorization"))
        if config.metrics_key is None or key is None or not same_hash(hash_key(key), hash_key(config.metrics_key)):
            return _json(unauthorized("/metrics needs 'Authorization: Bearer' with the gateway's metrics key "
                                      "(MMSERVE_GATEWAY_METRICS_KEY)").body(), 401)
        return PlainTextResponse(gateway.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", summary="The products this key may use (OpenAI's model list)")
    async def models(request: Request) -> Response:
        try:
            record = await gateway.authenticate(request)
        except ApiError as error:
            return _json(error.body(), error.status, error.headers)
        except StoreError as error:
            return store_unavailable(error)
        data = []
        for name in record.products:
            entry = config.catalog.get(name)
            if entry is not None:
                data.append({"id": name, "object": "model", "created": entry.created, "owned_by": "mmserve",
                             "kind": entry.kind.name, "route": entry.kind.route})
        return _json({"object": "list", "data": data})

    routes: dict[str, list[KindInfo]] = {}
    for row in KINDS.values():
        routes.setdefault(row.route, []).append(row)
    for route, rows in routes.items():
        answer_shapes = {row.answer for row in rows}
        assert len(answer_shapes) == 1, f"{route}: one answer shape per route"
        shape = answer_shapes.pop()
        titles = ", ".join(row.title.lower() for row in rows)
        if shape is AnswerShape.EMBEDDING:
            _add_embeddings(app, gateway, route, titles)
        else:
            _add_kind_route(app, gateway, route, titles, ANSWERS[shape])
    return BodyLimit(app, config.max_body_bytes)  # type: ignore[return-value]


def _add_embeddings(app: FastAPI, gateway: Gateway, route: str, titles: str) -> None:
    async def embeddings(request: Request, body: EmbeddingsRequest) -> Response:
        def refuse_dimensions(entry: CatalogEntry, native: int) -> None:
            if body.dimensions is not None and body.dimensions != native:
                raise bad_request(
                    f"{entry.name} answers {native}-dimensional vectors and cannot shorten them: its encoder was "
                    "not trained for truncated embeddings (Matryoshka); omit 'dimensions' or send "
                    f"{native}", param="dimensions", code="dimensions_not_supported")

        def check(entry: CatalogEntry) -> None:
            if body.dimensions is not None and body.dimensions <= 0:
                raise bad_request("'dimensions' must be a positive integer", param="dimensions")
            if entry.name in gateway.dimensions:  # known: refused before any inference or quota
                refuse_dimensions(entry, gateway.dimensions[entry.name])

        def answer(entry: CatalogEntry, vectors: np.ndarray, n: int) -> dict:
            native = gateway.dimensions[entry.name] = int(vectors.shape[-1])
            refuse_dimensions(entry, native)  # the first call learns the size (its items are given back)
            return {"object": "list", "data": _embedding_data(vectors, body.encoding_format), "model": entry.name,
                    "usage": {"prompt_tokens": n, "total_tokens": n}}

        return await gateway.serve(request, route, body.model, body.input, answer, check=check)

    app.post(route, summary=f"Embeddings (OpenAI-compatible): {titles}")(embeddings)


def _add_kind_route(app: FastAPI, gateway: Gateway, route: str, titles: str,
                    shape: Callable[[CatalogEntry, Any], list[dict]]) -> None:
    async def kind_route(request: Request, body: KindRequest) -> Response:
        def answer(entry: CatalogEntry, results: Any, n: int) -> dict:
            return {"object": "list", "data": shape(entry, results), "model": entry.name,
                    "usage": {"items": n}}

        return await gateway.serve(request, route, body.model, body.input, answer, labels=body.labels)

    app.post(route, summary=titles.capitalize())(kind_route)
