"""The router process: DNS over UDP and TCP, HTTP redirects, health checks, admin.

`GeoNode` owns, in start order: the City database reader, the routing table,
the DNS answerer, the health checker's HTTP session and tasks, the UDP
endpoint and TCP server for DNS, and two aiohttp listeners (players:
302 and /route; admin: /healthz, /metrics, /route). `stop()` releases them
in reverse. The DNS transports are thin: they hand each message to
`Answerer.answer()` and send back what it returns; nothing in them decides.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import time
from collections import Counter
from typing import Any

import aiohttp
from aiohttp import web

from livecdn import metrics
from livecdn.config import Address, RouterConfig, Topology
from livecdn.logs import AccessLog
from livecdn.node.sites import Sites

from .choose import EdgeState, Site, distance_km
from .dns import Answerer, Zone
from .health import HealthChecker
from .locate import Locator
from .route import Route, Router

__all__ = ["GeoNode", "sites"]

log = logging.getLogger("livecdn.geo")

# RFC 7766 asks servers to close idle DNS-over-TCP connections after seconds,
# not minutes; the cap bounds what a flood of idle connections can hold.
TCP_IDLE_TIMEOUT = 10.0
MAX_TCP_CONNECTIONS = 1024
DNS_BIND_ATTEMPTS = 20
CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "Location"}


def sites(topology: Topology) -> list[Site]:
    """The edges as the router sees them: location, redirect base URL, DNS addresses."""
    router = topology.router
    if router is None:
        raise ValueError(f"{topology.path} has no [router]")
    out = []
    for e in topology.edges.values():
        addresses = router.addresses[e.name]
        first = addresses[0]
        out.append(Site(e.name, e.location, Address(first, e.listen.port).url,
                        tuple(a for a in addresses if ":" not in a), tuple(a for a in addresses if ":" in a)))
    return out


class GeoNode:
    """One router process.

    Args:
        topology: the whole deployment, as loaded; it must have a router.
        config: the router's entry in it.
        access_log: write a JSON access line per HTTP request.
    """

    role = "geo"

    def __init__(self, topology: Topology, config: RouterConfig, *, access_log: bool = True) -> None:
        self.topology = topology
        self.config = config
        self.access_log = access_log
        self.router: Router | None = None
        self.answerer: Answerer | None = None
        self.redirects: Counter[str] = Counter()
        self._locator: Locator | None = None
        self._health: HealthChecker | None = None
        self._access: AccessLog | None = None
        self._session: aiohttp.ClientSession | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.AbstractServer | None = None
        self._tcp_connections: set[_DnsTcp] = set()
        self._sites = Sites()
        self._state = "new"

    # --- bound addresses ---

    @property
    def dns_port(self) -> int:
        """The DNS port actually bound (UDP and TCP share it), so port 0 works."""
        self._running()
        assert self._udp is not None
        return int(self._udp.get_extra_info("sockname")[1])

    @property
    def http_port(self) -> int:
        return self._bound(0)

    @property
    def admin_port(self) -> int:
        return self._bound(1)

    def _bound(self, index: int) -> int:
        self._running()
        return self._sites.port(index)

    def _running(self) -> None:
        if self._state != "running":
            raise RuntimeError(f"{self.config.name} is not running")

    # --- lifecycle ---

    def open_database(self, topology: Topology) -> Locator:
        """The City database named by the topology (ValueError/OSError when unusable)."""
        assert topology.router is not None
        region = topology.regions[topology.router.default_region]
        return Locator(topology.router.database, region.location, region.name)

    async def start(self) -> None:
        if self._state != "new":
            raise RuntimeError(f"{self.config.name}: start() called twice")
        self._state = "starting"
        cfg = self.config
        self._locator = self.open_database(self.topology)
        self.router = Router(self._locator, sites(self.topology))
        self.answerer = Answerer(self._zone(), self.router)
        self._session = aiohttp.ClientSession(headers={"User-Agent": f"livecdn/geo {cfg.name}"})
        self._start_health()
        metrics.watch_router(cfg.name, self._reading)

        port = await self._listen_dns()

        player = web.Application()
        player.router.add_get("/route", self._route)
        player.router.add_route("*", "/{tail:.*}", self._redirect)
        admin = web.Application()
        admin.router.add_get("/healthz", self._healthz)
        admin.router.add_get("/metrics", self._metrics)
        admin.router.add_get("/route", self._route)
        self._access = AccessLog(cfg.name) if self.access_log else None
        await self._sites.open(player, cfg.http, access_log=self._access)
        await self._sites.open(admin, cfg.admin)
        self._state = "running"
        log.info("router %s answering DNS for %s on %s (UDP+TCP), HTTP on %s, admin on %s", cfg.name,
                 self.topology.hostname, Address(cfg.dns.host, port), cfg.http, cfg.admin)

    async def _listen_dns(self) -> int:
        """Bind UDP, then TCP on the same port; returns the port."""
        loop = asyncio.get_running_loop()
        answer = self.answerer.answer  # type: ignore[union-attr]
        host, wanted = self.config.dns.host, self.config.dns.port
        # With port 0 the UDP port is the kernel's pick, and its TCP twin may be
        # taken: pick again rather than fail.
        attempts = 0
        while True:
            attempts += 1
            self._udp, _ = await loop.create_datagram_endpoint(lambda: _DnsUdp(answer), local_addr=(host, wanted))
            port = int(self._udp.get_extra_info("sockname")[1])
            try:
                self._tcp = await loop.create_server(lambda: _DnsTcp(self, answer), host, port,
                                                     reuse_address=True, backlog=1024)
                return port
            except OSError:
                self._udp.close()
                self._udp = None
                if wanted or attempts >= DNS_BIND_ATTEMPTS:
                    raise

    def _zone(self) -> Zone:
        cfg = self.config
        ns = (cfg.dns.host,) if _specific(cfg.dns.host) else ()
        return Zone(cfg.zone, self.topology.hostname, cfg.ttl, cfg.nameservers, ns, serial=int(time.time()))

    def _start_health(self) -> None:
        assert self._session is not None
        h = self.config.health
        targets = {e.name: e.admin.url + "/healthz" for e in self.topology.edges.values()}
        self._health = HealthChecker(targets, self._on_health, interval=h.interval, timeout=h.timeout,
                                     failures=h.failures, rise=h.rise)
        self._health.start(self._session)

    def _on_health(self, edge: str, state: EdgeState) -> None:
        if self.router is not None and edge in self.router.states:
            self.router.update(edge, state)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop answering and release everything; safe to call twice, and before `start()`."""
        if self._state in ("new", "stopped"):
            self._state = "stopped"
            return
        self._state = "stopping"
        await self._sites.close(timeout)
        if self._access is not None:
            self._access.flush()
        if self._tcp is not None:
            self._tcp.close()
            for conn in list(self._tcp_connections):
                conn.close()
            await self._tcp.wait_closed()
        if self._udp is not None:
            self._udp.close()
        if self._health is not None:
            await self._health.stop()
        if self._session is not None:
            await self._session.close()
        metrics.forget_router(self.config.name)
        if self._locator is not None:
            self._locator.close()
        self._state = "stopped"
        log.info("router %s stopped", self.config.name)

    def reload(self, topology: Topology) -> None:
        """Apply a new edge list and database; listeners and zone settings need a restart."""
        if self.router is None or self.answerer is None or topology.router is None:
            raise RuntimeError(f"{self.config.name} is not running")
        locator = self.open_database(topology)
        old = self._locator
        self.topology = topology
        self.config = topology.router
        self.router.replace(locator, sites(topology))
        self.answerer.sites_changed()
        self._locator = locator
        if old is not None:
            old.close()
        if self._health is not None:
            self._health.cancel()  # its tasks end at their next await, before reporting anything
        self._start_health()
        log.info("router %s reloaded %s", self.config.name, topology.path)

    # --- HTTP ---

    async def _redirect(self, request: web.Request) -> web.Response:
        if request.method == "OPTIONS":
            return web.Response(status=204, headers={**CORS, "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
                                                     "Access-Control-Allow-Headers": "*",
                                                     "Access-Control-Max-Age": "600"})
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, text="GET, HEAD or OPTIONS\n",
                                headers={**CORS, "Allow": "GET, HEAD, OPTIONS"})
        assert self.router is not None
        route = self.router.route(request.remote or "")
        self.redirects[route.edge.name] += 1
        # The whole path and query go along: the edge sees what the player asked.
        target = route.edge.url + request.raw_path
        return web.Response(status=302, headers={**CORS, "Location": target, "Cache-Control": "no-store",
                                                 "X-Livecdn-Edge": route.edge.name})

    async def _route(self, request: web.Request) -> web.Response:
        assert self.router is not None
        ip = request.query.get("ip", request.remote or "")
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            return _json({"error": f"not an IP address: {ip!r}"}, status=400)
        return _json(self._explain(ip, self.router.explain(ip)))

    def _explain(self, ip: str, route: Route) -> dict[str, Any]:
        assert self.router is not None
        loc, d = route.location, route.decision
        return {
            "ip": ip,
            "location": {"latitude": loc.latitude, "longitude": loc.longitude, "source": loc.source,
                         "network": loc.network, "name": loc.label},
            "edge": d.edge.name, "url": d.edge.url, "addresses": [*d.edge.ipv4, *d.edge.ipv6],
            "reason": d.reason, "distance_km": d.distance_km,
            "passed": [{"edge": name, "why": why} for name, why in d.passed],
            "edges": [{"edge": s.name, "distance_km": round(distance_km(loc.point, s.location), 3),
                       "up": self.router.states[s.name].up, "overloaded": self.router.states[s.name].overloaded,
                       "load": self.router.states[s.name].load} for s in self.router.sites],
        }

    async def _healthz(self, request: web.Request) -> web.Response:
        assert self.router is not None and self._locator is not None
        states = self.router.states
        return _json({"status": "ok", "role": self.role, "node": self.config.name, "pid": os.getpid(),
                      "database": self._locator.database_type,
                      "edges": {n: {"up": s.up, "overloaded": s.overloaded, "load": s.load}
                                for n, s in states.items()},
                      "edges_up": sum(s.up for s in states.values())})

    async def _metrics(self, request: web.Request) -> web.Response:
        body, ctype = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": ctype})

    def _reading(self) -> metrics.RouterReading:
        assert self.router is not None and self.answerer is not None
        a, r = self.answerer, self.router
        return metrics.RouterReading(
            dns=dict(a.counts), dropped=a.dropped, truncated=a.truncated,
            decisions=dict(r.decisions),
            redirects=dict(self.redirects),
            edges={n: (s.up, s.overloaded, s.load) for n, s in r.states.items()})


