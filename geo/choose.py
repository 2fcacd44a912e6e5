"""Which edge a player at a given place should use: pure policy, no I/O.

Edges are ranked by great-circle distance from the player, ties broken by
name, so the same location and the same health state always give the same
answer. The nearest edge that is up and not overloaded wins; an edge that is
down or reports itself overloaded passes the player on to the next nearest.
When no edge qualifies the router still answers (the checker itself may be
the one cut off): the nearest overloaded edge that is up, else the nearest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Decision", "EdgeState", "REASONS", "Site", "UNKNOWN", "choose", "distance_km", "priority", "rank"]

EARTH_RADIUS_KM = 6371.0088  # mean radius (IUGG)

# Why an edge was chosen; also the `reason` label of the route metric.
REASONS = ("nearest", "spill-down", "spill-overloaded", "all-overloaded", "all-down")


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


# Before its first check an edge is taken as up: a router that starts
# beside a running fleet must not answer "all down" for its first second.
UNKNOWN = EdgeState(up=True)


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


def choose(location: tuple[float, float], sites: Sequence[Site],
           states: Mapping[str, EdgeState]) -> Decision:
    """The edge for a player at `location`.

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
    passed: list[tuple[str, str]] = []
    for km, site in ranked:
        state = states.get(site.name, UNKNOWN)
        if state.up and not state.overloaded:
            reason = "nearest" if not passed else f"spill-{passed[0][1]}"
            return Decision(site, reason, km, tuple(passed))
        passed.append((site.name, "overloaded" if state.up else "down"))
    for km, site in ranked:
        if states.get(site.name, UNKNOWN).up:
            return Decision(site, "all-overloaded", km, tuple(p for p in passed if p[0] != site.name))
    km, site = ranked[0]
    return Decision(site, "all-down", km, tuple(passed[1:]))


def priority(location: tuple[float, float], sites: Sequence[Site],
             states: Mapping[str, EdgeState]) -> list[Site]:
    """Every site in the order `choose` would try them: up and not overloaded by distance, then the
    overloaded ones that are up, then the down ones (a content steering PATHWAY-PRIORITY).

    Its first site is always the edge `choose` picks, so steering and DNS agree.
    """
    def tier(site: Site) -> int:
        state = states.get(site.name, UNKNOWN)
        return 0 if state.up and not state.overloaded else 1 if state.up else 2

    ranked = rank(location, sites)
    if all(tier(s) == 2 for _, s in ranked):
        return [s for _, s in ranked]  # all down: nearest first, as `choose` answers then
    return [s for _, s in sorted(ranked, key=lambda pair: tier(pair[1]))]  # stable: distance within a tier
