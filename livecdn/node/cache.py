"""What every cache node process owns, and the order it is started and stopped in.

`CacheNode` is the node shared by `EdgeNode` and `ShieldNode`, on the common
`Lifecycle` (livecdn/node/lifecycle.py): `_start()` opens the stores, the
upstream session, its place among its sibling workers (`Purges`, and
`Siblings`: the keys it owns it fetches for them, the others it asks the owner
for) and the two listeners (players: livecdn's own HTTP/1.1 server, `livecdn/front/listener.py`;
admin: aiohttp, with /healthz, /metrics and the authenticated POST /purge);
`_stop(timeout)` releases them one by one in reverse, draining in-flight
responses first. A subclass says where its upstreams are, what policy screens
requests and how many connections one client may hold.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import sqlite3
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from livecdn import metrics
from livecdn.cache.disk import DiskStore, DiskUnusable
from livecdn.cache.engine import Engine
from livecdn.cache.freshness import Rules
from livecdn.cache.health import Health
from livecdn.cache.memory import MemoryStore
from livecdn.cache.upstreams import Upstreams, Workers
from livecdn.config import CacheSettings, ConfigError, EdgeConfig, LimitSettings, ShieldConfig, Topology
from livecdn.config.schema import DEFAULT_ORIGIN, OriginRoute
from livecdn.front.answers import PlayerFront, Policy, ShieldFront
from livecdn.front.connlimit import OVERLOAD_SHARE, ConnectionLimit, connection_budget, per_process
from livecdn.front.forwarded import ClientAddresses
from livecdn.front.listener import PlayerServer
from livecdn.front.origins import Origins
from livecdn.front.redirect import HttpsRedirect
from livecdn.front.tls import PLAYER_ALPN, CertificateError, ServerTls, client_context, read_certificates
from livecdn.logs import AccessLog
from livecdn.media.playlist import Manifest
from livecdn.node.broadcast import Busy, Purges
from livecdn.node.lifecycle import Lifecycle
from livecdn.node.purge import MAX_MESSAGE, BadSelector, Selector, authorized
from livecdn.node.siblings import Siblings
from livecdn.node.sites import Sites, live

__all__ = ["CacheNode"]

log = logging.getLogger("livecdn.node.cache")
# Upstream connections one process keeps open at most: enough for a burst of
# distinct misses, bounded so a cache-busting flood cannot exhaust sockets.
UPSTREAM_CONNECTIONS = 512
# What one read of an upstream body may take in (aiohttp's default is 64 KiB). Every read wakes each
# client attached to the fill: a 1 MiB segment in one or two reads, not sixteen, is 200 clients woken
# twice rather than sixteen times on a cold fan-out. A fill keeps the whole body anyway.
UPSTREAM_READ = 1 << 20
# How often the memory hits the front counts reach the request counter.
COUNT_INTERVAL = 1.0
# What a request without the admin token is told to send (RFC 6750).
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="livecdn admin"'}


class CacheNode(Lifecycle):
    """One edge or shield process.

    Args:
        topology: the whole deployment, as loaded.
        config: this node's entry in it.
        access_log: write a JSON access line per request.
        reuse_port: bind with SO_REUSEPORT so sibling worker processes share the port.
        workers_dir: where the node's worker processes find each other, to purge them all
            (`livecdn.node.broadcast`) and to ask each key's owner (`livecdn.node.siblings`);
            None: this process is the node's only worker.
        slot: this worker's slot, 0 to `config.workers` - 1 (its socket's name there).
    """

    role = "cache"
    front_kind: type[PlayerFront] = PlayerFront  # how it answers: players (edge) or the tier below (shield)
    alpn: tuple[str, ...] = PLAYER_ALPN  # what its TLS listener offers in ALPN: the protocols it speaks

    def __init__(self, topology: Topology, config: EdgeConfig | ShieldConfig, *,
                 access_log: bool = True, reuse_port: bool = False, workers_dir: str | None = None,
                 slot: int = 0) -> None:
        super().__init__(config.name)
        self.topology = topology
        self.config = config
        self.access_log = access_log
        self.reuse_port = reuse_port
        self.workers_dir = workers_dir
        # This process's place among the node's workers (None: the only one).
        self.workers = Workers(slot, config.workers) if workers_dir is not None and config.workers > 1 else None
        self.engine: Engine | None = None
        self.purges: Purges | None = None  # `purges.purge(selector)` drops objects in every worker of the node
        self.siblings: Siblings | None = None
        self._sibling_front: ShieldFront | None = None
        self.front: PlayerFront | None = None
        self.policy: Policy | None = None
        self._disk: DiskStore | None = None
        self.disk_state = "none"  # /healthz: "ok", "none" (memory only by config) or "off: <why>"
        self._session: aiohttp.ClientSession | None = None
        self._players: PlayerServer | None = None
        self._sites = Sites()
        self._admin_port = 0
        self._tls: ServerTls | None = None  # the TLS listener's certificates, re-read on reload
        self._ports: dict[str, int] = {}  # "http" and/or "https": the player ports as bound
        self._trust: dict[str, ssl.SSLContext] = {}  # https upstream → how its certificate is verified
        cache = config.cache
        # Kept across reloads: an upstream still in the topology keeps its record.
        self.upstream_health = Health(cache.eject_after, cache.eject_backoff, cache.eject_max_backoff)
        self._upstreams: Upstreams | None = None

    # --- what a node kind decides ---

    def upstreams(self, topology: Topology) -> Upstreams:
        raise NotImplementedError

    def origins(self, topology: Topology) -> Origins:
        """How requests are routed to the topology's origins (a shield also honours the edges' header)."""
        return Origins(topology.routes)

    def make_policy(self, engine: Engine) -> Policy | None:
        return None

    def trusted(self, topology: Topology) -> dict[str, tuple[str, str]]:
        """Each https upstream's CA file ("": the system's CAs) and the topology key that names it."""
        return {r.url: (r.ca_file, _ca_key(r)) for r in topology.routes if r.url.startswith("https:")}

    def check_tls(self, topology: Topology) -> None:
        """Read every TLS file this node needs, as start does (the CLI calls this before forking workers).

        Raises:
            ConfigError: a certificate, key or CA file that cannot be used (file, key, problem).
        """
        self._trusted_contexts(topology)
        self._certificates(topology, None)

    def _certificates(self, topology: Topology, running: ServerTls | None) -> ServerTls | None:
        """This node's TLS certificates read from their files: into `running` (a reload), or anew."""
        config = topology.shields.get(self.config.name) or topology.edges.get(self.config.name) or self.config
        return read_certificates(config.tls, running, path=topology.path, alpn=self.alpn,
                                 table=f"{self.role}s.{self.config.name}.tls")

    def _trusted_contexts(self, topology: Topology) -> dict[str, ssl.SSLContext]:
        """How each https upstream's certificate is verified, its CA file read now."""
        trust = {}
        for upstream, (ca_file, key) in self.trusted(topology).items():
            try:
                trust[upstream] = client_context(ca_file)
            except CertificateError as e:
                raise ConfigError(topology.path, key, e.problem) from None
        return trust

    def dresser(self, topology: Topology) -> Callable[[str, bytes, Manifest], bytes] | None:
        """What this node writes into the manifests it stores (`Engine.dress`); a shield stores them as they are."""
        return None

    def upstream_waits(self) -> tuple[float, float, float]:
        """Seconds to wait for an upstream to connect, to send its status line, and between body reads."""
        return self.config.cache.waits

    def patience(self) -> float:
        """How long a head may take from an upstream that is slow but answers probes (`Engine._head`)."""
        return self.config.cache.upstream_timeout

    def connection_limit(self) -> ConnectionLimit | None:
        """Open player connections allowed per client address (None: unlimited)."""
        return None

    def client_addresses(self) -> ClientAddresses | None:
        """Which peers are trusted proxies naming their clients (None: none; a shield's peers are edges)."""
        return None

    def proxy_protocol(self) -> bool:
        """Whether every player connection begins with a PROXY header."""
        return False

    def player_limits(self) -> LimitSettings:
        """The player listener's bounds (`max_connections`, `header_timeout`); a shield takes the defaults."""
        return LimitSettings()

    def h2c(self) -> bool:
        """Whether the player listener serves HTTP/2 with prior knowledge (a shield: yes, edges ask no more)."""
        return True

    def apply_player_limits(self, limits: LimitSettings) -> None:
        """Bound the player listener by `limits` (at start, and on reload): open connections stay open."""
        assert self._players is not None
        budget = connection_budget(UPSTREAM_CONNECTIONS)
        self._players.max_connections = per_process(limits.max_connections, self.config.workers, budget)
        self._players.header_timeout = limits.header_timeout

    def update_gauges(self) -> None:
        """Bring gauges (and the hit counter) up to date before they are read."""
        self._flush_fronts()
        if self._players is not None:
            assert self._players.tally is not None
            self._players.tally.flush()
            metrics.CONNECTIONS.labels(self.config.name).set(self._players.open)
        if self.engine is not None:
            metrics.MEMORY_BYTES.labels(self.config.name).set(self.engine.memory.used)
        if self._upstreams is not None:
            for upstream, entry in self._upstreams.report().items():
                metrics.UPSTREAM_UP.labels(self.config.name, upstream).set(int(entry["state"] == "up"))

    def health(self) -> dict[str, object]:
        """What `/healthz` reports; an `overloaded` that is true makes it a 503 (`_healthz`).

        Connections are this process's (a worker's: each answers for itself,
        and SO_REUSEPORT spreads connections evenly over them).
        """
        front, engine, players = self.front, self.engine, self._players
        assert front is not None and engine is not None and players is not None
        return {"status": "ok", "role": self.role, "node": self.config.name, "pid": os.getpid(),
                "worker": self.workers.slot if self.workers is not None else 0,
                "inflight": front.inflight, "fetches": engine.inflight_fetches,
                "upstreams": self._upstreams.report() if self._upstreams is not None else {},
                "memory_bytes": engine.memory.used, "connections": players.open,
                "max_connections": players.max_connections, "refused_connections": players.refused,
                "refused_proxy_headers": players.refused_proxy,
                "disk": self.disk_state}

    def connections_overloaded(self) -> bool:
        """Whether open player connections reached `OVERLOAD_SHARE` of this process's bound."""
        players = self._players
        assert players is not None and players.max_connections is not None
        return players.open >= OVERLOAD_SHARE * players.max_connections

    # --- lifecycle ---

    @property
    def port(self) -> int:
        """The plain player port actually bound (so a config with port 0 works); with plain off, the TLS one."""
        self.require_running()
        return self._ports.get("http") or self._ports["https"]

    @property
    def players(self) -> PlayerServer:
        """The player listener (its connections, keep-alive timeout and access log)."""
        self.require_running()
        assert self._players is not None
        return self._players

    @property
    def tls_port(self) -> int:
        """The HTTPS player port actually bound (RuntimeError when the node has no TLS listener)."""
        self.require_running()
        if "https" not in self._ports:
            raise RuntimeError(f"{self.role} {self.config.name} has no TLS listener")
        return self._ports["https"]

    @property
    def admin_port(self) -> int:
        """The admin port actually bound."""
        self.require_running()
        return self._admin_port

    async def _start(self) -> None:
        cache: CacheSettings = self.config.cache
        memory = MemoryStore(cache.memory_bytes)
        if cache.disk_path and cache.disk_bytes:
            try:
                self._disk = DiskStore(cache.disk_path, cache.disk_bytes)
            except DiskUnusable as e:  # a node on a broken disk still serves, from memory
                self.disk_state = f"off: {e}"
                log.error("%s %s: disk tier %s unusable (%s): serving from memory only", self.role,
                          self.config.name, cache.disk_path, e)
            else:
                self.disk_state = "ok"
        rules = Rules.of(cache)
        ups = self._upstreams = self.upstreams(self.topology)
        ups.health = self.upstream_health
        self.engine = Engine(self.config.name, memory, self._disk, ups.order, rules,
                             cache.max_object_bytes, self.upstream_waits(), ups.headers, self.upstream_health,
                             patience=self.patience())
        self.engine.tier = ups.tier
        self._trust = self._trusted_contexts(self.topology)
        self._tls = self._certificates(self.topology, None)
        self.engine.upstream_ssl = self._upstream_ssl
        self.engine.dress = self.dresser(self.topology)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=UPSTREAM_CONNECTIONS, enable_cleanup_closed=True),
            read_bufsize=UPSTREAM_READ,
            headers={"User-Agent": f"livecdn/{self.role} {self.config.name}"},
        )
        self.engine.start(self._session)
        self.purges = Purges(self.engine, self.workers_dir)
        self.purges.open()
        if self.workers is not None and self.workers_dir is not None:
            # Answers siblings as a shield answers edges: by the origin they name, no policy, precise ages.
            self._sibling_front = ShieldFront(self.engine, f"{self.config.name}/workers", None,
                                              Origins(self.topology.routes, named=True))
            self.siblings = Siblings(self.workers_dir, self.workers, f"livecdn/{self.role} {self.config.name}",
                                     UPSTREAM_READ)
            await self.siblings.open(self._sibling_front)
            self.engine.siblings = self.siblings.sessions
        self.engine.on_restart(self._restarted)
        self.policy = self.make_policy(self.engine)
        self.front = self.front_kind(self.engine, self.config.name, self.policy, self.origins(self.topology))
        players = PlayerServer(self.front, connection_limit=self.connection_limit(),
                               access_log=AccessLog(self.config.name) if self.access_log else None,
                               h2c=self.h2c(), addresses=self.client_addresses(),
                               proxy_protocol=self.proxy_protocol(), tally=metrics.Tally(self.config.name, self.role))
        await self._listen(players)
        self._players = players
        self.apply_player_limits(self.player_limits())
        self.spawn(self._count(), "count hits")
        admin = web.Application(client_max_size=MAX_MESSAGE)
        admin.router.add_get("/healthz", self._healthz)
        admin.router.add_get("/livez", live)
        admin.router.add_get("/metrics", self._metrics)
        admin.router.add_post("/purge", self._purge)
        self._admin_port = await self._sites.open(admin, self.config.admin, reuse_port=self.reuse_port)
        tls = self.config.tls
        plain = "" if tls is not None and tls.plain == "off" else f"{self.config.listen}" + (
            " (redirecting to https)" if tls is not None and tls.plain == "redirect" else "")
        log.info("%s %s serving players on %s, admin on %s", self.role, self.config.name,
                 ", ".join(filter(None, [plain, f"https://{tls.listen}" if tls is not None else ""])),
                 self.config.admin)

    async def _listen(self, players: PlayerServer) -> None:
        """The player addresses: plain `listen` (serving, or redirecting to HTTPS) and/or `tls.listen`."""
        listen, tls, reuse = self.config.listen, self.config.tls, self.reuse_port
        try:
            if tls is not None and self._tls is not None:
                self._ports["https"] = await players.start(tls.listen.host, tls.listen.port, reuse_port=reuse,
                                                           ssl=self._tls.context)
            if tls is None or tls.plain == "serve":
                self._ports["http"] = await players.start(listen.host, listen.port, reuse_port=reuse)
            elif tls.plain == "redirect":
                self._ports["http"] = await players.start(listen.host, listen.port, reuse_port=reuse,
                                                          handler=HttpsRedirect(self._ports["https"]))
        except BaseException:
            await players.shutdown(0)
            raise

    def _upstream_ssl(self, upstream: str) -> ssl.SSLContext | bool:
        return self._trust.get(upstream, True)

    async def _stop(self, timeout: float) -> None:
        """Stop listening, drain in-flight responses for up to `timeout`, release everything."""
        # Admin first, then players: each closes its socket, ends idle keep-alive
        # connections and waits for answers in flight (players: under `timeout`).
        await self._sites.close()
        if self._players is not None:
            await self._players.shutdown(timeout)
            if self._players.access is not None:
                self._players.access.flush()
            self._players = None
        if self.siblings is not None:
            await self.siblings.drain(timeout)
        self._flush_fronts()
        if self.purges is not None:
            await self.purges.close()
        if self.engine is not None:  # kept: readable after stop (memory tier, counters); closing twice is harmless
            await self.engine.close(timeout)
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        if self.siblings is not None:
            await self.siblings.close()
        disk, self._disk = self._disk, None
        if disk is not None:
            disk.close()
        log.info("%s %s stopped", self.role, self.config.name)

    # What a reload cannot change in a running process: new sockets, new processes, another disk tier.
    RESTART_ONLY: tuple[str, ...] = ("listen", "admin", "workers", "cache.disk_path", "cache.disk_bytes")

    def reload(self, topology: Topology) -> None:
        """Apply what can change without new sockets: the origins and upstreams, this node's cache
        settings (memory size, object bound, freshness rules, upstream waits and health), the TLS
        certificates (read again: new handshakes get them, open connections keep theirs) and upstream CA
        files; an edge adds its guard, limits, signing keys and trusted proxies. A TLS file that cannot be
        used raises ConfigError before anything changes; what needs a restart is said in the log line, and
        keeps its running value.
        """
        self.require_running()
        assert self.engine is not None and self.front is not None
        trust = self._trusted_contexts(topology)
        self._certificates(topology, self._tls)  # a new [*.tls] table needs a restart: it is only checked
        self._trust = trust
        self.topology = topology
        new = (topology.edges if self.role == "edge" else topology.shields).get(self.config.name)
        restart = [] if new is None else [k for k in self.RESTART_ONLY if _field(self.config, k) != _field(new, k)]
        if new is not None:
            for k in restart:  # kept as they run
                new = _replaced(new, k, _field(self.config, k))
            self.apply(new)
        ups = self._upstreams = self.upstreams(topology)
        ups.health = self.upstream_health
        self.engine.upstreams, self.engine.upstream_headers, self.engine.tier = ups.order, ups.headers, ups.tier
        self.front.route(self.origins(topology))
        if self._sibling_front is not None:
            self._sibling_front.route(Origins(topology.routes, named=True))
        log.info("%s %s reloaded %s%s", self.role, self.config.name, topology.path,
                 f"; needs a restart to change: {', '.join(restart)} (running on with the old)" if restart else "")

    def apply(self, config: EdgeConfig | ShieldConfig) -> None:
        """Take a new config of this node whose restart-only fields are the running ones."""
        old, self.config = self.config, config
        engine, cache = self.engine, config.cache
        assert engine is not None
        if cache != old.cache:
            engine.memory.resize(cache.memory_bytes)
            engine.max_object_bytes = cache.max_object_bytes
            engine.rules = Rules.of(cache)
            engine.waits = self.upstream_waits()
            engine.patience = self.patience()
            health = self.upstream_health
            health.eject_after, health.backoff, health.max_backoff = (
                cache.eject_after, cache.eject_backoff, cache.eject_max_backoff)

    def _restarted(self, directories: frozenset[str]) -> None:
        """A stream restarted: sibling workers drop what their memory holds under its directories too.

        By prefix, so whatever origin: more than the restart needs at worst, which costs a refetch.
        """
        assert self.purges is not None
        for d in sorted(directories):
            self.purges.tell(Selector("prefix", d))

    def _flush_fronts(self) -> None:
        """The players' front's and the siblings' counts into the metrics."""
        for front in (self.front, self._sibling_front):
            if front is not None:
                front.flush_hits()

    async def _count(self) -> None:
        assert self.front is not None
        while True:
            await asyncio.sleep(COUNT_INTERVAL)  # a housekeeping tick, not a data-path wait
            self._flush_fronts()
            if self._players is not None and self._players.tally is not None:
                self._players.tally.flush()

    async def _healthz(self, request: web.Request) -> web.Response:
        self.update_gauges()
        health = self.health()
        # Overloaded is a 503, so that any balancer steers away; the router reads the body too.
        status = 503 if health.get("overloaded") else 200
        return web.json_response(health, status=status, dumps=lambda o: json.dumps(o, separators=(",", ":")))

    async def _metrics(self, request: web.Request) -> web.Response:
        self.update_gauges()
        if self._disk is not None:  # a read of the disk tier's database: off the loop
            used = await asyncio.get_running_loop().run_in_executor(None, self._disk.volume)
            metrics.DISK_BYTES.labels(self.config.name).set(used)
        body, ctype = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": ctype})

    async def _purge(self, request: web.Request) -> web.Response:
        """POST /purge {"url" | "prefix" | "stream": ...} with the admin bearer token: see `livecdn.node.purge`."""
        assert self.purges is not None
        token = self.topology.admin_token  # read per request: a SIGHUP may have changed it
        if not token:
            return _answer(403, {"error": "purge is disabled: no admin token ([cdn] admin_token or "
                                         "LIVECDN_ADMIN_TOKEN)"})
        if not authorized(request.headers.get("Authorization"), token):
            log.warning("purge refused from %s: no valid admin token", request.remote)
            return _answer(401, {"error": "a valid admin bearer token is required"}, CHALLENGE)
        try:
            selector = Selector.from_json(await request.read())
        except BadSelector as e:
            return _answer(400, {"error": str(e)})
        try:
            purged = await self.purges.purge(selector)
        except Busy as e:
            return _answer(503, {"error": str(e)})
        except (OSError, sqlite3.Error) as e:
            return _answer(500, {"error": f"disk tier purge failed: {e}"})
        log.info("purge %s from %s: %d objects (memory %s, disk %d) in %.0f ms%s", selector.to_json(),
                 request.remote, purged.dropped, dict(purged.memory), purged.disk, purged.seconds * 1000,
                 "" if purged.complete else f"; incomplete: no answer from {list(purged.unanswered)}, "
                                             f"failed {dict(purged.errors)}")
        # 504: a sibling worker did not answer in time (or failed): its memory may still hold the objects.
        return _answer(200 if purged.complete else 504,
                       {"node": self.config.name, "role": self.role, **purged.to_json()})


def _ca_key(route: OriginRoute) -> str:
    return "origin.ca_file" if route.name == DEFAULT_ORIGIN else f"origins.{route.name}.ca_file"


def _answer(status: int, body: dict[str, object], headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def _field(cfg: object, dotted: str) -> object:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _replaced(cfg: Any, dotted: str, value: object) -> Any:
    """`cfg` (a config dataclass) with the field at `dotted` (e.g. "cache.disk_path") set to `value`."""
    head, _, rest = dotted.partition(".")
    return dataclasses.replace(cfg, **{head: _replaced(getattr(cfg, head), rest, value) if rest else value})
