"""The router process: DNS over UDP and TCP, HTTP redirects, health checks, admin.

`GeoNode` owns, in start order: the City database reader, the routing table,
the DNS answerer, the health checker's HTTP session and tasks, the DNS
listener (UDP and TCP on one port, `geo/dnsio.py`) and two aiohttp listeners
(players: 302 and /route, `geo/redirect.py`; admin: /healthz, /metrics,
/route). `_stop()` releases them in reverse. Deciding is done elsewhere:
`dns.Answerer` answers DNS, `route.Router` picks the edge; this module only
wires them to sockets and to the lifecycle.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import time

import aiohttp
from aiohttp import web

from livecdn import metrics
from livecdn.config import Address, RouterConfig, Topology
from livecdn.front.forwarded import ClientAddresses
from livecdn.front.proxyaccept import NamedPeers
from livecdn.front.redirect import HttpsRedirect
from livecdn.front.request import Request
from livecdn.front.tls import ServerTls, read_certificates
from livecdn.logs import AccessLog
from livecdn.media.steering import STEERING_PATH
from livecdn.node.lifecycle import Lifecycle
from livecdn.node.sites import Sites, live

from .choose import EdgeState, Site
from .dns import Answerer, Zone
from .dnsio import DnsListener
from .health import HealthChecker
from .locate import Locator
from .redirect import Redirects, json_response
from .route import Router
from .steering import SteeringManifests

__all__ = ["GeoNode", "edge_sites"]

# Sockets and the zone's answers are made at start: a reload keeps them as they run.
RESTART_ONLY = ("dns", "http", "admin", "zone", "ttl", "nameservers")

log = logging.getLogger("livecdn.geo")


def edge_sites(topology: Topology) -> list[Site]:
    """The edges as the router sees them: location, redirect base URL, DNS addresses."""
    router = topology.router
    if router is None:
        raise ValueError(f"{topology.path} has no [router]")
    out = []
    for e in topology.edges.values():
        addresses = router.addresses[e.name]
        out.append(Site(e.name, e.location, topology.edge_url(e.name),
                        tuple(a for a in addresses if ":" not in a), tuple(a for a in addresses if ":" in a)))
    return out


class GeoNode(Lifecycle):
    """One router process.

    Args:
        topology: the whole deployment, as loaded; it must have a router.
        config: the router's entry in it.
        access_log: write a JSON access line per HTTP request.
    """

    role = "geo"

    def __init__(self, topology: Topology, config: RouterConfig, *, access_log: bool = True) -> None:
        super().__init__(config.name)
        self.topology = topology
        self.config = config
        self.access_log = access_log
        self.router: Router | None = None
        self.answerer: Answerer | None = None
        self.http: Redirects | None = None
        self.steering: SteeringManifests | None = None  # with [router.steering] enabled
        self._locator: Locator | None = None
        self._health: HealthChecker | None = None
        self._access: AccessLog | None = None
        self._session: aiohttp.ClientSession | None = None
        self._dns: DnsListener | None = None
        self._listeners = Sites()
        self._ports = (0, 0, 0)  # DNS, HTTP, admin: as bound
        self._tls: ServerTls | None = None  # the HTTPS listener's certificates, re-read on reload
        self.tls_port = 0  # the HTTPS port as bound (0: none)

    # --- bound addresses ---

    @property
    def dns_port(self) -> int:
        """The DNS port actually bound (UDP and TCP share it), so port 0 works."""
        self.require_running()
        return self._ports[0]

    @property
    def http_port(self) -> int:
        self.require_running()
        return self._ports[1]

    @property
    def admin_port(self) -> int:
        self.require_running()
        return self._ports[2]

    # --- lifecycle ---

    def open_database(self, topology: Topology) -> Locator:
        """The City database named by the topology (ValueError/OSError when unusable)."""
        assert topology.router is not None
        region = topology.regions[topology.router.default_region]
        return Locator(topology.router.database, region.location, region.name)

    async def _start(self) -> None:
        cfg = self.config
        self._locator = self.open_database(self.topology)
        self.router = Router(self._locator, edge_sites(self.topology))
        self.answerer = Answerer(self._zone(), self.router)
        proxied = NamedPeers() if cfg.proxy_protocol else None
        self.http = Redirects(self.router, ClientAddresses(cfg.trusted_proxies, cfg.forwarded_header) or None,
                              proxied)
        self._session = aiohttp.ClientSession(headers={"User-Agent": f"livecdn/geo {cfg.name}"})
        self._start_health()
        metrics.watch_router(cfg.name, self._reading)

        self._dns = DnsListener(self.answerer.answer)
        dns_port = await self._dns.open(cfg.dns.host, cfg.dns.port)

        player = web.Application()
        player.router.add_get("/route", self.http.route)
        if cfg.steering.enabled:
            self.steering = SteeringManifests(self.router, cfg.steering.ttl, self.http.client)
            player.router.add_get(STEERING_PATH + "/{kind}/{name}", self.steering.manifest)
        player.router.add_route("*", "/{tail:.*}", self.http.redirect)
        admin = web.Application()
        admin.router.add_get("/healthz", self._healthz)
        admin.router.add_get("/livez", live)
        admin.router.add_get("/metrics", self._metrics)
        admin.router.add_get("/route", self.http.route)
        self._access = AccessLog(cfg.name) if self.access_log else None
        http_port = await self._open_player(player, proxied)
        admin_port = await self._listeners.open(admin, cfg.admin)
        self._ports = (dns_port, http_port, admin_port)
        log.info("router %s answering DNS for %s on %s (UDP+TCP), HTTP on %s, admin on %s", cfg.name,
                 self.topology.hostname, Address(cfg.dns.host, dns_port), cfg.http, cfg.admin)

    def check_tls(self, topology: Topology) -> None:
        """Read the HTTPS listener's certificates now (the CLI's check before start).

        Raises:
            ConfigError: a certificate or key that cannot be used (file, key, problem).
        """
        self._certificates(topology, None)

    def _certificates(self, topology: Topology, running: ServerTls | None) -> ServerTls | None:
        tls = topology.router.tls if topology.router is not None else None
        return read_certificates(tls, running, path=topology.path, table="router.tls")

    async def _open_player(self, player: web.Application, proxied: NamedPeers | None) -> int:
        """The player listener: plain `http`, and `tls.listen` over HTTPS (plain then serves, redirects or is off)."""
        cfg = self.config
        self._tls = self._certificates(self.topology, None)
        if cfg.tls is None or self._tls is None:
            return await self._listeners.open(player, cfg.http, access_log=self._access, proxied=proxied)
        self.tls_port = await self._listeners.open(player, cfg.tls.listen, access_log=self._access,
                                                   ssl_context=self._tls.context, proxied=proxied)
        if cfg.tls.plain == "off":
            return 0
        if cfg.tls.plain == "serve":
            return await self._listeners.open(player, cfg.http, access_log=self._access, proxied=proxied)
        to_https = HttpsRedirect(self.tls_port)

        async def redirect(request: web.Request) -> web.Response:
            location = to_https.location(Request(request.method, request.raw_path, "1.1",
                                                 {b"host": request.host.encode("latin-1")}, False))
            if location is None:
                return web.Response(status=400, text="a Host header is needed to redirect to https\n")
            return web.Response(status=301 if request.method in ("GET", "HEAD") else 308,
                                headers={"Location": location})

        plain = web.Application()
        plain.router.add_route("*", "/{tail:.*}", redirect)
        return await self._listeners.open(plain, cfg.http, access_log=self._access, proxied=proxied)

    def _zone(self) -> Zone:
        cfg = self.config
        ns = (cfg.dns.host,) if _specific(cfg.dns.host) else ()
        return Zone(cfg.zone, self.topology.hostname, cfg.ttl, cfg.nameservers, ns, serial=int(time.time()))

    def _start_health(self) -> None:
        assert self._session is not None
        h = self.config.health
        targets = {e.name: e.admin.url + "/healthz" for e in self.topology.edges.values()}
        self._health = HealthChecker(targets, self._on_health, interval=h.interval, timeout=h.timeout,
                                     slow=h.slow, failures=h.failures, rise=h.rise)
        self._health.start(self._session)

    def _on_health(self, edge: str, state: EdgeState) -> None:
        if self.router is not None and edge in self.router.states:
            self.router.update(edge, state)

    async def _stop(self, timeout: float) -> None:
        """Stop answering and release everything (HTTP answers drain under the listeners' own bound)."""
        await self._listeners.close()
        if self._access is not None:
            self._access.flush()
        dns, self._dns = self._dns, None
        if dns is not None:
            await dns.close()
        health, self._health = self._health, None
        if health is not None:
            await health.stop()
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        metrics.forget_router(self.config.name)
        locator, self._locator = self._locator, None
        if locator is not None:
            locator.close()
        log.info("router %s stopped", self.config.name)

    def reload(self, topology: Topology) -> None:
        """Apply a new edge list and database; listeners and zone settings need a restart."""
        self.require_running()
        if topology.router is None:
            raise RuntimeError(f"{topology.path} has no [router] for {self.config.name}")
        assert self.router is not None and self.answerer is not None
        self._certificates(topology, self._tls)  # all read, or ConfigError and nothing changes
        locator = self.open_database(topology)
        old = self._locator
        restart = [k for k in RESTART_ONLY if getattr(topology.router, k) != getattr(self.config, k)]
        self.topology = topology
        self.config = dataclasses.replace(topology.router, **{k: getattr(self.config, k) for k in restart})
        self.router.replace(locator, edge_sites(topology))
        if self.steering is not None:
            self.steering.ttl = topology.router.steering.ttl
        self.answerer.sites_changed()
        self._locator = locator
        if old is not None:
            old.close()
        if self._health is not None:
            self._health.cancel()  # its tasks end at their next await, before reporting anything
        self._start_health()
        log.info("router %s reloaded %s%s", self.config.name, topology.path,
                 f"; needs a restart to change: {', '.join(restart)} (running on with the old)" if restart else "")

    # --- admin ---

    async def _healthz(self, request: web.Request) -> web.Response:
        assert self.router is not None and self._locator is not None
        states = self.router.states
        return json_response({"status": "ok", "role": self.role, "node": self.config.name, "pid": os.getpid(),
                              "database": self._locator.database_type,
                              "edges": {n: {"up": s.up, "overloaded": s.overloaded, "suspect": s.suspect,
                                            "load": s.load}
                                        for n, s in states.items()},
                              "edges_up": sum(s.up for s in states.values())})

    async def _metrics(self, request: web.Request) -> web.Response:
        body, ctype = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": ctype})

    def _reading(self) -> metrics.RouterReading:
        assert self.router is not None and self.answerer is not None and self.http is not None
        a, r = self.answerer, self.router
        a.tally()
        return metrics.RouterReading(
            dns=dict(a.counts), dropped=a.dropped, truncated=a.truncated,
            unsent=self._dns.unsent if self._dns is not None else 0,
            decisions=dict(r.decisions),
            redirects=dict(self.http.counts),
            edges={n: (s.up, s.overloaded, s.suspect, s.load) for n, s in r.states.items()})


def _specific(host: str) -> bool:
    try:
        return not ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False
