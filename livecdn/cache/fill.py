"""One upstream fetch shared by every request for a key: sans-io.

A `Fill` is the read-while-writer state machine behind coalescing. It is fed
events (a client asked, the upstream answered, a chunk arrived, the upstream
failed, a client left) and answers with commands (start a fetch, respond to a
client, let a client send bytes [start, end) of the shared body, store the
object). It has no socket, no clock and no `await`: the engine shell turns its
commands into I/O, and tests drive it with a playbook.

A request with a stale copy does not wait long for a slow upstream: the fill
asks the shell for a timer (`StaleTimer`) and, when it fires (`StaleDeadline`),
answers its waiting clients with the copy while the fetch goes on. A fetch
that fails is remembered (`RememberFailure`): the shell answers the key from
that memory for `error_ttl`, so an error storm does not reach the upstream.

A playlist's fill also compares the new read with the last one this process
held (`Held`): a stream that restarted makes it drop the previous run's
objects (`DropRun`) before the new playlist is stored, and an answer that lags
behind the held copy is not stored at all.

The body is kept once, in `Fill.body`; a client is only an offset into it, so a
slow player costs nothing but its own position, and the upstream read never
waits for anyone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from livecdn.cache.freshness import Lifetime, Rules, failure_lifetime, lifetime, stale_after
from livecdn.cache.keys import ANY, CacheKey, vary_names
from livecdn.cache.stored import KEPT_HEADERS, Stored
from livecdn.media.kinds import CONTENT_TYPES, NameKind, is_hls_playlist
from livecdn.media.names import directory
from livecdn.media.playlist import Change, MalformedPlaylist, Manifest, compare, proves_whole, read

__all__ = [
    "AbortResponse", "CacheResult", "ClientGone", "ClientRequested", "Command", "DropRun", "EndResponse", "Event",
    "Fill", "Head", "Held", "Log", "RefreshRequested", "RememberFailure", "Respond", "SendBytes", "ServeStored",
    "StaleDeadline", "StaleTimer", "StartFetch", "StoreObject", "UpstreamChunk", "UpstreamDone", "UpstreamFailed",
    "UpstreamResponded", "VaryLearned", "AGE_HEADER", "ERROR_HEADER", "MAX_CLIENTS_PER_FILL", "REPLICA_PATIENCE",
    "RETRY_STATUSES", "UNFRAMED_HEADER",
]

# Requests attached to one fetch. Past this a popular key is better served by a
# 503 and a retry than by one more waiter on an already huge fan-out.
MAX_CLIENTS_PER_FILL = 20_000
# Upstream answers that mean "this upstream cannot serve now": try the next one.
RETRY_STATUSES = frozenset({500, 502, 503, 504})
# Generated errors say why in this header, so the tier below can pass the reason on
# (the name as looked up among lower-cased upstream headers).
ERROR_HEADER = "x-livecdn-error"
# A livecdn tier's Age to the millisecond (the standard Age is whole seconds, so
# each tier would round it down again). Trusted only within the second that Age
# gives: from any other server it can move an object's birth by less than Age's
# own rounding.
AGE_HEADER = "x-livecdn-age"
# Addresses in a reason relayed from upstream: players are never told where the tiers above live.
ADDRESS = re.compile(r"[a-z][a-z0-9+.-]*://\S*|\[[0-9a-f:.]+\](?::\d+)?|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?",
                     re.IGNORECASE)
# An answer whose body ended only when its upstream closed the connection
# (no Content-Length, not chunked) says so in this header as it is passed on:
# the tier below, which gets it with proper framing, must not store it either.
UNFRAMED_HEADER = "x-livecdn-close-delimited"
# How long an answer behind the held playlist is taken for a lagging replica,
# in target durations of the held copy (about what a player has buffered):
# past that the origin itself went back, and its answer is taken as a restart.
REPLICA_PATIENCE = 3
# Types that say nothing: a name we know gets its proper type instead.
GENERIC_TYPES = frozenset({"application/octet-stream", "binary/octet-stream", "text/plain"})


class CacheResult(enum.StrEnum):
    """How a request was answered: the access log's `cache`, the `X-Cache` header, the requests metric's label.

    A `str` enum, so it is its own label and log text.
    """

    HIT = "hit"  # a fresh stored copy
    MISS = "miss"  # the request that started the fetch
    COALESCED = "coalesced"  # joined a fetch in flight
    STALE = "stale"  # a stale copy (while revalidating, or because the upstream failed)
    REJECTED = "rejected"  # refused before any upstream fetch
    ERROR = "error"  # the upstream failed with nothing to serve instead, or a bug

    def __init__(self, value: str) -> None:
        self.header = value.upper()  # as `X-Cache` says it


@dataclass(frozen=True, slots=True)
class Head:
    """Status and headers one client is to receive; `body` only for generated errors."""

    status: int
    headers: tuple[tuple[str, str], ...]
    length: int | None  # None: not known yet, the answer is streamed
    cache: CacheResult  # MISS, COALESCED, STALE (the tier above served it stale) or ERROR
    born: float = 0.0
    body: bytes = b""


# --- events: what happened -------------------------------------------------

class Event:
    __slots__ = ()


@dataclass(frozen=True, slots=True)
class ClientRequested(Event):
    """A request for the key arrived and was attached to this fill."""
    client: int


@dataclass(frozen=True, slots=True)
class RefreshRequested(Event):
    """Fetch the key with no client waiting (stale-while-revalidate, prefetch, a guard or poll refresh)."""


@dataclass(frozen=True, slots=True)
class ClientGone(Event):
    """An attached client disconnected or finished early."""
    client: int


@dataclass(frozen=True, slots=True)
class UpstreamResponded(Event):
    """The upstream sent its status line and headers (names lower-cased)."""
    status: int
    headers: tuple[tuple[str, str], ...]
    at: float
    framed: bool = True  # False: no Content-Length and not chunked, the body ends when the connection closes


@dataclass(frozen=True, slots=True)
class UpstreamChunk(Event):
    """More body bytes arrived from the upstream."""
    data: bytes

    def __repr__(self) -> str:
        return f"UpstreamChunk({len(self.data)} bytes)"


@dataclass(frozen=True, slots=True)
class UpstreamDone(Event):
    """The upstream body ended cleanly."""
    at: float


@dataclass(frozen=True, slots=True)
class UpstreamFailed(Event):
    """The upstream connection failed, timed out or broke mid-body.

    `reason` is what players may be told after the upstream's tier ("timed
    out"); `detail`, for the log only, may name addresses.
    """
    reason: str
    at: float
    timeout: bool = False
    detail: str = ""


@dataclass(frozen=True, slots=True)
class StaleDeadline(Event):
    """The timer a `StaleTimer` asked for has fired."""
    at: float


# --- commands: what the shell must do --------------------------------------

class Command:
    __slots__ = ()


@dataclass(frozen=True, slots=True)
class StartFetch(Command):
    """Fetch the key from `upstream`; later events belong to `attempt`."""
    upstream: str
    attempt: int
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Respond(Command):
    """Send this status and headers to the client."""
    client: int
    head: Head


@dataclass(frozen=True, slots=True)
class SendBytes(Command):
    """The client may now send bytes [start, end) of the shared body."""
    client: int
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class EndResponse(Command):
    """The client's answer is complete."""
    client: int


