"""The client's shared-memory pool without a server: region sizes, the layout of a request's
tensors in a region, and the bookkeeping that makes close() leave nothing registered
(tests/test_client_shm.py runs the same pool against real servers)."""
from __future__ import annotations

import glob

import tritonclient.grpc as grpcclient

from mmserve.client import DeadlineExceededError, PermissionDeniedError, ServerUnavailableError
from mmserve.client import _shm, codec


def test_shared_memory_sizes_and_layout() -> None:
    assert _shm._region_size(1) == _shm.MIN_REGION_BYTES
    assert _shm._region_size(_shm.MIN_REGION_BYTES + 1) == 2 * _shm.MIN_REGION_BYTES
    metadata = grpcclient.service_pb2.ModelMetadataResponse(
        outputs=[
            grpcclient.service_pb2.ModelMetadataResponse.TensorMetadata(name="PROBS", datatype="FP32", shape=[-1, 5]),
            grpcclient.service_pb2.ModelMetadataResponse.TensorMetadata(name="LABEL", datatype="BYTES", shape=[-1, 1]),
            grpcclient.service_pb2.ModelMetadataResponse.TensorMetadata(name="ANY", datatype="FP32", shape=[-1, -1]),
        ]
    )
    assert _shm.output_item_bytes(metadata) == {"PROBS": 20}
    pool = _shm.RegionPool()
    request = codec.plan_classify_text(["a", "bb"]).requests[0]
    lease, retired = _shm.lease(pool, request, {"PROBS": 20})
    try:
        assert retired == [] and not lease.region.registered
        assert [i.name() for i in lease.inputs] == ["TEXT"] and set(lease.slots) == {"PROBS"}
        offset, size = lease.slots["PROBS"]
        assert offset % _shm.ALIGN == 0 and size == 40
        second, _ = _shm.lease(pool, request, {})
        assert second.region is not lease.region  # a busy region is never lent twice
        pool.release(second.region)
    finally:
        pool.release(lease.region)
        for region in pool.close():
            region.destroy()
    assert not glob.glob(f"/dev/shm/{lease.region.name}")


def test_shared_memory_names_the_server_may_hold_are_unregistered_at_close() -> None:
    """A registration whose answer was lost (a deadline) may still have registered: close()
    unregisters it; one the server refused, it does not. A region given back after close
    is the caller's to retire. Each unregistration gets a second try; a name that fails
    both stops the rest (the server is gone: close must not hang)."""
    pool = _shm.RegionPool()
    request = codec.plan_classify_text(["a"]).requests[0]
    lost, refused, late = (_shm.lease(pool, request, {})[0].region for _ in range(3))
    for region in (lost, refused, late):
        pool.registering(region)
    pool.discard(lost, answered=_shm.registration_refused(DeadlineExceededError("deadline")))
    pool.discard(refused, answered=_shm.registration_refused(PermissionDeniedError("denied")))
    assert pool.left_on_server() == [lost.name]  # `late` is busy: not yet
    assert pool.close() == [] and pool.release(late) is True
    calls: list[tuple[str, float]] = []

    def flaky(name: str, timeout: float) -> None:
        calls.append((name, timeout))
        if len(calls) == 1:
            raise DeadlineExceededError("busy server")

    _shm.clean_up(pool, [late], flaky)  # not registered yet: nothing to call, only unlinked
    assert calls == [] and not glob.glob(f"/dev/shm/{late.name}")
    assert pool.left_on_server() == [lost.name, late.name]
    _shm.unregister_each(pool, pool.left_on_server(), flaky)
    assert calls == [(lost.name, 2.0), (lost.name, 10.0), (late.name, 2.0)] and pool.left_on_server() == []

    def gone(name: str, timeout: float) -> None:
        calls.append((name, timeout))
        raise ServerUnavailableError("gone")

    calls.clear()
    assert _shm.unregister_each(pool, ["a", "b"], gone) is False
    assert calls == [("a", 2.0), ("a", 10.0)]

    # closing against a dead server: the regions' names fail, so the names left on the server
    # are not tried again (one name's two tries in all, not two more)
    second = _shm.RegionPool()
    stuck = _shm.lease(second, request, {})[0].region
    second.registering(stuck)
    stuck.registered = True
    lost_too = _shm.lease(second, request, {})[0].region
    second.registering(lost_too)
    second.discard(lost_too, answered=False)  # a lost registration
    assert second.left_on_server() == [lost_too.name]  # (`stuck` is busy)
    calls.clear()
    second.release(stuck)
    _shm.clean_up(second, second.close(), gone, closing=True)
    assert calls == [(stuck.name, 2.0), (stuck.name, 10.0)] and not glob.glob(f"/dev/shm/{stuck.name}")
