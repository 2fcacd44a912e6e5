"""The CDN the guard figures run on, and its counters between two moments.

The built-in synthetic origin → a counting proxy (tools/benchorigin.py's
pass-through, or tools/delayproxy.py) → one shield → one edge.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from lib.ports import free_port, url
from lib.procs import Processes
from lib.prom import Metrics, scrape
from lib.topology import Node, origin_counts, start_builtin_origin, start_nodes, wait_live, write_topology

__all__ = ["CDN_PROCESSES", "TARGET_DURATION", "WINDOW", "Snapshot", "counters_window", "snapshot", "start_cdn",
           "write_config"]

TARGET_DURATION = 2
WINDOW = 6
CDN_PROCESSES = ["edge-1", "shield-1", "origin", "proxy"]  # in the order they are stopped
VIEWER_PATH = re.compile(r"^/live/(master\.m3u8|[^/]+/(index\.m3u8|seg\d+\.ts))$")
PROBE_PATH = re.compile(r"^/probe\d+/")

ConfigWriter = Callable[[int, int, Node, Node], Path]  # (origin port, proxy port, shield, edge) -> config file
ProxyStarter = Callable[[str], Awaitable[int]]  # upstream URL -> the proxy's port


def write_config(path: Path, origin_port: int, upstream: int, shield: Node, edge: Node, *, streams: list[str],
                 guard: dict[str, Any] | None = None, limits: dict[str, Any] | None = None,
                 segment_bytes: int | None = None, renditions: list[dict[str, Any]] | None = None) -> None:
    """The guard figures' topology: origin at the proxy on `upstream`, the built-in one on `origin_port`."""
    builtin: dict[str, Any] = {"listen": f"127.0.0.1:{origin_port}", "mode": "synthetic", "streams": streams,
                               "target_duration": TARGET_DURATION, "window": WINDOW}
    if segment_bytes:
        builtin["segment_bytes"] = segment_bytes
    write_topology(path, url(upstream), [shield, edge], {"memory_bytes": "256MiB", "disk_path": ""},
                   guard=guard, limits=limits, builtin=builtin, renditions=renditions)


async def start_cdn(procs: Processes, session: aiohttp.ClientSession, config: ConfigWriter,
                    proxy: ProxyStarter) -> tuple[int, Node, Node]:
    """Start the proxy, origin, shield and edge (stop them with CDN_PROCESSES); (proxy port, shield, edge)."""
    origin_port = free_port()
    shield, edge = Node.new("shields", "shield-1"), Node.new("edges", "edge-1")
    proxy_port = await proxy(url(origin_port))
    path = config(origin_port, proxy_port, shield, edge)
    await start_builtin_origin(procs, session, path, origin_port)
    await start_nodes(procs, session, path, [shield, edge])
    await wait_live(session, url(origin_port))
    return proxy_port, shield, edge


@dataclass
class Snapshot:
    t: float
    origin: dict[str, int]
    edge: Metrics
    shield: Metrics


async def snapshot(session: aiohttp.ClientSession, proxy: int, edge: Node, shield: Node) -> Snapshot:
    t = time.monotonic()
    o, e, s = await asyncio.gather(origin_counts(session, proxy), scrape(session, edge.admin),
                                   scrape(session, shield.admin))
    return Snapshot(t, o, e, s)


def counters_window(a: Snapshot, b: Snapshot) -> dict[str, Any]:
    """Counter deltas between two snapshots: origin, shield, edge, guard, limits."""
    origin = {p: n - a.origin.get(p, 0) for p, n in b.origin.items() if n > a.origin.get(p, 0)}

    def delta_by(name: str, label: str) -> dict[str, int]:
        x, y = a.edge.by_label(name, label), b.edge.by_label(name, label)
        return {k: int(v - x.get(k, 0)) for k, v in sorted(y.items()) if v - x.get(k, 0)}

    def delta(before: Metrics, after: Metrics, name: str) -> int:
        return int(after.total(name) - before.total(name))

    return {
        "seconds": round(b.t - a.t, 2),
        "origin_requests": sum(origin.values()),
        "origin_attack_named": sum(n for p, n in origin.items()
                                   if not VIEWER_PATH.match(p) and not PROBE_PATH.match(p)),
        "origin_probe_requests": sum(n for p, n in origin.items() if PROBE_PATH.match(p)),
        "origin_playlist_requests": sum(n for p, n in origin.items() if p.endswith(".m3u8") and VIEWER_PATH.match(p)),
        "origin_segment_requests": sum(n for p, n in origin.items() if p.endswith(".ts") and VIEWER_PATH.match(p)),
        "shield_upstream": delta(a.shield, b.shield, "livecdn_upstream_requests_total"),
        "edge_upstream": delta(a.edge, b.edge, "livecdn_upstream_requests_total"),
        "edge_requests": delta_by("livecdn_requests_total", "cache"),
        "guard_rejections": delta_by("livecdn_guard_rejections_total", "reason"),
        "guard_refreshes": delta(a.edge, b.edge, "livecdn_guard_refreshes_total"),
        "rate_limited": delta_by("livecdn_rate_limited_total", "limit"),
        "prefetches": delta(a.edge, b.edge, "livecdn_prefetches_total"),
    }
