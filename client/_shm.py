"""System shared memory for apps on the server's host: tensors skip gRPC's copies.

A client with ``shared_memory="system"`` keeps a pool of POSIX shared-memory regions
(``/dev/shm/mmserve_*``), each registered with the server once and then reused: a
request takes a free region big enough for its inputs and its fixed-size outputs,
writes the inputs into it, names the region in the request instead of sending the
bytes, reads the outputs back from it and gives it back. A region serves one request
at a time. When a request needs more room than any free region has, a free region is
retired (unregistered, unlinked) and a bigger one made, so the pool holds about as many
regions as the client runs requests at once, each sized to a power of two.

Only the bookkeeping lives here; registering and unregistering are RPCs the sync and
asyncio transports make themselves. Regions are made with the standard library's
``multiprocessing.shared_memory`` (whose resource tracker also unlinks them should the
process die); ``tritonclient.utils.shared_memory`` does the same through a ctypes
library but imports ``pkg_resources``, which current setuptools no longer ships.

``shared_memory="cuda"`` pools GPU memory instead (``CudaRegion``, through
``tritonclient.utils.cuda_shared_memory``): for an app on the server's host with an
NVIDIA GPU, whose gpu-profile encoders then read their inputs from device memory. The
same pool and leases serve both; a CUDA region stages a request's inputs on the host and
copies them to the device in one call (tritonclient copies from a region's start only).
"""
from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import serialize_byte_tensor, triton_to_np_dtype

from .codec import Request
from .errors import DeadlineExceededError, MmserveError, ServerError, ServerUnavailableError

__all__ = ["Region", "CudaRegion", "RegionPool", "Lease", "output_item_bytes", "regions_lost", "SHM_ADVICE",
           "cuda_shared_memory"]

MIN_REGION_BYTES = 64 * 1024
ALIGN = 64  # tensors start on cache-line boundaries inside a region

SHM_ADVICE = (
    "shared_memory='system' needs the server on this host with the same /dev/shm "
    "(in Docker: --ipc=host, or one /dev/shm volume for both containers) and the same user; "
    "otherwise use Client(url) without shared_memory"
)


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _region_size(nbytes: int) -> int:
    """The next power of two, at least MIN_REGION_BYTES: few regrowths as payloads vary."""
    return max(MIN_REGION_BYTES, 1 << max(0, nbytes - 1).bit_length())


class Region:
    """One shared-memory segment and whether the server currently knows it."""

    __slots__ = ("name", "size", "registered", "_shm", "_bytes")
    kind = "system"  # tritonclient's register_/unregister_<kind>_shared_memory

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.registered = False
        self._shm: SharedMemory | None = SharedMemory(name=name, create=True, size=size)
        self._bytes: np.ndarray | None = np.ndarray((size,), dtype=np.uint8, buffer=self._shm.buf)

    @property
    def key(self) -> str:
        """The POSIX name the server opens (shm_open)."""
        return "/" + self.name

    def registration(self, client: Any) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        """The call (sync or asyncio tritonclient) that registers this region, and its arguments."""
        return client.register_system_shared_memory, (self.name, self.key, self.size)

    def commit(self) -> None:
        """The inputs written are visible to the server (a mapping shares them already)."""

    def fetch(self) -> None:
        """The server's outputs are readable (a mapping shares them already)."""

    def write(self, offset: int, data: np.ndarray) -> None:
        assert self._bytes is not None, "region destroyed"
        flat = data.reshape(-1).view(np.uint8)
        self._bytes[offset : offset + flat.size] = flat

    def read(self, offset: int, dtype: np.dtype, shape: Sequence[int]) -> np.ndarray:
        """A copy: the region is reused as soon as the request is done."""
        assert self._bytes is not None, "region destroyed"
        count = int(np.prod(shape)) if len(shape) else 1
        nbytes = count * dtype.itemsize
        if offset + nbytes > self.size:
            raise ServerError(f"malformed response: an output of {nbytes} bytes does not fit its shared-memory slot")
        return self._bytes[offset : offset + nbytes].view(dtype).reshape(shape).copy()

    def destroy(self) -> None:
        """Unmap and unlink (idempotent); the server must have unregistered it first."""
        shm, self._shm = self._shm, None
        self._bytes = None  # drop the view before closing the mapping under it
        if shm is not None:
            try:
                shm.close()
            except BufferError:  # a request still reads it (close() timed out): unmapped at exit
                pass
            try:
                shm.unlink()
            except FileNotFoundError:
                pass


