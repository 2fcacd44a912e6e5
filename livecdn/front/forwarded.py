"""A request's real client address behind load balancers: X-Forwarded-For or Forwarded (RFC 7239).

Only a connection from a trusted network (the operator's load balancers and
proxies, `trusted_proxies` in the topology) may say who its client is; from
anyone else the headers are ignored, or every client could pick its address
(and its rate-limit bucket, its log line, its geo answer). Each proxy appends
the address it got the request from, so the list is read from the right: the
right-most address that is not itself a trusted hop is the client. Entries to
its left were written by that client (or its own proxies) and cannot be
believed, so they are not even read: a header is split from its right end,
at most `MAX_HOPS` hops deep. What cannot be read (garbage, an `unknown` or obfuscated Forwarded
identifier, RFC 7239 section 6.3) ends the walk: the address is then the last
hop known, never a value the client chose.

Only one of the two headers is read, the one the operator's proxies write
(`forwarded_header`): a proxy that writes X-Forwarded-For passes a client's own
`Forwarded` through untouched, so honouring both would let clients choose.

Everything here is pure: `ClientAddresses.resolve(peer, value)` has no I/O.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .request import Request

__all__ = ["FORWARDED", "MAX_HOPS", "X_FORWARDED_FOR", "ClientAddresses", "canonical", "forwarded_for",
           "x_forwarded_for"]

X_FORWARDED_FOR = "x-forwarded-for"
FORWARDED = "forwarded"
# Hops read from the right at most: more trusted proxies in a row than any
# real chain has; past them the walk stops (a header of thousands of entries
# costs no more than this many parses).
MAX_HOPS = 16
# Header values remembered with the client they name, and hop addresses with
# their canonical form and trust: a balancer's requests carry a few thousand
# distinct players at a time, each with the same value on every request, and a
# walk costs several microseconds (a Forwarded parse, ipaddress) where a dict
# lookup costs a tenth of one. Bounded: a flood of distinct values empties
# them rather than growing them.
MEMO_BOUND = 8192

# An RFC 7239 forwarded-pair: token "=" ( token / quoted-string ), with the
# spaces proxies put around separators.
_PAIR = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)=([!#$%&\'*+.^_`|~0-9A-Za-z-]+|"(?:[^"\\]|\\.)*")\s*')
_QUOTED_PAIR = re.compile(r"\\(.)")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def canonical(text: str) -> IPAddress | None:
    """An address as a hop writes it (`1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:80`), or None.

    IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, what a dual-stack socket
    reports for an IPv4 peer) are their IPv4 address: one client, one bucket.
    """
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (end + 1 < len(text) and not _port(text[end + 1:])):
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # IPv4 with a port (an IPv6 address has at least two colons)
        text, port = text.split(":")
        if not port.isdigit():
            return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _port(text: str) -> bool:
    return text.startswith(":") and text[1:].isdigit()


def x_forwarded_for(value: str) -> list[str]:
    """The last `MAX_HOPS` hops of an X-Forwarded-For value, right to left (repeated headers arrive joined)."""
    return value.rsplit(",", MAX_HOPS)[::-1][:MAX_HOPS]  # past MAX_HOPS commas, the unsplit rest is dropped


def forwarded_for(value: str) -> Iterator[str | None]:
    """The `for=` of each element of a Forwarded value, right to left, read only as far as asked.

    Read from the right because only the right end was written by trusted
    proxies: whatever a client wrote to the left of its own element (an
    unterminated quote, kilobytes of junk) is never even scanned. An element
    without `for`, or one that is not well-formed, is None: its hop is
    unknown (and the walk stops there).
    """
    end, quoted = len(value), False
    for i in range(len(value) - 1, -1, -1):
        ch = value[i]
        if ch == '"' and not _escaped(value, i):
            quoted = not quoted
        elif ch == "," and not quoted:
            yield _for(value[i + 1:end])
            end = i
    yield _for(value[:end])


def _escaped(value: str, i: int) -> bool:
    """Is the character at `i` a quoted-pair's (an odd run of backslashes before it)?"""
    j = i
    while j and value[j - 1] == "\\":
        j -= 1
    return (i - j) % 2 == 1


