"""The front door's cost: the same embedding requests through ``mmserve gateway`` (REST) and
straight to Triton over gRPC with the typed AsyncClient, on the same server in one run.

``mmserve bench --gateway`` starts a server (or uses ``--url``), a gateway in its own
process (as deployed: uvicorn, SQLite store, one key), and measures text_embed (one
sentence) and image_embed (one 640x480 JPEG) at concurrency 1 and 8, alternating
direct and gateway windows so that drift on a shared machine hits both alike. The
gateway side is a minimal keep-alive HTTP/1.1 client, so the figure is the gateway's
cost, not a Python HTTP library's. Targets: p50 added <= 1 ms at c=1, throughput
>= 0.9x at c=8; where missed, the cost of each layer (HTTP round trip to a route that
does nothing, the store's work per request, each process's CPU per request) is printed too.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

PIPELINES = ("text_embed", "image_embed")
SECTION_START, SECTION_END = "<!-- gateway-bench:start -->", "<!-- gateway-bench:end -->"


@dataclass(frozen=True)
class Side:
    latencies_ms: list[float]
    seconds: float
    cpu_ms: dict[str, float] = field(default_factory=dict)  # process -> CPU ms per request


    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms)

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.seconds


@dataclass(frozen=True)
class Row:
    pipeline: str
    concurrency: int
    direct: Side
    gateway: Side
    paired_ms: tuple[float, ...] = ()  # per round: gateway p50 - direct p50 of the window just before

    @property
    def added_ms(self) -> float:
        """p50 added: the median of the per-round differences (neighbouring windows see the same
        machine, so drift between rounds cancels), else the difference of the p50s."""
        return statistics.median(self.paired_ms) if self.paired_ms else self.gateway.p50 - self.direct.p50

    @property
    def ratio(self) -> float:
        return self.gateway.throughput / self.direct.throughput


class Http:
    """One keep-alive HTTP/1.1 connection: a request, then its Content-Length body."""

    def __init__(self, host: str, port: int, key: str) -> None:
        self.host, self.port = host, port
        self.head = f"Host: {host}\r\nContent-Type: application/json\r\nAuthorization: Bearer {key}\r\n"

    async def open(self) -> "Http":
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        self.writer.write(f"{method} {path} HTTP/1.1\r\n{self.head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0.0)
        todo += children.get(current, [])
    return total


async def _window(call: Callable[[int], Awaitable[None]], concurrency: int, seconds: float,
                  watched: dict[str, int] | None = None) -> Side:
    """Closed loop for ``seconds``; with ``watched`` (name -> pid; "bench" is this process),
    each one's CPU time per request as well."""
    latencies: list[float] = []
    watched = watched or {}
    before = {name: (time.process_time() if name == "bench" else tree_cpu_s(pid)) for name, pid in watched.items()}
    stop = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        i = w
        while time.perf_counter() < stop:
            started = time.perf_counter()
            await call(i)
            latencies.append((time.perf_counter() - started) * 1000)
            i += concurrency

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = {name: ((time.process_time() if name == "bench" else tree_cpu_s(pid)) - before[name]) * 1000 / len(latencies)
           for name, pid in watched.items()}
    return Side(latencies, elapsed, cpu)


def _cpu_text(side: Side) -> str:
    return " + ".join(f"{name} {ms:.2f}" for name, ms in side.cpu_ms.items() if ms > 0.005) or "-"


def _merge(sides: list[Side]) -> Side:
    n = [len(s.latencies_ms) for s in sides]
    cpu = {name: sum(s.cpu_ms[name] * k for s, k in zip(sides, n)) / sum(n) for name in sides[0].cpu_ms}
    return Side([x for s in sides for x in s.latencies_ms], sum(s.seconds for s in sides), cpu)


