"""The router's DNS answers, sans-io: query bytes in, reply bytes out.

`Answerer.answer()` knows nothing of sockets. The UDP and TCP transports in
`geo.node` feed it each message and send back what it returns (or nothing,
for a packet that must be dropped).

Two paths give the same answers:

- the fast path first looks a short query up in a memo by its bytes after
  the ID (with the client's address and the transport): a resolver asking
  again costs a slice, a dict lookup and the ID patched in. Otherwise it
  parses by hand the one query shape that nearly all traffic has, one A or
  AAAA question for the CDN host name, with or without EDNS and an ECS option
  (`_parse_common`), looks a longer (padded) query up by what decides its
  reply, or routes it (`_decide`) and joins pre-built byte strings for the
  reply (`_emit`). The memo is bounded in bytes and emptied whenever the
  router's routes are (health, edges, database);
- everything else goes through `dnslib`, which knows the whole wire format:
  SOA and NS for the zone (with glue for its in-zone name servers), NXDOMAIN
  for unknown names in it, REFUSED outside it, FORMERR for malformed
  messages, NOTIMP for other opcodes, BADVERS for EDNS versions above 0.

Replies over UDP that would not fit the client's limit (512 bytes, or its
EDNS payload size up to `MAX_UDP_PAYLOAD`) are truncated with TC set, so the
client retries over TCP. Responses (QR set) and messages too short to hold
a header are dropped, never answered: answering them could start a loop.

Before `dnslib` reads a message, its header and question name are checked by
hand (`_refusal`), so no message costs more than one question can need: a
header-only reply, with the query's ID, opcode and RD, answers
- NOTIMP an opcode other than QUERY;
- FORMERR a QDCOUNT other than 1, any answer or authority record, more than
  `MAX_ADDITIONAL` additional records, an OPT record of more than
  `MAX_EDNS_OPTIONS` options, a record running off the message, or a
  question name that is not plain labels of at most 63 bytes, 255 in all,
  inside the message (a compression pointer in the first name can point
  only at itself or the header).
Every other message is parsed; what dnslib cannot parse gets the same
header-only FORMERR.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from dataclasses import dataclass

from dnslib import (
    AAAA,
    EDNS0,
    NS,
    QTYPE,
    RR,
    SOA,
    A,
    DNSBuffer,
    DNSHeader,
    DNSLabel,
    DNSQuestion,
    DNSRecord,
    EDNSOption,
)

from .choose import Site
from .locate import subnet_address
from .route import Route, Router

__all__ = ["Answerer", "MAX_UDP_PAYLOAD", "Zone", "ecs_option", "QTYPE_LABELS", "RCODE_LABELS"]

# The EDNS payload size we announce and honour at most: the DNS flag day 2020
# value, which avoids IP fragmentation on any path.
MAX_UDP_PAYLOAD = 1232
PLAIN_UDP_PAYLOAD = 512  # RFC 1035, for clients without EDNS
ECS = 8  # EDNS option code of Client Subnet (RFC 7871)
OPT = 41  # the type of the EDNS pseudo-record (RFC 6891)
TYPE_A, TYPE_AAAA = b"\x00\x01", b"\x00\x1c"

# The wire format the fast path reads and writes by hand (RFC 1035 4.1, RFC 6891, RFC 7871).
ID_BYTES = 2  # the message ID, first in the header; two flag bytes follow
COUNTS_AT, HEADER_BYTES = 4, 12  # then four 16-bit counts (QD, AN, NS, AR) end the header
QTAIL_BYTES = 4  # after a question's name: QTYPE, QCLASS
# An OPT record before its options: root name, TYPE, CLASS = the sender's UDP payload
# size, TTL = extended rcode, version, flags; RDLENGTH. Then options, each code, length, data.
OPT_RECORD = struct.Struct(">BHHBBHH")
OPTION_HEAD = struct.Struct(">HH")
ECS_HEAD = struct.Struct(">HBB")  # ECS data before the address: family, source prefix, scope prefix
FAMILY_BITS = {1: 32, 2: 128}  # ECS families (IPv4, IPv6): the longest prefix of each
QR_OPCODE = 0xF8  # flag byte 1 (offset 2): QR and the opcode, both 0 in a standard query
OPCODE = 0x78  # of those, the opcode alone
QR_AA, TC, RD = 0x84, 0x02, 0x01  # flag byte 1: response + authoritative, truncated, recursion desired
CD = 0x10  # flag byte 2 (offset 3): checking disabled, echoed
# The reply's two flag bytes, by the query's RD and CD bits (`q[2] & RD | q[3] & CD`): a
# table lookup costs a fifth of building them, and a reply is built at every memo miss.
ANSWER_FLAGS = tuple(bytes((QR_AA | (bits & RD), bits & CD)) for bits in range(RD + CD + 1))
TRUNCATED_FLAGS = tuple(bytes((QR_AA | TC | (bits & RD), bits & CD)) for bits in range(RD + CD + 1))
ONE_QUESTION = struct.pack(">HHH", 1, 0, 0)  # QDCOUNT, ANCOUNT, NSCOUNT
NO_RECORDS, ONE_RECORD = struct.pack(">H", 0), struct.pack(">H", 1)  # ARCOUNT
QUESTION_ONLY, QUESTION_AND_OPT = ONE_QUESTION + NO_RECORDS, ONE_QUESTION + ONE_RECORD  # all four counts
CLASS_IN = struct.pack(">H", 1)
A_IN, AAAA_IN = TYPE_A + CLASS_IN, TYPE_AAAA + CLASS_IN  # a question's QTYPE and QCLASS
QNAME_POINTER = struct.pack(">H", 0xC000 | HEADER_BYTES)  # a record's name: the question's, compressed

# Metric label values: a bounded set, whatever the queries contain.
QTYPE_LABELS = ("A", "AAAA", "ANY", "SOA", "NS", "CNAME", "MX", "TXT", "other")
RCODE_LABELS = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
                16: "BADVERS"}
SOA_TIMERS = (3600, 600, 86400)  # refresh, retry, expire: no secondaries pull this zone
# The memo of fast-path replies, bounded in bytes (its keys and replies, plus
# `MEMO_ENTRY_OVERHEAD` each for the Python objects around them): a flood of
# distinct queries empties it, never grows it past this (the router's RSS by
# some 8 MB at most). 4 MiB holds some 5,000 replies: the busy resolvers'
# questions between two health changes (which empty it anyway).
MAX_MEMO_BYTES = 4 << 20
MEMO_ENTRY_OVERHEAD = 700  # measured with tracemalloc: key and value tuples, bytes headers, dict slots
# Queries up to this size are remembered by their bytes (a question for the host name with
# EDNS, an IPv6 ECS subnet and a cookie is about 90): no parse at all on a hit. Larger ones
# carry padding, which must not make a memo entry of its own.
MAX_EXACT_QUERY = 128
# Bounds of a query's shape, checked before dnslib parses it (RFC 1035 2.3.4).
MAX_NAME_BYTES = 255  # a name on the wire, length bytes and root included
MAX_LABEL_BYTES = 63  # a length byte above this is a pointer or a reserved label type
MAX_ADDITIONAL = 2  # an OPT record, and a TSIG or SIG(0) the router ignores: a query needs no more
# EDNS options in one query: ECS, a cookie, padding, keepalive... a handful. dnslib
# reads 16,000 empty ones (a 64 KB message) in about 40 ms.
MAX_EDNS_OPTIONS = 16
RR_FIXED = struct.Struct(">HHIH")  # a record after its owner name: TYPE, CLASS, TTL, RDLENGTH
FORMERR, NOTIMP = 1, 4  # the rcodes a header-only reply carries

# A pre-encoded reply tail: QD/AN/NS counts, the answer and authority records, metric labels.
Tail = tuple[bytes, bytes, tuple[str, str]]
# A query of the common shape, as `Answerer._parse_common` read it: QTYPE (TYPE_A or TYPE_AAAA),
# the offset just past the question, the client's UDP limit, whether it has an OPT record, the
# data of its ECS option if any. A plain tuple: a NamedTuple would cost a tenth of an answer.
Common = tuple[bytes, int, int, bool, bytes | None]
# The client subnet an ECS option names: family (1 IPv4, 2 IPv6), source prefix length
# (0: "place me by my own address"), the prefix's bytes. A plain tuple, as `Common` is.
Subnet = tuple[int, int, bytes]
# What decides a fast-path reply: the query's RD and CD bits, its question as asked (the
# reply echoes its case), the UDP limit (0 over TCP), whether it has EDNS, its ECS data,
# and the client's address unless an ECS source prefix places it instead.
MemoKey = tuple[int, bytes, int, bool, bytes | None, str]
# A short query's memo key: its bytes after the ID, the client's address, whether over UDP.
ExactKey = tuple[bytes, str, bool]


class Remembered:
    """A fast-path reply in the memo: its bytes after the ID, its route and metric labels, and how many
    times it was given from the memo since `Answerer.tally` last counted them."""

    __slots__ = ("tail", "route", "stat", "hits")

    def __init__(self, tail: bytes, route: tuple[str, str], stat: tuple[str, str]) -> None:
        self.tail, self.route, self.stat = tail, route, stat
        self.hits = 0


@dataclass(frozen=True)
class Zone:
    """What the router is authoritative for.

    Args:
        origin: the zone apex, e.g. "demo.livecdn.test".
        hostname: the CDN host name players resolve; inside the zone.
        ttl: seconds answers may be cached (also the negative-caching TTL).
        nameservers: NS names of the zone; names inside it are answered with
            `ns_addresses`.
        ns_addresses: where the router's DNS listens.
        serial: the SOA serial.
    """

    origin: str
    hostname: str
    ttl: int
    nameservers: tuple[str, ...]
    ns_addresses: tuple[str, ...] = ()
    serial: int = 1

    def __post_init__(self) -> None:
        if not _labels(self.hostname)[-len(_labels(self.origin)):] == _labels(self.origin):
            raise ValueError(f"host name {self.hostname!r} is not inside zone {self.origin!r}")
        if not 0 <= self.ttl <= 86400:
            raise ValueError(f"ttl {self.ttl} is outside 0..86400")
        if not self.nameservers:
            raise ValueError("a zone needs at least one name server")

    @property
    def rname(self) -> str:
        return f"hostmaster.{self.origin}"


def _labels(name: str) -> tuple[bytes, ...]:
    return tuple(label.lower().encode() for label in name.strip(".").split(".") if label)


def _wire(name: str) -> bytes:
    return b"".join(bytes([len(x)]) + x for x in _labels(name)) + b"\0"


def _subnet(data: bytes) -> Subnet:
    """The subnet in ECS option data (at least `ECS_HEAD.size` bytes).

    Raises:
        ValueError: the option is malformed (RFC 7871 7.1.1: FORMERR): its
            family, prefixes and address bytes do not agree; a source /0
            ("place me by my own address") carries no address bytes.
    """
    family, source, scope = ECS_HEAD.unpack_from(data)
    address = data[ECS_HEAD.size:]
    subnet_address(family, source, address)
    if scope > FAMILY_BITS[family]:
        raise ValueError(f"ECS scope prefix /{scope} is too long for family {family}")
    return family, source, address


def _refusal(q: bytes) -> int | None:
    """The rcode of a header-only reply for a message not worth parsing (see the module doc), or None.

    `q` is a query (QR clear) of at least a header's length.
    """
    if q[2] & OPCODE:
        return NOTIMP
    qd, an, ns, ar = struct.unpack_from(">HHHH", q, COUNTS_AT)
    if qd != 1 or an or ns or ar > MAX_ADDITIONAL:
        return FORMERR
    p, end = HEADER_BYTES, min(len(q), HEADER_BYTES + MAX_NAME_BYTES)
    while p < end:
        size = q[p]
        if size == 0:
            break
        if size > MAX_LABEL_BYTES:
            return FORMERR
        p += 1 + size
    else:
        return FORMERR  # the name runs past 255 bytes or off the message
    p += 1 + QTAIL_BYTES
    for _ in range(ar):
        p = _past_name(q, p)
        if p < 0 or p + RR_FIXED.size > len(q):
            return FORMERR
        rtype, _, _, rdlength = RR_FIXED.unpack_from(q, p)
        p += RR_FIXED.size
        if rtype == OPT and _options(q, p, min(p + rdlength, len(q))) > MAX_EDNS_OPTIONS:
            return FORMERR
        p += rdlength
    return None if p <= len(q) else FORMERR


def _past_name(q: bytes, p: int) -> int:
    """The offset after a record's owner name at `p` (which may end in a pointer); -1 if it is malformed."""
    end = min(len(q), p + MAX_NAME_BYTES)
    while p < end:
        size = q[p]
        if size == 0:
            return p + 1
        if size >= 0xC0:  # a pointer ends the name
            return p + 2
        if size > MAX_LABEL_BYTES:
            return -1
        p += 1 + size
    return -1


