"""The benchmark library's own checks: `.venv/bin/python -m pytest benchmarks` (not part of tests/).

The figure scripts run for minutes; these pin down, in a second, the pieces
whose mistakes would quietly skew a figure: the raw client's framing, the
metrics sums, the topology file the nodes read, the report trimming, the
viewers' stall hook.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from lib.prom import Metrics
from lib.rawhttp import Connection, ConnectionClosed
from lib.report import add_section, without
from lib.topology import Node, write_topology
from viewers import Buffer

BODY = b"x" * 5000


async def serve(answers: list[bytes]) -> tuple[asyncio.AbstractServer, int, list[bytes]]:
    """A server writing `answers` one per request head received, closing after the last; the heads it read."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            heads.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], heads


async def test_keep_alive_answers_on_one_connection_with_headers_and_body() -> None:
    first = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\nX-Cache: HIT\r\n\r\n" + BODY
    second = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno"
    server, port, heads = await serve([first, second])
    async with server:
        conn = await Connection.open("127.0.0.1", port, "127.0.0.1", keep_body=True)
        a = await conn.get("/a.ts")
        b = await conn.get("/b.ts")
        conn.close()
    assert (a.status, a.header("x-cache"), a.received) == (200, "HIT", 5000)
    assert a.intact(hashlib.sha256(BODY).digest())
    assert not a.intact(hashlib.sha256(b"other").digest())
    assert (b.status, b.header("X-Cache"), b.chunks) == (404, "", [b"no"])
    assert [h.split(b"\r\n")[0] for h in heads] == [b"GET /a.ts HTTP/1.1", b"GET /b.ts HTTP/1.1"]


async def test_chunked_and_close_delimited_bodies_are_read_whole() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    server, port, _ = await serve([chunked])
    async with server:
        conn = await Connection.open("127.0.0.1", port, "127.0.0.1", keep_body=True)
        r = await conn.get("/c")
    assert (r.complete, b"".join(r.chunks)) == (True, b"abcde")
    until_close = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + BODY
    server, port, _ = await serve([until_close])
    async with server:
        conn = await Connection.open("127.0.0.1", port, "127.0.0.1")
        r = await conn.get("/d")
    assert (r.complete, r.received, r.chunks) == (True, 5000, [])  # counted, not kept
    assert not r.intact(hashlib.sha256(BODY).digest())  # no length announced: not taken as whole


async def test_a_body_cut_short_raises_and_is_not_intact() -> None:
    server, port, _ = await serve([b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + BODY[:100]])
    async with server:
        conn = await Connection.open("127.0.0.1", port, "127.0.0.1", keep_body=True)
        with pytest.raises(ConnectionClosed, match="100 body bytes"):
            await conn.get("/e", close=True)
    assert not conn.response.intact(hashlib.sha256(BODY).digest())
    with pytest.raises(ConnectionClosed, match="already closed"):
        await conn.get("/f")


def test_metrics_sum_samples_by_name_and_label() -> None:
    m = Metrics.parse('# TYPE livecdn_requests counter\n'
                      'livecdn_requests_total{cache="hit",node="e"} 5\n'
                      'livecdn_requests_total{cache="miss",node="e"} 2\n'
                      'livecdn_requests_total{cache="hit",node="f"} 1\n'
                      'livecdn_requests_created{cache="hit",node="e"} 1.7e9\n'
                      'livecdn_up 1\n')
    assert m.total("livecdn_requests_total") == 8
    assert m.by_label("livecdn_requests_total", "cache") == {"hit": 6, "miss": 2}
    assert m.by_label("livecdn_up", "cache") == {"": 1}
    assert m.total("livecdn_absent_total") == 0


def test_topology_file_is_read_by_livecdn(tmp_path: Path) -> None:
    from livecdn.config import load

    shield, edge = Node("shields", "shield-1", 20001, 20002), Node("edges", "edge-1", 20003, 20004)
    path = tmp_path / "cdn.toml"
    write_topology(path, "http://127.0.0.1:20000", [shield, edge], {"memory_bytes": "64MiB", "disk_path": ""},
                   guard={"prefetch": False}, limits={"miss_rate": 0},
                   builtin={"listen": "127.0.0.1:20005", "mode": "synthetic", "streams": ["live", "probe0"]},
                   renditions=[{"name": "720p", "bandwidth": 2_000_000, "width": 1280, "height": 720}])
    topo = load(path)
    assert sorted(topo.shields) == ["shield-1"] and sorted(topo.edges) == ["edge-1"]
    assert topo.origin is not None and topo.origin.streams == ("live", "probe0")
    assert [r.name for r in topo.origin.renditions] == ["720p"]
    assert not topo.edges["edge-1"].origin_fallback  # a shield is there
    assert topo.edges["edge-1"].guard.prefetch is False and topo.edges["edge-1"].limits.miss_rate == 0


