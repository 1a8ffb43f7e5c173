"""What a product is, as the CLI and the console show it: its steps, versions and card, the
version the server serves beside the one active on disk, and the words for changing it.

Plain data, filled by the lifecycle core (:mod:`mmserve.lifecycle`), so ``mmserve
products`` and the console say the same things the same way: "v3 exported, v1 serving —
run `mmserve reload sentiment`", "Roll back to v1", "Make v2 live".
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mmserve import kinds
from mmserve.pipelines import Kind, TensorSpec

UNKNOWN = "UNKNOWN"  # a product's state when no server was asked


@dataclass(frozen=True)
class StepInfo:
    """An internal model a product calls; shared when another product calls it too."""

    name: str
    shared: bool
    versions: tuple[int, ...]  # on disk
    state: str | None  # the server's; None without one


@dataclass(frozen=True)
class VersionInfo:
    version: int
    active: bool
    card: Mapping[str, Any]


@dataclass(frozen=True)
class Product:
    name: str
    kind: Kind
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    labels: tuple[str, ...]
    steps: tuple[StepInfo, ...]
    versions: tuple[VersionInfo, ...]
    active_version: int | None  # on disk: what the next start (or `mmserve reload`) serves
    state: str  # READY / UNAVAILABLE / UNLOADED / LOADING from the server, UNKNOWN without one
    reason: str
    # What the server answers with: the product's READY version (None: not served, or no server asked).
    served_version: int | None = None
    # "" when disk and server agree; else what differs and the command that reconciles them,
    # e.g. "v3 exported, v1 serving — run `mmserve reload sentiment`" (CLI and console show it as is).
    drift: str = ""

    @property
    def card(self) -> Mapping[str, Any]:
        """The active version's product card ({} when it has none)."""
        return next((v.card for v in self.versions if v.active), {})

    @property
    def headline(self) -> str:
        """The active version's headline metric, e.g. "dev accuracy 0.912" ("" without one)."""
        return headline(self.card)

    @property
    def live_version(self) -> int | None:
        """The version requests get: the served one (None: not served), or, when no server
        was asked, the one on disk."""
        return self.active_version if self.state == UNKNOWN else self.served_version

    @property
    def actions(self) -> tuple[str, ...]:
        """The admin actions that can succeed now ("load", "unload", "reload"); version
        changes are :func:`version_changes`'s."""
        if self.state == UNKNOWN:
            return ()
        offered = []
        if self.state not in ("READY", "LOADING"):
            offered.append("load")
        if self.state == "READY":
            offered.append("unload")
            if self.served_version is not None and self.served_version != self.active_version:
                offered.append("reload")
        return tuple(offered)


@dataclass(frozen=True)
class VersionChange:
    """Serving another version of a product, in the words the CLI and the console share:
    "roll back" to an earlier one, "roll forward" to a later one, "make live" when nothing
    is served yet."""

    product: str
    current: int | None  # the version served (or, without a server, active on disk)
    target: int

    @property
    def action(self) -> str:
        """The audit log's (and the console's form's) name: rollback / roll-forward / make-live."""
        if self.current is None:
            return "make-live"
        return "rollback" if self.target < self.current else "roll-forward"

    @property
    def verb(self) -> str:
        return {"make-live": "Make live", "rollback": "Roll back", "roll-forward": "Roll forward"}[self.action]

    @property
    def label(self) -> str:
        """A button's text, e.g. "Roll back to v1"."""
        if self.action == "make-live":
            return f"Make v{self.target} live"
        return f"{self.verb} to v{self.target}"

    @property
    def question(self) -> str:
        """The confirmation's question, e.g. "Roll sentiment back from v2 to v1?"."""
        if self.action == "make-live":
            return f"Make v{self.target} of {self.product} live?"
        way = "back" if self.action == "rollback" else "forward"
        return f"Roll {self.product} {way} from v{self.current} to v{self.target}?"

    @property
    def effect(self) -> str:
        """What confirming does, in one sentence."""
        which = {"rollback": "an earlier", "roll-forward": "a later", "make-live": "this"}[self.action]
        return (f"Makes {which} version (v{self.target}) the one {self.product} serves, on disk and on the server; "
                "requests keep being answered while it switches.")


def version_changes(product: Product) -> list[VersionChange]:
    """The version changes on offer: every version on disk but the one requests get now."""
    current = product.live_version
    return [VersionChange(product.name, current, v.version) for v in product.versions if v.version != current]


def drift_text(name: str, served: int | None, active: int | None) -> str:
    """What an operator must know when the server serves another version than the disk
    names, with the command that reconciles them; "" when they agree (or nothing is served)."""
    if served is None or active is None or served == active:
        return ""
    made = "exported" if active > served else "made active on disk"
    return f"v{active} {made}, v{served} serving — run `mmserve reload {name}`"


def headline(card: Mapping[str, Any]) -> str:
    """A card's headline metric: the one training selected on (``metric``) on its held-out
    split, or the kind's own, else the first held-out figure; "" for a checkpoint exported
    as it was."""
    metrics = card.get("metrics") or {}
    if not isinstance(metrics, Mapping):
        return ""
    for split, key in (("dev", "dev_metrics"), ("val", "val_metrics")):
        figures = metrics.get(key)
        if not isinstance(figures, Mapping):
            continue
        wanted = [metrics.get("metric"), _kind_headline(card.get("kind"))]
        name = next((n for n in wanted if n in figures), next(iter(figures), None))
        value = figures.get(name) if name is not None else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return f"{split} {name} {value:.3f}"
    return ""


def _kind_headline(kind: object) -> str | None:
    """The kind table's headline metric (a CLIP run's three products each name their own)."""
    try:
        return kinds.info(str(kind)).headline_metric
    except ValueError:  # no kind, or one this version does not know
        return None
