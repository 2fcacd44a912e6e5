"""The router on real sockets, asked by real clients: dig, dnspython, an HTTP client.

Edges sit in London, Seattle and Tokyo; their admin listeners are fakes whose
/healthz answer each test sets (and which a test can stop and start again).
Clients are placed with MaxMind's test database: 81.2.69.142 London,
216.160.83.56 Milton WA, 175.16.199.0/24 Changchun, 2001:218::/32 Tokyo.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import shutil
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import dns.asyncquery
import dns.edns
import dns.flags
import dns.message
import dns.rcode
import pytest
from aiohttp import web

from geo import GeoNode
from geo.dnsio import UDP_BATCH, DnsListener, TcpConnections
from livecdn.config import Address, EdgeConfig, HealthSettings, Region, RouterConfig, Topology
from tests.cdn import ROOT, sample

CITY = str(ROOT.parent / "shared" / "data" / "maxmind-test" / "GeoIP2-City-Test.mmdb")
TOKYO_V6 = tuple(f"2001:db8::{i:x}" for i in range(1, 41))
PLACES = {"edge-lon": ("127.0.1.1", (51.51, -0.13), "eu"), "edge-sea": ("127.0.2.1", (47.61, -122.33), "us"),
          "edge-tyo": ("127.0.3.1", (35.68, 139.69), "ap")}
LONDON, MILTON, CHANGCHUN = "81.2.69.142", "216.160.83.56", "175.16.199.0"
HEALTH = HealthSettings(interval=0.5, timeout=0.5, failures=3, rise=2)
DIG_HINT = "dig is not installed: run `make test` (it installs Debian's bind9-dnsutils)"


class FakeEdgeAdmin:
    """An edge's admin listener that only answers /healthz, with what the test puts in `health`."""

    def __init__(self, host: str) -> None:
        self.host, self.port = host, 0
        self.health: dict[str, Any] = {"status": "ok", "load": 0.0, "overloaded": False}
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response(self.health)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@pytest.fixture
async def edges() -> AsyncIterator[dict[str, FakeEdgeAdmin]]:
    fakes = {name: FakeEdgeAdmin(host) for name, (host, _, _) in PLACES.items()}
    for f in fakes.values():
        await f.start()
    try:
        yield fakes
    finally:
        for f in fakes.values():
            await f.stop()


def topology(edges: dict[str, FakeEdgeAdmin]) -> Topology:
    local = Address("127.0.0.1", 0)
    edge_cfgs = {name: EdgeConfig(name, region, Address(host, 8080), Address(host, edges[name].port), where)
                 for name, (host, where, region) in PLACES.items()}
    router = RouterConfig(
        name="router", dns=local, http=local, admin=local, database=CITY, default_region="eu",
        zone="cdn.test", ttl=5, nameservers=("ns1.cdn.test",),
        addresses={"edge-lon": ("127.0.1.1", "::1"), "edge-sea": ("127.0.2.1",),
                   "edge-tyo": ("127.0.3.1", *TOKYO_V6)},
        health=HEALTH)
    regions = {name: Region(name, where) for _, (_, where, name) in PLACES.items()}
    return Topology("(test)", "test", "live.cdn.test", "http://127.0.0.1:9", None, regions, {}, edge_cfgs,
                    router=router)


@contextlib.asynccontextmanager
async def running(topo: Topology) -> AsyncIterator[GeoNode]:
    """The router of `topo`, started; stopped on the way out (twice: harmless)."""
    assert topo.router is not None
    node = GeoNode(topo, topo.router, access_log=False)
    try:
        await node.start()
        yield node
    finally:
        await node.stop(1.0)
        await node.stop(1.0)


@pytest.fixture
async def router(edges: dict[str, FakeEdgeAdmin]) -> AsyncIterator[GeoNode]:
    async with running(topology(edges)) as node:
        yield node