def _specific(host: str) -> bool:
    try:
        return not ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(body, status=status, headers=CORS,
                             dumps=lambda o: json.dumps(o, separators=(",", ":")))


class _DnsUdp(asyncio.DatagramProtocol):
    """One datagram in, at most one out. An answerer bug drops that message, never the endpoint."""

    __slots__ = ("answer", "transport")

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            reply = self.answer(data, addr[0], True)
        except Exception:
            log.exception("DNS answer failed for a %d-byte message from %s", len(data), addr[0])
            return
        if reply is not None:
            self.transport.sendto(reply, addr)  # type: ignore[union-attr]

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier replies (client gone): nothing to do, keep serving.
        pass


class _DnsTcp(asyncio.Protocol):
    """DNS over TCP (RFC 7766): length-prefixed messages, pipelined, idle connections closed."""

    __slots__ = ("node", "answer", "transport", "peer", "buffer", "idle")

    def __init__(self, node: GeoNode, answer: Any) -> None:
        self.node = node
        self.answer = answer
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.buffer = bytearray()
        self.idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.node._tcp_connections) >= MAX_TCP_CONNECTIONS:
            transport.close()
            return
        self.node._tcp_connections.add(self)
        self.peer = transport.get_extra_info("peername")[0]
        self._touch()

    def _touch(self) -> None:
        # One rescheduled timer per connection, not one per message.
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(TCP_IDLE_TIMEOUT, self.close)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        # At most one partial message stays buffered: its 2-byte length caps it at 64 KiB.
        while len(buf) >= 2:
            size = buf[0] << 8 | buf[1]
            if len(buf) < 2 + size:
                break
            message = bytes(buf[2:2 + size])
            del buf[:2 + size]
            try:
                reply = self.answer(message, self.peer, False)
            except Exception:
                log.exception("DNS answer failed for a %d-byte TCP message from %s", size, self.peer)
                reply = None
            if reply is None:
                # A message we cannot answer ends the conversation (RFC 7766 §7).
                self.close()
                return
            assert self.transport is not None
            self.transport.write(len(reply).to_bytes(2, "big") + reply)
        self._touch()

    def pause_writing(self) -> None:
        # Back-pressure: a client that does not read its answers stops being read.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.node._tcp_connections.discard(self)