async def _measure(url: str, gateway: tuple[str, int], key: str, rounds: int, seconds: float,
                   log: Callable[[str], None], pids: dict[str, int]) -> tuple[list[Row], dict[str, float]]:
    from mmserve.bench.inputs import jpegs, sentences
    from mmserve.client import AsyncClient

    texts = sentences(64)
    images = jpegs(16)
    payloads = {
        "text_embed": [json.dumps({"model": "text_embed", "input": [t], "encoding_format": "base64"}).encode()
                       for t in texts],
        "image_embed": [json.dumps({"model": "image_embed", "input": [
            "data:image/jpeg;base64," + base64.b64encode(j).decode()], "encoding_format": "base64"}).encode()
            for j in images],
    }
    rows = []
    layers: dict[str, float] = {}
    async with AsyncClient(url, timeout=60, admin_key="") as client:
        direct_calls = {
            "text_embed": lambda i: client.embed_text([texts[i % len(texts)]]),
            "image_embed": lambda i: client.embed_images([images[i % len(images)]]),
        }
        for concurrency in (1, 8):
            connections = [await Http(*gateway, key).open() for _ in range(concurrency)]
            free = list(connections)

            async def through_gateway(i: int, pipeline: str) -> None:
                connection = free.pop()
                try:
                    status, body = await connection.request("POST", "/v1/embeddings",
                                                            payloads[pipeline][i % len(payloads[pipeline])])
                finally:
                    free.append(connection)
                if status != 200:
                    raise RuntimeError(f"gateway answered {status}: {body[:300]!r}")

            for pipeline in PIPELINES:
                await _window(lambda i: direct_calls[pipeline](i), concurrency, 0.5)  # warm both paths
                await _window(lambda i: through_gateway(i, pipeline), concurrency, 0.5)
                direct, through = [], []
                watched = {"bench": os.getpid(), **pids}
                for _ in range(rounds):
                    direct.append(await _window(lambda i: direct_calls[pipeline](i), concurrency, seconds, watched))
                    through.append(await _window(lambda i: through_gateway(i, pipeline), concurrency, seconds,
                                                 watched))
                paired = tuple(t.p50 - d.p50 for d, t in zip(direct, through))
                row = Row(pipeline, concurrency, _merge(direct), _merge(through), paired)
                rows.append(row)
                log(f"{pipeline} c={concurrency}: direct p50 {row.direct.p50:.2f} ms, {row.direct.throughput:.0f}/s; "
                    f"gateway p50 {row.gateway.p50:.2f} ms, {row.gateway.throughput:.0f}/s; "
                    f"added {row.added_ms:+.2f} ms, throughput x{row.ratio:.2f}; CPU ms/request "
                    f"direct {_cpu_text(row.direct)}, gateway {_cpu_text(row.gateway)}")
            if concurrency == 1:
                health = await _window(lambda i: connections[0].request("GET", "/healthz"), 1, seconds)
                layers["http_round_trip_ms"] = health.p50
            for connection in connections:
                connection.close()
    return rows, layers


def _store_cost_ms(calls: int = 2000) -> float:
    """find + admit + record on a SQLite store, per request (what the gateway does around inference)."""
    from mmserve.gateway.keys import make_record
    from mmserve.gateway.store import SqliteStore

    async def measure() -> float:
        with tempfile.TemporaryDirectory() as folder:
            store = SqliteStore(Path(folder) / "s.sqlite3")
            _, record = make_record("bench", "text_embed", rate=1e9, quota=10**12)
            await store.add_key(record)
            started = time.process_time()
            for _ in range(calls):
                await store.find(record.key_hash)
                await store.admit(record, 1)
                await store.record("bench", "text_embed", 200, 1, 100)
            elapsed = time.process_time() - started
            await store.close()
            return elapsed / calls * 1000

    return asyncio.run(measure())


def _app_cost_ms(repository: Path, calls: int = 2000) -> float:
    """The app's own CPU per request, in this process without a network or Triton: ASGI in,
    the key checked, the body parsed and validated, the items read, the usage row written,
    the answer out (an embeddings request refused at its items, so nothing is inferred)."""
    from mmserve.gateway.app import GatewayConfig, create_app
    from mmserve.gateway.catalog import Catalog
    from mmserve.gateway.keys import make_record
    from mmserve.gateway.store import SqliteStore

    async def measure() -> float:
        with tempfile.TemporaryDirectory() as folder:
            store = SqliteStore(Path(folder) / "s.sqlite3")
            key, record = make_record("bench", "text_embed", rate=1e9, quota=10**12)
            await store.add_key(record)
            app = create_app(GatewayConfig(server="127.0.0.1:9", catalog=Catalog(repository), store=store))
            body = json.dumps({"model": "text_embed", "input": [[101, 2023]]}).encode()
            scope = {"type": "http", "method": "POST", "path": "/v1/embeddings", "raw_path": b"/v1/embeddings",
                     "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
                     "server": ("127.0.0.1", 9), "client": ("127.0.0.1", 10), "asgi": {"version": "3.0"},
                     "headers": [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json"),
                                 (b"content-length", str(len(body)).encode())]}

            async def one() -> None:
                async def receive() -> dict:
                    return {"type": "http.request", "body": body, "more_body": False}

                async def send(message: dict) -> None:
                    return None

                await app(dict(scope), receive, send)

            for _ in range(100):
                await one()
            started = time.process_time()
            for _ in range(calls):
                await one()
            cost = (time.process_time() - started) / calls * 1000
            await store.close()
            return cost

    return asyncio.run(measure())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def served_models(repository: Path) -> dict[str, str]:
    """What each measured pipeline serves, from its product card: base model and layout."""
    from mmserve.lifecycle import Lifecycle

    found = {}
    for product in Lifecycle(repository).products():
        if product.name in PIPELINES:
            base = str(product.card.get("base_model") or "?")
            found[product.name] = f"{Path(base).parent.name}/{Path(base).name}, {product.card.get('layout', '?')}"
    return found