def _for(element: str) -> str | None:
    """The `for` value of one Forwarded element; None when it has none or is not well-formed."""
    found: str | None = None
    pos = 0
    while pos < len(element):
        m = _PAIR.match(element, pos)
        if m is None:
            return None
        name, raw = m.group(1), m.group(2)
        if name.lower() == "for":
            if found is not None:
                return None  # two `for`s in one element: which hop is it?
            found = _QUOTED_PAIR.sub(r"\1", raw[1:-1]) if raw.startswith('"') else raw
        pos = m.end()
        if pos < len(element):
            if element[pos] != ";":
                return None
            pos += 1
    return found


class ClientAddresses:
    """Who the client of a request is, given the connection's peer and the forwarding header.

    Args:
        trusted: networks whose hops may name their client (`"10.0.0.0/8"`, `"::1"`); empty: none.
        header: which header the trusted proxies write (`X_FORWARDED_FOR` or `FORWARDED`).

    Raises:
        ValueError: a network or the header name is not one (the message names it).
    """

    __slots__ = ("networks", "header", "header_bytes", "_hops", "_memo", "_named")

    def __init__(self, trusted: Iterable[str], header: str = X_FORWARDED_FOR) -> None:
        if header not in (X_FORWARDED_FOR, FORWARDED):
            raise ValueError(f"header must be {X_FORWARDED_FOR!r} or {FORWARDED!r}, got {header!r}")
        self.networks: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in trusted)
        self.header = header
        self.header_bytes = header.encode("ascii")  # as the HTTP/1.1 shell keys its headers
        self._hops: Callable[[str], Iterable[str | None]] = (
            x_forwarded_for if header == X_FORWARDED_FOR else forwarded_for)
        self._memo: dict[str, tuple[str, bool] | None] = {}
        self._named: dict[str | bytes, str | None] = {}  # header value → the client it names (None: the peer)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def _lookup(self, text: str) -> tuple[str, bool] | None:
        """(canonical address, trusted) of a hop, or None for what is no address; memoised."""
        memo = self._memo
        try:
            return memo[text]
        except KeyError:
            pass
        ip = canonical(text)
        entry = None if ip is None else (str(ip), any(ip in n for n in self.networks))
        if len(memo) >= MEMO_BOUND:
            memo.clear()
        memo[text] = entry
        return entry

    def trusts(self, peer: str) -> bool:
        """Whether a connection from `peer` may name its client (a trusted proxy)."""
        entry = self._lookup(peer) if self.networks else None
        return entry is not None and entry[1]

    def resolve(self, peer: str, value: str | bytes | None) -> str:
        """The client address of a request from `peer` that carried `value` in the forwarding header.

        Returns:
            `peer` itself when it is not trusted or the header says nothing
            readable; else the right-most hop that is not trusted (or the last
            readable one when the walk stops: garbage, unknown, `MAX_HOPS`),
            in canonical form.
        """
        if value is None or not self.trusts(peer):
            return peer
        return self.forwarded(peer, value)

    def client_of(self, peer: str, request: Request) -> str:
        """The client a trusted `peer` names for `request`, kept on it for the access log (either shell)."""
        value = request.headers.get(self.header_bytes)
        if value is None:
            return peer
        client = request.client = self.forwarded(peer, value)
        return client

    def forwarded(self, peer: str, value: str | bytes) -> str:
        """As `resolve`, for a `peer` already known to be trusted (a listener asks once per connection)."""
        named = self._named
        try:
            client = named[value]
        except KeyError:
            if len(named) >= MEMO_BOUND:
                named.clear()
            client = named[value] = self._walk(value.decode("latin-1") if isinstance(value, bytes) else value)
        return peer if client is None else client

    def _walk(self, value: str) -> str | None:
        """The hop a value names as the client, walking from the right; None: not even the nearest is readable."""
        client = None
        for hop in itertools.islice(self._hops(value), MAX_HOPS):
            entry = None if hop is None else self._lookup(hop)
            if entry is None:
                break  # unreadable or unknown: nothing to its left can be believed
            client = entry[0]
            if not entry[1]:
                break
        return client