class CudaRegion:
    """One CUDA shared-memory allocation on a GPU (``shared_memory="cuda"``); the same
    interface as :class:`Region`. Inputs are staged in host memory and ``commit`` copies
    to the device only the bytes this request's inputs occupy; ``read`` copies back only
    each output's own bytes (tritonclient's helpers copy the whole region both ways)."""

    __slots__ = ("name", "size", "registered", "device", "_cuda", "_handle", "_host", "_end")
    kind = "cuda"

    def __init__(self, name: str, size: int, device: int = 0) -> None:
        self.name = name
        self.size = size
        self.registered = False
        self.device = device
        self._cuda = cuda_shared_memory(device)
        self._handle: Any = self._cuda.create_shared_memory_region(name, size, device)
        self._host: np.ndarray | None = np.zeros(size, dtype=np.uint8)
        self._end = 0  # the end of what this request's inputs wrote

    def registration(self, client: Any) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return client.register_cuda_shared_memory, (
            self.name, self._cuda.get_raw_handle(self._handle), self.device, self.size
        )

    def write(self, offset: int, data: np.ndarray) -> None:
        assert self._host is not None, "region destroyed"
        flat = data.reshape(-1).view(np.uint8)
        self._host[offset : offset + flat.size] = flat
        self._end = max(self._end, offset + flat.size)

    def commit(self) -> None:
        """The inputs to the device: the region's first bytes up to the last input's end."""
        assert self._host is not None, "region destroyed"
        if self._end:
            self._cuda.set_shared_memory_region(self._handle, [self._host[: self._end]])
        self._end = 0

    def fetch(self) -> None:
        """Nothing to do: ``read`` copies each output's own bytes from the device."""

    def read(self, offset: int, dtype: np.dtype, shape: Sequence[int]) -> np.ndarray:
        """One output, copied from the device: only its own bytes cross the bus."""
        assert self._host is not None, "region destroyed"
        count = int(np.prod(shape)) if len(shape) else 1
        nbytes = count * dtype.itemsize
        if offset + nbytes > self.size:
            raise ServerError(f"malformed response: an output of {nbytes} bytes does not fit its shared-memory slot")
        host = np.empty(nbytes, dtype=np.uint8)
        if nbytes:
            cudart = self._cuda.cudart
            (error, *_) = cudart.cudaMemcpy(host.ctypes.data, self._handle._base_addr + offset, nbytes,
                                            cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost)
            if error != cudart.cudaError_t.cudaSuccess:
                raise MmserveError(f"CUDA shared memory: copying an output back failed ({error})")
        return host.view(dtype).reshape(shape)

    def destroy(self) -> None:
        """Free the device memory (idempotent); the server must have unregistered it first."""
        handle, self._handle, self._host = self._handle, None, None
        if handle is not None:
            try:
                self._cuda.destroy_shared_memory_region(handle)
            except Exception:  # noqa: BLE001 - at exit the CUDA context may be gone already
                pass


def _cuda_region(name: str, size: int, device: int) -> CudaRegion:
    try:
        return CudaRegion(name, size, device)
    except MmserveError:
        raise
    except Exception as exc:  # noqa: BLE001 - tritonclient's CudaSharedMemoryException and CUDA errors
        raise MmserveError(
            f"cannot allocate {size} bytes of CUDA shared memory on device {device} ({exc}); free GPU memory "
            "or use shared_memory='system'"
        ) from exc


