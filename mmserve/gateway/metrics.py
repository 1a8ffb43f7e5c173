"""The gateway's Prometheus counters, in the text exposition format (no extra dependency).

Per tenant x product x status: requests, items and request bytes (what the usage store
keeps too, so a dashboard and a bill agree), and the time answered requests took.
"""
from __future__ import annotations

import threading
from collections import defaultdict

_COUNTERS = (
    ("mmserve_gateway_requests_total", "Requests answered, per tenant, product and HTTP status."),
    ("mmserve_gateway_items_total", "Items (texts, images, clips) in those requests."),
    ("mmserve_gateway_request_bytes_total", "Request body bytes of those requests."),
    ("mmserve_gateway_request_seconds_total", "Seconds spent answering those requests."),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, str, int], list[float]] = defaultdict(lambda: [0, 0, 0, 0.0])

    def count(self, tenant: str, product: str, status: int, items: int, nbytes: int, seconds: float) -> None:
        with self._lock:
            row = self._values[(tenant, product, status)]
            row[0] += 1
            row[1] += items
            row[2] += nbytes
            row[3] += seconds

    def render(self) -> str:
        with self._lock:
            rows = sorted(self._values.items())
        lines = []
        for column, (name, help_text) in enumerate(_COUNTERS):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            for (tenant, product, status), values in rows:
                labels = f'tenant="{_escape(tenant)}",product="{_escape(product)}",status="{status}"'
                lines.append(f"{name}{{{labels}}} {values[column]:g}" if column == 3 else
                             f"{name}{{{labels}}} {int(values[column])}")
        return "\n".join(lines) + "\n"