@dataclass(frozen=True, slots=True)
class AbortResponse(Command):
    """The body broke after headers were sent: cut the client's connection."""
    client: int
    reason: str


@dataclass(frozen=True, slots=True)
class ServeStored(Command):
    """Answer the client from a complete object: revalidated, stale, or a playlist that arrived whole."""
    client: int
    obj: Stored
    cache: CacheResult


@dataclass(frozen=True, slots=True)
class StoreObject(Command):
    """Put a complete answer into the stores."""
    obj: Stored


@dataclass(frozen=True, slots=True)
class DropRun(Command):
    """A stream restarted: drop `origin`'s objects stored under these directories, but `keep` (the new playlist)."""
    origin: str
    directories: frozenset[str]
    keep: str


@dataclass(frozen=True, slots=True)
class VaryLearned(Command):
    """The origin varies this object on `names` (none: no longer): remember it for the object's later requests.

    `again`: clients to send back to ask again, now for their own variant. A
    fetch made without the headers the origin varies on fits none of them.
    """
    names: tuple[str, ...]
    again: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class StaleTimer(Command):
    """Feed `StaleDeadline` in `delay` seconds, unless the fill is over by then (one timer per fill at a time)."""
    delay: float


@dataclass(frozen=True, slots=True)
class RememberFailure(Command):
    """The fetch failed: answer the key's requests from `error` (or a stale copy) while it is fresh.

    `error` is what the fill's clients got (or would have), born when the
    fetch failed, fresh for `error_ttl`, never stored: it never replaces a copy.
    """
    error: Stored