CUDA_ADVICE = (
    "shared_memory='cuda' needs an NVIDIA GPU on the server's host, visible to this process, and "
    "tritonclient's CUDA utilities (pip install 'mmserve[cuda-client]': tritonclient[cuda] with cuda-python below 13, whose "
    "`cuda.cudart` they import, and setuptools' pkg_resources); otherwise use shared_memory='system' or none"
)


def cuda_shared_memory(device: int = 0) -> Any:
    """``tritonclient.utils.cuda_shared_memory``, once a CUDA device ``device`` is known to be
    usable; else an MmserveError naming what is missing (checked when the client is made)."""
    try:
        import tritonclient.utils.cuda_shared_memory as cuda  # noqa: PLC0415 - only for shared_memory='cuda'
        from cuda import cudart  # noqa: PLC0415 - the binding tritonclient itself loaded
    except (ImportError, RuntimeError) as exc:
        raise MmserveError(
            f"no CUDA shared memory: tritonclient.utils.cuda_shared_memory cannot load here "
            f"({type(exc).__name__}: {exc}). {CUDA_ADVICE}"
        ) from exc
    error, count = cudart.cudaGetDeviceCount()
    if int(error) != 0 or count <= device:
        why = "no CUDA device" if int(error) != 0 or count == 0 else f"only {count} CUDA device(s)"
        raise MmserveError(f"no CUDA device {device} for shared_memory='cuda' ({why}: {error}). {CUDA_ADVICE}")
    return cuda


