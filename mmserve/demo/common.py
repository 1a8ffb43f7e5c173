"""What the demo lines share: where artifacts go, timing and printing."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mmserve.repository_layout import CONFIG_FILE


@dataclass
class DemoContext:
    workdir: Path
    repository: Path
    fresh: bool = False
    summary: list[str] = field(default_factory=list)

    def checkpoint(self, name: str) -> Path:
        return self.workdir / "checkpoints" / name

    def record_checkpoint(self, pipeline: str, checkpoint: Path) -> None:
        """Tell the bench which checkpoint stands behind a pipeline (workdir/checkpoints.json)."""
        from mmserve.bench.checkpoints import record_checkpoint

        record_checkpoint(self.workdir / "checkpoints.json", pipeline, checkpoint)

    def needs_training(self, name: str) -> bool:
        """Reuse a finished checkpoint unless --fresh: later demo runs skip training."""
        return self.fresh or not (self.checkpoint(name) / "metrics.json").exists()

    def needs_export(self, checkpoint: Path, pipeline: str) -> bool:
        config = self.repository / pipeline / CONFIG_FILE
        marker = checkpoint / "metrics.json" if (checkpoint / "metrics.json").exists() else checkpoint / "config.json"
        return self.fresh or not config.exists() or config.stat().st_mtime < marker.stat().st_mtime


def banner(title: str) -> None:
    print(f"\n{'=' * 8} {title} {'=' * max(4, 70 - len(title))}", flush=True)


def latency_ms(call: Callable[[], object], repeats: int = 30) -> tuple[float, float]:
    """p50 and p90 wall time of one client call, after a warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    deciles = statistics.quantiles(times, n=10)
    return statistics.median(times), deciles[-1]
