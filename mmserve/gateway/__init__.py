"""The front door: an OpenAI-compatible, multi-tenant REST API in front of Triton.

``mmserve gateway`` answers ``POST /v1/embeddings`` and ``GET /v1/models`` the way the
OpenAI API does, plus one JSON route per other kind of the kind table, for callers who
hold a key: keys belong to tenants, are scoped to products, rate-limited and given a
monthly quota, and every answer is metered (tenant x product x status) in a store that
several replicas share. Inference reaches Triton over gRPC through
:class:`mmserve.client.AsyncClient` with the inference key only, never the admin key.

Modules: ``errors`` (OpenAI-shaped errors), ``keys`` (key records, hashing, parsing),
``store`` (SQLite and Redis: keys, admission, usage), ``catalog`` (which products exist
and their kinds), ``inputs`` (request items to client inputs), ``app`` (the FastAPI
app), ``limits`` (body limit before parsing), ``metrics`` (Prometheus counters),
``server`` (uvicorn, TLS and the bind rule). docs/api.md is the user's guide.
"""