class RegionPool:
    """The free and busy regions of one client; thread-safe, no I/O but shm_open/mmap
    (or, with ``kind="cuda"``, CUDA allocations on ``device``)."""

    def __init__(self, kind: str = "system", device: int = 0) -> None:
        if kind == "cuda":
            cuda_shared_memory(device)  # fail when the client is made, not on its first request
        self.kind = kind
        self._device = device
        self._prefix = f"mmserve_{os.getpid()}_{uuid.uuid4().hex[:10]}"
        self._count = 0
        self._free: list[Region] = []
        self._busy: set[Region] = set()
        self._closed = False
        self._cond = threading.Condition()
        # Names the server may hold: registered, or registering when the answer was lost
        # (a deadline, a dropped connection). close() unregisters what is left of them.
        self._on_server: set[str] = set()

    def acquire(self, nbytes: int) -> tuple[Region, list[Region]]:
        """A region of at least ``nbytes`` for one request, and regions to retire first.

        The region may be new (``registered`` False): the caller registers it.
        """
        with self._cond:
            if self._closed:
                raise MmserveError("the client is closed; create a new one")
            fitting = [r for r in self._free if r.size >= nbytes]
            if fitting:
                region = min(fitting, key=lambda r: r.size)
                self._free.remove(region)
                self._busy.add(region)
                return region, []
            # Nothing free is big enough: replace the smallest free region (if any) by a
            # bigger one, so the pool grows in size, not in number.
            retired = [self._free.pop(self._free.index(min(self._free, key=lambda r: r.size)))] if self._free else []
            self._count += 1
            name = f"{self._prefix}_{self._count}"
        try:
            if self.kind == "cuda":
                region: Region | CudaRegion = _cuda_region(name, _region_size(nbytes), self._device)
            else:
                region = Region(name, _region_size(nbytes))
        except (OSError, MmserveError) as exc:  # /dev/shm full or missing; GPU memory exhausted
            if isinstance(exc, MmserveError):
                with self._cond:
                    self._free.extend(retired)
                raise
            with self._cond:
                self._free.extend(retired)  # nothing was retired after all
            raise MmserveError(
                f"cannot create a shared-memory region of {_region_size(nbytes)} bytes in /dev/shm ({exc}); "
                "make /dev/shm bigger (Docker: --shm-size) or use the client without shared_memory"
            ) from exc
        with self._cond:
            self._busy.add(region)
        return region, retired

    def release(self, region: Region) -> bool:
        """Give a region back after its request finished (or failed). True when the pool
        closed meanwhile (close() did not wait for this request): the caller retires it."""
        with self._cond:
            self._busy.discard(region)
            if not self._closed:
                self._free.append(region)
            self._cond.notify_all()
            return self._closed

    def registering(self, region: Region) -> None:
        """The caller is about to register ``region``: from now on the server may hold it."""
        with self._cond:
            self._on_server.add(region.name)

    def unregistered(self, name: str) -> None:
        """The server no longer holds ``name`` (unregistered, or it refused to register it)."""
        with self._cond:
            self._on_server.discard(name)

    def left_on_server(self) -> list[str]:
        """Names the server may still hold that no request uses: what close() unregisters
        after retiring the free regions (e.g. a registration whose answer was lost)."""
        with self._cond:
            busy = {r.name for r in self._busy}
            return sorted(self._on_server - busy)

    def discard(self, region: Region, *, answered: bool) -> None:
        """Drop a region whose registration failed. ``answered``: the server refused it, so
        it does not hold the name; otherwise (the answer was lost) close() unregisters it."""
        with self._cond:
            self._busy.discard(region)
            if answered:
                self._on_server.discard(region.name)
            self._cond.notify_all()
        region.destroy()

    def forget_registrations(self) -> None:
        """The server lost its registrations (it restarted): register each region again."""
        with self._cond:
            for region in (*self._free, *self._busy):
                region.registered = False
            self._on_server.clear()

    @property
    def busy(self) -> int:
        with self._cond:
            return len(self._busy)

    def wait_idle(self, timeout: float) -> bool:
        """Block until no request uses a region (the sync client's close)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._busy, timeout=timeout)

    def close(self) -> list[Region]:
        """Stop lending; the free regions, for the caller to unregister and destroy."""
        with self._cond:
            self._closed = True
            free, self._free = self._free, []
            return free

    def snapshot(self) -> list[Region]:
        """Every region alive now (for clean-up at exit)."""
        with self._cond:
            return [*self._free, *self._busy]


@dataclass(frozen=True)
class Lease:
    """One request's place in a region: the tritonclient tensors that point into it."""

    region: Region
    inputs: list[grpcclient.InferInput]
    outputs: list[grpcclient.InferRequestedOutput]
    slots: Mapping[str, tuple[int, int]]  # output name -> (offset, capacity) in the region
    names: tuple[str, ...]

    def read(self, result: grpcclient.InferResult) -> dict[str, np.ndarray]:
        """``{name: array}`` like :func:`codec.read_outputs`, from the region or the message."""
        if self.slots:
            self.region.fetch()
        outputs: dict[str, np.ndarray] = {}
        for name in self.names:
            if name in self.slots:
                tensor = result.get_output(name)
                if tensor is None:
                    raise ServerError(f"malformed response: no output {name}")
                offset, _ = self.slots[name]
                outputs[name] = self.region.read(offset, np.dtype(triton_to_np_dtype(tensor.datatype)), list(tensor.shape))
            else:
                array = result.as_numpy(name)
                if array is None:
                    raise ServerError(f"malformed response: no output {name}")
                outputs[name] = array
        return outputs


def _serialized(tensor_dtype: str, array: np.ndarray) -> np.ndarray:
    """The bytes of one input as Triton reads them from shared memory."""
    if tensor_dtype == "BYTES":
        return np.frombuffer(serialize_byte_tensor(array).item(), dtype=np.uint8)
    return np.ascontiguousarray(array)


