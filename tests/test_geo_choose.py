"""Choosing the edge: nearest by great-circle distance, spilling past down or overloaded edges."""

from __future__ import annotations

import random

import pytest

from geo.choose import EdgeState, Site, choose, distance_km, rank

LONDON, SEATTLE, TOKYO = (51.51, -0.13), (47.61, -122.33), (35.68, 139.69)
FRANKFURT, ASHBURN = (50.11, 8.68), (39.04, -77.49)
SITES = [Site("edge-lon", LONDON, "http://a"), Site("edge-sea", SEATTLE, "http://b"),
         Site("edge-tyo", TOKYO, "http://c")]
UP, DOWN, BUSY = EdgeState(True), EdgeState(False), EdgeState(True, overloaded=True, load=1.2)
SUSPECT = EdgeState(True, suspect=True, settled=False)  # its last check was slow or failed: it may be hanging


def test_distances_are_great_circle() -> None:
    assert distance_km(LONDON, LONDON) == 0
    assert distance_km(FRANKFURT, ASHBURN) == pytest.approx(6549, abs=10)
    assert distance_km(LONDON, TOKYO) == pytest.approx(9560, abs=20)
    # Across the antimeridian the short way round is taken.
    assert distance_km((0, 179.5), (0, -179.5)) == pytest.approx(111.2, abs=0.5)


@pytest.mark.parametrize(("where", "edge"), [
    ((51.5142, -0.0931), "edge-lon"),  # London
    ((47.2513, -122.3149), "edge-sea"),  # Milton, WA
    ((43.88, 125.3228), "edge-tyo"),  # Changchun
    ((35.68536, 139.75309), "edge-tyo"),  # Tokyo
    ((58.4167, 15.6167), "edge-lon"),  # Linköping
])
def test_the_nearest_edge_wins(where: tuple[float, float], edge: str) -> None:
    d = choose(where, SITES, {})
    assert (d.edge.name, d.reason, d.passed) == (edge, "nearest", ())


def test_down_or_overloaded_spills_to_the_next_nearest() -> None:
    d = choose(LONDON, SITES, {"edge-lon": DOWN})
    assert (d.edge.name, d.reason, d.passed) == ("edge-sea", "spill-down", (("edge-lon", "down"),))
    d = choose(LONDON, SITES, {"edge-lon": BUSY})
    assert (d.edge.name, d.reason) == ("edge-sea", "spill-overloaded")
    d = choose(LONDON, SITES, {"edge-lon": BUSY, "edge-sea": DOWN})
    assert (d.edge.name, d.reason, d.passed) == ("edge-tyo", "spill-overloaded",
                                                 (("edge-lon", "overloaded"), ("edge-sea", "down")))


def test_a_suspect_edge_is_passed_over_before_an_overloaded_or_down_one() -> None:
    d = choose(LONDON, SITES, {"edge-lon": SUSPECT})
    assert (d.edge.name, d.reason, d.passed) == ("edge-sea", "spill-suspect", (("edge-lon", "suspect"),))
    d = choose(LONDON, SITES, {"edge-lon": DOWN, "edge-sea": BUSY, "edge-tyo": SUSPECT})
    assert (d.edge.name, d.reason) == ("edge-tyo", "all-suspect")  # may answer: better than one that says no
    d = choose(LONDON, SITES, {n.name: SUSPECT for n in SITES})
    assert (d.edge.name, d.reason) == ("edge-lon", "all-suspect")


def test_when_nothing_qualifies_the_router_still_answers() -> None:
    d = choose(LONDON, SITES, {"edge-lon": DOWN, "edge-sea": BUSY, "edge-tyo": BUSY})
    assert (d.edge.name, d.reason) == ("edge-sea", "all-overloaded")  # up beats down, however near
    d = choose(LONDON, SITES, {n.name: DOWN for n in SITES})
    assert (d.edge.name, d.reason) == ("edge-lon", "all-down")


def test_deterministic_for_a_location_and_health_state() -> None:
    twins = [Site("b", FRANKFURT, "http://b"), Site("a", FRANKFURT, "http://a"), *SITES]
    states = {"a": UP, "edge-sea": DOWN}
    first = choose(FRANKFURT, twins, states)
    for _ in range(50):
        shuffled = random.sample(twins, len(twins))
        assert choose(FRANKFURT, shuffled, states) == first
    assert first.edge.name == "a"  # equal distances: by name
    assert [s.name for _, s in rank(FRANKFURT, twins)][:2] == ["a", "b"]


def test_edges_never_checked_count_as_up_and_no_edges_is_an_error() -> None:
    assert choose(TOKYO, SITES, {}).edge.name == "edge-tyo"
    with pytest.raises(ValueError):
        choose(TOKYO, [], {})
