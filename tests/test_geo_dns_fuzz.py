"""Property-based fuzzing of the DNS answerer's sans-io part (`geo.dns.Answerer`), with Hypothesis.

Messages are built field by field (header counts that lie, names too long or
with pointers, EDNS with odd versions, sizes and options, ECS of every
shape, extra records, trailing bytes), then some are cut or have bytes
flipped. Whatever arrives, `Answerer.answer`:

- never raises;
- answers nothing exactly when the documented rule says so (shorter than a
  header, or a response: QR set);
- otherwise answers with a message dnslib parses, with the query's ID and
  opcode and QR set;
- answers FORMERR to every message that is not a well-formed query: one
  whose counts no single question needs (a header alone; see `geo.dns`:
  QDCOUNT other than 1, answer or authority records, more than
  `MAX_ADDITIONAL` additional records or `MAX_EDNS_OPTIONS` EDNS options),
  one dnspython cannot read (of the messages built whole: dnspython also
  reads the data of records the router ignores, which flipped bytes can
  spoil), or one whose ECS option is malformed (BADVERS instead when its
  EDNS version is not 0); NOTIMP, a header alone, to any opcode but QUERY;
- over UDP, fits 512 bytes, or the query's EDNS size (at most 1232).

Deterministic: `derandomize` and no example database, so CI runs the same
cases every time.
"""

from __future__ import annotations

import struct
from functools import cache

import dns.exception
import dns.message
import dns.tsig
from dnslib import DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geo.dns import (
    MAX_ADDITIONAL,
    MAX_EDNS_OPTIONS,
    MAX_MEMO_BYTES,
    MAX_UDP_PAYLOAD,
    MEMO_ENTRY_OVERHEAD,
    PLAIN_UDP_PAYLOAD,
    Answerer,
    Zone,
)
from geo.locate import Locator, subnet_address
from geo.route import Router
from tests.test_geo_dns import CITY, HOST, sites

FORMERR, NOTIMP, BADVERS = 1, 4, 16
OPT, ECS = 41, 8

