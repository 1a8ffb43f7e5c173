"""Which products the gateway can serve and what kind each is, read from the repository.

The same reading as ``mmserve products --offline`` (the lifecycle core, no server and no
admin key): a product's kind picks its row of the kind table, hence its route, its input
and its answer. Read again when a name is not found (at most once per ``REFRESH_S``), so
a product exported while the gateway runs is served without a restart.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from mmserve.kinds import KindInfo, info


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    kind: KindInfo
    labels: tuple[str, ...]  # the product's own labels (classification), () otherwise
    created: int  # the active version's export time, Unix seconds (OpenAI's "created")


class Catalog:
    REFRESH_S = 2.0

    def __init__(self, repository: Path) -> None:
        self.repository = Path(repository)
        self._entries: dict[str, CatalogEntry] = {}
        self._read_at = 0.0
        self.refresh()

    def refresh(self) -> None:
        from mmserve.lifecycle import Lifecycle

        entries = {}
        for product in Lifecycle(self.repository).products():
            entries[product.name] = CatalogEntry(product.name, info(product.kind), tuple(product.labels),
                                                 _unix_time(product.card.get("exported_at")))
        self._entries = entries
        self._read_at = time.monotonic()

    def get(self, name: str) -> CatalogEntry | None:
        entry = self._entries.get(name)
        if entry is None and time.monotonic() - self._read_at > self.REFRESH_S:
            self.refresh()
            entry = self._entries.get(name)
        return entry

    def names(self) -> list[str]:
        return sorted(self._entries)


def _unix_time(when: object) -> int:
    """An ISO 8601 time as Unix seconds (0 when there is none)."""
    try:
        return int(datetime.fromisoformat(str(when).replace("Z", "+00:00")).timestamp()) if when else 0
    except ValueError:
        return 0
