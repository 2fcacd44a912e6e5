"""The guard never locks out a stream that exists (issue 10, item 6), with the CDN's real processes.

Seen: about 25 requests for made-up stream names from a handful of addresses
spent the edge-wide budget for unknown names, and the real
`/live/master.m3u8`, asked next on an edge that had not seen it yet, got 503.
Now only names that turn out not to exist spend that budget, and once it is
spent the edge asks its shield only-if-cached, so a stream anyone watches is
never refused. The shield's side of only-if-cached (RFC 9111 5.2.1.7) is
checked on in-process nodes.
"""

from __future__ import annotations

import http.client
import random
import string
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from livecdn.config import GuardSettings
from tests.cdn import NO_LIMITS, Stack, run_cdn, sample, topology_toml, wait_until
from tests.fakeorigin import FakeOrigin, body

SYNTHETIC = {"mode": "synthetic", "target_duration": 2, "window": 4, "segment_bytes": 10_000}
# The budget refills so slowly here that it stays spent for the whole test; at
# the default 10 tries a second an attack that keeps going keeps it spent too.
SLOW_REFILL = "\n[guard]\nunknown_rate = 0.01\nprefetch = false\n"


def get(base: str, path: str, client: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET from `client`'s address: the edge keys its per-client shares by source address."""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10, source_address=(client, 0))
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def made_up() -> str:
    return "/" + "".join(random.choices(string.ascii_lowercase, k=10)) + "/master.m3u8"


def node(info: dict[str, Any], name: str) -> dict[str, str]:
    return next(n for n in info["nodes"] if n["name"] == name)


def metric(admin: str, name: str, **labels: str) -> float:
    return sample(get(admin, "/metrics", "127.0.0.1")[2].decode(), name, **labels)


@pytest.mark.slow
def test_made_up_names_do_not_lock_out_a_real_stream_at_a_new_edge(tmp_path: Path) -> None:
    config = tmp_path / "cdn.toml"
    config.write_text(topology_toml(origin=SYNTHETIC, edges=2, router=False) + SLOW_REFILL)
    with run_cdn(config) as info:
        eu, us = node(info, "edge-1"), node(info, "edge-2")
        assert get(eu["url"], "/live/master.m3u8", "127.0.1.5")[0] == 200  # a viewer on the other edge
        # 25 made-up names from 5 addresses, 5 each (every address within its own share).
        attack = [get(us["url"], made_up(), f"127.0.2.{10 + i % 5}")[0] for i in range(25)]
        assert attack.count(404) == GuardSettings.unknown_burst  # the origin was asked: no such stream
        assert attack[GuardSettings.unknown_burst:] == [503] * 5  # the edge-wide budget is spent
        status, _, master = get(us["url"], "/live/master.m3u8", "127.0.2.20")
        assert status == 200 and master.startswith(b"#EXTM3U")
        assert metric(us["admin"], "livecdn_guard_unknown_names_total", asked="only_if_cached", found="yes") == 1
        # The stream is known now: its renditions pass the guard (once the origin has published one).
        rendition = next(ln for ln in master.decode().splitlines() if ln and not ln.startswith("#"))
        assert wait_until(lambda: get(us["url"], f"/live/{rendition}", "127.0.2.20")[0] == 200, 15)
        assert get(us["url"], made_up(), "127.0.2.21")[0] == 503  # made-up names are still refused


@pytest.mark.slow
def test_the_first_viewers_of_real_streams_spend_nothing(tmp_path: Path) -> None:
    streams = ["a", "b", "c", "d", "e", "f"]
    config = tmp_path / "cdn.toml"
    config.write_text(topology_toml(origin={**SYNTHETIC, "streams": ["live", *streams]}, edges=1, router=False)
                      + SLOW_REFILL + "unknown_burst = 3\n")
    with run_cdn(config) as info:
        edge = node(info, "edge-1")
        found = metric(edge["admin"], "livecdn_guard_unknown_names_total", asked="fetch", found="yes")
        # Six new streams from one address: twice the edge's budget, more than the client's share of 5.
        assert [get(edge["url"], f"/{s}/master.m3u8", "127.0.1.7")[0] for s in streams] == [200] * 6
        # Names that do not exist spend the budget: three tries, then 503 with Retry-After.
        assert [get(edge["url"], made_up(), "127.0.1.8")[0] for _ in range(3)] == [404] * 3
        status, headers, text = get(edge["url"], made_up(), "127.0.1.8")
        assert status == 503 and int(headers["Retry-After"]) >= 1 and b"shield has no copy" in text
        assert metric(edge["admin"], "livecdn_guard_unknown_names_total", asked="fetch", found="yes") - found == 6
        assert metric(edge["admin"], "livecdn_guard_unknown_names_total", asked="fetch", found="no") == 3
        assert metric(edge["admin"], "livecdn_guard_rejections_total", reason="unknown_stream") == 1


# --- the shield's side: only-if-cached, in-process nodes ----------------------------------

async def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        return r.status, dict(r.headers), await r.read()


async def test_a_shield_answers_only_if_cached_from_its_cache_or_504(origin: FakeOrigin) -> None:
    origin.routes["/live/seg1.ts"] = body(b"segment 1")
    stack = await Stack(origin.url).start()
    try:
        shield = f"http://127.0.0.1:{stack.shields[0].port}"
        only = {"Cache-Control": "only-if-cached"}
        status, headers, _ = await fetch(shield + "/live/seg1.ts", only)
        assert (status, headers["X-Cache"]) == (504, "REJECTED") and origin.hits["/live/seg1.ts"] == 0
        assert (await fetch(shield + "/live/seg1.ts"))[0] == 200
        status, headers, data = await fetch(shield + "/live/seg1.ts", only)
        assert (status, headers["X-Cache"], data) == (200, "HIT", b"segment 1")
        assert origin.hits["/live/seg1.ts"] == 1
    finally:
        await stack.stop()


async def test_an_edge_past_its_budget_serves_what_its_shield_holds(origin: FakeOrigin) -> None:
    origin.routes["/watched/seg1.ts"] = body(b"watched")
    origin.routes["/unwatched/seg1.ts"] = body(b"unwatched")
    guard = GuardSettings(unknown_rate=0.01, unknown_burst=1, prefetch=False)
    stack = await Stack(origin.url, guard=guard, limits=NO_LIMITS).start()
    try:
        shield = f"http://127.0.0.1:{stack.shields[0].port}"
        assert (await fetch(shield + "/watched/seg1.ts"))[0] == 200  # another edge's viewer put it there
        assert (await fetch(stack.edge + "/nothing/seg1.ts"))[0] == 404  # the one try, spent
        status, _, data = await fetch(stack.edge + "/watched/seg1.ts")
        assert (status, data) == (200, b"watched")
        status, headers, _ = await fetch(stack.edge + "/unwatched/seg1.ts")
        assert status == 503 and int(headers["Retry-After"]) >= 1
        assert origin.hits["/unwatched/seg1.ts"] == 0  # only-if-cached never reaches the origin
        assert origin.hits["/watched/seg1.ts"] == 1
    finally:
        await stack.stop()