def output_item_bytes(metadata: object) -> dict[str, int]:
    """Per-item byte size of each fixed-size numeric output in a model's metadata.

    Outputs with a variable dimension or BYTES type (labels, JSON) are left out: they
    come back in the gRPC message.
    """
    sizes = {}
    for output in getattr(metadata, "outputs", ()):
        dims = list(output.shape)[1:]  # the first dimension is the batch
        if output.datatype == "BYTES" or any(d < 0 for d in dims):
            continue
        dtype = triton_to_np_dtype(output.datatype)
        if dtype is None:
            continue
        sizes[output.name] = int(np.prod(dims)) * np.dtype(dtype).itemsize if dims else np.dtype(dtype).itemsize
    return sizes


def lease(pool: RegionPool, request: Request, item_bytes: Mapping[str, int]) -> tuple[Lease, list[Region]]:
    """Write ``request``'s inputs into a pooled region; returns the lease and regions to retire.

    The lease's region may still need registering (``lease.region.registered``).
    """
    payloads = [(tensor, array, _serialized(tensor.triton_dtype, array)) for tensor, array in request.inputs]
    offset = 0
    placed = []
    for tensor, array, data in payloads:
        placed.append((tensor, array, data, offset))
        offset += _aligned(data.nbytes)
    slots: dict[str, tuple[int, int]] = {}
    for name in request.outputs:
        if name in item_bytes:
            size = item_bytes[name] * request.batch_size
            slots[name] = (offset, size)
            offset += _aligned(size)
    region, retired = pool.acquire(max(offset, 1))
    try:
        inputs = []
        for tensor, array, data, at in placed:
            region.write(at, data)
            infer_input = grpcclient.InferInput(tensor.name, list(array.shape), tensor.triton_dtype)
            infer_input.set_shared_memory(region.name, data.nbytes, offset=at)
            inputs.append(infer_input)
        outputs = []
        for name in request.outputs:
            requested = grpcclient.InferRequestedOutput(name)
            if name in slots:
                at, size = slots[name]
                requested.set_shared_memory(region.name, size, offset=at)
            outputs.append(requested)
        region.commit()
    except BaseException:
        if pool.release(region):
            region.destroy()  # the client closed meanwhile
        raise
    return Lease(region, inputs, outputs, slots, request.outputs), retired


def registration_refused(error: MmserveError) -> bool:
    """Whether the server answered a registration with a refusal (so it holds no such
    region), rather than the answer being lost to a deadline or a dropped connection."""
    return not isinstance(error, (DeadlineExceededError, ServerUnavailableError))


def regions_lost(error: MmserveError) -> bool:
    """Whether the server no longer knows a region (it restarted since it was registered)."""
    text = (error.server_message or "").lower()
    return "shared memory region" in text and ("unable to find" in text or "not found" in text)


# Each unregistration gets a second, longer try: one lost to a busy server would leave the
# region registered (the server keeps its mapping) after the client unlinked it.
UNREGISTER_TIMEOUTS_S = (2.0, 10.0)


def unregister_each(pool: RegionPool, names: Iterable[str], unregister_one: Callable[[str, float], None]) -> bool:
    """Unregister each name (sync transport), each with a second, longer try; a name that
    fails both stops the rest (the server is gone or hung: close() must not hang too).
    False when it stopped so."""
    for name in names:
        for timeout in UNREGISTER_TIMEOUTS_S:
            try:
                unregister_one(name, timeout)
            except Exception:  # noqa: BLE001 - the server may be gone; unlinking still matters
                continue
            pool.unregistered(name)
            break
        else:
            return False
    return True


def clean_up(pool: RegionPool, regions: Iterable[Region], unregister_one: Callable[[str, float], None],
             *, closing: bool = False) -> None:
    """Unregister (each with a second try) and unlink; for close(), retirements and the
    exit finalizer. Unlinking happens whatever the server says. ``closing``: then also the
    names the server may still hold (a registration whose answer was lost), unless the
    server already failed to answer."""
    regions = list(regions)
    try:
        if unregister_each(pool, [r.name for r in regions if r.registered], unregister_one) and closing:
            unregister_each(pool, pool.left_on_server(), unregister_one)
    finally:
        for region in regions:
            region.destroy()
