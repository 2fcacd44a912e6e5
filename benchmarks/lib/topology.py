"""Topology files for loopback CDNs, and the livecdn nodes started from them as an operator starts them.

Every node is `livecdn ROLE --config FILE --node NAME`, ready (its admin
`/healthz` answers) before the next tier starts.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from lib.ports import free_port, url
from lib.procs import LIVECDN, READY_TIMEOUT, Processes, wait_ready
from viewers import LIVE_SYNC_SEGMENTS, parse_master, parse_media

__all__ = ["Node", "origin_counts", "start_bench_origin", "start_builtin_origin", "start_counting", "start_nodes",
           "wait_live",
           "write_topology"]


@dataclass(frozen=True)
class Node:
    """A shield or edge of a benchmark topology, on its own free ports."""

    kind: str  # shields | edges
    name: str
    port: int
    admin: int
    workers: int = 1

    @classmethod
    def new(cls, kind: str, name: str, workers: int = 1) -> Node:
        return cls(kind, name, free_port(), free_port(), workers)

    @property
    def role(self) -> str:
        return self.kind.rstrip("s")


def _toml(value: Any) -> str:
    return json.dumps(value)  # strings, numbers, booleans and arrays of them read the same in TOML


def _table(name: str, values: dict[str, Any], array: bool = False) -> str:
    head = f"[[{name}]]" if array else f"[{name}]"
    return "\n".join([head, *(f"{k} = {_toml(v)}" for k, v in values.items()), ""])


def write_topology(path: Path, origin_url: str, nodes: list[Node], cache: dict[str, Any], *,
                   guard: dict[str, Any] | None = None, limits: dict[str, Any] | None = None,
                   builtin: dict[str, Any] | None = None,
                   renditions: list[dict[str, Any]] | None = None) -> None:
    """A topology file: one region, these nodes, edges straight to the origin when there is no shield.

    `builtin` configures the built-in origin (`[origin.builtin]`), `renditions` its renditions.
    """
    fallback = not any(n.kind == "shields" for n in nodes)
    parts = [_table("origin", {"url": origin_url}), _table("cache", cache), _table("guard", guard or {}),
             _table("regions.local", {"location": [50.11, 8.68]})]
    if limits:
        parts.append(_table("limits", limits))
    if builtin:
        parts.append(_table("origin.builtin", builtin))
    parts += [_table("origin.builtin.renditions", r, array=True) for r in renditions or []]
    for n in nodes:
        values: dict[str, Any] = {"listen": f"127.0.0.1:{n.port}", "admin": f"127.0.0.1:{n.admin}"}
        if n.kind == "edges":
            values.update(region="local", origin_fallback=fallback)
        if n.workers != 1:
            values["workers"] = n.workers
        parts.append(_table(f"{n.kind}.{n.name}", values))
    path.write_text("\n".join(parts))


async def start_nodes(procs: Processes, session: aiohttp.ClientSession, config: Path, nodes: list[Node],
                      tree: Path | None = None) -> None:
    """Start shields then edges from `config` (and from `tree`, default the Processes' own)."""
    for n in sorted(nodes, key=lambda n: n.kind != "shields"):
        procs.start(n.name, LIVECDN + [n.role, "--config", str(config), "--node", n.name,
                                       "--no-access-log", "--log-level", "warning"], tree=tree)
        await wait_ready(procs, n.name, url(n.admin) + "/healthz", session)


async def start_builtin_origin(procs: Processes, session: aiohttp.ClientSession, config: Path, port: int) -> None:
    """The built-in origin of `config` (`[origin.builtin]`, listening on `port`)."""
    procs.start("origin", LIVECDN + ["origin", "--config", str(config), "--node", "origin", "--log-level", "warning"])
    await wait_ready(procs, "origin", url(port) + "/healthz", session)


async def start_bench_origin(procs: Processes, session: aiohttp.ClientSession, name: str,
                             object_bytes: int | None = None, upstream: str | None = None) -> int:
    """Start tools/benchorigin.py (synthetic objects of `object_bytes`, or a counting pass-through to `upstream`)."""
    args = ((["--object-bytes", str(object_bytes)] if object_bytes else [])
            + (["--upstream", upstream] if upstream else []))
    return await start_counting(procs, session, name, "benchorigin", args)


async def start_counting(procs: Processes, session: aiohttp.ClientSession, name: str, tool: str,
                         args: list[str]) -> int:
    """Start a counting server of tools/ (benchorigin, delayproxy) on a free port, ready; its port."""
    port = free_port()
    procs.start_tool(name, tool, ["--port", str(port), *args])
    await wait_ready(procs, name, url(port) + "/_ready", session)
    return port


async def origin_counts(session: aiohttp.ClientSession, port: int) -> dict[str, int]:
    """Requests per path a bench origin (or delaying proxy) has seen."""
    async with session.get(url(port) + "/_counts") as r:
        return await r.json()


async def wait_live(session: aiohttp.ClientSession, origin: str) -> None:
    """Wait (at the origin itself, uncounted) until every rendition lists the segments a joining player starts from."""
    master = origin + "/live/master.m3u8"
    deadline = time.monotonic() + READY_TIMEOUT
    async with session.get(master) as r:
        variants = parse_master(await r.text(), master)
    while time.monotonic() < deadline:
        listed = []
        for media in variants:
            async with session.get(media) as r:
                listed.append(len(parse_media(await r.text(), media).segments) if r.status == 200 else 0)
        if min(listed) >= LIVE_SYNC_SEGMENTS:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the origin's stream did not reach {LIVE_SYNC_SEGMENTS} segments in {READY_TIMEOUT:.0f}s")