def markdown(rows: list[Row], layers: dict[str, float], command: str, load: tuple[float, float],
             served: dict[str, str] | None = None) -> str:
    lines = [
        SECTION_START,
        "## The front door: gateway vs direct gRPC",
        "",
        f"`{command}`: one server, one run; the same requests (one sentence for text_embed, one 640x480 JPEG for "
        "image_embed, `encoding_format: base64`) through `mmserve gateway` (its own process: uvicorn with httptools "
        "and uvloop, SQLite store, one key with a rate limit and a quota) and straight to Triton with the typed "
        "AsyncClient, in alternating windows; the added p50 is the median over rounds of each gateway window's p50 "
        "less the direct window's just before it. The gateway side is a minimal keep-alive HTTP/1.1 client. "
        f"This machine's 2 cores are shared with other work (load average {load[0]:.1f} at start, "
        f"{load[1]:.1f} at end): the ratios are what to read, not the absolute figures. CPU ms/request (from "
        "/proc, user + system, over the same windows) is the load-independent cost: `bench` is the caller (the "
        "gRPC client, or the raw HTTP client), `gateway` the gateway process, `triton` tritonserver with its "
        "Python stubs; on a machine whose cores are all busy, throughput follows the sum."
        + ("" if not served else " Served: " + "; ".join(f"{k} ({v})" for k, v in served.items()) + "."),
        "",
        "| pipeline | c | direct p50 ms | gateway p50 ms | added p50 ms (paired) | direct /s | gateway /s | throughput ratio "
        "| CPU ms/request, direct | CPU ms/request, through the gateway |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r.pipeline} | {r.concurrency} | {r.direct.p50:.2f} | {r.gateway.p50:.2f} | "
                     f"{r.added_ms:+.2f} | {r.direct.throughput:.0f} | {r.gateway.throughput:.0f} | {r.ratio:.2f} "
                     f"| {_cpu_text(r.direct)} | {_cpu_text(r.gateway)} |")
    lines.append("")
    for target, ok in targets(rows):
        lines.append(f"- {target}: **{'met' if ok else 'missed'}**")
    lines += ["", *where_the_time_goes(rows, layers, load)]
    lines.append(SECTION_END)
    return "\n".join(lines) + "\n"


def where_the_time_goes(rows: list[Row], layers: dict[str, float], load: tuple[float, float]) -> list[str]:
    """The cost of each layer, from this run's figures."""
    lines = ["Where the gateway's cost goes, per request:", ""]
    if "http_round_trip_ms" in layers:
        lines.append(f"- HTTP round trip to a route that does nothing (raw client, uvicorn + httptools, FastAPI "
                     f"routing): {layers['http_round_trip_ms']:.2f} ms p50.")
    if "store_per_request_ms" in layers:
        lines.append(f"- The store, measured alone (key lookup, admission of rate and quota in one transaction, "
                     f"the usage row, SQLite WAL): {layers['store_per_request_ms']:.2f} ms CPU.")
    if "app_per_request_ms" in layers:
        lines.append(f"- The app's own work, in-process without network or Triton (the key, parsing and "
                     f"validation, the items, the usage row, the answer): {layers['app_per_request_ms']:.2f} ms CPU.")
    for r in rows:
        gateway_cpu = r.gateway.cpu_ms.get("gateway", 0.0) - r.direct.cpu_ms.get("gateway", 0.0)  # less idle
        client = r.direct.cpu_ms.get("bench", 0.0)  # the AsyncClient call, as a direct caller makes it
        caller = r.gateway.cpu_ms.get("bench", 0.0)  # the caller's plain HTTP request instead
        if gateway_cpu <= 0:
            continue
        app = layers.get("app_per_request_ms", 0.0)
        lines.append(
            f"- {r.pipeline} c={r.concurrency}: the gateway process spends {gateway_cpu:.2f} ms CPU per request: "
            f"about {client:.2f} ms is the AsyncClient call a direct caller makes itself (the direct caller's CPU), "
            f"{app:.2f} ms the app's work above, {max(gateway_cpu - client - app, 0):.2f} ms the HTTP server "
            f"(uvicorn, httptools), the event loop and its wake-ups; the caller's own CPU falls from {client:.2f} to "
            f"{caller:.2f} ms. Net, the front door adds {gateway_cpu + caller - client:.2f} ms of CPU per request "
            "to the machine.")
    lines += ["", f"At c=1 the added latency is that work plus waiting: a request crosses three processes (caller, "
              f"gateway, Triton) instead of two, and on 2 cores under a load average of {max(load):.0f} each hop "
              "waits for a core. At c=8 on a machine whose cores are all busy, the throughput ratio follows the CPU "
              "sums: the net cost above against the server's own CPU per request (the `triton` figure), so it "
              "stays near 1 for a real encoder and drops for a model whose server work is only a few ms."]
    return lines