@dataclass(frozen=True, slots=True)
class Log(Command):
    """A log line that follows from the event just handled."""
    level: str
    message: str


@dataclass(frozen=True, slots=True)
class Held:
    """The last read of a playlist this process stored, and when that answer was born upstream."""

    manifest: Manifest
    born: float


class _State(enum.Enum):
    IDLE = "idle"
    WAITING = "waiting"  # fetch started, no headers yet
    BODY = "body"  # headers in, body arriving
    DONE = "done"
    FAILED = "failed"


class Asked(NamedTuple):
    """The fetch from the tier above behind an answer, as its access line tells it.

    `status` is what that tier answered, or 502/504 (as nginx's `$upstream_status`) when it
    sent no head (refused, broken, timed out); `seconds` until its head or its failure.
    """
    upstream: str
    status: int
    seconds: float
    request_id: str


@dataclass(eq=False)
class Fill:
    """The state of one coalesced upstream fetch.

    Args:
        key: the object's key.
        kind: its kind by name; a playlist's 200 is checked whole (read once,
            `livecdn.media.playlist.read`) before any client sees a byte of it.
        upstreams: where to fetch from, in order of preference.
        rules: freshness settings.
        max_bytes: the largest body this fill will hold.
        stale: an expired copy, used for conditional requests and stale-if-error.
        only_if_cached: ask for the upstream's stored copy only (RFC 9111 5.2.1.7); its 504
            then means "not stored there", an answer to pass on, not a failure to retry.
        tiers: what players are told each upstream is ("shield", "origin"), never its
            address; "upstream" for each when not given.
        held: the playlist this process stored last for the key (its copy may be gone), to tell
            a restart or a lagging replica from a stream that went on.
        target: the target duration of the playlist the key names a version of, as last held
            (None: not a playlist, or never held): its failures live in target durations.
        siblings: those of `upstreams` that are other workers of this node: each asks every
            upstream after it itself, so an answer from one, whatever its status, is final.
    """

    key: CacheKey
    kind: NameKind
    upstreams: tuple[str, ...]
    rules: Rules
    max_bytes: int
    stale: Stored | None = None
    only_if_cached: bool = False
    held: Held | None = None
    tiers: tuple[str, ...] = ()
    target: float | None = None
    siblings: frozenset[str] = frozenset()
    # A manifest's body as this node serves it (the edge's content steering, `livecdn.media.steering`):
    # applied once, when the body has arrived whole, so the stored copy and every answer carry it.
    dress: Callable[[str, bytes, Manifest], bytes] | None = None
    # The X-Request-Id its fetches carry upstream: the id of the request that started it.
    request_id: str = ""
    # Set by the shell: the last fetch's upstream, its status and time, for the access lines of its answers.
    asked: Asked | None = field(default=None, init=False)
    # What the fill has received so far, read by the shell's attachments.
    body: list[bytes] = field(default_factory=list, init=False)
    size: int = field(default=0, init=False)
    attempt: int = field(default=0, init=False)  # index into upstreams of the fetch in flight
    # The state of the fetch: set by events only.
    _clients: dict[int, CacheResult] = field(default_factory=dict, init=False)  # client → miss | coalesced
    _state: _State = field(default=_State.IDLE, init=False)
    _status: int = field(default=0, init=False)
    _headers: tuple[tuple[str, str], ...] = field(default=(), init=False)
    _length: int | None = field(default=None, init=False)
    _born: float = field(default=0.0, init=False)
    _framed: bool = field(default=True, init=False)
    _shared: bool = field(default=True, init=False)  # False: the answer is for its requests only (Vary)
    _timer: bool = field(default=False, init=False)  # a `StaleTimer` was asked for
    _serve_stale: bool = field(default=False, init=False)  # the wait is over: requests get the stale copy now
    _stale_above: bool = field(default=False, init=False)  # the tier above served a stale copy

    def __post_init__(self) -> None:
        if not self.upstreams:
            raise ValueError(f"fill for {self.key} needs at least one upstream")

    @property
    def blocking(self) -> bool:
        """An LL-HLS blocking reload: its URL names a playlist version that may not exist yet."""
        return "_HLS_msn=" in self.key.query

    @property
    def finished(self) -> bool:
        """No more events will change this fill; the shell may forget it."""
        return self._state in (_State.DONE, _State.FAILED)

    @property
    def _checked_whole(self) -> bool:
        """Is the body withheld until it has arrived whole and been read?

        A playlist's 200 is: a truncated or junk playlist must never reach a
        player, and nobody has seen a byte, so another upstream can still be
        tried. Segments and errors stream as they arrive.
        """
        return self.kind is NameKind.PLAYLIST and self._status == 200

    def handle(self, event: Event) -> list[Command]:
        """Feed one event.

        Returns:
            The commands to carry out, in order.

        Raises:
            RuntimeError: an event that cannot happen in the current state
                (a shell bug, not an upstream problem).
        """
        match event:
            case ClientRequested(client):
                return self._client_requested(client)
            case RefreshRequested():
                if self._state is not _State.IDLE:
                    raise RuntimeError(f"refresh of {self.key} requested twice")
                return self._start(0)
            case ClientGone(client):
                self._clients.pop(client, None)
                return []
            case StaleDeadline(at):
                return self._deadline(at)
            case UpstreamResponded(status, headers, at, framed):
                self._expect(_State.WAITING, event)
                return self._responded(status, headers, at, framed)
            case UpstreamChunk(data):
                self._expect(_State.BODY, event)
                return self._chunk(data)
            case UpstreamDone(at):
                self._expect(_State.BODY, event)
                return self._done(at)
            case UpstreamFailed(reason, at, timeout):
                if self._state not in (_State.WAITING, _State.BODY):
                    raise RuntimeError(f"{event!r} in state {self._state.value}")
                detail = f"{self.upstreams[self.attempt]}: {event.detail or reason}"
                if self._state is _State.BODY and not self._checked_whole:
                    return self._broken(detail)
                return self._failover(at, 504 if timeout else 502, f"{self._tier} {reason}", detail)
        raise RuntimeError(f"unknown event {event!r}")

    def _expect(self, state: _State, event: Event) -> None:
        if self._state is not state:
            raise RuntimeError(f"{event!r} in state {self._state.value}")

    # --- clients ---

    def _client_requested(self, client: int) -> list[Command]:
        if self.finished:
            raise RuntimeError(f"client {client} attached to finished fill {self.key}")
        if len(self._clients) >= MAX_CLIENTS_PER_FILL:
            return self._error(client, 503, f"more than {MAX_CLIENTS_PER_FILL} requests waiting for {self.key}")
        first = self._state is _State.IDLE
        if self._serve_stale and self._undecided:
            assert self.stale is not None
            return [ServeStored(client, self.stale, CacheResult.STALE)]
        self._clients[client] = CacheResult.MISS if first else CacheResult.COALESCED
        if first:
            return self._start(0) + self._stale_timer()
        if self._state is _State.BODY and not self._checked_whole:
            cmds: list[Command] = [Respond(client, self._head(client))]
            if self.size:
                cmds.append(SendBytes(client, 0, self.size))
            return cmds
        return self._stale_timer()  # joined a fetch (a refresh, say) with no answer yet

    @property
    def _undecided(self) -> bool:
        """Have the clients still to learn what their answer is (no head sent yet, none coming from what arrived)?"""
        return self._state is _State.WAITING or (self._state is _State.BODY and self._checked_whole)

    def _stale_timer(self) -> list[Command]:
        """For the first client of a fill with a stale copy to fall back on: how long it may wait for the upstream.

        A blocking playlist reload (LL-HLS `_HLS_msn`) waits by design, and gets no timer.
        """
        stale = self.stale
        if self._timer or stale is None or not stale.lifetime.stale_if_error or "_HLS_msn" in self.key.query:
            return []
        self._timer = True
        return [StaleTimer(stale_after(self.rules, stale.manifest.info if stale.manifest else None))]

    def _deadline(self, at: float) -> list[Command]:
        """The upstream is slow: the waiting clients get the stale copy, and so does any later one, while it lasts."""
        stale = self.stale
        if not self._undecided or stale is None:
            return []
        if not stale.servable_on_error(at):
            self._serve_stale = False  # past its bound: later clients wait for the fetch
            return []
        self._serve_stale = True
        cmds: list[Command] = [Log("info", f"{self.key}: upstream slow; serving the stale copy while the fetch"
                                           " goes on")] if self._clients else []
        cmds += [ServeStored(c, stale, CacheResult.STALE) for c in self._clients]
        self._clients.clear()
        until = stale.born + stale.lifetime.fresh + stale.lifetime.stale_if_error
        return cmds + [StaleTimer(until - at)]  # then the copy is out of bound

    def _head(self, client: int, length: int | None = None) -> Head:
        return Head(self._status, self._headers, self._length if length is None else length,
                    self._cache(client), self._born)

    def _cache(self, client: int) -> CacheResult:
        """How the client's answer is told: STALE when the tier above said it served a stale copy."""
        return CacheResult.STALE if self._stale_above else self._clients[client]

    @property
    def _tier(self) -> str:
        """The upstream tried, as players may be told of it."""
        return self.tiers[self.attempt] if self.tiers else "upstream"

    def _error(self, client: int, status: int, reason: str, retry_after: str | None = None) -> list[Command]:
        return [Respond(client, _error_head(status, reason, retry_after)), EndResponse(client)]

    # --- upstream ---

    def _start(self, attempt: int) -> list[Command]:
        self._state = _State.WAITING
        self.attempt = attempt
        self.body, self.size = [], 0
        cond: list[tuple[str, str]] = []
        if self.stale is not None:
            if self.stale.etag:
                cond.append(("if-none-match", self.stale.etag))
            if self.stale.last_modified:
                cond.append(("if-modified-since", self.stale.last_modified))
        if self.only_if_cached:
            cond.append(("cache-control", "only-if-cached"))
        return [StartFetch(self.upstreams[attempt], attempt, tuple(cond))]

    def _responded(self, status: int, headers: tuple[tuple[str, str], ...], at: float,
                   framed: bool) -> list[Command]:
        hdrs = dict(headers)
        born = at - _age(hdrs)
        self._stale_above = hdrs.get("x-cache", "").lower() == CacheResult.STALE
        if status == 304 and self.stale is not None:
            obj = self._revalidated(self.stale, hdrs, born, at)
            self._state = _State.DONE
            cmds: list[Command] = [StoreObject(obj)] if obj.lifetime.store else []
            return cmds + [ServeStored(c, obj, self._cache(c)) for c in self._clients]
        if (status in RETRY_STATUSES and not (status == 504 and self.only_if_cached)) or status == 304:
            said = hdrs.get(ERROR_HEADER)  # a livecdn tier above said why
            why = f"{self._tier} answered {status}" + (f" ({ADDRESS.sub('(address)', said)})" if said else "")
            detail = f"{self.upstreams[self.attempt]} answered {status}" + (f" ({said})" if said else "")
            # The last upstream's 503 (with its Retry-After) and 504 reach the player as they are. A blocking
            # reload's 503 is the origin's hold running out (RFC 8216bis 6.2.5.2): another upstream would hold
            # the player as long again, so it is the answer; so is a sibling worker's, which tried the rest.
            return self._failover(at, status if status in (503, 504) else 502, why, detail,
                                  hdrs.get("retry-after") if status == 503 else None,
                                  final=status == 503 and self.blocking or
                                  self.upstreams[self.attempt] in self.siblings)
        vary = vary_names(hdrs.get("vary"))
        learned: list[Command] = []
        if vary != self.key.vary_names and vary != ANY:
            if not self.key.vary:
                # Fetched without the headers the origin varies on: the answer fits none of the clients for sure.
                again = tuple(self._clients)
                self._clients.clear()
                self._state = _State.DONE
                return [VaryLearned(vary, again)]
            learned.append(VaryLearned(vary))
        # `Vary: *`, or names other than this variant's: served to the requests it was fetched for, never stored.
        self._shared = vary == self.key.vary_names
        length = _int(hdrs.get("content-length"))
        if length is not None and length > self.max_bytes:
            reason = f"object of {length} bytes exceeds max_object_bytes ({self.max_bytes})"
            return self._fail_all(_error_head(502, reason))
        kept = [(k, v) for k, v in headers if k in KEPT_HEADERS and k != "content-type"]
        ctype = hdrs.get("content-type")
        if status == 200 and self.key.extension in CONTENT_TYPES and (
                ctype is None or ctype.split(";")[0].strip().lower() in GENERIC_TYPES):
            ctype = CONTENT_TYPES[self.key.extension]
        if ctype is not None:
            kept.insert(0, ("content-type", ctype))
        self._framed = framed and UNFRAMED_HEADER not in hdrs
        if not self._framed:
            kept.append((UNFRAMED_HEADER, "1"))
        self._state = _State.BODY
        self._status, self._headers, self._length, self._born = status, tuple(kept), length, born
        if self._checked_whole:
            return learned
        return learned + [Respond(c, self._head(c)) for c in self._clients]

    def _chunk(self, data: bytes) -> list[Command]:
        start = self.size
        self.size += len(data)
        if self.size > self.max_bytes:
            reason = f"body exceeds max_object_bytes ({self.max_bytes})"
            # A playlist checked whole has sent no head yet: its clients get an error head, not a cut.
            return self._fail_all(_error_head(502, reason)) if self._checked_whole else self._broken(reason)
        if self._length is not None and self.size > self._length and not self._checked_whole:
            # Never let a client send past the Content-Length it was given.
            return self._broken(f"body longer than its content-length ({self._length})")
        self.body.append(data)
        if self._checked_whole:
            return []
        return [SendBytes(c, start, self.size) for c in self._clients]

    def _done(self, at: float) -> list[Command]:
        if self._length is not None and self.size != self._length:
            # The transport should have said so; never store a short body as whole.
            reason = f"body ended at {self.size} of {self._length} bytes"
            detail = f"{self.upstreams[self.attempt]}: {reason}"
            return self._failover(at, 502, f"{self._tier}: {reason}", detail) if self._checked_whole \
                else self._broken(detail)
        data = b"".join(self.body)
        self.body = [data]
        hdrs = dict(self._headers)
        manifest = None
        if self._checked_whole:
            try:
                manifest = read(self.key.path, data, at)  # the one parse of this body
            except MalformedPlaylist as e:
                # The playlist's own words (its URIs) may name internal hosts: the log has them.
                return self._failover(at, 502, f"{self._tier} sent a malformed playlist",
                                      f"{self.upstreams[self.attempt]} sent a malformed playlist: {e}")
        cmds: list[Command] = []
        store = True
        if not self._framed:
            if manifest is not None and proves_whole(self.key.path, data):
                self._headers = tuple(h for h in self._headers if h[0] != UNFRAMED_HEADER)
            else:
                store = False
                cmds.append(Log("info", f"{self.key}: body ended by the upstream closing the connection"
                                        " (no Content-Length, not chunked); passed on, not stored"))
        if manifest is not None and self.dress is not None:
            data = self.dress(self.key.path, data, manifest)
            self.body, self.size = [data], len(data)
        if manifest is not None and self.held is not None:
            change, why = compare(self.held.manifest, manifest)
            if change is Change.BEHIND:
                patience = REPLICA_PATIENCE * (self.held.manifest.info.target_duration or 2.0)
                if at - self.held.born <= patience:
                    return self._behind(why, data)
                change, why = Change.RESTARTED, f"{why}, for more than {patience:.0f} s"
            if change is Change.RESTARTED:
                dirs = self._run_directories(self.held.manifest, manifest)
                cmds += [Log("warning", f"{self.key}: stream restarted ({why}); dropping the previous run's"
                                        f" objects under {', '.join(sorted(dirs))}"),
                         DropRun(self.key.origin, dirs, self.key.key)]
        lt = _not_fresh_if_stale(
            lifetime(self.rules, self.kind, self._status, hdrs, manifest.info if manifest else None, self.key.path,
                     blocking=self.blocking, target=self.target),
            self._stale_above, at - self._born)
        if not self._shared:
            lt = dataclasses.replace(lt, store=False)
        obj = Stored(self.key.key, self._status, self._headers, data, self._born, lt, self.kind, manifest)
        self._state = _State.DONE
        if lt.store and store:
            cmds.append(StoreObject(obj))
        if self._checked_whole:  # nobody has seen a byte of it: each client gets the object, whole, as a hit does
            return cmds + [ServeStored(c, obj, self._cache(c)) for c in self._clients]
        return cmds + self._send_all()

    def _send_all(self) -> list[Command]:
        """The body has arrived whole: end every client's answer (sending it first where it was withheld)."""
        cmds: list[Command] = []
        for c in self._clients:
            if self._checked_whole:
                cmds += [Respond(c, self._head(c, self.size)), SendBytes(c, 0, self.size)]
            cmds.append(EndResponse(c))
        return cmds

    def _behind(self, why: str, data: bytes) -> list[Command]:
        """The answer is older than the playlist held: keep the held one, store nothing."""
        self._state = _State.DONE
        stale = self.stale  # this process's copy, as new as the held read (both are set by one store)
        if stale is not None and stale.status == 200:
            return [Log("warning", f"{self.key}: upstream answer is behind the copy held ({why}): a lagging"
                                   " replica; serving the held copy, the answer is not stored")] + [
                ServeStored(c, stale, CacheResult.STALE) for c in self._clients]
        return [Log("warning", f"{self.key}: upstream answer is behind the playlist this process last held"
                               f" ({why}): a lagging replica; passed on, not stored")] + self._send_all()

    def _run_directories(self, held: Manifest, new: Manifest) -> frozenset[str]:
        """Where a stream's objects live: the playlist's directory and those of every name either run announced."""
        dirs = {self.key.directory}
        for m in (held, new):
            if m.announced is not None:
                dirs.update(directory(name) for name in m.announced.names)
        return frozenset(dirs)

    def _revalidated(self, stale: Stored, hdrs: dict[str, str], born: float, at: float) -> Stored:
        """The stale copy confirmed by a 304, its lifetime from its stored manifest."""
        manifest = stale.manifest
        timed = not is_hls_playlist(self.key.extension)  # an MPD's template names move with the clock
        if (manifest is None or timed) and stale.kind is NameKind.PLAYLIST and stale.status == 200 and stale.body:
            # Read back from disk, where manifests are not kept (or an MPD, whose names
            # depend on when): read it now, once, and the revalidated copy keeps it. It
            # was read whole before it was stored, so only a damaged disk copy fails; that
            # one gets no manifest.
            # A damaged copy gets the lifetime of its name's kind alone, as any object without a manifest.
            with contextlib.suppress(MalformedPlaylist):
                manifest = read(self.key.path, stale.body, born)
        lt = _not_fresh_if_stale(lifetime(self.rules, stale.kind, stale.status, {**dict(stale.headers), **hdrs},
                                          manifest.info if manifest else None, self.key.path),
                                 self._stale_above, at - born)
        return stale.revalidated(hdrs, born, lt, manifest)

    def _failover(self, at: float, status: int, why: str, detail: str,
                  retry_after: str | None = None, final: bool = False) -> list[Command]:
        """The upstream tried failed: try the next (unless `final`), else serve the stale copy, else answer `status`.

        Players are told `why` (the tier, never an address); the log gets `detail`.
        """
        if not final and self.attempt + 1 < len(self.upstreams):
            nxt = self.upstreams[self.attempt + 1]
            return [Log("warning", f"{self.key}: {detail}; trying {nxt}")] + self._start(self.attempt + 1)
        error = _error_head(status, why, retry_after)
        if self.stale is not None and self.stale.servable_on_error(at):
            self._state = _State.DONE
            return [Log("warning", f"{self.key}: {detail}; serving stale copy")] + [
                ServeStored(c, self.stale, CacheResult.STALE) for c in self._clients] + self._remember(error, at)
        return [Log("warning", f"{self.key}: {detail}; answering {status}")] + self._fail_all(
            error) + self._remember(error, at)

    def _fail_all(self, head: Head) -> list[Command]:
        self._state = _State.FAILED
        cmds: list[Command] = []
        for c in self._clients:
            cmds += [Respond(c, head), EndResponse(c)]
        return cmds

    def _remember(self, error: Head, at: float) -> list[Command]:
        """The last upstream failed: remember its error briefly, so the next requests do not ask again at once."""
        lt = failure_lifetime(self.rules, self.target, self.blocking)
        if not lt.fresh:
            return []
        return [RememberFailure(Stored(self.key.key, error.status, error.headers, error.body, at, lt, self.kind))]

    def _broken(self, reason: str) -> list[Command]:
        self._state = _State.FAILED
        return [Log("warning", f"{self.key}: broken mid-body: {reason}; nothing stored")] + [
            AbortResponse(c, reason) for c in self._clients]


