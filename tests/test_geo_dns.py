"""The DNS answerer, sans-io: bytes in, bytes out, read back with dnspython.

The hand-parsed fast path must give what the general (dnslib) path gives for
the same query; garbage gets FORMERR or silence, never an exception.
"""

from __future__ import annotations

import random
import struct
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest

from geo.choose import EdgeState, Site
from geo.dns import Answerer, Zone
from geo.locate import Locator
from geo.route import Router
from tests.cdn import ROOT

CITY = str(ROOT.parent / "shared" / "data" / "maxmind-test" / "GeoIP2-City-Test.mmdb")
HOST = "live.cdn.test"
TOKYO_V6 = tuple(f"2001:db8::{i:x}" for i in range(1, 41))  # a cluster: 40 addresses, > 512 bytes of AAAA


def sites() -> list[Site]:
    return [Site("edge-lon", (51.51, -0.13), "http://127.0.1.1:8080", ("127.0.1.1",), ("::1",)),
            Site("edge-sea", (47.61, -122.33), "http://127.0.2.1:8080", ("127.0.2.1",)),
            Site("edge-tyo", (35.68, 139.69), "http://127.0.3.1:8080", ("127.0.3.1",), TOKYO_V6)]


@pytest.fixture
def answerer() -> Answerer:
    router = Router(Locator(CITY, (50.11, 8.68), "eu"), sites())
    return Answerer(Zone("cdn.test", HOST, 5, ("ns1.cdn.test",), ("127.0.0.1",), serial=7), router)


def query(name: str = HOST, rdtype: str = "A", *, ecs: tuple[str, int] | None = None, edns: bool = False,
          payload: int = 1232, **kw: Any) -> bytes:
    m = dns.message.make_query(name, rdtype, **kw)
    if ecs is not None:
        m.use_edns(0, payload=payload, options=[dns.edns.ECSOption(*ecs)])
    elif edns:
        m.use_edns(0, payload=payload)
    return bytes(m.to_wire())


def ask(a: Answerer, wire: bytes, client: str = "127.0.0.1", udp: bool = True) -> dns.message.Message:
    reply = a.answer(wire, client, udp)
    assert reply is not None
    return dns.message.from_wire(reply)


def addresses(m: dns.message.Message) -> list[str]:
    return sorted(r.address for rrset in m.answer for r in rrset)


def ecs_of(m: dns.message.Message) -> dns.edns.ECSOption | None:
    found = [o for o in m.options if o.otype == dns.edns.ECS]
    return found[0] if found else None  # type: ignore[return-value]


def summary(m: dns.message.Message) -> tuple[Any, ...]:
    ecs = ecs_of(m)
    return (m.id, m.rcode(), m.flags, [str(q) for q in m.question], [str(r) for r in m.answer],
            [str(r) for r in m.authority], m.edns, m.payload if m.edns >= 0 else None,
            (ecs.address, ecs.srclen, ecs.scopelen) if ecs else None)


CASES = [
    dict(), dict(rdtype="AAAA"), dict(edns=True), dict(rdtype="AAAA", edns=True),
    dict(ecs=("81.2.69.142", 32)), dict(ecs=("216.160.83.56", 32)), dict(ecs=("175.16.199.0", 24)),
    dict(ecs=("2001:218::", 32), rdtype="AAAA"), dict(ecs=("81.2.69.0", 24)), dict(ecs=("0.0.0.0", 0)),
    dict(name="LiVe.CDN.test"), dict(name="live.cdn.test", rdtype="AAAA", ecs=("175.16.199.0", 24)),
    dict(ecs=("81.2.69.142", 32), payload=4096), dict(ecs=("81.2.69.142", 32), payload=100),
]


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
@pytest.mark.parametrize("udp", [True, False])
def test_fast_path_answers_as_dnslib_does(answerer: Answerer, case: dict[str, Any], udp: bool) -> None:
    wire = query(**case)
    fast = answerer.answer(wire, "127.0.0.1", udp)
    general = answerer.answer_general(wire, "127.0.0.1", udp)
    assert fast is not None and general is not None
    assert summary(dns.message.from_wire(fast)) == summary(dns.message.from_wire(general))


