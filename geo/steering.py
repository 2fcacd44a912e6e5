"""The router's content steering manifests: every edge, nearest healthy first, for the player asking.

HLS Content Steering specification (and DASH-IF content steering, which reads
the same JSON): a player whose master playlist or MPD names
`STEERING_PATH/{hls,dash}/PATHWAY.json` (the edge that served it writes that,
`livecdn.media.steering`) fetches this manifest every `TTL` seconds, adding
`_HLS_pathway`/`_DASH_pathway` (the pathway it is on) and
`_HLS_throughput`/`_DASH_throughput`. `PATHWAY-PRIORITY` is
`Router.priority`: the same geo and health state as the DNS and 302 answers,
so an edge whose checks fail or run slow (suspect) drops behind the healthy
ones within one check interval and its `slow`, and a down edge stays listed,
last, as a fallback. Players leave it at their next reload (or at their first
errors, since they know where to go). While an edge the player might use is
unsettled (suspect, or on its way up or down) the `TTL` is `UNSETTLED_TTL`, so
the player hears the outcome within a second; once settled, the configured one.
For HLS, `PATHWAY-CLONES` turns the one master the player has (its variants
are the serving edge's pathway) into a pathway per edge by replacing the host,
so relative variant URIs work on every edge.
`RELOAD-URI` keeps the base pathway in the path: that is all the router needs
next time, whatever pathway the player has moved to.

`steering_manifest` is the pure part; `SteeringManifests` is its aiohttp shell.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from livecdn.media.steering import STEERING_PATH

from .choose import Site
from .redirect import CORS
from .route import Router

__all__ = ["UNSETTLED_TTL", "SteeringManifests", "host_of", "steering_manifest"]

UNSETTLED_TTL = 1  # seconds: the TTL while the player's order may change soon

# What players add to the request, by format: HLS one Pathway ID (HLS Content Steering spec: these characters,
# "." the default pathway) and bits per second; DASH-IF every service location it knows, quoted and
# comma-separated, best throughput first, and their throughputs in that order.
_ID = r"[A-Za-z0-9._-]{1,64}"
QUERY = {
    "hls": (re.compile(_ID), re.compile(r"\d{1,15}")),
    "dash": (re.compile(rf'"?(?:{_ID}(?:,{_ID}){{0,63}})?"?'), re.compile(r"(?:[\d.]{1,20}(?:,[\d.]{1,20}){0,63})?")),
}


def host_of(site: Site) -> str:
    """The host a clone's URI-REPLACEMENT HOST gives (players replace the hostname, keeping the port)."""
    host = urlsplit(site.url).hostname or ""
    return f"[{host}]" if ":" in host else host


def steering_manifest(order: Sequence[str], base: str | None, hosts: Mapping[str, str], ttl: int,
                      reload_uri: str) -> dict[str, Any]:
    """The steering manifest for one player.

    Args:
        order: every pathway (edge name), best first.
        base: the pathway whose master the player holds (HLS), cloned for every other edge;
            None for DASH, whose MPD lists every edge as a BaseURL already.
        hosts: each pathway's host name.
        ttl: seconds until the player asks again.
        reload_uri: where it asks then.
    """
    out: dict[str, Any] = {"VERSION": 1, "TTL": ttl, "RELOAD-URI": reload_uri, "PATHWAY-PRIORITY": list(order)}
    if base is not None:
        out["PATHWAY-CLONES"] = [{"BASE-ID": base, "ID": p, "URI-REPLACEMENT": {"HOST": hosts[p]}}
                                 for p in order if p != base]
    return out


class SteeringManifests:
    """`GET STEERING_PATH/{kind}/{base}.json` on the router's player listener.

    Args:
        router: where players go, by address and edge health.
        ttl: the manifests' TTL once settled, seconds.
        client: the player's address for a request (the 302's own rule: the peer, or whom a trusted proxy names).
    """

    __slots__ = ("router", "ttl", "client")

    def __init__(self, router: Router, ttl: int, client: Callable[[web.Request], str] = lambda r: r.remote or "") \
            -> None:
        self.router = router
        self.ttl = ttl
        self.client = client

    async def manifest(self, request: web.Request) -> web.Response:
        kind, name = request.match_info["kind"], request.match_info["name"]
        sites = {s.name: s for s in self.router.sites}
        if kind not in QUERY or not name.endswith(".json") or name[:-5] not in sites:
            return _error(404, f"no steering manifest {request.path!r}: {STEERING_PATH}/{{hls,dash}}/EDGE.json"
                               f" for an edge of {', '.join(sorted(sites))}")
        base = name[:-5]
        prefix = "_HLS_" if kind == "hls" else "_DASH_"
        pathway, throughput = request.query.get(prefix + "pathway"), request.query.get(prefix + "throughput")
        pathways, throughputs = QUERY[kind]
        if pathway is not None and not pathways.fullmatch(pathway):
            return _error(400, f"{prefix}pathway must be a Pathway ID, got {pathway[:80]!r}")
        if throughput is not None and not throughputs.fullmatch(throughput):
            return _error(400, f"{prefix}throughput must be bits per second, got {throughput[:80]!r}")
        order, settled = self.router.priority(self.client(request))
        ttl = self.ttl if settled else min(self.ttl, UNSETTLED_TTL)
        body = steering_manifest([s.name for s in order], base if kind == "hls" else None,
                                 {s.name: host_of(s) for s in order}, ttl, f"{STEERING_PATH}/{kind}/{name}")
        # Each player's own order (its address): never stored by a shared cache, asked again after TTL.
        return web.Response(body=json.dumps(body, separators=(",", ":")).encode(), content_type="application/json",
                            headers={**CORS, "Cache-Control": "no-store"})


def _error(status: int, reason: str) -> web.Response:
    return web.Response(status=status, text=reason + "\n", headers={**CORS, "Cache-Control": "no-store"})
