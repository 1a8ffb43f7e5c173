"""Usage rows summed per period, for `mmserve usage` and the console's Usage page."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .store import UsageRow


@dataclass(frozen=True)
class UsageLine:
    period: str  # the hour, day (YYYY-MM-DD), month (YYYY-MM) or "total"
    tenant: str
    product: str
    status: int
    requests: int
    items: int
    bytes: int


_PERIOD = {"hour": lambda h: h, "day": lambda h: h[:10], "month": lambda h: h[:7], "total": lambda h: "total"}


def summarise(rows: Iterable[UsageRow], by: str = "day", *, tenant: str | None = None,
              product: str | None = None) -> list[UsageLine]:
    period_of = _PERIOD[by]
    sums: dict[tuple[str, str, str, int], list[int]] = {}
    for row in rows:
        if (tenant and row.tenant != tenant) or (product and row.product != product):
            continue
        total = sums.setdefault((period_of(row.hour), row.tenant, row.product, row.status), [0, 0, 0])
        total[0] += row.requests
        total[1] += row.items
        total[2] += row.bytes
    return [UsageLine(*key, *values) for key, values in sorted(sums.items())]
