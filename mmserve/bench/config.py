"""One bench run's settings (`mmserve bench`'s options), apart from the run itself, so the
stages that take them (run.py, run_peers.py) import this module and not each other."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from mmserve.bench.checkpoints import DEFAULT_MANIFEST, known_checkpoints
from mmserve.bench.perf import PerfSettings

DEFAULT_OUT = Path("artifacts/bench/latest")
DEFAULT_PEERS_VENV = Path("artifacts/bench/venv-peers")


@dataclass(frozen=True)
class BenchConfig:
    """One bench run's settings; frozen, so every stage sees what the run was started with."""

    repository: Path = Path("model_repository")
    compare_with: tuple[Path, ...] = ()  # more repositories (other layouts), served one after the other
    pipelines: tuple[str, ...] = ()  # empty: every pipeline the server offers
    url: str | None = None  # a running server's gRPC address; None: start one over `repository`
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    request_rates: tuple[float, ...] = ()
    shared_memory: str = "none"
    out: Path = DEFAULT_OUT
    skip_peers: bool = False
    quick: bool = False
    tune: bool = False
    cpus: tuple[int, ...] | None = None
    checkpoints: Mapping[str, Path] = field(default_factory=dict)  # --checkpoint overrides of the manifest
    checkpoints_manifest: Path = DEFAULT_MANIFEST
    peers_venv: Path = DEFAULT_PEERS_VENV
    measurement_interval_ms: int | None = None
    requests: int = 128  # distinct requests in each pipeline's input data
    baseline_seconds: float | None = None
    skip_runtimes: bool = False
    command: str = ""
    # --url's admin key (the repository index is an admin call); None: $MMSERVE_ADMIN_KEY, then
    # the key a local `mmserve serve` of this user generated
    admin_key: str | None = field(default=None, repr=False)

    @property
    def repositories(self) -> tuple[Path, ...]:
        return (self.repository, *self.compare_with)

    @property
    def known_checkpoints(self) -> dict[str, Path]:
        """The checkpoint behind each pipeline: text_embed's base, the manifest, then overrides."""
        return known_checkpoints(self.checkpoints_manifest, dict(self.checkpoints))

    @property
    def settings(self) -> PerfSettings:
        interval = self.measurement_interval_ms or (1500 if self.quick else 3000)
        return PerfSettings(measurement_interval_ms=interval, shared_memory=self.shared_memory,
                            max_trials=5 if self.quick else 8)

    @property
    def seconds(self) -> float:
        return self.baseline_seconds if self.baseline_seconds is not None else (1.0 if self.quick else 4.0)