def _options(q: bytes, p: int, end: int) -> int:
    """How many EDNS options the OPT data in q[p:end] holds, counting no further than one past the bound."""
    count = 0
    while p < end and count <= MAX_EDNS_OPTIONS:
        count += 1
        p += OPTION_HEAD.size + int.from_bytes(q[p + 2:p + 4], "big")
    return count


def _parse(q: bytes) -> DNSRecord:
    """The message, read by dnslib in the shape `_refusal` lets through: one question, additional records.

    Raises:
        ValueError: bytes follow the last record (dnslib's own `parse` ignores them).
        Exception: whatever dnslib raises on garbage.
    """
    buffer = DNSBuffer(q)
    header = DNSHeader.parse(buffer)
    question = DNSQuestion.parse(buffer)
    additional = [RR.parse(buffer) for _ in range(header.ar)]
    if buffer.remaining():
        raise ValueError(f"{buffer.remaining()} bytes after the last record")
    return DNSRecord(header, [question], ar=additional)


def ecs_option(family: int, source: int, scope: int, address: bytes) -> bytes:
    """The data of an ECS option (without the option code and length)."""
    return ECS_HEAD.pack(family, source, scope) + address


class Answerer:
    """Answers DNS messages for one zone from a `Router`'s decisions.

    Counts what it answered in `counts` ((qtype, rcode) label pairs),
    `truncated` and `dropped`; the node exports them as metrics, after
    `tally()` has added the replies given from the memo (to the router's
    decisions too).
    """

    def __init__(self, zone: Zone, router: Router) -> None:
        self.zone = zone
        self.router = router
        self.counts: Counter[tuple[str, str]] = Counter()
        self.truncated = 0
        self.dropped = 0
        self._zone_labels = _labels(zone.origin)
        self._host_labels = _labels(zone.hostname)
        self._host_wire = _wire(zone.hostname)
        self._qend = 12 + len(self._host_wire)  # offset of QTYPE after a hostname question
        self._ns_labels = {_labels(n): n for n in zone.nameservers}
        # With the NS records, the addresses of those name servers that lie
        # inside the zone (glue; RFC 9471: a resolver cannot find them otherwise).
        self._glue = [rr for labels, name in self._ns_labels.items()
                      if labels[-len(self._zone_labels):] == self._zone_labels
                      for rr in self._address_rrs(DNSLabel(name), zone.ns_addresses, QTYPE.ANY)]
        self._soa_rr = self._soa_wire()
        self._tails: dict[str, dict[bytes, Tail]] = {}
        # A short query's bytes (`ExactKey`), or what decides a longer one's reply (`MemoKey`) →
        # the reply, for the current router generation; `_memo_bytes` counts its size.
        self._replies: dict[MemoKey | ExactKey, Remembered] = {}
        self._memo_bytes = 0
        self._generation = router.generation
        self.sites_changed()

    # --- fast path -----------------------------------------------------------

    def answer(self, query: bytes, client: str, udp: bool = True) -> bytes | None:
        """The reply to one DNS message, or None to drop it.

        Args:
            query: the message as received (over TCP: without its length prefix).
            client: the sender's address in text form (its location when no ECS).
            udp: whether the reply goes over UDP (and must then fit the client's limit).

        Returns:
            The reply's bytes, or None for a message that gets no reply.
        """
        # The same question from the same place gets the same reply until health
        # changes: resolvers repeat themselves all day. A short query is looked up
        # by its own bytes after the ID (with the client and transport, which
        # place and bound its reply), before any parsing: the reply is the same
        # function of them every time. A longer one, padded as its client chose,
        # is looked up by what decides its reply, once parsed.
        router = self.router
        if self._generation != router.generation:
            self._forget()
            self._generation = router.generation
        replies = self._replies
        exact: ExactKey | None = None
        if len(query) <= MAX_EXACT_QUERY:
            exact = (query[ID_BYTES:], client, udp)
            hit = replies.get(exact)
            if hit is not None:
                hit.hits += 1
                return query[:ID_BYTES] + hit.tail
        common = self._parse_common(query)
        if common is None:
            return self.answer_general(query, client, udp)
        qtype, end, limit, edns, ecs = common
        question = query[HEADER_BYTES:end]
        key: MemoKey | ExactKey
        if exact is not None:
            key = exact
        else:
            key = (query[2] & RD | query[3] & CD, question, limit if udp else 0, edns, ecs,
                   "" if ecs is not None and ecs[2] else client)  # ecs[2]: a source prefix places the query
            hit = replies.get(key)
            if hit is not None:
                hit.hits += 1
                return query[:ID_BYTES] + hit.tail
        decided = self._decide(client, edns, ecs)
        if decided is None:
            return self.answer_general(query, client, udp)
        route, opt = decided
        counts, body, stat = self._tails[route.decision.edge.name][qtype]
        tail = self._emit(query, end, counts, body, opt)
        if udp and len(tail) + ID_BYTES > limit:
            return self._truncate(query, end, opt, qtype)
        self.counts[stat] += 1
        size = len(question) + len(ecs or b"") + len(client) + len(tail) + MEMO_ENTRY_OVERHEAD
        if exact is not None:
            size += len(exact[0])
        if self._memo_bytes + size > MAX_MEMO_BYTES:
            self._forget()
        replies[key] = Remembered(tail, route.key, stat)
        self._memo_bytes += size
        return query[:ID_BYTES] + tail

    @property
    def memo_bytes(self) -> int:
        """The memo's size as counted against `MAX_MEMO_BYTES`."""
        return self._memo_bytes

    def tally(self) -> None:
        """Add the replies given from the memo since the last tally to `counts` and the router's decisions.

        A hit only counts itself in its entry (two Counter updates would cost a
        tenth of the whole answer); whoever reads the counts tallies first.
        """
        decisions, counts = self.router.decisions, self.counts
        for reply in self._replies.values():
            if reply.hits:
                decisions[reply.route] += reply.hits
                counts[reply.stat] += reply.hits
                reply.hits = 0

    def _forget(self) -> None:
        self.tally()
        self._replies.clear()
        self._memo_bytes = 0

    def _parse_common(self, q: bytes) -> Common | None:
        """Read the query shape nearly all traffic has; None for any other (the general path's).

        That shape: QR=0, opcode QUERY, one question and no answer or authority
        records; the question is class IN, the host name (any case), A or AAAA;
        then either nothing, or one OPT record of version 0 whose options hold
        at most one ECS option.
        """
        n, size = self._qend, len(q)
        if size < n + QTAIL_BYTES or q[2] & QR_OPCODE or q[HEADER_BYTES:n].lower() != self._host_wire:
            return None
        qtail = q[n:n + QTAIL_BYTES]
        if qtail == A_IN:
            qtype = TYPE_A
        elif qtail == AAAA_IN:
            qtype = TYPE_AAAA
        else:
            return None
        end = n + QTAIL_BYTES
        counts = q[COUNTS_AT:HEADER_BYTES]
        if counts == QUESTION_ONLY:
            return (qtype, end, PLAIN_UDP_PAYLOAD, False, None) if size == end else None
        if counts != QUESTION_AND_OPT:
            return None
        # The OPT record must end the message, and its options its RDATA.
        if size < end + OPT_RECORD.size:
            return None
        root, rtype, payload, _, version, _, rdlength = OPT_RECORD.unpack_from(q, end)
        p = end + OPT_RECORD.size
        if root != 0 or rtype != OPT or version != 0 or p + rdlength != size:
            return None
        limit = MAX_UDP_PAYLOAD if payload > MAX_UDP_PAYLOAD else (payload if payload > PLAIN_UDP_PAYLOAD
                                                                   else PLAIN_UDP_PAYLOAD)
        ecs = None
        last = p + MAX_EDNS_OPTIONS * OPTION_HEAD.size  # past this many options, the general path refuses
        while p < size:
            if p + OPTION_HEAD.size > size or p >= last:
                return None
            code, olen = OPTION_HEAD.unpack_from(q, p)
            p += OPTION_HEAD.size
            if code == ECS:
                if ecs is not None:
                    return None
                ecs = q[p:p + olen]
            p += olen
        if p != size or (ecs is not None and len(ecs) < ECS_HEAD.size):
            return None
        return qtype, end, limit, True, ecs

    def _decide(self, client: str, edns: bool, ecs: bytes | None) -> tuple[Route, bytes] | None:
        """The route for the client or its ECS subnet, and the OPT record the reply carries.

        None for an ECS subnet the router cannot place (the general path answers it).
        """
        router = self.router
        if ecs is None:
            return router.route(client), (self._opt_plain if edns else b"")
        try:
            subnet = _subnet(ecs)
            route, scope = self._route(subnet, client)
        except ValueError:
            return None
        family, source, address = subnet
        return route, self._opt_ecs(ecs_option(family, source, scope, address))

    @staticmethod
    def _emit(q: bytes, end: int, counts: bytes, body: bytes, opt: bytes) -> bytes:
        """The reply after its ID: flags, counts, the question as asked, the pre-built records, OPT."""
        return b"".join((ANSWER_FLAGS[q[2] & RD | q[3] & CD], counts, ONE_RECORD if opt else NO_RECORDS,
                         q[HEADER_BYTES:end], body, opt))

    def sites_changed(self) -> None:
        """Rebuild the pre-encoded answers after the router's edge list changed."""
        ttl = struct.pack(">I", self.zone.ttl)
        nodata = (struct.pack(">HHH", 1, 0, 1), self._soa_rr)
        tails = {}
        for site in self.router.sites:
            per: dict[bytes, Tail] = {}
            for qtype, family, label in ((TYPE_A, site.ipv4, "A"), (TYPE_AAAA, site.ipv6, "AAAA")):
                if family:
                    packed = [ipaddress.ip_address(a).packed for a in family]
                    body = b"".join(QNAME_POINTER + qtype + CLASS_IN + ttl + struct.pack(">H", len(p)) + p
                                    for p in packed)
                    per[qtype] = (struct.pack(">HHH", 1, len(packed), 0), body, (label, "NOERROR"))
                else:
                    per[qtype] = (*nodata, (label, "NOERROR"))
            tails[site.name] = per
        self._tails = tails

    def _soa_wire(self) -> bytes:
        z = self.zone
        rdata = _wire(z.nameservers[0]) + _wire(z.rname) + struct.pack(">IIIII", z.serial, *SOA_TIMERS, z.ttl)
        return _wire(z.origin) + struct.pack(">HHIH", 6, 1, z.ttl, len(rdata)) + rdata

    # Our OPT record: root name, TYPE OPT, CLASS = our payload size, TTL 0 (rcode, version 0, no flags).
    _opt_head = b"\x00" + struct.pack(">HHI", OPT, MAX_UDP_PAYLOAD, 0)
    _opt_plain = _opt_head + struct.pack(">H", 0)  # no options

    @classmethod
    def _opt_ecs(cls, data: bytes) -> bytes:
        """Our OPT record carrying one ECS option with `data`."""
        return cls._opt_head + struct.pack(">HHH", OPTION_HEAD.size + len(data), ECS, len(data)) + data

    def _truncate(self, q: bytes, end: int, opt: bytes, qtype: bytes) -> bytes:
        """The reply with TC set and no records but OPT: the client asks again over TCP."""
        self.truncated += 1
        self.counts["A" if qtype == TYPE_A else "AAAA", "NOERROR"] += 1
        return b"".join((q[:ID_BYTES], TRUNCATED_FLAGS[q[2] & RD | q[3] & CD], ONE_QUESTION,
                         ONE_RECORD if opt else NO_RECORDS, q[HEADER_BYTES:end], opt))

    # --- general path (dnslib) -----------------------------------------------

    def answer_general(self, q: bytes, client: str, udp: bool = True) -> bytes | None:
        """The reply the general (dnslib) path gives, whatever the query's shape.

        `answer` gives the same for every query, by whichever path: tests compare the two.
        """
        if len(q) < HEADER_BYTES or q[2] & 0x80:
            self.dropped += 1
            return None
        refused = _refusal(q)
        if refused is not None:
            return self._header_only(q, refused)
        try:
            msg = _parse(q)
        except Exception:  # dnslib raises many kinds on garbage: DNSError, struct.error, IndexError...
            return self._header_only(q, FORMERR)
        opts = [r for r in msg.ar if r.rtype == OPT]
        if len(opts) > 1 or (opts and opts[0].rname.label):  # RFC 6891 6.1.1: one OPT, owned by the root
            return self._reply(msg, 1, None, udp)
        edns = opts[0] if opts else None
        subnet = None
        if edns is not None:
            if (edns.ttl >> 16) & 0xFF != 0:
                return self._reply(msg, 16, edns, udp)
            found = [o.data for o in edns.rdata if o.code == ECS]
            if len(found) > 1 or (found and len(found[0]) < ECS_HEAD.size):
                return self._reply(msg, 1, edns, udp)
            try:
                subnet = _subnet(found[0]) if found else None
            except ValueError:
                return self._reply(msg, FORMERR, edns, udp)
        question = msg.q
        if question.qclass != 1:
            return self._reply(msg, 5, edns, udp, aa=False)
        labels = tuple(x.lower() for x in question.qname.label)
        if labels[-len(self._zone_labels):] != self._zone_labels or len(labels) < len(self._zone_labels):
            return self._reply(msg, 5, edns, udp, aa=False)
        qtype = question.qtype
        if qtype in (QTYPE.AXFR, QTYPE.IXFR):
            return self._reply(msg, 5, edns, udp, aa=False)
        answers: list[RR] = []
        glue: list[RR] = []
        rcode, scope = 0, 0
        if labels == self._host_labels and qtype in (QTYPE.A, QTYPE.AAAA, QTYPE.ANY):
            try:
                route, scope = self._route(subnet, client)
            except ValueError:
                return self._reply(msg, 1, edns, udp)
            answers = self._edge_rrs(question.qname, route.edge, qtype)
        elif labels == self._zone_labels and qtype in (QTYPE.SOA, QTYPE.NS, QTYPE.ANY):
            if qtype != QTYPE.NS:
                answers.append(self._soa_rr_obj())
            if qtype != QTYPE.SOA:
                answers += [RR(question.qname, QTYPE.NS, rdata=NS(n), ttl=self.zone.ttl)
                            for n in self.zone.nameservers]
                glue = self._glue
        elif labels in self._ns_labels and qtype in (QTYPE.A, QTYPE.AAAA, QTYPE.ANY):
            answers = self._address_rrs(question.qname, self.zone.ns_addresses, qtype)
        elif not self._exists(labels):
            rcode = 3
        ecs_reply = None
        if subnet is not None:
            family, source, address = subnet
            ecs_reply = ecs_option(family, source, scope, address)
        return self._reply(msg, rcode, edns, udp, answers=answers, additional=glue, ecs=ecs_reply)

    def _route(self, subnet: Subnet | None, client: str) -> tuple[Route, int]:
        """The route and the ECS scope to answer with: by the subnet, or by the client's address.

        Raises:
            ValueError: the subnet is malformed.
        """
        if subnet is not None and subnet[1]:  # source /0: "place me by my own address"
            route = self.router.route_subnet(*subnet)
            return route, route.location.prefix
        return self.router.route(client), 0

    def _exists(self, labels: tuple[bytes, ...]) -> bool:
        """Whether the name owns records or lies on the way to one (an empty non-terminal)."""
        owned = [self._zone_labels, self._host_labels, *self._ns_labels]
        return any(o[-len(labels):] == labels for o in owned if len(o) >= len(labels))

    def _edge_rrs(self, qname: DNSLabel, site: Site, qtype: int) -> list[RR]:
        addresses = [*site.ipv4, *site.ipv6]
        return self._address_rrs(qname, addresses, qtype)

    def _address_rrs(self, qname: DNSLabel, addresses: tuple[str, ...] | list[str], qtype: int) -> list[RR]:
        out = []
        for a in addresses:
            v6 = ":" in a
            if qtype == QTYPE.ANY or qtype == (QTYPE.AAAA if v6 else QTYPE.A):
                out.append(RR(qname, QTYPE.AAAA if v6 else QTYPE.A, rdata=AAAA(a) if v6 else A(a),
                              ttl=self.zone.ttl))
        return out

    def _soa_rr_obj(self) -> RR:
        z = self.zone
        return RR(z.origin + ".", QTYPE.SOA, ttl=z.ttl,
                  rdata=SOA(z.nameservers[0] + ".", z.rname + ".", (z.serial, *SOA_TIMERS, z.ttl)))

    def _reply(self, msg: DNSRecord, rcode: int, edns: RR | None, udp: bool, *, aa: bool = True,
               answers: list[RR] | None = None, additional: list[RR] | None = None,
               ecs: bytes | None = None) -> bytes:
        h = msg.header
        header = DNSHeader(id=h.id, qr=1, aa=int(aa), rd=h.rd, cd=h.cd, opcode=h.opcode, rcode=rcode & 0xF)
        reply = DNSRecord(header, questions=msg.questions if len(msg.questions) == 1 else [])
        answers = answers or []
        for rr in answers:
            reply.add_answer(rr)
        if rcode == 3 or (rcode == 0 and not answers):
            reply.add_auth(self._soa_rr_obj())
        for rr in additional or ():
            reply.add_ar(rr)
        if edns is not None:
            opts = [EDNSOption(ECS, ecs)] if ecs is not None else []
            reply.add_ar(EDNS0(udp_len=MAX_UDP_PAYLOAD, ext_rcode=rcode >> 4, opts=opts))
        wire = bytes(reply.pack())
        limit = PLAIN_UDP_PAYLOAD if edns is None else max(PLAIN_UDP_PAYLOAD, min(edns.rclass, MAX_UDP_PAYLOAD))
        if udp and len(wire) > limit:
            self.truncated += 1
            reply.rr, reply.auth = [], []
            reply.ar = [r for r in reply.ar if r.rtype == OPT]
            reply.header.tc = 1
            wire = bytes(reply.pack())
        self._count(msg.questions[0].qtype if msg.questions else None, rcode)
        return wire

    def _header_only(self, q: bytes, rcode: int) -> bytes:
        """A reply of a header alone (no sections): same ID, opcode and RD."""
        self._count(None, rcode)
        return q[:ID_BYTES] + bytes((0x80 | (q[2] & (OPCODE | RD)), rcode)) + b"\0" * 8

    def _count(self, qtype: int | None, rcode: int) -> None:
        name = QTYPE.get(qtype, "other") if qtype is not None else "other"
        label = name if name in QTYPE_LABELS else "other"
        self.counts[label, RCODE_LABELS.get(rcode, "other")] += 1
