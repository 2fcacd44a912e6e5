"""An edge node: near viewers, serving from memory and disk, filling from shields.

Each key goes to the shield its consistent hash picks, then the next one when
that shield fails, and to the key's origin itself only where the topology
allows it. Its policy (edge/policy.py) meters clients, screens names against what
the stream's playlists announced, and prefetches what they announce next. The
edge reports its load against its capacity in /healthz so the router can send
players elsewhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from livecdn import metrics
from livecdn.cache.engine import Engine
from livecdn.cache.upstreams import Upstreams
from livecdn.config import EdgeConfig, LimitSettings, ShieldConfig, Topology
from livecdn.front.connlimit import ConnectionLimit
from livecdn.front.forwarded import ClientAddresses
from livecdn.media.playlist import Manifest
from livecdn.media.steering import STEERING_PATH, Steering
from livecdn.node.cache import CacheNode

from .policy import EdgePolicy

__all__ = ["EdgeNode"]

log = logging.getLogger("livecdn.edge")


class EdgeNode(CacheNode):
    role = "edge"
    config: EdgeConfig
    policy: EdgePolicy | None

    def upstreams(self, topology: Topology) -> Upstreams:
        shields = [s.base_url for s in topology.shields.values()]
        return Upstreams(shields, topology.routes, self.config.origin_fallback, self.workers)

    def trusted(self, topology: Topology) -> dict[str, tuple[str, str]]:
        """Shields that serve TLS (with their `tls.ca_file`), and the origins when this edge may go there."""
        origins = super().trusted(topology) if self.config.origin_fallback or not topology.shields else {}
        return {**origins, **{s.base_url: (s.tls.ca_file, f"shields.{s.name}.tls.ca_file")
                              for s in topology.shields.values() if s.tls is not None}}

    def patience(self) -> float:
        """A first-byte wait longer than a shield's own patience with a slow origin: the edge hears its answer."""
        return super().patience() + self.config.cache.first_byte_timeout

    def dresser(self, topology: Topology) -> Callable[[str, bytes, Manifest], bytes] | None:
        """With the topology's steering on: this edge's pathway and the router's manifests, in masters and MPDs."""
        router = topology.router
        if router is None or not router.steering.enabled or self.config.name not in topology.edges:
            return None
        edges = tuple((name, topology.edge_url(name)) for name in topology.edges)
        return Steering(self.config.name, router.steering_url + STEERING_PATH, edges).dress

    def make_policy(self, engine: Engine) -> EdgePolicy:
        return EdgePolicy(self.config, engine, shields=bool(self.topology.shields), signing=self.topology.signing)

    def connection_limit(self) -> ConnectionLimit | None:
        return None if self.policy is None else self.policy.connections

    def client_addresses(self) -> ClientAddresses:
        return ClientAddresses(self.config.trusted_proxies, self.config.forwarded_header)

    def proxy_protocol(self) -> bool:
        return self.config.proxy_protocol

    def player_limits(self) -> LimitSettings:
        return self.config.limits

    def h2c(self) -> bool:
        return self.config.h2c

    # Prefetch runs as tasks started with the node: turning it on or off, or its concurrency, is a restart;
    # so are the plain listener's protocols (h2c, PROXY headers), fixed when it opens.
    RESTART_ONLY = (*CacheNode.RESTART_ONLY, "guard.prefetch", "guard.prefetch_concurrency", "h2c", "proxy_protocol")

    def reload(self, topology: Topology) -> None:
        """The upstream list and cache settings (`CacheNode.reload`), this edge's limits, guard, signing keys
        and trusted proxies."""
        super().reload(topology)
        assert self.policy is not None and self.engine is not None
        self.engine.dress = self.dresser(topology)  # manifests stored from now on; `purge` redoes those held
        self.policy.guard.only_if_cached = bool(topology.shields)
        self.policy.sign(topology.signing)

    def apply(self, config: EdgeConfig | ShieldConfig) -> None:
        """Limits, guard settings and trusted proxies too: their buckets start full again."""
        assert isinstance(config, EdgeConfig) and self.policy is not None
        old = self.config
        super().apply(config)
        if config.limits != old.limits:
            self.policy.apply(config.limits)
            self.apply_player_limits(config.limits)
            log.info("edge %s applied new client limits: %s", config.name, config.limits)
        if config.guard != old.guard:
            self.policy.guard.configure(config.guard)
            log.info("edge %s applied new guard settings: %s", config.name, config.guard)
        if (config.trusted_proxies, config.forwarded_header) != (old.trusted_proxies, old.forwarded_header):
            self.players.addresses = self.client_addresses() or None  # new connections judge their peer by it
            log.info("edge %s trusts proxies in %s now", config.name, ", ".join(config.trusted_proxies) or "none")

    async def start(self) -> None:
        await super().start()
        if self.policy is not None and self.policy.prefetcher is not None:
            self.policy.prefetcher.start()

    async def stop(self, timeout: float = 10.0) -> None:
        if self.policy is not None and self.policy.prefetcher is not None:
            await self.policy.prefetcher.stop()
        await super().stop(timeout)

    def update_gauges(self) -> None:
        super().update_gauges()
        if self.policy is not None:
            metrics.GUARD_FILTER_BYTES.labels(self.config.name).set(self.policy.guard.nbytes)

    def health(self) -> dict[str, object]:
        out = super().health()
        assert self.front is not None and self.policy is not None
        # Overloaded by requests in flight, or by connections before they run out (the
        # router steers players away at either; /healthz answers 503 meanwhile).
        out.update(region=self.config.region, capacity=self.config.capacity,
                   load=round(self.front.inflight / self.config.capacity, 4),
                   overloaded=self.front.inflight >= self.config.capacity or self.connections_overloaded(),
                   streams=self.policy.guard.streams)
        return out