@pytest.mark.parametrize(("ecs", "edge", "scope"), [
    (("81.2.69.142", 32), "127.0.1.1", 31),  # London, in a /31
    (("216.160.83.56", 32), "127.0.2.1", 29),  # Milton WA → Seattle
    (("175.16.199.0", 24), "127.0.3.1", 24),  # Changchun → Tokyo
    (("81.2.69.0", 24), "127.0.1.1", 25),  # not in the database: default region (eu → London)
])
def test_ecs_places_the_client_and_echoes_a_scope(answerer: Answerer, ecs: tuple[str, int], edge: str,
                                                  scope: int) -> None:
    m = ask(answerer, query(ecs=ecs), client="216.160.83.56")  # the resolver's own place is ignored
    assert addresses(m) == [edge]
    option = ecs_of(m)
    assert option is not None and (option.address, option.srclen, option.scopelen) == (*ecs, scope)


def test_plain_queries_are_placed_by_source_address(answerer: Answerer) -> None:
    assert addresses(ask(answerer, query(), client="216.160.83.56")) == ["127.0.2.1"]
    assert addresses(ask(answerer, query(), client="2001:218::7")) == ["127.0.3.1"]
    m = ask(answerer, query(ecs=("0.0.0.0", 0)), client="175.16.199.9")  # source /0: "use my address"
    assert addresses(m) == ["127.0.3.1"] and ecs_of(m).scopelen == 0  # type: ignore[union-attr]


def test_answer_shape(answerer: Answerer) -> None:
    m = ask(answerer, query(id=4242))
    assert m.id == 4242 and m.rcode() == dns.rcode.NOERROR
    assert m.flags & dns.flags.QR and m.flags & dns.flags.AA and m.flags & dns.flags.RD
    assert not m.flags & dns.flags.TC and not m.flags & dns.flags.RA
    assert [(rr.ttl, rr.rdtype) for rr in m.answer] == [(5, dns.rdatatype.A)]
    m = ask(answerer, query(rdtype="AAAA"))  # London's edge has one IPv6 address
    assert addresses(m) == ["::1"]
    m = ask(answerer, query(rdtype="AAAA"), client="216.160.83.56")  # Seattle's has none: NODATA + SOA
    assert m.rcode() == dns.rcode.NOERROR and not m.answer and m.authority[0].rdtype == dns.rdatatype.SOA


def test_zone_records_and_errors(answerer: Answerer) -> None:
    m = ask(answerer, query("cdn.test", "SOA"))
    assert str(m.answer[0][0]) == "ns1.cdn.test. hostmaster.cdn.test. 7 3600 600 86400 5"
    m = ask(answerer, query("cdn.test", "NS"))
    assert str(m.answer[0][0]) == "ns1.cdn.test."
    assert [rr.to_text() for rr in m.additional] == ["ns1.cdn.test. 5 IN A 127.0.0.1"]  # glue
    assert addresses(ask(answerer, query("ns1.cdn.test"))) == ["127.0.0.1"]
    m = ask(answerer, query("nope.cdn.test"))
    assert m.rcode() == dns.rcode.NXDOMAIN and m.flags & dns.flags.AA
    assert m.authority[0].rdtype == dns.rdatatype.SOA and m.authority[0].ttl == 5
    assert ask(answerer, query("x.live.cdn.test")).rcode() == dns.rcode.NXDOMAIN
    m = ask(answerer, query("live.cdn.test", "TXT"))  # the name exists: NODATA
    assert m.rcode() == dns.rcode.NOERROR and not m.answer and m.authority
    m = ask(answerer, query("example.com"))
    assert m.rcode() == dns.rcode.REFUSED and not m.flags & dns.flags.AA
    assert ask(answerer, query("test")).rcode() == dns.rcode.REFUSED  # the parent is not ours
    assert ask(answerer, query(HOST, "AXFR")).rcode() == dns.rcode.REFUSED
    m = dns.message.make_query(HOST, "A")
    m.set_opcode(dns.opcode.STATUS)
    assert ask(answerer, m.to_wire()).rcode() == dns.rcode.NOTIMP
    m = dns.message.make_query(HOST, "A", rdclass="CH")
    assert ask(answerer, m.to_wire()).rcode() == dns.rcode.REFUSED