async def dig(node: GeoNode, *args: str) -> str:
    if shutil.which("dig") is None:
        pytest.fail(DIG_HINT, pytrace=False)
    proc = await asyncio.create_subprocess_exec(
        "dig", "@127.0.0.1", "-p", str(node.dns_port), "+tries=1", "+time=3", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def status(dig_output: str) -> str:
    return dig_output.split("status: ", 1)[1].split(",", 1)[0]


async def query(node: GeoNode, name: str = "live.cdn.test", rdtype: str = "A", *,
                ecs: tuple[str, int] | None = None, tcp: bool = False) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    if ecs is not None:
        q.use_edns(0, options=[dns.edns.ECSOption(*ecs)])
    send = dns.asyncquery.tcp if tcp else dns.asyncquery.udp
    return await send(q, "127.0.0.1", port=node.dns_port, timeout=3)  # type: ignore[no-any-return]


def answer(m: dns.message.Message) -> list[str]:
    return sorted(r.to_text() for rrset in m.answer for r in rrset)


# --- DNS with dig and dnspython ---------------------------------------------

@pytest.mark.slow
async def test_dig_plain_subnet_tcp_and_aaaa(router: GeoNode) -> None:
    plain = await dig(router, "live.cdn.test")
    assert status(plain) == "NOERROR" and " aa" in plain.split("flags:", 1)[1].split(";", 1)[0]
    assert "live.cdn.test.\t\t5\tIN\tA\t127.0.1.1" in plain  # 127.0.0.1 is unknown: default region eu
    assert (await dig(router, "+short", f"+subnet={MILTON}/32", "live.cdn.test")).split() == ["127.0.2.1"]
    out = await dig(router, f"+subnet={LONDON}/32", "live.cdn.test")
    assert f"CLIENT-SUBNET: {LONDON}/32/31" in out and "\tA\t127.0.1.1" in out
    out = await dig(router, f"+subnet={CHANGCHUN}/24", "+tcp", "live.cdn.test")
    assert "CLIENT-SUBNET: 175.16.199.0/24/24" in out and "\tA\t127.0.3.1" in out and "(TCP)" in out
    assert (await dig(router, "+short", "+subnet=2001:218::/32", "AAAA", "live.cdn.test")).split() == \
        sorted(TOKYO_V6, key=TOKYO_V6.index)
    assert (await dig(router, "+short", "AAAA", "live.cdn.test")).split() == ["::1"]


@pytest.mark.slow
async def test_dig_other_names(router: GeoNode) -> None:
    out = await dig(router, "nothing.cdn.test")
    assert status(out) == "NXDOMAIN" and "cdn.test.\t\t5\tIN\tSOA\tns1.cdn.test. hostmaster.cdn.test." in out
    assert status(await dig(router, "www.example.org")) == "REFUSED"
    assert (await dig(router, "+short", "cdn.test", "NS")).split() == ["ns1.cdn.test."]
    out = await dig(router, "cdn.test", "NS")
    assert ";; ADDITIONAL SECTION:\nns1.cdn.test.\t\t5\tIN\tA\t127.0.0.1" in out  # glue
    assert (await dig(router, "+short", "cdn.test", "SOA")).split()[:2] == ["ns1.cdn.test.", "hostmaster.cdn.test."]


async def test_truncated_over_udp_then_whole_over_tcp(router: GeoNode) -> None:
    """40 AAAA records do not fit in 512 bytes: TC over UDP; dig then retries over TCP by itself."""
    ask = ("+bufsize=512", f"+subnet={CHANGCHUN}/24", "AAAA", "live.cdn.test")
    out = await dig(router, "+ignore", *ask)
    assert " tc" in out.split("flags:", 1)[1].split(";", 1)[0] and "ANSWER: 0" in out
    out = await dig(router, *ask)
    assert "Truncated, retrying in TCP mode" in out and "ANSWER: 40" in out
    out = await dig(router, "+bufsize=1232", *ask[1:])  # the EDNS size we offer holds them all
    assert "Truncated" not in out and "ANSWER: 40" in out


async def test_dnspython_udp_and_tcp_agree(router: GeoNode) -> None:
    for ecs, edge in (((LONDON, 32), "127.0.1.1"), ((MILTON, 32), "127.0.2.1"), ((CHANGCHUN, 24), "127.0.3.1"),
                      (("2001:218::", 32), "127.0.3.1")):
        udp, tcp = await query(router, ecs=ecs), await query(router, ecs=ecs, tcp=True)
        assert answer(udp) == answer(tcp) == [edge]
        assert udp.flags & dns.flags.AA and udp.answer[0].ttl == 5
    assert (await query(router, "nope.cdn.test")).rcode() == dns.rcode.NXDOMAIN
    assert (await query(router, "example.com", tcp=True)).rcode() == dns.rcode.REFUSED


async def test_tcp_pipelines_several_queries_on_one_connection(router: GeoNode) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", router.dns_port)
    queries = [dns.message.make_query("live.cdn.test", "A", id=i) for i in range(5)]
    writer.write(b"".join(len(w).to_bytes(2, "big") + w for w in (q.to_wire() for q in queries)))
    ids = []
    for _ in queries:
        size = int.from_bytes(await reader.readexactly(2), "big")
        ids.append(dns.message.from_wire(await reader.readexactly(size)).id)
    assert ids == [0, 1, 2, 3, 4]
    writer.close()


# --- HTTP --------------------------------------------------------------------

async def test_http_redirects_to_the_chosen_edge_with_cors(router: GeoNode) -> None:
    base = f"http://127.0.0.1:{router.http_port}"
    async with aiohttp.ClientSession() as s:
        async with s.get(base + "/live/720p/index.m3u8?token=abc&_HLS_msn=5", allow_redirects=False) as r:
            assert r.status == 302
            assert r.headers["Location"] == "http://127.0.1.1:8080/live/720p/index.m3u8?token=abc&_HLS_msn=5"
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            assert r.headers["Cache-Control"] == "no-store"
        async with s.head(base + "/live/master.m3u8", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"].endswith("/live/master.m3u8")
        async with s.options(base + "/live/master.m3u8", headers={"Origin": "http://player.example",
                                                                  "Access-Control-Request-Method": "GET"}) as r:
            assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == "*"
        async with s.post(base + "/live/master.m3u8", allow_redirects=False) as r:
            assert r.status == 405


async def test_an_absolute_form_target_is_redirected_by_its_path(router: GeoNode) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", router.http_port)
    writer.write(b"GET http://evil.example/live/master.m3u8?t=1 HTTP/1.1\r\nHost: evil.example\r\n"
                 b"Connection: close\r\n\r\n")
    head = (await reader.read()).split(b"\r\n\r\n")[0].decode()
    writer.close()
    location = next(line for line in head.split("\r\n") if line.lower().startswith("location:"))
    assert location.split(":", 1)[1].strip() == "http://127.0.1.1:8080/live/master.m3u8?t=1"  # not ...8080http://evil


@pytest.mark.parametrize(("ip", "edge", "source", "name"), [
    (LONDON, "edge-lon", "database", "London"),
    (MILTON, "edge-sea", "database", "Milton"),
    ("175.16.199.7", "edge-tyo", "database", "Changchun"),
    ("2001:218::1", "edge-tyo", "database", "Japan"),
    ("10.0.0.1", "edge-lon", "default", "eu"),
])
async def test_route_explains_the_choice(router: GeoNode, ip: str, edge: str, source: str, name: str) -> None:
    async with aiohttp.ClientSession() as s:
        # "nearest" needs every edge healthy: a first check that the router's own start-up held past `slow` makes
        # an edge suspect until the next one (CI saw "all-suspect" once).
        for _ in range(50):
            async with s.get(f"http://127.0.0.1:{router.admin_port}/healthz") as r:
                states = (await r.json())["edges"]
            if all(e["up"] and not e["suspect"] for e in states.values()):
                break
            await asyncio.sleep(0.1)
        for port in (router.http_port, router.admin_port):
            async with s.get(f"http://127.0.0.1:{port}/route", params={"ip": ip}) as r:
                body = await r.json()
            assert r.status == 200
            assert (body["edge"], body["reason"], body["location"]["source"], body["location"]["name"]) == \
                (edge, "nearest", source, name)
            assert [e["edge"] for e in body["edges"]] == list(PLACES)
        async with s.get(f"http://127.0.0.1:{router.http_port}/route", params={"ip": "nope"}) as r:
            assert r.status == 400


# --- health ------------------------------------------------------------------

async def wait_for(predicate: Any, timeout: float) -> float:
    """Seconds until the async predicate holds; fails the test past `timeout`."""
    started = time.monotonic()
    while not await predicate():
        assert time.monotonic() - started < timeout, f"not within {timeout}s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def route_of(router: GeoNode, ip: str) -> dict[str, Any]:
    """The router's explanation of its choice for a client at `ip`."""
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{router.admin_port}/route",
                                                   params={"ip": ip}) as r:
        assert r.status == 200
        return await r.json()  # type: ignore[no-any-return]


@pytest.mark.slow
async def test_a_failed_edge_leaves_the_answers_and_comes_back(router: GeoNode,
                                                               edges: dict[str, FakeEdgeAdmin]) -> None:
    async def london_gets(address: str) -> bool:
        return answer(await query(router, ecs=(LONDON, 32))) == [address]

    assert await london_gets("127.0.1.1")
    await edges["edge-lon"].stop()  # connections refused from now on
    gone = await wait_for(lambda: london_gets("127.0.2.1"), 10)  # next nearest to London: Seattle
    # At its first refused check it is suspect (answers go elsewhere), yet still up: down takes `failures`
    # checks in a row, `interval` apart, (failures - 1) intervals; half an interval less covers a check
    # already under way.
    assert gone <= HEALTH.interval + 0.25, f"gone after {gone:.2f}s"

    async def london_reason_is_down() -> bool:
        return (await route_of(router, LONDON))["reason"] == "spill-down"

    down = gone + await wait_for(london_reason_is_down, 10)
    assert down >= (HEALTH.failures - 1.5) * HEALTH.interval, f"down after {down:.2f}s"
    body = await route_of(router, LONDON)
    assert (body["edge"], body["reason"], body["passed"]) == ("edge-sea", "spill-down",
                                                              [{"edge": "edge-lon", "why": "down"}])
    await edges["edge-lon"].start()  # same port
    await wait_for(lambda: london_gets("127.0.1.1"), 10)
    body = await route_of(router, LONDON)
    assert (body["edge"], body["reason"], body["passed"]) == ("edge-lon", "nearest", [])


@pytest.mark.slow
async def test_an_overloaded_edge_spills_to_the_next(router: GeoNode, edges: dict[str, FakeEdgeAdmin]) -> None:
    async def london_gets(address: str) -> bool:
        return answer(await query(router, ecs=(LONDON, 32))) == [address]

    edges["edge-lon"].health.update(overloaded=True, load=1.3)
    await wait_for(lambda: london_gets("127.0.2.1"), 5)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{router.admin_port}/metrics") as r:
            text = await r.text()
        async with s.get(f"http://127.0.0.1:{router.admin_port}/healthz") as r:
            health = await r.json()
    assert sample(text, "livecdn_edge_overloaded", edge="edge-lon") == 1
    assert sample(text, "livecdn_edge_suspect", edge="edge-lon") == 0
    assert sample(text, "livecdn_edge_load", edge="edge-lon") == 1.3
    assert sample(text, "livecdn_route_decisions_total", edge="edge-sea", reason="spill-overloaded") >= 1
    assert sample(text, "livecdn_dns_queries_total", qtype="A", rcode="NOERROR") >= 1
    assert sample(text, "livecdn_edge_up") == 3
    assert health["edges"]["edge-lon"] == {"up": True, "overloaded": True, "suspect": False, "load": 1.3}
    edges["edge-lon"].health.update(overloaded=False, load=0.4)  # relieved: London's players come back
    await wait_for(lambda: london_gets("127.0.1.1"), 5)
    assert (await route_of(router, LONDON))["reason"] == "nearest"


# --- robustness --------------------------------------------------------------

async def test_fuzz_over_udp_and_tcp_then_still_answering(router: GeoNode) -> None:
    rng = random.Random(3)
    valid = dns.message.make_query("live.cdn.test", "A").to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(3000):
            if i % 2:
                wire = rng.randbytes(rng.randrange(0, 700))
            else:
                b = bytearray(valid)
                b[rng.randrange(len(b))] = rng.randrange(256)
                wire = bytes(b[:rng.randrange(len(b) + 1)])
            s.sendto(wire, ("127.0.0.1", router.dns_port))
            if i % 200 == 0:
                await asyncio.sleep(0)  # let the router drain its socket buffer
    for _ in range(20):  # garbage over TCP, with and without sane length prefixes
        reader, writer = await asyncio.open_connection("127.0.0.1", router.dns_port)
        junk = rng.randbytes(rng.randrange(1, 300))
        writer.write(junk if rng.random() < 0.5 else len(junk).to_bytes(2, "big") + junk)
        await writer.drain()
        writer.close()
    assert answer(await query(router, ecs=(LONDON, 32))) == ["127.0.1.1"]
    assert answer(await query(router, ecs=(MILTON, 32), tcp=True)) == ["127.0.2.1"]
    assert router.answerer is not None and router.answerer.counts["other", "FORMERR"] > 0


async def test_reload_applies_a_new_edge_list(router: GeoNode, edges: dict[str, FakeEdgeAdmin]) -> None:
    assert answer(await query(router, ecs=(LONDON, 32))) == ["127.0.1.1"]
    topo = topology(edges)
    without_london = dataclasses.replace(topo, edges={n: e for n, e in topo.edges.items() if n != "edge-lon"})
    router.reload(without_london)
    assert answer(await query(router, ecs=(LONDON, 32))) == ["127.0.2.1"]
    assert router.router is not None and set(router.router.states) == {"edge-sea", "edge-tyo"}


async def test_dns_tcp_connections_past_the_limit_are_closed_and_leave_their_place() -> None:
    """Each TCP connection asks the listener's registry for a place, and gives it back when it goes."""
    echo = DnsListener(lambda message, client, udp: message, TcpConnections(limit=1))
    port = await echo.open("127.0.0.1", 0)
    try:
        first_r, first_w = await asyncio.open_connection("127.0.0.1", port)
        first_w.write(b"\x00\x02hi")
        assert await first_r.readexactly(4) == b"\x00\x02hi"
        assert len(echo.connections) == 1
        second_r, second_w = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(second_r.read(), 5) == b""  # full: closed before a byte is read
        second_w.close()
        first_w.close()
        await first_w.wait_closed()
        assert await wait_for(lambda: _now(len(echo.connections) == 0), 5) < 5
        third_r, third_w = await asyncio.open_connection("127.0.0.1", port)
        third_w.write(b"\x00\x02ok")
        assert await third_r.readexactly(4) == b"\x00\x02ok"  # the place was given back
        third_w.close()
    finally:
        await echo.close()


async def test_dns_udp_answers_every_datagram_of_bursts_past_one_batch_and_survives_an_answerer_bug() -> None:
    """The UDP side reads its socket dry per wake-up: bursts longer than a batch are all answered, in order
    of arrival, a message the answerer fails on is dropped alone, and None means no reply."""
    def answer(message: bytes, client: str, udp: bool) -> bytes | None:
        assert udp and client == "127.0.0.1"
        if message == b"boom":
            raise RuntimeError("an answerer bug")
        return None if message == b"quiet" else b"re:" + message

    echo = DnsListener(answer)
    port = await echo.open("127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    client.setblocking(False)
    client.connect(("127.0.0.1", port))
    burst = 3 * UDP_BATCH
    try:
        for round_ in range(3):
            sent = [f"{round_}-{i}".encode() for i in range(burst)]
            for message in [*sent[:10], b"boom", b"quiet", *sent[10:]]:
                client.send(message)  # all queued before the listener's next turn of the loop
            replies = [await asyncio.wait_for(loop.sock_recv(client, 100), 5) for _ in sent]
            assert replies == [b"re:" + m for m in sent]
        with pytest.raises(TimeoutError):  # nothing for "quiet", nothing for "boom"
            await asyncio.wait_for(loop.sock_recv(client, 100), 0.3)
        assert echo.unsent == 0
    finally:
        client.close()
        await echo.close()


async def test_dns_tcp_client_that_does_not_read_stops_being_read() -> None:
    """Back-pressure through FlowControl: answers pile up, reading pauses, and resumes once the client reads."""
    echo = DnsListener(lambda message, client, udp: message)
    port = await echo.open("127.0.0.1", 0)
    sock = socket.socket()
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):  # small client buffers: the server backs up sooner
        sock.setsockopt(socket.SOL_SOCKET, option, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    message = (60_000).to_bytes(2, "big") + bytes(60_000)
    bound = 32 << 20  # far more than every buffer on the way holds (about 4 MB here)
    sent = 0
    try:
        while sent < bound:
            writer.write(message)
            sent += len(message)
            await asyncio.wait_for(writer.drain(), 0.5)
    except TimeoutError:
        pass  # the server stopped reading us
    try:
        assert sent < bound, "the server kept reading a client that never read its answers"
        assert len(await asyncio.wait_for(reader.readexactly(sent), 30)) == sent  # every message answered
    finally:
        writer.close()
        await echo.close()


async def _now(value: bool) -> bool:
    return value
