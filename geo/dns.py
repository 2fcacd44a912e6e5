"""The router's DNS answers, sans-io: query bytes in, reply bytes out.

`Answerer.answer()` knows nothing of sockets. The UDP and TCP transports in
`geo.node` feed it each message and send back what it returns (or nothing,
for a packet that must be dropped).

Two paths give the same answers:

- the fast path parses by hand the one query shape that nearly all traffic
  has, one A or AAAA question for the CDN host name, with or without EDNS and
  an ECS option, and joins pre-built byte strings for the reply;
- everything else goes through `dnslib`, which knows the whole wire format:
  SOA and NS for the zone (with glue for its in-zone name servers), NXDOMAIN
  for unknown names in it, REFUSED outside it, FORMERR for malformed
  messages, NOTIMP for other opcodes, BADVERS for EDNS versions above 0.

Replies over UDP that would not fit the client's limit (512 bytes, or its
EDNS payload size up to `MAX_UDP_PAYLOAD`) are truncated with TC set, so the
client retries over TCP. Responses (QR set) and messages too short to hold
a header are dropped, never answered: answering them could start a loop.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from dataclasses import dataclass

from dnslib import AAAA, EDNS0, NS, QTYPE, RR, SOA, A, DNSHeader, DNSLabel, DNSRecord, EDNSOption

from .choose import Site
from .locate import subnet_address
from .route import Route, Router

__all__ = ["Answerer", "MAX_UDP_PAYLOAD", "Zone", "ecs_option", "QTYPE_LABELS", "RCODE_LABELS"]

# The EDNS payload size we announce and honour at most: the DNS flag day 2020
# value, which avoids IP fragmentation on any path.
MAX_UDP_PAYLOAD = 1232
PLAIN_UDP_PAYLOAD = 512  # RFC 1035, for clients without EDNS
ECS = 8  # EDNS option code of Client Subnet (RFC 7871)
OPT = 41
TYPE_A, TYPE_AAAA = b"\x00\x01", b"\x00\x1c"

# Metric label values: a bounded set, whatever the queries contain.
QTYPE_LABELS = ("A", "AAAA", "ANY", "SOA", "NS", "CNAME", "MX", "TXT", "other")
RCODE_LABELS = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
                16: "BADVERS"}
SOA_TIMERS = (3600, 600, 86400)  # refresh, retry, expire: no secondaries pull this zone
# Replies remembered at most (a few hundred bytes each); a flood of distinct
# queries empties the table, never grows it past this.
MAX_REPLIES = 100_000

# A pre-encoded reply tail: QD/AN/NS counts, the answer and authority records, metric labels.
Tail = tuple[bytes, bytes, tuple[str, str]]


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


def ecs_option(family: int, source: int, scope: int, address: bytes) -> bytes:
    """The data of an ECS option (without the option code and length)."""
    return struct.pack(">HBB", family, source, scope) + address


class Answerer:
    """Answers DNS messages for one zone from a `Router`'s decisions.

    Counts what it answered in `counts` ((qtype, rcode) label pairs),
    `truncated` and `dropped`; the node exports them as metrics.
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
        # (message after its ID, client, udp) → (reply after its ID, route key, stat),
        # for fast-path replies of the current router generation.
        self._replies: dict[tuple[bytes, str, bool], tuple[bytes, tuple[str, str], tuple[str, str]]] = {}
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
        # The same message (but for its ID) from the same client gets the same
        # reply until health changes: resolvers repeat themselves all day.
        router = self.router
        if self._generation != router.generation:
            self._replies.clear()
            self._generation = router.generation
        key = (query[2:], client, udp)
        hit = self._replies.get(key)
        if hit is not None:
            tail, route_key, stat = hit
            router.decisions[route_key] += 1
            self.counts[stat] += 1
            return query[:2] + tail
        q = query
        n = self._qend
        # One question, no answer/authority records, QR=0, opcode QUERY, class IN,
        # the host name (any case) and A or AAAA; else the general path.
        if (len(q) < n + 4 or q[2] & 0xF8 or q[4:10] != b"\x00\x01\x00\x00\x00\x00"
                or q[n + 2:n + 4] != b"\x00\x01" or q[12:n].lower() != self._host_wire):
            return self._general(q, client, udp)
        qtype = q[n:n + 2]
        if qtype != TYPE_A and qtype != TYPE_AAAA:
            return self._general(q, client, udp)
        end = n + 4
        arcount = q[10:12]
        ecs = None
        if arcount == b"\x00\x00":
            if len(q) != end:
                return self._general(q, client, udp)
            limit = PLAIN_UDP_PAYLOAD
        elif arcount == b"\x00\x01":
            # OPT: root name, TYPE 41, CLASS = payload size, TTL = ext-rcode/version/flags, RDLEN.
            if (len(q) < end + 11 or q[end] != 0 or q[end + 1:end + 3] != b"\x00\x29" or q[end + 6] != 0
                    or end + 11 + (q[end + 9] << 8 | q[end + 10]) != len(q)):
                return self._general(q, client, udp)
            size = q[end + 3] << 8 | q[end + 4]
            limit = MAX_UDP_PAYLOAD if size > MAX_UDP_PAYLOAD else (size if size > PLAIN_UDP_PAYLOAD
                                                                    else PLAIN_UDP_PAYLOAD)
            p = end + 11
            while p < len(q):
                if p + 4 > len(q):
                    return self._general(q, client, udp)
                olen = q[p + 2] << 8 | q[p + 3]
                if q[p:p + 2] == b"\x00\x08":
                    if ecs is not None:
                        return self._general(q, client, udp)
                    ecs = q[p + 4:p + 4 + olen]
                p += 4 + olen
            if p != len(q):
                return self._general(q, client, udp)
        else:
            return self._general(q, client, udp)

        if ecs is None:
            route = router.route(client)
            opt = b"" if arcount == b"\x00\x00" else self._opt_plain
        else:
            if len(ecs) < 4:
                return self._general(q, client, udp)
            try:
                if ecs[2] == 0:  # source /0: "place me by my own address"
                    route, scope = router.route(client), 0
                else:
                    route = router.route_subnet(ecs[0] << 8 | ecs[1], ecs[2], ecs[4:])
                    scope = route.location.prefix
            except ValueError:
                return self._general(q, client, udp)
            opt = self._opt_ecs(ecs[:3] + bytes((scope,)) + ecs[4:])
        counts, body, stat = self._tails[route.decision.edge.name][qtype]
        tail = b"".join((bytes((0x84 | (q[2] & 0x01), q[3] & 0x10)), counts,
                         b"\x00\x01" if opt else b"\x00\x00", q[12:end], body, opt))
        if udp and len(tail) + 2 > limit:
            return self._truncate(q[:2], q[2], q[3], q[12:end], opt, qtype)
        self.counts[stat] += 1
        if len(self._replies) >= MAX_REPLIES:
            self._replies.clear()
        self._replies[key] = (tail, route.key, stat)
        return q[:2] + tail

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
                    body = b"".join(b"\xc0\x0c" + qtype + b"\x00\x01" + ttl + struct.pack(">H", len(p)) + p
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

    _opt_plain = b"\x00\x00\x29" + struct.pack(">H", MAX_UDP_PAYLOAD) + b"\x00\x00\x00\x00\x00\x00"

    @staticmethod
    def _opt_ecs(data: bytes) -> bytes:
        return (b"\x00\x00\x29" + struct.pack(">H", MAX_UDP_PAYLOAD) + b"\x00\x00\x00\x00"
                + struct.pack(">HHH", len(data) + 4, ECS, len(data)) + data)

    def _truncate(self, qid: bytes, b2: int, b3: int, question: bytes, opt: bytes, qtype: bytes) -> bytes:
        self.truncated += 1
        self.counts["A" if qtype == TYPE_A else "AAAA", "NOERROR"] += 1
        return b"".join((qid, bytes((0x86 | (b2 & 0x01), b3 & 0x10)), b"\x00\x01\x00\x00\x00\x00",
                         b"\x00\x01" if opt else b"\x00\x00", question, opt))

    # --- general path (dnslib) -----------------------------------------------

    def _general(self, q: bytes, client: str, udp: bool) -> bytes | None:
        if len(q) < 12 or q[2] & 0x80:
            self.dropped += 1
            return None
        try:
            msg = DNSRecord.parse(q)
        except Exception:  # dnslib raises many kinds on garbage: DNSError, struct.error, IndexError...
            return self._formerr(q)
        if msg.header.opcode != 0:
            return self._reply(msg, 4, None, udp)
        if len(msg.questions) != 1 or msg.rr or msg.auth:
            return self._reply(msg, 1, None, udp)
        opts = [r for r in msg.ar if r.rtype == OPT]
        if len(opts) > 1:
            return self._reply(msg, 1, None, udp)
        edns = opts[0] if opts else None
        ecs = None
        if edns is not None:
            if (edns.ttl >> 16) & 0xFF != 0:
                return self._reply(msg, 16, edns, udp)
            found = [o.data for o in edns.rdata if o.code == ECS]
            if len(found) > 1 or (found and len(found[0]) < 4):
                return self._reply(msg, 1, edns, udp)
            ecs = found[0] if found else None
            if ecs is not None and ecs[2]:
                try:
                    subnet_address(ecs[0] << 8 | ecs[1], ecs[2], ecs[4:])
                except ValueError:
                    return self._reply(msg, 1, edns, udp)
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
                route, scope = self._route(ecs, client)
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
        if ecs is not None:
            ecs_reply = ecs_option(ecs[0] << 8 | ecs[1], ecs[2], scope, ecs[4:])
        return self._reply(msg, rcode, edns, udp, answers=answers, additional=glue, ecs=ecs_reply)

    def _route(self, ecs: bytes | None, client: str) -> tuple[Route, int]:
        if ecs is None or ecs[2] == 0:
            return self.router.route(client), 0
        route = self.router.route_subnet(ecs[0] << 8 | ecs[1], ecs[2], ecs[4:])
        return route, route.location.prefix

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

    def _formerr(self, q: bytes) -> bytes:
        """FORMERR for a message dnslib cannot parse: header only, same ID and opcode."""
        self._count(None, 1)
        return q[:2] + bytes((0x80 | (q[2] & 0x79), 0x01)) + b"\0" * 8

    def _count(self, qtype: int | None, rcode: int) -> None:
        name = QTYPE.get(qtype, "other") if qtype is not None else "other"
        label = name if name in QTYPE_LABELS else "other"
        self.counts[label, RCODE_LABELS.get(rcode, "other")] += 1
