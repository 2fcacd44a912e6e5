"""Who the client is behind trusted proxies (livecdn/front/forwarded.py): examples, then Hypothesis.

The properties hold whatever a client writes into the header: nothing
raises; an untrusted peer is its own client; whatever the client puts left
of its own address never wins; the answer is the peer or an address a hop
wrote, in canonical form.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livecdn.front.forwarded import FORWARDED, MAX_HOPS, X_FORWARDED_FOR, ClientAddresses, canonical, forwarded_for

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=300,
                suppress_health_check=[HealthCheck.too_slow])
TRUSTED = ["10.0.0.0/8", "127.0.0.1/32", "2001:db8:ffff::/48"]
XFF = ClientAddresses(TRUSTED, X_FORWARDED_FOR)
FWD = ClientAddresses(TRUSTED, FORWARDED)
LB = "10.1.2.3"  # the peer: a trusted load balancer


@pytest.mark.parametrize(("value", "client"), [
    ("203.0.113.5", "203.0.113.5"),
    ("203.0.113.5, 10.9.9.9", "203.0.113.5"),  # a trusted hop on the right is skipped
    ("198.51.100.1, 203.0.113.5", "203.0.113.5"),  # a spoofed entry on the left loses
    ("203.0.113.5:4711", "203.0.113.5"),
    ("[2001:db8::1]:443", "2001:db8::1"),
    ("2001:db8::1", "2001:db8::1"),
    ("::ffff:203.0.113.5", "203.0.113.5"),  # IPv4-mapped: the IPv4 client
    ("garbage", LB),  # unreadable: the peer
    ("203.0.113.5, garbage", LB),  # the hop next to us is unreadable: nothing left of it counts
    ("203.0.113.5, unknown, 10.0.0.7", "10.0.0.7"),
    ("[2001:db8::1", LB),
    ("1.2.3.4:http", LB),
    ("", LB),
    ("10.0.0.1, 10.0.0.2", "10.0.0.1"),  # trusted all the way: the left-most hop
])
def test_x_forwarded_for(value: str, client: str) -> None:
    assert XFF.resolve(LB, value) == client
    assert XFF.resolve(LB, value.encode("latin-1")) == client


@pytest.mark.parametrize(("value", "client"), [
    ('for=192.0.2.60;proto=http;by=203.0.113.43', "192.0.2.60"),
    ('for="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
    ('For="192.0.2.60:80"', "192.0.2.60"),
    ('for=198.51.100.1, for=192.0.2.43', "192.0.2.43"),
    ('for=192.0.2.43, for=10.0.0.5;by=10.0.0.6', "192.0.2.43"),  # trusted hop skipped
    ('for=192.0.2.43, for=unknown, for=10.0.0.5', "10.0.0.5"),  # unknown hop: the walk stops at it
    ('for=192.0.2.43, for=_hidden, for=10.0.0.5', "10.0.0.5"),  # obfuscated (RFC 7239 6.3)
    ('for=192.0.2.43,for=10.0.0.5', "192.0.2.43"),
    ('proto=https;for="[2001:db8::9]";host="a,b"', "2001:db8::9"),  # a comma inside a quoted string
    ('for="\\[2001:db8::9\\]"', "2001:db8::9"),  # quoted-pair escapes
    ('for=192.0.2.43 junk', LB),  # not well-formed: unknown
    ('for=192.0.2.43;for=198.51.100.1', LB),  # two `for` in one element: unknown
    ('proto=http', LB),  # no for: unknown
    ('for="unterminated', LB),
    ("", LB),
])
def test_forwarded(value: str, client: str) -> None:
    assert FWD.resolve(LB, value) == client


def test_only_the_configured_header_is_read_and_only_from_trusted_peers() -> None:
    assert XFF.header == "x-forwarded-for" and FWD.header == "forwarded"
    assert XFF.resolve("203.0.113.99", "198.51.100.1") == "203.0.113.99"  # untrusted peer: its own client
    assert XFF.resolve(LB, None) == LB
    assert XFF.resolve(LB, "for=198.51.100.1") == LB  # a Forwarded value read as X-Forwarded-For: garbage
    assert not ClientAddresses([]) and not ClientAddresses([]).trusts("127.0.0.1")
    assert XFF.trusts("::ffff:127.0.0.1") and XFF.trusts("2001:db8:ffff::1") and not XFF.trusts("127.0.0.2")


def test_a_bad_network_or_header_is_named() -> None:
    with pytest.raises(ValueError, match="10.0.0.1/8"):
        ClientAddresses(["10.0.0.1/8"])
    with pytest.raises(ValueError, match="x-real-ip"):
        ClientAddresses(["10.0.0.0/8"], "x-real-ip")


def test_a_header_of_many_trusted_hops_is_walked_only_so_far() -> None:
    many = ", ".join(["203.0.113.1"] + ["10.0.0.1"] * (MAX_HOPS + 5))
    assert XFF.resolve(LB, many) == "10.0.0.1"  # the walk stopped among the trusted hops, not at the client
    assert FWD.resolve(LB, many.replace("10.", "for=10.").replace("203.", "for=203.")) == "10.0.0.1"


def test_what_a_client_writes_left_of_its_own_element_is_never_read() -> None:
    junk = 'for="' + "x, " * 5000  # an unterminated quote, and 15 kB of elements
    assert FWD.resolve(LB, f"{junk}, for=203.0.113.50, for=10.0.0.9") == "203.0.113.50"
    assert XFF.resolve(LB, "1.1.1.1, " * 5000 + "203.0.113.51, 10.0.0.9") == "203.0.113.51"


# --- Hypothesis -------------------------------------------------------------------------

ipv4 = st.ip_addresses(v=4).filter(lambda ip: not any(ip in ipaddress.ip_network(n) for n in TRUSTED))
ipv6 = st.ip_addresses(v=6).filter(lambda ip: ip.ipv4_mapped is None and not any(
    ip in ipaddress.ip_network(n) for n in TRUSTED))
clients = st.one_of(ipv4, ipv6)
trusted_hops = st.lists(st.sampled_from(["10.0.0.1", "10.200.3.4", "127.0.0.1", "2001:db8:ffff::7"]),
                        max_size=4)
ports = st.integers(0, 65535)
junk = st.text(st.characters(codec="latin-1"), max_size=40)


def xff_form(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int | None) -> str:
    if port is None:
        return str(ip)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def fwd_form(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int | None) -> str:
    """As RFC 7239 writes a node: a bare IPv4 is a token; a port or an IPv6 (in brackets) needs quotes."""
    if ip.version == 4 and port is None:
        return f"for={ip}"
    node = f"[{ip}]" if ip.version == 6 else str(ip)
    return f'for="{node}{"" if port is None else f":{port}"}"'


@FUZZ
@given(peer=st.one_of(st.sampled_from([LB, "127.0.0.1", "203.0.113.9"]), junk), value=junk,
       forwarded=st.booleans())
def test_any_header_gives_the_peer_or_a_canonical_address(peer: str, value: str, forwarded: bool) -> None:
    addresses = FWD if forwarded else XFF
    got = addresses.resolve(peer, value)
    if not addresses.trusts(peer):
        assert got == peer
    else:
        assert got == peer or str(canonical(got)) == got


@FUZZ
@given(client=clients, port=st.none() | ports, spoofed=st.lists(junk, max_size=4), hops=trusted_hops)
def test_entries_left_of_the_client_never_win_x_forwarded_for(
        client: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int | None, spoofed: list[str],
        hops: list[str]) -> None:
    value = ", ".join([*spoofed, xff_form(client, port), *hops])
    assert XFF.resolve(LB, value) == str(client)


@FUZZ
@given(client=clients, port=st.none() | ports, spoofed=st.lists(junk, max_size=4), hops=trusted_hops,
       extra=st.sampled_from(["", ";proto=https", ";by=10.0.0.1", ';host="a,b;c"']))
def test_entries_left_of_the_client_never_win_forwarded(
        client: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int | None, spoofed: list[str],
        hops: list[str], extra: str) -> None:
    # Read from the right: even an unterminated quote left of the client cannot swallow its element.
    value = ", ".join([*spoofed, fwd_form(client, port) + extra, *(f'for="{h}"' for h in hops)])
    assert FWD.resolve(LB, value) == str(client)


@FUZZ
@given(value=junk)
def test_forwarded_for_never_raises_and_gives_one_hop_per_element_at_most(value: str) -> None:
    hops = list(forwarded_for(value))
    assert 1 <= len(hops) <= value.count(",") + 1