def targets(rows: list[Row]) -> list[tuple[str, bool]]:
    out = []
    for r in rows:
        if r.concurrency == 1:
            out.append((f"{r.pipeline} c=1: p50 added {r.added_ms:+.2f} ms (target <= 1 ms)", r.added_ms <= 1.0))
        else:
            out.append((f"{r.pipeline} c={r.concurrency}: throughput x{r.ratio:.2f} (target >= 0.9x)", r.ratio >= 0.9))
    return out


def write_section(docs: Path, section: str) -> Path:
    """Replace this section of docs/benchmarks.md, or append it; the rest of the file is untouched."""
    text = docs.read_text(encoding="utf-8") if docs.exists() else ""
    if SECTION_START in text and SECTION_END in text:
        before, rest = text.split(SECTION_START, 1)
        after = rest.split(SECTION_END, 1)[1].lstrip("\n")
        text = before + section + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    docs.write_text(text, encoding="utf-8")
    return docs


def gateway_command(repository: Path, url: str | None, *, quick: bool = False, report: Path | None = None,
                    command: str = "mmserve bench --gateway", log: Callable[[str], None] = print) -> list[Row]:
    from mmserve.bench.client import _pipeline_models
    from mmserve.gateway.keys import make_record
    from mmserve.gateway.store import SqliteStore, run
    from mmserve.server import ServerPorts, TritonServer

    load_start = os.getloadavg()[0]
    rounds, seconds = (2, 1.0) if quick else (6, 1.5)
    server = None
    if url is None:
        server = TritonServer(repository, ServerPorts.free(), models=_pipeline_models(repository, PIPELINES)).start()
        url = server.grpc_url
    folder = tempfile.TemporaryDirectory(prefix="mmserve-bench-gateway-")
    store_path = Path(folder.name) / "gateway.sqlite3"
    store = SqliteStore(store_path)
    key, record = make_record("bench", ",".join(PIPELINES), rate=100_000, quota=10**12)
    run(store.add_key(record))
    run(store.close())
    port = _free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "mmserve.cli", "gateway", "--server", url, "--repository", str(repository),
         "--port", str(port), "--store", str(store_path)], stdout=subprocess.DEVNULL)
    try:
        _wait_healthy(gateway, port)
        pids = {"gateway": gateway.pid, **({"triton": server.pid} if server is not None and server.pid else {})}
        rows, layers = asyncio.run(_measure(url, ("127.0.0.1", port), key, rounds, seconds, log, pids))
        layers["store_per_request_ms"] = _store_cost_ms()
        layers["app_per_request_ms"] = _app_cost_ms(repository)
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)
        if server is not None:
            server.stop()
        folder.cleanup()
    for target, ok in targets(rows):
        log(f"- {target}: {'met' if ok else 'missed'}")
    log("layers: " + "; ".join(f"{k} {v:.3f}" for k, v in layers.items()))
    if report is not None:
        section = markdown(rows, layers, command, (load_start, os.getloadavg()[0]), served_models(repository))
        log(f"report: {write_section(report, section)}")
    return rows


def _wait_healthy(process: subprocess.Popen, port: int, timeout: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with {process.returncode} before it was ready")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway did not answer /healthz within 60 s") from None
            time.sleep(0.1)
