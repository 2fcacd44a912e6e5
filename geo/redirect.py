"""The router's HTTP answers: a 302 to the nearest healthy edge, and /route's explanation.

Both ask the `Router` (geo/route.py) and turn its decision into a response;
neither decides anything itself. The client is the connection's peer, or the
address a trusted proxy names (`livecdn.front.forwarded`): behind a load
balancer the 302 goes by the player's location, not the balancer's. Every answer carries CORS headers, so a web
player on another origin can follow the redirect and read `/route`.
"""

from __future__ import annotations

import ipaddress
import json
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from livecdn.front.forwarded import ClientAddresses
from livecdn.front.proxyaccept import NamedPeers
from livecdn.logs import CLIENT

from .choose import distance_km
from .route import Route, Router

__all__ = ["CORS", "Redirects", "json_response"]

CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "Location"}


def json_response(body: dict[str, Any], status: int = 200) -> web.Response:
    """Compact JSON with the CORS headers."""
    return web.json_response(body, status=status, headers=CORS,
                             dumps=lambda o: json.dumps(o, separators=(",", ":")))


def origin_form(target: str) -> str:
    """A request target's path and query, whether the client sent them alone or as an absolute URL."""
    if target.startswith("/"):
        return target
    parts = urlsplit(target)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


class Redirects:
    """The handlers of the router's player listener (and of /route on its admin listener).

    Args:
        router: decides which edge a client goes to.
        addresses: which peers are trusted proxies naming their clients; None: none.
        proxied: the clients PROXY headers named, when the listener reads them; None: it does not.
    """

    __slots__ = ("router", "counts", "addresses", "proxied")

    def __init__(self, router: Router, addresses: ClientAddresses | None = None,
                 proxied: NamedPeers | None = None) -> None:
        self.router = router
        self.counts: Counter[str] = Counter()  # redirects per edge name
        self.addresses = addresses
        self.proxied = proxied

    def client(self, request: web.Request) -> str:
        """The player's address: the peer's, the one its PROXY header named, or the one a trusted proxy names."""
        peer = request.remote or ""
        if self.proxied is not None and request.transport is not None:
            peer = self.proxied.source(request.transport.get_extra_info("peername")) or peer
        if self.addresses is not None:
            peer = self.addresses.resolve(peer, request.headers.get(self.addresses.header))
        request[CLIENT] = peer  # the access line's
        return peer

    async def redirect(self, request: web.Request) -> web.Response:
        """A 302 to the chosen edge for GET and HEAD; a CORS preflight answer for OPTIONS."""
        if request.method == "OPTIONS":
            return web.Response(status=204, headers={**CORS, "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
                                                     "Access-Control-Allow-Headers": "*",
                                                     "Access-Control-Max-Age": "600"})
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, text="GET, HEAD or OPTIONS\n",
                                headers={**CORS, "Allow": "GET, HEAD, OPTIONS"})
        route = self.router.route(self.client(request))
        self.counts[route.edge.name] += 1
        # The whole path and query go along: the edge sees what the player asked
        # (of an absolute-form target, RFC 9112 §3.2.2, only its path and query).
        target = route.edge.url + origin_form(request.raw_path)
        return web.Response(status=302, headers={**CORS, "Location": target, "Cache-Control": "no-store",
                                                 "X-Livecdn-Edge": route.edge.name})

    async def route(self, request: web.Request) -> web.Response:
        """Where `?ip=` (default: the caller) would be sent, and why, as JSON."""
        ip = request.query.get("ip")
        if ip is None:
            ip = self.client(request)
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            return json_response({"error": f"not an IP address: {ip!r}"}, status=400)
        return json_response(self.explain(ip, self.router.explain(ip)))

    def explain(self, ip: str, route: Route) -> dict[str, Any]:
        loc, d = route.location, route.decision
        states = self.router.states
        return {
            "ip": ip,
            "location": {"latitude": loc.latitude, "longitude": loc.longitude, "source": loc.source,
                         "network": loc.network, "name": loc.label},
            "edge": d.edge.name, "url": d.edge.url, "addresses": [*d.edge.ipv4, *d.edge.ipv6],
            "reason": d.reason, "distance_km": d.distance_km,
            "passed": [{"edge": name, "why": why} for name, why in d.passed],
            "edges": [{"edge": s.name, "distance_km": round(distance_km(loc.point, s.location), 3),
                       "up": states[s.name].up, "overloaded": states[s.name].overloaded,
                       "suspect": states[s.name].suspect,
                       "load": states[s.name].load} for s in self.router.sites],
        }
