"""`mmserve demo`: every product line trained, exported, served and called for real.

Each line (text, CLIP, speech) is a small module with the same two steps:
`prepare` trains (or reuses) its checkpoints and exports them into the
repository; `show` calls its pipelines through the client and prints answers.
"""
from __future__ import annotations

import time
from pathlib import Path

from mmserve.demo.common import DemoContext, banner
from mmserve.demo import clip, speech, text

LINES = (text, speech, clip)


def run_demo(workdir: Path, fresh: bool = False, repository: Path = Path("model_repository")) -> int:
    from mmserve.client import Client
    from mmserve.server import ServerPorts, TritonServer

    started = time.perf_counter()
    context = DemoContext(workdir=workdir, repository=repository, fresh=fresh)
    for line in LINES:
        line.prepare(context)

    banner("Serving")
    log = workdir / "triton.log"
    server_started = time.perf_counter()
    with TritonServer(repository, ServerPorts.free(), log_file=log) as server:
        print(f"tritonserver ready in {time.perf_counter() - server_started:.1f} s at {server.grpc_url} (log: {log})")
        with Client(server.grpc_url, timeout=30.0) as client:
            for line in LINES:
                line.show(context, client)

    banner("Summary")
    for line in context.summary:
        print(line)
    print(f"demo wall time: {time.perf_counter() - started:.0f} s")
    print_console_hint(repository)
    return 0


def print_console_hint(repository: Path) -> None:
    """Where to look around next: the web console over what the demo exported."""
    from mmserve.console.settings import ConsoleSettings

    console = ConsoleSettings(repository=repository)
    print(
        f"\nConsole: run `mmserve serve --repository {repository} --console` (it prints a one-time sign-in "
        f"key), then open http://{console.host}:{console.port}/"
    )