def test_edns_version_and_bad_ecs(answerer: Answerer) -> None:
    m = dns.message.make_query(HOST, "A")
    m.use_edns(1)
    assert ask(answerer, m.to_wire()).rcode() == dns.rcode.BADVERS
    # ECS with bits beyond its prefix, and with an unknown family: FORMERR.
    bad_bits = dns.edns.GenericOption(dns.edns.ECS, struct.pack(">HBB", 1, 23, 0) + bytes([81, 2, 69]))
    bad_family = dns.edns.GenericOption(dns.edns.ECS, struct.pack(">HBB", 9, 8, 0) + b"\x01")
    for option in (bad_bits, bad_family):
        m = dns.message.make_query(HOST, "A")
        m.use_edns(0, options=[option])
        assert ask(answerer, m.to_wire()).rcode() == dns.rcode.FORMERR


def test_udp_answers_too_big_are_truncated(answerer: Answerer) -> None:
    tokyo = "175.16.199.9"
    plain = ask(answerer, query(rdtype="AAAA"), client=tokyo)  # 40 AAAA do not fit in 512 bytes
    assert plain.flags & dns.flags.TC and not plain.answer and plain.question
    over_tcp = ask(answerer, query(rdtype="AAAA"), client=tokyo, udp=False)
    assert not over_tcp.flags & dns.flags.TC and addresses(over_tcp) == sorted(TOKYO_V6)
    with_edns = ask(answerer, query(rdtype="AAAA", edns=True), client=tokyo)  # 1232 is enough
    assert not with_edns.flags & dns.flags.TC and len(addresses(with_edns)) == 40
    small = ask(answerer, query(rdtype="AAAA", ecs=("175.16.199.0", 24), payload=512), client=tokyo)
    assert small.flags & dns.flags.TC and ecs_of(small) is not None  # OPT and ECS stay in a truncated reply
    any_ = ask(answerer, query(rdtype="ANY"), client=tokyo)  # the general path truncates too
    assert any_.flags & dns.flags.TC and not any_.answer
    assert answerer.truncated == 3


def test_health_changes_reach_the_answers(answerer: Answerer) -> None:
    london = query(ecs=("81.2.69.142", 32))
    assert addresses(ask(answerer, london)) == ["127.0.1.1"]
    answerer.router.update("edge-lon", EdgeState(False))
    assert addresses(ask(answerer, london)) == ["127.0.2.1"]  # next nearest: Seattle
    answerer.router.update("edge-lon", EdgeState(True))
    assert addresses(ask(answerer, london)) == ["127.0.1.1"]
    assert answerer.router.decisions["edge-sea", "spill-down"] == 1


@pytest.mark.parametrize("wire", [query(id=7), query(id=7, ecs=("81.2.69.142", 32)), query(id=7, edns=True)],
                         ids=["plain", "ecs", "edns"])
