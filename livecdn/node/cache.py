"""What every cache node process owns, and the order it is started and stopped in.

`CacheNode` is the node shared by `EdgeNode` and `ShieldNode`, on the common
`Lifecycle` (livecdn/node/lifecycle.py): `_start()` opens the stores, the
upstream session and the two listeners (players: livecdn's own HTTP/1.1
server, `livecdn/front/listener.py`; admin: aiohttp); `_stop(timeout)`
releases them one by one in reverse, draining in-flight responses first. A
subclass says where its upstreams are, what policy screens requests and how
many connections one client may hold.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import aiohttp
from aiohttp import web

from livecdn import metrics
from livecdn.cache.disk import DiskStore
from livecdn.cache.engine import Engine
from livecdn.cache.freshness import Rules
from livecdn.cache.memory import MemoryStore
from livecdn.cache.upstreams import Upstreams
from livecdn.config import CacheSettings, EdgeConfig, ShieldConfig, Topology
from livecdn.front.answers import PlayerFront, Policy
from livecdn.front.connlimit import ConnectionLimit
from livecdn.front.listener import PlayerServer
from livecdn.front.origins import Origins
from livecdn.logs import AccessLog
from livecdn.node.lifecycle import Lifecycle
from livecdn.node.sites import Sites

__all__ = ["CacheNode"]

log = logging.getLogger("livecdn.node.cache")
# Upstream connections one process keeps open at most: enough for a burst of
# distinct misses, bounded so a cache-busting flood cannot exhaust sockets.
UPSTREAM_CONNECTIONS = 512
# How often the memory hits the front counts reach the request counter.
COUNT_INTERVAL = 1.0


class CacheNode(Lifecycle):
    """One edge or shield process.

    Args:
        topology: the whole deployment, as loaded.
        config: this node's entry in it.
        access_log: write a JSON access line per request.
        reuse_port: bind with SO_REUSEPORT so sibling worker processes share the port.
    """

    role = "cache"

    def __init__(self, topology: Topology, config: EdgeConfig | ShieldConfig, *,
                 access_log: bool = True, reuse_port: bool = False) -> None:
        super().__init__(config.name)
        self.topology = topology
        self.config = config
        self.access_log = access_log
        self.reuse_port = reuse_port
        self.engine: Engine | None = None
        self.front: PlayerFront | None = None
        self.policy: Policy | None = None
        self._disk: DiskStore | None = None
        self._session: aiohttp.ClientSession | None = None
        self._players: PlayerServer | None = None
        self._sites = Sites()
        self._admin_port = 0

    # --- what a node kind decides ---

    def upstreams(self, topology: Topology) -> Upstreams:
        raise NotImplementedError

    def origins(self, topology: Topology) -> Origins:
        """How requests are routed to the topology's origins (a shield also honours the edges' header)."""
        return Origins(topology.routes)

    def make_policy(self, engine: Engine) -> Policy | None:
        return None

    def connection_limit(self) -> ConnectionLimit | None:
        """Open player connections allowed per client address (None: unlimited)."""
        return None

    def update_gauges(self) -> None:
        """Bring gauges (and the hit counter) up to date before they are read."""
        if self.front is not None:
            self.front.flush_hits()
        if self.engine is not None:
            metrics.MEMORY_BYTES.labels(self.config.name).set(self.engine.memory.used)

    def health(self) -> dict[str, object]:
        front, engine = self.front, self.engine
        assert front is not None and engine is not None
        return {"status": "ok", "role": self.role, "node": self.config.name, "pid": os.getpid(),
                "inflight": front.inflight, "fetches": engine.inflight_fetches,
                "memory_bytes": engine.memory.used}

    # --- lifecycle ---

    @property
    def port(self) -> int:
        """The player port actually bound (so a config with port 0 works)."""
        self.require_running()
        assert self._players is not None
        return self._players.port

    @property
    def players(self) -> PlayerServer:
        """The player listener (its connections, keep-alive timeout and access log)."""
        self.require_running()
        assert self._players is not None
        return self._players

    @property
    def admin_port(self) -> int:
        """The admin port actually bound."""
        self.require_running()
        return self._admin_port

    async def _start(self) -> None:
        cache: CacheSettings = self.config.cache
        memory = MemoryStore(cache.memory_bytes)
        if cache.disk_path and cache.disk_bytes:
            Path(cache.disk_path).mkdir(parents=True, exist_ok=True)
            self._disk = DiskStore(cache.disk_path, cache.disk_bytes)
        rules = Rules.of(cache)
        ups = self.upstreams(self.topology)
        self.engine = Engine(self.config.name, memory, self._disk, ups.order, rules,
                             cache.max_object_bytes, cache.upstream_timeout, ups.headers)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=UPSTREAM_CONNECTIONS, enable_cleanup_closed=True),
            headers={"User-Agent": f"livecdn/{self.role} {self.config.name}"},
        )
        self.engine.start(self._session)
        self.policy = self.make_policy(self.engine)
        self.front = PlayerFront(self.engine, self.config.name, self.policy, self.origins(self.topology))
        players = PlayerServer(self.front, connection_limit=self.connection_limit(),
                               access_log=AccessLog(self.config.name) if self.access_log else None)
        listen = self.config.listen
        await players.start(listen.host, listen.port, reuse_port=self.reuse_port, backlog=1024)
        self._players = players
        self.spawn(self._count(), "count hits")
        admin = web.Application()
        admin.router.add_get("/healthz", self._healthz)
        admin.router.add_get("/metrics", self._metrics)
        self._admin_port = await self._sites.open(admin, self.config.admin, reuse_port=self.reuse_port)
        log.info("%s %s serving players on %s, admin on %s", self.role, self.config.name,
                 self.config.listen, self.config.admin)

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
        if self.front is not None:
            self.front.flush_hits()
        if self.engine is not None:  # kept: readable after stop (memory tier, counters); closing twice is harmless
            await self.engine.close(timeout)
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        disk, self._disk = self._disk, None
        if disk is not None:
            disk.close()
        log.info("%s %s stopped", self.role, self.config.name)

    def reload(self, topology: Topology) -> None:
        """Apply what can change without a restart: the origins and upstreams (an edge adds its limits)."""
        self.require_running()
        assert self.engine is not None
        self.topology = topology
        ups = self.upstreams(topology)
        self.engine.upstreams, self.engine.upstream_headers = ups.order, ups.headers
        assert self.front is not None
        self.front.route(self.origins(topology))
        log.info("%s %s reloaded %s", self.role, self.config.name, topology.path)

    async def _count(self) -> None:
        assert self.front is not None
        while True:
            await asyncio.sleep(COUNT_INTERVAL)  # a housekeeping tick, not a data-path wait
            self.front.flush_hits()

    async def _healthz(self, request: web.Request) -> web.Response:
        self.update_gauges()
        return web.json_response(self.health(), dumps=lambda o: json.dumps(o, separators=(",", ":")))

    async def _metrics(self, request: web.Request) -> web.Response:
        self.update_gauges()
        body, ctype = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": ctype})

