"""Every Prometheus metric livecdn exports, and their exposition.

A node with several worker processes runs prometheus-client in multiprocess
mode: the CLI sets PROMETHEUS_MULTIPROC_DIR before this module is imported,
each worker writes its samples there, and `/metrics` on any worker sums them.
The sans-io core never imports this module; the shells count what happened.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, disable_created_metrics,
    generate_latest, multiprocess,
)

__all__ = ["REQUESTS", "UPSTREAM_REQUESTS", "INFLIGHT", "MEMORY_BYTES", "exposition", "CACHE_RESULTS"]

disable_created_metrics()  # the _created series only double the output of every counter

CACHE_RESULTS = ("hit", "miss", "stale", "coalesced", "rejected", "error")

REQUESTS = Counter("livecdn_requests_total", "Player-facing requests by cache result", ["node", "cache"])
UPSTREAM_REQUESTS = Counter("livecdn_upstream_requests_total", "Requests this node sent upstream", ["node"])
INFLIGHT = Gauge("livecdn_inflight_requests", "Requests being answered now", ["node"],
                 multiprocess_mode="livesum")
MEMORY_BYTES = Gauge("livecdn_memory_cache_bytes", "Bytes held by the memory tier", ["node"],
                     multiprocess_mode="livesum")


def exposition() -> tuple[bytes, str]:
    """The text format of every metric, summed over worker processes when there are several."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