def test_the_next_answer_sees_a_health_change_though_the_same_bytes_were_answered(answerer: Answerer,
                                                                                  wire: bytes) -> None:
    """The memo keeps replies by the query's own bytes: the very same query, asked again after an edge goes
    down, comes back up, is overloaded or the edge list changes, is answered as the router now routes it."""
    london = "81.2.69.142"  # placed in London by its address (plain queries) or by its ECS subnet
    assert addresses(ask(answerer, wire, client=london)) == ["127.0.1.1"]
    assert addresses(ask(answerer, wire, client=london)) == ["127.0.1.1"]  # now from the memo
    answerer.router.update("edge-lon", EdgeState(False))
    assert addresses(ask(answerer, wire, client=london)) == ["127.0.2.1"]
    answerer.router.update("edge-lon", EdgeState(True))
    assert addresses(ask(answerer, wire, client=london)) == ["127.0.1.1"]
    answerer.router.update("edge-lon", EdgeState(True, overloaded=True))
    assert addresses(ask(answerer, wire, client=london)) != ["127.0.1.1"]
    answerer.router.update("edge-lon", EdgeState(True))
    assert addresses(ask(answerer, wire, client=london)) == ["127.0.1.1"]
    answerer.router.replace(answerer.router.locator, sites()[1:])  # London leaves the edge list
    answerer.sites_changed()
    assert addresses(ask(answerer, wire, client=london)) == ["127.0.2.1"]


def test_replies_from_the_memo_are_counted_once_tallied(answerer: Answerer) -> None:
    """Every reply counts in the metrics, the memo's too: `tally()` adds them (the node does before each reading)."""
    wire = query(ecs=("81.2.69.142", 32))
    for _ in range(3):
        assert addresses(ask(answerer, wire)) == ["127.0.1.1"]
    answerer.tally()
    assert answerer.counts["A", "NOERROR"] == 3
    assert sum(n for (edge, _), n in answerer.router.decisions.items() if edge == "edge-lon") == 3
    answerer.tally()  # nothing counted twice
    assert answerer.counts["A", "NOERROR"] == 3
    answerer.router.update("edge-sea", EdgeState(False))  # the memo is emptied: its hits are counted first
    assert addresses(ask(answerer, wire)) == ["127.0.1.1"]
    assert answerer.counts["A", "NOERROR"] == 4


def test_responses_and_runts_are_dropped(answerer: Answerer) -> None:
    reply = answerer.answer(query(), "127.0.0.1")
    assert reply is not None
    assert answerer.answer(reply, "127.0.0.1") is None  # a response: never answered (no loops)
    assert answerer.answer(b"", "127.0.0.1") is None
    assert answerer.answer(b"\x01\x02\x00", "127.0.0.1") is None
    assert answerer.dropped == 3


def test_fuzz_random_and_mutated_packets(answerer: Answerer) -> None:
    rng = random.Random(7)
    seeds = [query(**c) for c in CASES] + [query("nope.cdn.test"), query("cdn.test", "SOA")]
    for i in range(20_000):
        if i % 3 == 0:
            wire = rng.randbytes(rng.randrange(0, 600))
        else:
            b = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 6)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            wire = bytes(b[:rng.randrange(len(b) + 1)]) if i % 3 == 1 else bytes(b)
        reply = answerer.answer(wire, "127.0.0.1", udp=bool(i % 2))
        if reply is not None:
            assert reply[:2] == wire[:2] and reply[2] & 0x80  # same ID, a response
            if (reply[2] >> 3) & 0xF != dns.opcode.UPDATE:  # dnspython reads UPDATE's sections differently
                dns.message.from_wire(reply, question_only=True)  # a well-formed reply
            if i % 2:
                assert len(reply) <= 1232
    assert addresses(ask(answerer, query(ecs=("81.2.69.142", 32)))) == ["127.0.1.1"]
    assert answerer.counts["other", "FORMERR"] > 0 and answerer.dropped > 0


def test_glue_only_for_name_servers_inside_the_zone() -> None:
    router = Router(Locator(CITY, (50.11, 8.68), "eu"), sites())
    zone = Zone("cdn.test", HOST, 5, ("ns1.cdn.test", "ns.example.net"), ("127.0.0.1", "::1"))
    m = ask(Answerer(zone, router), query("cdn.test", "NS", edns=True))
    assert sorted(str(r) for rrset in m.answer for r in rrset) == ["ns.example.net.", "ns1.cdn.test."]
    assert sorted(rr.to_text() for rr in m.additional) == ["ns1.cdn.test. 5 IN A 127.0.0.1",
                                                           "ns1.cdn.test. 5 IN AAAA ::1"]
