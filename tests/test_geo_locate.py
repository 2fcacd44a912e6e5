"""Locating clients in City databases: MaxMind's test data, and the demo database built from its source."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from geo.builddb import build
from geo.builddb import main as builddb
from geo.locate import Locator, subnet_address
from tests.cdn import ROOT

MAXMIND = ROOT.parent / "shared" / "data" / "maxmind-test"
CITY = str(MAXMIND / "GeoIP2-City-Test.mmdb")
DEMO_SOURCE = ROOT / "configs" / "demo-geo.json"
DEMO_DB = ROOT / "configs" / "demo-geo.mmdb"
FRANKFURT = (50.11, 8.68)


@pytest.fixture(scope="module")
def city() -> Locator:
    return Locator(CITY, FRANKFURT, "eu")


@pytest.mark.parametrize(("ip", "network", "point", "label"), [
    ("81.2.69.142", "81.2.69.142/31", (51.5142, -0.0931), "London"),
    ("216.160.83.56", "216.160.83.56/29", (47.2513, -122.3149), "Milton"),
    ("175.16.199.1", "175.16.199.0/24", (43.88, 125.3228), "Changchun"),
    ("2001:218::1", "2001:218::/32", (35.68536, 139.75309), "Japan"),
])
def test_known_addresses(city: Locator, ip: str, network: str, point: tuple[float, float], label: str) -> None:
    loc = city.locate(ip)
    assert (loc.point, loc.source, loc.network, loc.label) == (point, "database", network, label)
    assert loc.prefix == int(network.split("/")[1])


@pytest.mark.parametrize("ip", ["127.0.0.1", "10.0.0.1", "8.8.8.8", "::1", "214.1.1.1", "2.3.3.1"])
def test_unknown_or_without_coordinates_falls_back_to_the_default_region(city: Locator, ip: str) -> None:
    loc = city.locate(ip)
    assert (loc.point, loc.source, loc.label) == (FRANKFURT, "default", "eu")
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(loc.network)  # the empty network it fell in


def test_ecs_subnets_are_looked_up_by_their_network_address(city: Locator) -> None:
    """The README's caveat: 81.2.69.142/24 is 81.2.69.0, which the database does not know."""
    assert city.locate(subnet_address(1, 24, bytes([81, 2, 69]))).source == "default"
    assert city.locate(subnet_address(1, 32, bytes([81, 2, 69, 142]))).label == "London"
    assert city.locate(subnet_address(1, 24, bytes([175, 16, 199]))).label == "Changchun"
    assert city.locate(subnet_address(2, 32, bytes.fromhex("20010218"))).label == "Japan"


@pytest.mark.parametrize(("family", "prefix", "address", "problem"), [
    (3, 8, b"\x01", "family"),
    (1, 33, b"\x01\x02\x03\x04\x05", "too long"),
    (1, 24, b"\x01\x02\x03\x04", "bytes for a /24"),
    (1, 23, b"\x01\x02\x03", "beyond its source prefix"),
])
def test_malformed_ecs_subnets_are_rejected(family: int, prefix: int, address: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        subnet_address(family, prefix, address)


def test_a_country_database_is_refused() -> None:
    with pytest.raises(ValueError, match="City"):
        Locator(str(MAXMIND / "GeoIP2-Country-Test.mmdb"), FRANKFURT, "eu")
    with pytest.raises(ValueError, match="MaxMind DB"):
        Locator(str(DEMO_SOURCE), FRANKFURT, "eu")


def test_the_shipped_demo_database_is_what_its_source_says(tmp_path: Path) -> None:
    """configs/demo-geo.mmdb is generated (`make geodb`): it must agree with demo-geo.json, and rebuild the same."""
    source = json.loads(DEMO_SOURCE.read_text())["networks"]
    rebuilt = tmp_path / "demo.mmdb"
    assert builddb([str(DEMO_SOURCE), str(rebuilt)]) == 0
    for path in (DEMO_DB, rebuilt):
        db = Locator(str(path), (0.0, 0.0), "default")
        assert db.database_type.endswith("City")
        for network, record in source.items():
            net = ipaddress.ip_network(network)
            for ip in (net.network_address, net.broadcast_address):
                loc = db.locate(str(ip))
                assert (loc.network, loc.point) == (network, (record["location"]["latitude"],
                                                              record["location"]["longitude"]))
        assert db.locate("127.0.0.1").source == "default"  # the demo's own 127.0.0.1 is in no region
        db.close()


def test_the_demo_database_sends_loopback_ranges_to_the_demo_regions() -> None:
    db = Locator(str(DEMO_DB), (0.0, 0.0), "default")
    assert db.locate("127.0.1.77").label == "Frankfurt am Main"
    assert db.locate("127.0.2.77").label == "Ashburn"
    db.close()


def test_builder_rejects_a_record_without_coordinates(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"networks": {"10.0.0.0/8": {"city": {"names": {"en": "Nowhere"}}}}}))
    with pytest.raises(ValueError, match="10.0.0.0/8"):
        build(bad, tmp_path / "out.mmdb")
    assert builddb([str(bad), str(tmp_path / "out.mmdb")]) == 1
