"""SIGHUP applies what can change without new sockets (issue 14, item 8), and says what needs a restart.

Real nodes on loopback; `reload()` is what the SIGHUP handler calls with the
re-read file (`livecdn.node.serve`).
"""

from __future__ import annotations

import dataclasses
import logging

import aiohttp
import pytest

from livecdn.config import Address, PathRule
from tests.cdn import Stack
from tests.fakeorigin import FakeOrigin, body

SEG = b"s" * 20_000


@pytest.fixture
async def origin() -> FakeOrigin:
    o = FakeOrigin()
    await o.start()
    yield o  # type: ignore[misc]
    await o.stop()


async def get(url: str) -> tuple[int, dict[str, str]]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        await r.read()
        return r.status, dict(r.headers)


async def test_reload_applies_cache_sizes_rules_and_guard_and_names_what_needs_a_restart(
        origin: FakeOrigin, caplog: pytest.LogCaptureFixture) -> None:
    stack = await Stack(origin.url, shields=0).start()
    try:
        edge = stack.edges[0]
        origin.routes.update({f"/r/seg{i}.ts": body(SEG) for i in range(10)})
        origin.routes["/r/chapters.json"] = body(b"{}", "application/json")
        for i in range(10):
            assert (await get(stack.edge + f"/r/seg{i}.ts"))[0] == 200
        assert (await get(stack.edge + "/r/seg0.ts"))[1]["X-Cache"] == "HIT"
        await get(stack.edge + "/r/chapters.json")
        await get(stack.edge + "/r/chapters.json")
        assert origin.hits["/r/chapters.json"] == 1  # kept (other_ttl)

        cfg = edge.config
        cache = dataclasses.replace(cfg.cache, memory_bytes=100_000,
                                    rules=(PathRule(path="/r/*.json", store=False),))
        guard = dataclasses.replace(cfg.guard, unknown_rate=1.0)
        new = dataclasses.replace(cfg, cache=cache, guard=guard, listen=Address("127.0.0.1", 1))
        topology = dataclasses.replace(edge.topology, edges={cfg.name: new})
        with caplog.at_level(logging.INFO):
            edge.reload(topology)

        assert edge.engine is not None and edge.engine.memory.used <= 100_000  # the new size, now
        assert (await get(stack.edge + "/r/seg1.ts"))[1]["X-Cache"] == "MISS"  # least recently used: evicted
        assert (await get(stack.edge + "/r/seg0.ts"))[1]["X-Cache"] == "HIT"  # most recently used: kept
        assert edge.policy is not None and edge.policy.guard.settings.unknown_rate == 1.0
        assert edge.config.listen == cfg.listen  # still bound where it was
        line = next(r.getMessage() for r in caplog.records if "reloaded" in r.getMessage())
        assert line.endswith("needs a restart to change: listen (running on with the old)"), line
        # The new rule for what is fetched from now on (what is stored keeps the lifetime it was given).
        origin.routes["/r/later.json"] = body(b"{}", "application/json")
        await get(stack.edge + "/r/later.json")
        await get(stack.edge + "/r/later.json")
        assert origin.hits["/r/later.json"] == 2
    finally:
        await stack.stop()
