"""The routing table in memory: client (or ECS subnet) → location → chosen edge.

A database lookup costs several microseconds, and a DNS answer must cost
less than that in all, so routes are remembered per client address and per
ECS subnet. What is remembered depends on edge health, so every health
change forgets it all; the next query recomputes from the new state. No
sockets and no clock here: the health checker and the DNS and HTTP shells
feed it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from .choose import UNKNOWN, Decision, EdgeState, Site, choose, priority, settled
from .locate import Location, Locator, subnet_address

__all__ = ["MAX_ROUTES", "Route", "Router"]

# Routes remembered at most. A router behind a few thousand resolvers stays
# far below it; a flood of distinct sources empties the table, never grows it.
MAX_ROUTES = 100_000


@dataclass(frozen=True, slots=True)
class Route:
    """Where a client was placed and the edge chosen for it."""

    location: Location
    decision: Decision
    key: tuple[str, str]  # (edge, reason): what the decision counter counts

    @property
    def edge(self) -> Site:
        return self.decision.edge


class Router:
    """Locates clients and chooses their edge, remembering routes until health changes.

    Args:
        locator: the City database lookup.
        sites: every edge the router may answer with; must not be empty.
    """

    def __init__(self, locator: Locator, sites: Sequence[Site]) -> None:
        if not sites:
            raise ValueError("a router needs at least one edge")
        self.locator = locator
        self.sites = tuple(sites)
        self.states: dict[str, EdgeState] = {s.name: UNKNOWN for s in sites}
        # (edge, reason) → routes handed out; the shell exports it as a metric.
        self.decisions: Counter[tuple[str, str]] = Counter()
        self._routes: dict[object, Route] = {}
        # Bumped whenever remembered routes are forgotten, so callers that keep
        # their own derived copies (the DNS answerer) know to drop them too.
        self.generation = 0

    def route(self, address: str) -> Route:
        """The route for a client address (text form, as sockets report it).

        Raises:
            ValueError: `address` is not an IP address.
        """
        route = self._routes.get(address)
        if route is None:
            route = self._remember(address, self._compute(self._locate(address)))
        self.decisions[route.key] += 1
        return route

    def route_subnet(self, family: int, prefix: int, address: bytes) -> Route:
        """The route for an ECS subnet (prefix > 0); see `locate.subnet_address`.

        Raises:
            ValueError: the subnet is malformed.
        """
        key = (family, prefix, address)
        route = self._routes.get(key)
        if route is None:
            ip = subnet_address(family, prefix, address)
            route = self._remember(key, self._compute(self.locator.locate(ip)))
        self.decisions[route.key] += 1
        return route

    def priority(self, address: str) -> tuple[list[Site], bool]:
        """Every edge for a client address, best first (content steering; its first is `route`'s edge), and
        whether that order is settled (`choose.settled`: else the player should ask again soon)."""
        point = self._locate(address).point
        return priority(point, self.sites, self.states), settled(point, self.sites, self.states)

    def explain(self, address: str) -> Route:
        """The route for `address` without counting it as handed out (for /route)."""
        return self._compute(self.locator.locate(address))

    def _locate(self, address: str) -> Location:
        # A socket may report an IPv4 client as ::ffff:a.b.c.d (dual-stack
        # listener); the database files IPv4 under ::/96, not there.
        if address.startswith("::ffff:") and "." in address:
            address = address[7:]
        try:
            return self.locator.locate(address)
        except ValueError:  # e.g. a link-local address with a zone index
            return self.locator.fallback()

    def update(self, name: str, state: EdgeState) -> bool:
        """Record an edge's new health; returns whether routing changed.

        Raises:
            KeyError: no such edge.
        """
        old = self.states[name]
        self.states[name] = state
        # Load alone changes every check; only what `choose` reads forgets routes.
        if (old.up, old.overloaded, old.suspect) == (state.up, state.overloaded, state.suspect):
            return False
        self._forget()
        return True

    def replace(self, locator: Locator, sites: Sequence[Site]) -> None:
        """Use a new database and edge list (reload); health of kept edges carries over."""
        if not sites:
            raise ValueError("a router needs at least one edge")
        self.locator = locator
        self.sites = tuple(sites)
        self.states = {s.name: self.states.get(s.name, UNKNOWN) for s in sites}
        self._forget()

    def _compute(self, location: Location) -> Route:
        decision = choose(location.point, self.sites, self.states)
        return Route(location, decision, (decision.edge.name, decision.reason))

    def _forget(self) -> None:
        self._routes.clear()
        self.generation += 1

    def _remember(self, key: object, route: Route) -> Route:
        if len(self._routes) >= MAX_ROUTES:
            self._routes.clear()
        self._routes[key] = route
        return route
