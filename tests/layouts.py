"""Run a test module against both cpu layouts: each pipeline as an ensemble of step models,
and each fused into one model (exporters/fused.py). The public contract is the same, so the
contract, bad-input and client tests must pass on both.

In a module: `server, triton = both_layouts()`. Its tests then run once per layout
([ensemble], then [fused]); the conftest's `client` follows `server`.
"""
from __future__ import annotations

import pytest

LAYOUTS = ("ensemble", "fused")


def both_layouts():
    """A module's `server` (one per layout, the session's two servers) and its raw `triton` client."""

    @pytest.fixture(scope="module", params=LAYOUTS, name="server")
    def layout_server(request):
        return request.getfixturevalue(f"{request.param}_server")

    @pytest.fixture(scope="module", name="triton")
    def layout_triton(server):
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(server.grpc_url)
        yield client
        client.close()

    return layout_server, layout_triton