FUZZ = settings(max_examples=1000, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@cache
def answerer() -> Answerer:
    """One answerer for every example, its reply memo included (Hypothesis reruns examples: no fixture)."""
    router = Router(Locator(CITY, (50.11, 8.68), "eu"), sites())
    return Answerer(Zone("cdn.test", HOST, 5, ("ns1.cdn.test",), ("127.0.0.1",), serial=7), router)


# --- building messages -------------------------------------------------------

NAMES = [HOST, "LiVe.CDN.test", "cdn.test", "ns1.cdn.test", "x.live.cdn.test", "nope.cdn.test", "example.com", ""]


def wire_name(name: str) -> bytes:
    return b"".join(bytes([len(x)]) + x.encode() for x in name.split(".") if x) + b"\0"


raw_label = st.binary(max_size=70).map(lambda b: bytes([len(b)]) + b)  # lengths over 63: reserved/pointer types
odd_name = st.lists(st.one_of(raw_label, st.sampled_from([b"\x01a", b"\x3f" + b"a" * 63])), max_size=6).flatmap(
    lambda labels: st.sampled_from([b"\0", b"\xc0\x0c", b"\xc0\x00", b"\xff", b""]).map(
        lambda end: b"".join(labels) + end))
names = st.one_of(st.sampled_from(NAMES).map(wire_name), odd_name)
qtypes = st.one_of(st.sampled_from([1, 28, 255, 6, 2, 16, 5, 252, 251]), st.integers(0, 0xFFFF))
qclasses = st.one_of(st.just(1), st.sampled_from([3, 254, 255]), st.integers(0, 0xFFFF))


@st.composite
def ecs_data(draw: st.DrawFn) -> bytes:
    family = draw(st.sampled_from([1, 2, 0, 9]))
    source = draw(st.one_of(st.sampled_from([0, 24, 32, 56, 128]), st.integers(0, 255)))
    scope = draw(st.one_of(st.just(0), st.integers(0, 255)))
    if draw(st.booleans()):  # often the right number of address bytes, with the spare bits clear
        size = (source + 7) // 8
        value = draw(st.integers(0, (1 << (8 * size)) - 1)) if size else 0
        if source % 8:
            value &= ~((1 << (8 - source % 8)) - 1)
        address = value.to_bytes(size, "big")
    else:
        address = draw(st.binary(max_size=20))
    return struct.pack(">HBB", family, source, scope) + address


# Besides ECS, options whose content a server may ignore and dnspython does not check (padding,
# keepalive, local use); dnspython rejects a cookie of a bad length, which a server without
# cookies ignores (RFC 7873 5.2).
IGNORED_OPTIONS = [12, 11, 65001]
options = st.one_of(
    st.lists(st.one_of(ecs_data().map(lambda d: (ECS, d)),
                       st.tuples(st.sampled_from(IGNORED_OPTIONS), st.binary(max_size=40))), max_size=3),
    st.integers(MAX_EDNS_OPTIONS - 2, MAX_EDNS_OPTIONS + 40).map(lambda n: [(65001, b"")] * n))


@st.composite
def opt_record(draw: st.DrawFn) -> bytes:
    payload = draw(st.one_of(st.sampled_from([512, 1232, 4096, 100]), st.integers(0, 0xFFFF)))
    version = draw(st.one_of(st.just(0), st.integers(0, 255)))
    ttl = draw(st.integers(0, 255)) << 24 | version << 16 | draw(st.sampled_from([0, 0x8000]))
    rdata = b"".join(struct.pack(">HH", code, len(data)) + data for code, data in draw(options))
    owner = draw(st.sampled_from([b"\0", b"\0", wire_name("cdn.test")]))
    return owner + struct.pack(">HHIH", OPT, payload, ttl, len(rdata)) + rdata


@st.composite
def other_record(draw: st.DrawFn) -> bytes:
    """A record whose data is right for its type (the router does not read it; dnspython does)."""
    rtype, rdata = draw(st.one_of(st.tuples(st.just(1), st.binary(min_size=4, max_size=4)),
                                  st.tuples(st.just(28), st.binary(min_size=16, max_size=16)),
                                  st.tuples(st.just(65280), st.binary(max_size=30))))  # private use: opaque
    return draw(names) + struct.pack(">HHIH", rtype, 1, 5, len(rdata)) + rdata


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """A DNS message, mostly query-shaped; its counts are the true ones unless drawn to lie."""
    qid = draw(st.integers(0, 0xFFFF))
    flags = draw(st.one_of(st.sampled_from([0x0100, 0x0000, 0x0110]), st.integers(0, 0xFFFF)))
    questions = draw(st.lists(st.tuples(names, qtypes, qclasses), min_size=0, max_size=3))
    if draw(st.booleans()):
        questions = questions[:1] or [(wire_name(HOST), 1, 1)]
    answers = draw(st.lists(other_record(), max_size=1))
    additional = draw(st.lists(st.one_of(opt_record(), other_record()), max_size=3))
    counts = [len(questions), len(answers), 0, len(additional)]
    if draw(st.integers(0, 9)) == 0:
        counts = draw(st.lists(st.integers(0, 0xFFFF), min_size=4, max_size=4))
    body = b"".join(n + struct.pack(">HH", t, c) for n, t, c in questions) + b"".join(answers) + b"".join(additional)
    trailing = draw(st.one_of(st.just(b""), st.binary(max_size=8)))
    return struct.pack(">HH", qid, flags) + struct.pack(">4H", *counts) + body + trailing


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """A message with some bytes flipped or cut short."""
    b = bytearray(draw(messages()))
    for _ in range(draw(st.integers(0, 4))):
        if b:
            b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
    return bytes(b[:draw(st.integers(0, len(b)))]) if draw(st.booleans()) else bytes(b)


anything = st.one_of(messages(), damaged(), st.binary(max_size=700))


# --- the properties ----------------------------------------------------------

def unreadable(q: bytes) -> bool:
    """Whether dnspython, a second and independent reader, rejects the message as malformed."""
    try:
        m = dns.message.from_wire(q)
    except dns.exception.DNSException as e:
        return not isinstance(e, dns.tsig.PeerError | dns.message.UnknownTSIGKey)
    except (ValueError, IndexError):
        return True
    return m.opcode() == 0 and bad_ecs(m)


def bad_ecs(m: dns.message.Message) -> bool:
    """RFC 7871 7.1.1: an ECS option whose family, prefix or address bytes do not agree (dnspython keeps them)."""
    for option in m.options:
        if option.otype == ECS:
            data = option.to_wire()
            try:
                subnet_address(*struct.unpack_from(">HB", data), data[4:])
            except (ValueError, struct.error):
                return True
    return False


def udp_limit(q: bytes, reply: DNSRecord) -> int:
    """What a UDP reply must fit: 512 bytes, or the query's EDNS size up to 1232 when the reply has OPT."""
    if not any(r.rtype == OPT for r in reply.ar):
        return PLAIN_UDP_PAYLOAD
    opts = [r for r in DNSRecord.parse(q).ar if r.rtype == OPT]  # the query's OPT, which the reply echoes
    return max(PLAIN_UDP_PAYLOAD, min(opts[0].rclass, MAX_UDP_PAYLOAD))


def check(q: bytes, udp: bool, oracle: bool = True) -> None:
    """The properties of the module doc; `oracle`: also FORMERR wherever dnspython finds the query malformed."""
    reply = answerer().answer(q, "127.0.0.1", udp)
    if len(q) < 12 or q[2] & 0x80:
        assert reply is None
        return
    assert reply is not None, q.hex()
    parsed = DNSRecord.parse(reply)  # a well-formed message
    assert reply[:2] == q[:2] and parsed.header.qr == 1 and parsed.header.opcode == (q[2] >> 3) & 0xF
    if udp:
        assert len(reply) <= udp_limit(q, parsed), q.hex()
    else:
        assert len(reply) <= 0xFFFF
    rcode = reply[3] & 0xF
    qd, an, ns, ar = struct.unpack_from(">4H", q, 4)
    if q[2] & 0x78:
        assert (rcode, len(reply)) == (NOTIMP, 12), q.hex()
    elif qd != 1 or an or ns or ar > MAX_ADDITIONAL or edns_options(q) > MAX_EDNS_OPTIONS:
        assert (rcode, len(reply)) == (FORMERR, 12), q.hex()
    elif oracle and unreadable(q):
        # FORMERR; or BADVERS to an EDNS version above 0, which RFC 6891 6.1.3 checks before the options.
        assert rcode == FORMERR or full_rcode(parsed) == BADVERS and edns_version(q) > 0, q.hex()


def full_rcode(reply: DNSRecord) -> int:
    """The header's rcode with the upper bits an OPT record carries (RFC 6891 6.1.3)."""
    opts = [r for r in reply.ar if r.rtype == OPT]
    return reply.header.rcode | (opts[0].ttl >> 24 << 4 if opts else 0)


def edns_options(q: bytes) -> int:
    """How many options the query's OPT record holds, as dnspython reads it (0 when it cannot)."""
    try:
        return len(dns.message.from_wire(q).options)
    except Exception:
        return 0


def edns_version(q: bytes) -> int:
    """The query's EDNS version, -1 without EDNS."""
    opts = [r for r in DNSRecord.parse(q).ar if r.rtype == OPT]
    return (opts[0].ttl >> 16) & 0xFF if opts else -1

@FUZZ
@given(anything, st.booleans())
def test_any_message_gets_a_well_formed_answer_or_none_by_the_rule(q: bytes, udp: bool) -> None:
    """Damaged and random bytes too; dnspython is no judge here, since it also reads records the router ignores."""
    check(q, udp, oracle=False)


@FUZZ
@given(messages(), st.booleans())
def test_query_shaped_messages(q: bytes, udp: bool) -> None:
    check(q, udp)


@settings(FUZZ, max_examples=300)
@given(st.integers(0, 0xFFFF), st.binary(min_size=1, max_size=60_000), st.sampled_from(["127.0.0.1", "::1"]))
def test_large_padding_is_answered_and_not_remembered_by_its_bytes(qid: int, padding: bytes, client: str) -> None:
    """However much padding a query carries, the reply memo grows by one small entry at most."""
    a = answerer()
    opt = b"\0" + struct.pack(">HHIH", OPT, 1232, 0, 4 + len(padding)) + struct.pack(">HH", 12, len(padding))
    q = struct.pack(">6H", qid, 0x0100, 1, 0, 0, 1) + wire_name(HOST) + struct.pack(">HH", 1, 1) + opt + padding
    before = a.memo_bytes
    check(q, True)
    assert a.memo_bytes - before < 1024


def test_the_reply_memo_stays_within_its_bytes_whoever_asks() -> None:
    """A reply per client address: past `MAX_MEMO_BYTES` the memo is emptied and starts again."""
    a = Answerer(answerer().zone, answerer().router)
    q = dns.message.make_query(HOST, "A", use_edns=0).to_wire()
    enough = MAX_MEMO_BYTES // MEMO_ENTRY_OVERHEAD + 1000  # each entry counts more than its overhead
    clients = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(enough)]
    most = 0
    for client in clients:
        assert a.answer(q, client) is not None
        most = max(most, a.memo_bytes)
    assert 0 < a.memo_bytes < most <= MAX_MEMO_BYTES  # it filled up once, and was emptied