def _error_head(status: int, reason: str, retry_after: str | None = None) -> Head:
    """A generated error: the reason in the body and, made safe, in `ERROR_HEADER`."""
    body = f"{status} {reason}\n".encode()
    headers: tuple[tuple[str, str], ...] = (
        ("content-type", "text/plain; charset=utf-8"), (ERROR_HEADER, _header_safe(reason)))
    if retry_after:
        headers += (("retry-after", _header_safe(retry_after)),)
    return Head(status, headers, len(body), CacheResult.ERROR, body=body)


def _age(hdrs: dict[str, str]) -> float:
    """The upstream's Age: to the millisecond when `AGE_HEADER` agrees with it, else its whole seconds."""
    whole = _int(hdrs.get("age")) or 0
    text = hdrs.get(AGE_HEADER)
    if text is not None:
        try:
            precise = float(text)
        except ValueError:
            return whole
        if whole <= precise < whole + 1:  # also false for nan
            return precise
    return whole


def _not_fresh_if_stale(lt: Lifetime, stale_above: bool, age: float) -> Lifetime:
    """A copy the tier above served stale is stored as no fresher than it arrived, whatever this tier's rules say."""
    return dataclasses.replace(lt, fresh=age) if stale_above and lt.fresh > age else lt


def _header_safe(text: str) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:300]


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        return None
    return n if n >= 0 else None
