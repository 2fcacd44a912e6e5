"""Which edge a player at a given place should use: pure policy, no I/O.

Edges are ranked by great-circle distance from the player, ties broken by
name, so the same location and the same health state always give the same
answer. The nearest healthy edge wins (up, not overloaded, not suspect); an
edge that is down, reports itself overloaded or is suspect (its last check was
slow or failed: it may be hanging) passes the player on to the next nearest.
When no edge qualifies the router still answers (the checker itself may be
the one cut off): the nearest suspect edge, else the nearest overloaded one
that is up, else the nearest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Decision", "EdgeState", "REASONS", "Site", "UNKNOWN", "choose", "distance_km", "priority", "rank",
           "settled", "standing"]

EARTH_RADIUS_KM = 6371.0088  # mean radius (IUGG)

# Why an edge was chosen; also the `reason` label of the route metric.
REASONS = ("nearest", "spill-down", "spill-overloaded", "spill-suspect", "all-suspect", "all-overloaded", "all-down")


@dataclass(frozen=True, slots=True)
class Site:
    """An edge as the router sees it: where it is and how players reach it."""

    name: str
    location: tuple[float, float]  # latitude, longitude in degrees
    url: str  # base URL for HTTP redirects
    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EdgeState:
    """What the health checker last concluded about one edge."""

    up: bool
    overloaded: bool = False
    load: float | None = None
    # Up, but its newest check was slow, failed, or is late: it may be hanging, so players go elsewhere first.
    suspect: bool = False
    # Nothing under way could change it soon (no streak towards up or down, not suspect): steering may be cached.
    settled: bool = True

    @property
    def healthy(self) -> bool:
        return self.up and not self.overloaded and not self.suspect


# Before its first check an edge is taken as up: a router that starts
# beside a running fleet must not answer "all down" for its first second.
# It is not settled: steering asks again soon.
UNKNOWN = EdgeState(up=True, settled=False)


@dataclass(frozen=True, slots=True)
class Decision:
    """The chosen edge, why, and the nearer edges passed over (name, "down"|"overloaded")."""

    edge: Site
    reason: str
    distance_km: float
    passed: tuple[tuple[str, str], ...] = ()


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance by the haversine formula."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def rank(location: tuple[float, float], sites: Sequence[Site]) -> list[tuple[float, Site]]:
    """Every site with its distance, nearest first; equal distances by name."""
    # Rounding to a metre keeps float noise from reordering equidistant sites.
    ranked = [(round(distance_km(location, s.location), 3), s) for s in sites]
    ranked.sort(key=lambda pair: (pair[0], pair[1].name))
    return ranked


def standing(state: EdgeState) -> tuple[bool, bool, bool]:
    """An edge's health as a sort key, best first: up, then not overloaded, then not suspect."""
    return (True, False, False) if not state.up else (False, state.overloaded, state.suspect)


def _why(state: EdgeState) -> str:
    return "down" if not state.up else "overloaded" if state.overloaded else "suspect"


def choose(location: tuple[float, float], sites: Sequence[Site],
           states: Mapping[str, EdgeState]) -> Decision:
    """The edge for a player at `location`: the first of `priority`.

    Args:
        location: latitude, longitude of the player.
        sites: every edge; must not be empty.
        states: health by edge name; a missing name counts as `UNKNOWN` (up).

    Returns:
        The decision; `reason` is one of `REASONS`.

    Raises:
        ValueError: `sites` is empty.
    """
    if not sites:
        raise ValueError("choose() needs at least one site")
    ranked = rank(location, sites)
    at = min(range(len(ranked)), key=lambda i: standing(states.get(ranked[i][1].name, UNKNOWN)))  # nearest of the best
    km, site = ranked[at]
    state = states.get(site.name, UNKNOWN)
    if state.healthy:  # every nearer edge is unhealthy
        passed = tuple((s.name, _why(states.get(s.name, UNKNOWN))) for _, s in ranked[:at])
        return Decision(site, "nearest" if not passed else f"spill-{passed[0][1]}", km, passed)
    # Every edge is unhealthy: all the others were passed over.
    passed = tuple((s.name, _why(states.get(s.name, UNKNOWN))) for _, s in ranked if s is not site)
    reason = "all-down" if not state.up else "all-overloaded" if state.overloaded else "all-suspect"
    return Decision(site, reason, km, passed)


def priority(location: tuple[float, float], sites: Sequence[Site],
             states: Mapping[str, EdgeState]) -> list[Site]:
    """Every site in the order `choose` would try them (a content steering PATHWAY-PRIORITY): by
    `standing` (healthy, then suspect, then overloaded, then down: a down edge stays listed, last, as a
    player's fallback), by distance within each.

    Its first site is always the edge `choose` picks, so steering and DNS agree.
    """
    ranked = rank(location, sites)
    return [s for _, s in sorted(ranked, key=lambda pair: standing(states.get(pair[1].name, UNKNOWN)))]


def settled(location: tuple[float, float], sites: Sequence[Site], states: Mapping[str, EdgeState]) -> bool:
    """Whether a player's `priority` may be kept for long: every edge it might use soon (its first, and the
    nearer ones it would move back to) is settled. A suspect edge, or one on its way up or down, is not."""
    first = priority(location, sites, states)[0]
    for _, site in rank(location, sites):
        if not states.get(site.name, UNKNOWN).settled:
            return False
        if site is first:
            return True
    raise AssertionError("priority's first site is one of the sites")