def test_without_drops_per_run_details_at_any_depth() -> None:
    report = {"a": {"systems": {"x": {"0.3s": {"runs": 1, "bursts": [1]}}, "y": {"6s": {"bursts": [2]}}}},
              "b": {"runs": [3], "cases": {}}}
    out = without(report, [("a", "systems", "*", "*", "bursts"), ("b", "runs"), ("absent", "runs")])
    assert out == {"a": {"systems": {"x": {"0.3s": {"runs": 1}}, "y": {"6s": {}}}}, "b": {"cases": {}}}
    assert report["b"]["runs"] == [3]  # the full report is left whole


def test_results_keep_each_run_as_a_dated_section_newest_first(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\nNewest first.\n\n## Speed, day 1\n\nold figures\n")
    add_section(results, "Speed, day 2", "new figures\n\n### a table\n")
    add_section(results, "Viewers, day 2", "viewer figures")
    add_section(results, "Speed, day 2", "new figures, run again")
    text = results.read_text()
    # the run made again replaces its section and, being the newest, comes first
    assert text.startswith("# Benchmark results\n\nNewest first.\n\n## Speed, day 2\n\nnew figures, run again\n\n")
    assert text.count("## Speed, day 2") == 1 and "### a table" not in text
    assert text.index("## Speed, day 2") < text.index("## Viewers, day 2") < text.index("## Speed, day 1")
    assert text.endswith("## Speed, day 1\n\nold figures\n")


def test_buffer_tells_each_stall_when_it_ran_dry_and_when_it_was_refilled() -> None:
    stalls: list[tuple[float, float]] = []
    buf = Buffer(on_stall=lambda dry, now: stalls.append((dry, now)))
    buf.add(2.0, 10.0)
    buf.add(2.0, 10.5)  # playback starts at 10.5, buffer dry at 14.5
    buf.add(2.0, 15.0)
    buf.finish(20.0)  # dry again at 17.0
    assert stalls == [(14.5, 15.0), (17.0, 20.0)]
    assert (buf.stalls, buf.stall_seconds) == (2, 3.5)


async def test_error_proxy_fails_for_its_window_then_forwards_again_counting_both() -> None:
    from aiohttp import ClientSession, web

    from tools.benchorigin import application, synthetic_handler
    from tools.errorproxy import failing_handler

    async def site(app: web.Application) -> tuple[web.AppRunner, int]:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        s = web.TCPSite(runner, "127.0.0.1", 0)
        await s.start()
        return runner, s._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    origin, oport = await site(application(synthetic_handler(100), upstream=False))
    proxy, pport = await site(application(failing_handler(f"http://127.0.0.1:{oport}"), upstream=True))
    base = f"http://127.0.0.1:{pport}"
    try:
        async with ClientSession() as s:
            statuses = []
            for path in ("/d0/a.ts", "/_fail?seconds=0.5", "/d0/a.ts", "/d0/a.ts"):
                async with s.get(base + path) as r:
                    statuses.append(r.status)
            await asyncio.sleep(0.6)
            async with s.get(base + "/d0/a.ts") as r:
                statuses.append(r.status)
            async with s.get(base + "/_fail?seconds=-1") as r:
                statuses.append(r.status)
            async with s.get(base + "/_counts") as r:
                counts = await r.json()
            async with s.get(f"http://127.0.0.1:{oport}/_counts") as r:
                reached = await r.json()
    finally:
        await proxy.cleanup()
        await origin.cleanup()
    assert statuses == [200, 200, 500, 500, 200, 400]
    assert counts == {"/d0/a.ts": 4}  # every request counted, failed or forwarded; /_fail not
    assert reached == {"/d0/a.ts": 2}  # the failed ones never reached the origin
