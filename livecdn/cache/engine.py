"""The cache engine's I/O shell: the one place where fill commands become I/O.

`Engine.get()` answers a key from memory, then disk, then by attaching the
request to the key's one upstream fetch (`Fill`). Every command a fill emits
is carried out in `_dispatch`, without an `await` between feeding an event and
dispatching what it produced, so the fill's view of the world is never stale.
The engine knows nothing of aiohttp requests or responses: the HTTP front
turns an `Answer` into a response plan.

Code the engine calls but does not own (a node's admission policy, playlist
observers) cannot break it: an exception there fails only the request that
ran it, or is logged and forgotten, and the key stays usable. A fill whose own
code raises is abandoned (its clients get an error) rather than left registered.

A fill's timer (`StaleTimer`) is one `loop.call_later` handle, cancelled when
the fill is forgotten. A failed fetch's error (`RememberFailure`) is kept in a
small map beside the stores, never in them: for `error_ttl` the key's requests
get the stale copy (within stale-if-error) or that error, and no new fetch.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import gzip
import itertools
import logging
import sqlite3
import ssl
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import BinaryIO, Protocol

import aiohttp

from livecdn import metrics
from livecdn.cache.disk import DiskStore
from livecdn.cache.fill import (
    AbortResponse,
    Asked,
    CacheResult,
    ClientGone,
    ClientRequested,
    Command,
    DropRun,
    EndResponse,
    Event,
    Fill,
    Head,
    Held,
    Log,
    RefreshRequested,
    RememberFailure,
    Respond,
    SendBytes,
    ServeStored,
    StaleDeadline,
    StaleTimer,
    StartFetch,
    StoreObject,
    UpstreamChunk,
    UpstreamDone,
    UpstreamFailed,
    UpstreamResponded,
    VaryLearned,
)
from livecdn.cache.freshness import Rules
from livecdn.cache.health import Health
from livecdn.cache.keys import BadRequest, CacheKey, origin_of, path_of
from livecdn.cache.memory import ENTRY_OVERHEAD, MemoryStore
from livecdn.cache.stored import Stored
from livecdn.logs import report_death, request_id
from livecdn.media.kinds import NameKind, kind_of
from livecdn.media.names import directory
from livecdn.media.playlist import Manifest

__all__ = ["Admission", "Admitted", "Answer", "Attachment", "Engine", "EngineError", "UpstreamBroken"]

log = logging.getLogger("livecdn.cache.engine")

# Objects that go stale this fast are not worth a disk write: by the time
# another worker could read them back they are expired.
DISK_MIN_LIFETIME = 10.0
# Playlists whose last read this process remembers after their copy left
# memory (a few hundred bytes each), so a restart or a lagging replica is still
# told from a stream that went on.
MAX_HELD_RUNS = 4096
# Playlists at least this large are stored with a gzip copy for players that ask.
GZIP_MIN_BYTES = 256
# Objects whose origin's Vary is remembered (least recently learned are forgotten,
# and learned again by one extra upstream request).
MAX_VARIED = 10_000
# Keys whose last fetch failed, remembered for `error_ttl` (a second or so): an error storm over more keys
# than this costs the oldest ones an extra upstream request each, never unbounded memory.
MAX_FAILURES = 10_000
_NO_HEADERS: Mapping[bytes, bytes] = {}
# A blocking LL-HLS request (`_HLS_msn`) is held by the origin until the part
# it names exists: up to about 3 target durations, the hold players allow.
BLOCKING_HOLD = 3
# The target duration assumed for a blocking request whose playlist this process never held (HLS's usual).
BLOCKING_TARGET_GUESS = 6.0
# Preload-hint names whose playlist's target duration is remembered (a few per live rendition): a hint
# part is held upstream until it is made, as a blocking reload is.
MAX_HINTS = 4096
# Seconds an upstream that sent no head within the first-byte wait has to answer a probe (OPTIONS on a
# connection of its own) to show it is slow, not hung: a shield waiting on a slow origin answers at once.
PROBE_WAIT = 0.5
# How often a sibling worker with no head yet is probed: it answers at once, so one that does not is dead or
# stopped, and its keys should go to the node's upstreams without a whole first-byte wait.
SIBLING_STEP = 0.5


class UpstreamBroken(Exception):
    """The shared upstream body broke after headers were sent."""


class EngineError(Exception):
    """The engine could not answer a request because of a bug of its own (logged with its traceback)."""


class UpstreamSlow(TimeoutError):
    """An upstream alive (it answers probes) sent no head within the engine's patience: slow, not hung."""


class _AskAgain(Exception):
    """The fill a request joined found out that the object varies: the request asks again for its variant."""


class Admitted(Protocol):
    """What a `check` that spent something on a request returns: told how that request was answered."""

    only_if_cached: bool
    """Ask the tier above for its stored copy only (RFC 9111 5.2.1.7): it answers 504 rather than fetch."""

    def settle(self, status: int) -> None:
        """The request was answered with `status` (raises BadRequest to refuse it after all).

        Called once for an answer the engine gives (a stored copy, or the head of
        a fetch); a request that fails before that is never settled.
        """


class Admission(Protocol):
    """A node's say over a request that would start a new upstream fetch (the edge's guard and limits).

    The engine asks only when the key has no copy in memory, none on disk and
    no fetch in flight to join: `check` first (it may wait, e.g. for a playlist
    refresh; the engine looks again afterwards), then `charge`, right before
    the fetch starts, with no `await` in between. Either raises to refuse. A
    check that returns an `Admitted` learns how the request ended: the edge's
    guard spends its budget for unknown names only on names that turn out not
    to exist.
    """

    async def check(self, key: CacheKey, client: str) -> Admitted | None:
        """May this name cost an upstream fetch at all?"""

    def charge(self, key: CacheKey, client: str) -> None:
        """Count the fetch against the client (raises when it is over its share)."""


class Attachment:
    """One request's place in a fill: an offset into the shared body, no copy of it.

    Its response reads the body as it arrives (`chunks`); a response that can
    write without waiting (HTTP/1.1) also leaves a writer here, and while the
    player keeps up the fill's new bytes are written from the fill's own
    dispatch: no task wakes per piece per player (a part streamed to 500
    players in 5 pieces woke 2,500 tasks).
    """

    __slots__ = ("fill", "client", "ready", "end", "complete", "error", "pos", "_stop", "_writer", "_held",
                 "_wake", "_body", "_index", "_index_start")

    def __init__(self, fill: Fill, client: int) -> None:
        self.fill = fill
        self.client = client
        # None: ask again (`VaryLearned`)
        self.ready: asyncio.Future[Head | tuple[Stored, CacheResult] | None] = (
            asyncio.get_running_loop().create_future())
        self.end = 0  # bytes of the shared body this client may send
        self.complete = False
        self.error: str | None = None
        self.pos = 0  # the body bytes handed to the response so far
        self._stop: int | None = None
        self._writer: Callable[[memoryview], bool] | None = None
        self._held = False  # the writer's transport filled up: its task waits for it to drain
        self._wake = asyncio.Event()
        self._body: list[bytes] = []
        self._index = self._index_start = 0

    def wake(self) -> None:
        """New bytes, the end, or a failure: written here by the response's writer when it has one, else its task
        is woken (and always for the end, a failure, or a writer that could not take more)."""
        if self._writer is not None and self.error is None:
            self._push(self._writer)
            if self._writer is not None and not self.complete and not self._done():
                return
        self._wake.set()

    def _done(self) -> bool:
        return self._stop is not None and self.pos >= self._stop

    def _limit(self) -> int:
        return self.end if self._stop is None else min(self.end, self._stop)

    def _piece(self, end: int) -> memoryview:
        """The next bytes from `pos`, up to `end` and within one chunk of the shared body; `pos` moves past them."""
        body = self.fill.body
        if body is not self._body:  # the fill replaced its chunk list (joined it): find pos in the new one
            self._body, self._index, self._index_start = body, 0, 0
        while True:
            chunk = body[self._index]
            chunk_end = self._index_start + len(chunk)
            if self.pos < chunk_end:
                break
            self._index, self._index_start = self._index + 1, chunk_end
        upto = min(end, chunk_end)
        piece = memoryview(chunk)[self.pos - self._index_start:upto - self._index_start]
        self.pos = upto
        return piece

    def _push(self, write: Callable[[memoryview], bool]) -> None:
        end = self._limit()
        while self.pos < end:
            if not write(self._piece(end)):  # written, and the transport is full (or gone): the task takes over
                self._writer, self._held = None, True
                return

    async def chunks(self, start: int = 0, stop: int | None = None,
                     writer: Callable[[memoryview], bool] | None = None) -> AsyncIterator[memoryview]:
        """The body bytes [start, stop) as they arrive; woken by the fill, never polling.

        With `writer` (it writes a piece and says whether its transport takes
        more without waiting), bytes that arrive while this waits go straight
        to it instead; then an empty piece tells the caller to wait for its
        transport to drain.

        Raises:
            UpstreamBroken: the upstream body broke; the response must be cut.
        """
        self.pos, self._stop = start, stop
        while True:
            if self.error is not None:
                self._writer = None
                raise UpstreamBroken(self.error)
            end = self._limit()
            if self.pos < end:
                yield self._piece(end)
                continue
            if self.complete or self._done():
                self._writer = None
                return
            if self._held:
                self._held = False
                yield memoryview(b"")  # the writer's transport is full: the caller drains it, then back here
                continue
            self._writer = writer
            self._wake.clear()
            await self._wake.wait()
            self._writer = None


class Answer:
    """What the engine gives the front for one request.

    Exactly one of `obj` (a complete stored answer, its body in memory or in
    `file`) or `head` + `stream` (a streamed answer from an upstream fetch).
    `cache` says how it was answered (`CacheResult`); `upstream`, the fetch
    behind it when it asked the tier above. `close()` must always be called:
    it releases the file and detaches the request from its fill.
    """

    __slots__ = ("cache", "obj", "file", "head", "stream", "upstream", "_release")

    def __init__(self, cache: CacheResult, obj: Stored | None = None, file: BinaryIO | None = None,
                 head: Head | None = None, stream: Attachment | None = None,
                 release: Callable[[], None] | None = None, upstream: Asked | None = None) -> None:
        self.cache = cache
        self.obj = obj
        self.file = file
        self.head = head
        self.stream = stream
        self.upstream = upstream
        self._release = release

    @property
    def status(self) -> int:
        return self.obj.status if self.obj is not None else self.head.status  # type: ignore[union-attr]

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        if self._release is not None:
            self._release()
            self._release = None


class Engine:
    """Memory over disk over coalesced upstream fetches, for one node process.

    Args:
        node: the node's name (metrics label).
        memory: the process's memory tier.
        disk: the node's disk tier, or None.
        upstreams: the upstream base URLs to try for a key, best first.
        rules: freshness settings.
        max_object_bytes: the largest body a fill holds.
        timeout: seconds to wait for an upstream (connect, first byte, between body
            reads), or one number for all three.
        upstream_headers: request fields for fetching a key from one of its
            upstreams (which origin a shield should ask; the Host an origin expects).
        health: told what every fetch found (answered, or failed to connect, timed
            out or broke), so that `upstreams` can leave out those found hung.
        patience: how long to wait for a head from an upstream that is slow but
            alive (it answers a probe after each first-byte wait): an origin
            packaging just in time, a shield waiting on one.
    """

    def __init__(self, node: str, memory: MemoryStore, disk: DiskStore | None,
                 upstreams: Callable[[CacheKey], tuple[str, ...]], rules: Rules,
                 max_object_bytes: int, timeout: float | tuple[float, float, float],
                 upstream_headers: Callable[[CacheKey, str], tuple[tuple[str, str], ...]] | None = None,
                 health: Health | None = None, patience: float | None = None) -> None:
        self.node = node
        self.memory = memory
        self.disk = disk
        self.upstreams = upstreams
        self.upstream_headers = upstream_headers
        self.rules = rules
        self.max_object_bytes = max_object_bytes
        self.waits = (timeout, timeout, timeout) if isinstance(timeout, float | int) else timeout
        self.health = health
        # How long a head may take from an upstream that keeps answering probes (None: the first-byte wait).
        self.patience = patience
        self._session: aiohttp.ClientSession | None = None
        self._fills: dict[str, Fill] = {}
        self._clients: dict[int, Attachment] = {}
        self._writing: dict[str, Stored] = {}  # objects on their way to disk only
        self._looking: collections.Counter[str] = collections.Counter()  # keys being looked up on disk
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._finished: dict[Fill, asyncio.Future[None]] = {}  # fills someone waits for
        self._playlist_observers: list[Callable[[Stored], None]] = []
        self._restart_observers: list[Callable[[frozenset[str]], None]] = []
        self._observed: list[Stored] = []  # playlists stored by the dispatch under way, told after it
        self._runs: collections.OrderedDict[str, Held] = collections.OrderedDict()  # last read per playlist
        self._hints: collections.OrderedDict[str, float] = collections.OrderedDict()  # hint key → target
        # The newest read of each playlist, whichever version (plain, blocking, delta) brought it.
        self._newest: collections.OrderedDict[str, Held] = collections.OrderedDict()
        self._dropping: list[Callable[[str], bool]] = []  # previous runs still being dropped from disk
        self._upstream_counter = metrics.UPSTREAM_REQUESTS.labels(node)
        self._vary: collections.OrderedDict[str, tuple[str, ...]] = collections.OrderedDict()  # key → Vary names
        self._timers: dict[Fill, asyncio.TimerHandle] = {}  # a fill's one pending `StaleTimer`
        self._failures: collections.OrderedDict[str, Stored] = collections.OrderedDict()  # key → its last error
        # What players are told an upstream is (its tier, "shield" or "origin"): never its address.
        self.tier: Callable[[str], str] = lambda upstream: "upstream"
        # How an https upstream's certificate is verified (its CA bundle's context); True: the system's CAs.
        self.upstream_ssl: Callable[[str], ssl.SSLContext | bool] = lambda upstream: True
        # How this node dresses the manifests it stores (an edge's content steering), or None.
        self.dress: Callable[[str, bytes, Manifest], bytes] | None = None
        # The node's other workers, each with the session over its socket (`livecdn.node.siblings`). One
        # asks every upstream after it itself (its answer is final, and long in coming when they are slow),
        # stores to the shared disk tier itself, and answers a probe at once when alive.
        self.siblings: dict[str, aiohttp.ClientSession] = {}

    def start(self, session: aiohttp.ClientSession) -> None:
        if self._session is not None:
            raise RuntimeError("engine already started")
        self._session = session

    @property
    def inflight_fetches(self) -> int:
        return len(self._fills)

    def _copy(self, k: str) -> Stored | None:
        """The copy this process has of `k`: in memory, or on its way to disk only."""
        return self.memory.get(k) or self._writing.get(k)

    def _held(self, k: str) -> bool:
        """A copy in memory (fresh or not), a disk lookup, a fetch in flight or a failure remembered: no new fetch."""
        return (k in self._fills or k in self._writing or k in self._looking or self.memory.get(k) is not None
                or (bool(self._failures) and self._failure(k, time.time()) is not None))

    def _failure(self, k: str, now: float) -> Stored | None:
        """The error of `k`'s last fetch while it is remembered: meanwhile nobody asks the upstream again."""
        if not self._failures:
            return None
        error = self._failures.get(k)
        if error is None or error.fresh(now):
            return error
        del self._failures[k]
        return None

    def on_playlist(self, observer: Callable[[Stored], None]) -> None:
        """Call `observer` with every playlist stored from upstream (status 200).

        Observers run after the fill's commands are carried out; one that
        raises is logged and the others still run.
        """
        self._playlist_observers.append(observer)

    def on_restart(self, observer: Callable[[frozenset[str]], None]) -> None:
        """Call `observer` with the directories of every stream this process saw restart.

        Its previous run's objects have just left this process's memory (and
        are leaving the disk): the node tells its sibling workers, whose
        memory tiers may hold them too. An observer that raises is logged.
        """
        self._restart_observers.append(observer)

    def prefetch(self, key: CacheKey) -> asyncio.Future[None] | None:
        """Start fetching `key` unless it is cached or on its way.

        Returns:
            A future done when the fetch ends, or None when none was started.
        """
        if self._held(key.key):
            return None
        return self._background(key, None)

    async def refresh(self, key: CacheKey) -> None:
        """Fetch `key` again now, fresh or not, and return once it is stored.

        Joins a fetch already in flight for the key instead of starting another,
        and fetches nothing while the key's last failure is remembered.
        """
        fill = self._fills.get(key.key)
        if fill is None:
            if self._failure(key.key, time.time()) is not None:
                return  # it has just failed: asking again now is what an error storm is made of
            current = self.memory.get(key.key)
            done = self._background(key, current if current is not None and current.body else None)
        else:
            done = self._finished.get(fill) or self._finished.setdefault(
                fill, asyncio.get_running_loop().create_future())
        await asyncio.shield(done)  # a waiter that gives up must not cancel it for the others

    def _background(self, key: CacheKey, stale: Stored | None) -> asyncio.Future[None]:
        """The one way a fetch starts with no client attached (prefetch, refresh, stale-while-revalidate)."""
        fill = self._new_fill(key, stale)
        done = self._finished[fill] = asyncio.get_running_loop().create_future()
        self._feed(fill, RefreshRequested())
        return done

    async def get(self, key: CacheKey, client: str = "", admission: Admission | None = None,
                  headers: Mapping[bytes, bytes] = _NO_HEADERS, only_if_cached: bool = False,
                  rid: str = "") -> Answer:
        """Answer a request for `key`; the caller must `close()` the answer.

        Args:
            key: the object.
            client: who asks (the admission's per-client shares).
            admission: asked when answering would start a new upstream fetch (see `Admission`).
            headers: the request's headers (lower-cased names): an object the origin
                varies is answered by the variant for the ones its Vary names.
            only_if_cached: the request said so (RFC 9111 5.2.1.7): a stored copy or a fetch in
                flight, never a fetch of its own.
            rid: the request's id: a fetch it starts carries it upstream as X-Request-Id.

        Raises:
            BadRequest: the admission refused the request (its status says why); 504 for an
                only-if-cached request with no copy to give.
            EngineError: a bug failed this request; the key stays usable.
        """
        for _ in range(2):  # a second time only when the first fetch found out that the object varies
            names = self._vary.get(key.key) if self._vary else None
            try:
                return await self._get(key.varied(names, headers) if names else key, client, admission,
                                       only_if_cached, rid)
            except _AskAgain:
                continue
        raise EngineError(f"{key}: the origin's Vary changed while answering")

    async def _get(self, key: CacheKey, client: str, admission: Admission | None, only_if_cached: bool,
                   rid: str) -> Answer:
        now = time.time()
        k = key.key
        obj = self._copy(k)
        file = None
        checked = False
        ticket: Admitted | None = None
        if obj is None and admission is not None and not only_if_cached and not self._held(k):
            # Before the disk: a name that cannot exist costs no disk lookup.
            ticket = await admission.check(key, client)
            checked = True
            now = time.time()
            obj = self._copy(k)  # what the check waited for may have stored it
        if obj is None and self.disk is not None and k not in self._fills:
            # A fetch in flight is joined, not looked up on disk first (a thread hop each: a blocking
            # reload's hundreds of waiters made as many). While the disk is asked, the key counts as
            # held (`_held()`): a request or prefetch meanwhile is not admitted as a new fetch.
            self._looking[k] += 1
            try:
                obj, file = await self._from_disk(k, now)
            finally:
                self._looking[k] -= 1
                if not self._looking[k]:
                    del self._looking[k]
            if obj is None:  # a request that came first may have stored it meanwhile
                obj = self._copy(k)
        failed = self._failure(k, now) if k not in self._fills else None
        if obj is not None:
            if obj.fresh(now):
                return _settled(ticket, Answer(CacheResult.HIT, obj, file))
            if obj.servable_while_revalidating(now):
                # A file-backed copy has no body in hand to revalidate: refresh it whole.
                self._refresh(key, obj if file is None else None)
                return _settled(ticket, Answer(CacheResult.STALE, obj, file))
            if failed is not None and obj.servable_on_error(now):
                return _settled(ticket, Answer(CacheResult.STALE, obj, file))
            if file is not None:
                # A file-backed copy cannot be revalidated in place: fetch it whole.
                file.close()
                obj = None
        if failed is not None:
            return _settled(ticket, Answer(CacheResult.ERROR, failed))
        if only_if_cached and k not in self._fills:
            raise BadRequest("not cached (only-if-cached)", 504)
        if obj is None and admission is not None and k not in self._fills:
            if not checked:  # held when this request began (a disk lookup, a fetch) and no longer
                ticket = await admission.check(key, client)
                # The check may have waited: what it waited for (a playlist
                # refresh, another request) may have stored the object.
                late = self._copy(k)
                if late is not None and late.fresh(time.time()):
                    return _settled(ticket, Answer(CacheResult.HIT, late))
            if k not in self._fills:
                admission.charge(key, client)  # no `await` from here to the fill's creation
        return _settled(ticket, await self._attach(key, obj, ticket is not None and ticket.only_if_cached, rid))

    async def _from_disk(self, k: str, now: float) -> tuple[Stored | None, BinaryIO | None]:
        """The disk tier's copy of `k`, as a memory object when it fits, else as an open file."""
        assert self.disk is not None
        try:
            hit = await self.disk.get(k)
        except (OSError, sqlite3.Error, ValueError) as e:
            log.error("disk read of %s failed, treating it as a miss: %s", k, e)
            return None, None
        if hit is None:
            return None, None
        if any(match(k) for match in self._dropping):  # a previous run's copy, read before the drop reached it
            if hit.file is not None:
                hit.file.close()
            return None, None
        obj, file = hit.obj, hit.file
        if file is not None and obj.fresh(now) and obj.size + ENTRY_OVERHEAD <= self.memory.max_entry:
            # Another worker stored it: read it once (off the loop) so this
            # worker's next hits are memory hits, not file copies.
            try:
                body = await asyncio.get_running_loop().run_in_executor(None, file.read)
            except OSError as e:
                log.error("disk read of %s failed, serving it from the file: %s", k, e)
            else:
                if len(body) == obj.size:
                    file.close()
                    file, obj = None, dataclasses.replace(obj, body=body)
        if file is None and obj.fresh(now):
            self.memory.put(obj)
        return obj, file

    def _new_fill(self, key: CacheKey, stale: Stored | None, only_if_cached: bool = False, rid: str = "") -> Fill:
        # Only-if-cached asks the key's own upstream (the shield its hash picks:
        # the one holding it if any does), never the origin behind the others.
        upstreams = self.upstreams(key)
        kind = kind_of(key.extension)
        upstreams = upstreams[:1] if only_if_cached else upstreams
        fill = Fill(key, kind, upstreams, self.rules, self.max_object_bytes, stale, only_if_cached,
                    held=self._runs.get(key.key) if kind is NameKind.PLAYLIST else None,
                    target=self._held_target(key) if kind is NameKind.PLAYLIST else None,
                    tiers=tuple(self.tier(u) for u in upstreams), dress=self.dress,
                    siblings=frozenset(self.siblings).intersection(upstreams) if self.siblings else frozenset(),
                    request_id=rid or request_id(None))  # a refresh or prefetch gets an id of its own
        self._fills[key.key] = fill
        return fill

    def _refresh(self, key: CacheKey, stale: Stored | None) -> None:
        if key.key not in self._fills and self._failure(key.key, time.time()) is None:
            self._background(key, stale)

    async def _attach(self, key: CacheKey, stale: Stored | None, only_if_cached: bool = False,
                      rid: str = "") -> Answer:
        fill = self._fills.get(key.key) or self._new_fill(key, stale, only_if_cached, rid)
        att = Attachment(fill, next(self._ids))
        self._clients[att.client] = att

        def release() -> None:
            if self._clients.pop(att.client, None) is not None and not fill.finished:
                self._feed(fill, ClientGone(att.client))

        self._feed(fill, ClientRequested(att.client))
        try:
            result = await att.ready
        except BaseException:
            release()
            raise
        if isinstance(result, Head):
            return Answer(result.cache, head=result, stream=att, release=release, upstream=fill.asked)
        release()
        if result is None:
            raise _AskAgain
        obj, cache = result
        return Answer(cache, obj, upstream=fill.asked if cache is not CacheResult.HIT else None)

    # --- the shell: events in, commands out ---

    def _feed(self, fill: Fill, event: Event) -> None:
        failed = False
        try:
            commands = fill.handle(event)
            # No `await` beyond this point: commands are carried out against the
            # state the fill just reached.
            self._dispatch(fill, commands)
        except Exception as e:  # noqa: BLE001 - a bug fails this fill's clients, never the key
            log.exception("%s: %r could not be handled; abandoning the fetch", fill.key, event)
            failed = True
            self._abandon(fill, f"internal error: {_describe(e)}")
        finally:
            if failed or fill.finished:
                self._forget(fill)
        self._tell_observers()

    def _forget(self, fill: Fill) -> None:
        """The fill is over (or abandoned): later requests start afresh; whoever waits for it is told."""
        if self._fills.get(fill.key.key) is fill:
            del self._fills[fill.key.key]
        timer = self._timers.pop(fill, None)
        if timer is not None:
            timer.cancel()
        done = self._finished.pop(fill, None)
        if done is not None and not done.done():
            done.set_result(None)

    def _abandon(self, fill: Fill, reason: str) -> None:
        """Fail every client of a fill whose handling raised: an error head, or a cut if streaming."""
        for att in [a for a in self._clients.values() if a.fill is fill]:
            if not att.ready.done():
                att.ready.set_exception(EngineError(reason))
            else:
                att.error = reason
                att.wake()

    def _tell_observers(self) -> None:
        while self._observed:
            obj = self._observed.pop(0)
            for observer in self._playlist_observers:
                try:
                    observer(obj)
                except Exception:  # noqa: BLE001 - an observer's bug must not reach the fill or its clients
                    log.exception("playlist observer %r failed on %s", observer, obj.key)

    def _dispatch(self, fill: Fill, commands: list[Command]) -> None:
        for cmd in commands:
            if isinstance(cmd, SendBytes):
                att = self._clients[cmd.client]
                att.end = cmd.end
                att.wake()
            elif isinstance(cmd, Respond):
                self._resolve(cmd.client, cmd.head)
            elif isinstance(cmd, EndResponse):
                att = self._clients[cmd.client]
                att.complete = True
                att.wake()
            elif isinstance(cmd, StartFetch):
                self._spawn(self._fetch(fill, cmd))
            elif isinstance(cmd, StoreObject):
                self._store(cmd.obj, disk=fill.upstreams[fill.attempt] not in self.siblings)
            elif isinstance(cmd, ServeStored):
                self._resolve(cmd.client, (cmd.obj, cmd.cache))
            elif isinstance(cmd, AbortResponse):
                att = self._clients[cmd.client]
                att.error = cmd.reason
                att.wake()
            elif isinstance(cmd, StaleTimer):
                self._timers[fill] = asyncio.get_running_loop().call_later(cmd.delay, self._deadline, fill)
            elif isinstance(cmd, RememberFailure):
                self._remember(cmd.error)
            elif isinstance(cmd, DropRun):
                self._drop_run(cmd)
            elif isinstance(cmd, VaryLearned):
                self._learn_vary(fill.key, cmd.names)
                for client in cmd.again:
                    self._resolve(client, None)
            elif isinstance(cmd, Log):
                log.log(logging.getLevelName(cmd.level.upper()), "%s", cmd.message)
            else:
                raise RuntimeError(f"unknown command {cmd!r}")

    def _deadline(self, fill: Fill) -> None:
        """A fill's `StaleTimer` fired (a forgotten fill's timer was cancelled)."""
        del self._timers[fill]
        self._feed(fill, StaleDeadline(time.time()))

    def _remember(self, error: Stored) -> None:
        self._failures.pop(error.key, None)
        self._failures[error.key] = error
        if len(self._failures) > MAX_FAILURES:
            self._failures.popitem(last=False)

    def _learn_vary(self, key: CacheKey, names: tuple[str, ...]) -> None:
        base = dataclasses.replace(key, vary=()).key
        self._vary.pop(base, None)
        if names:
            self._vary[base] = names
            if len(self._vary) > MAX_VARIED:
                self._vary.popitem(last=False)

    def _resolve(self, client: int, result: Head | tuple[Stored, CacheResult] | None) -> None:
        att = self._clients[client]
        if not att.ready.done():
            att.ready.set_result(result)

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        # Safe inside `_dispatch` only because no spawned coroutine feeds a fill
        # before its first `await`: with an eager task factory it would run now,
        # re-entering the dispatch under way (mitmproxy's issue 7027).
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(report_death(log, f"engine task {task.get_coro()!r}"))

    async def _fetch(self, fill: Fill, cmd: StartFetch) -> None:
        key = fill.key
        url = cmd.upstream + key.path + (f"?{key.query}" if key.query else "")
        # The variant's own request headers (those the origin's Vary names), then the validators.
        headers = {"Accept-Encoding": "identity", **{name: value for name, value in key.vary if value},
                   **dict(cmd.headers)}
        if self.upstream_headers is not None:
            headers.update(self.upstream_headers(key, cmd.upstream))
        headers["X-Request-Id"] = fill.request_id
        connect, first_byte, read = self.waits
        if "_HLS_msn=" in key.query:  # blocking: held upstream until the part exists
            first_byte += BLOCKING_HOLD * self._target_duration(key)
        elif (hint_target := self._hints.get(key.key)) is not None:  # a preload hint: held until it is made
            first_byte += BLOCKING_HOLD * hint_target
        step, bound = first_byte, max(first_byte, self.patience or 0.0)
        if cmd.upstream in self.siblings:
            # It waits on each upstream after it in turn, and on each of their body reads: heard out while it
            # answers probes, and always a first-byte wait longer, so that its own verdict arrives first.
            step, bound = SIBLING_STEP, bound * max(1, len(fill.upstreams) - cmd.attempt - 1) + self.waits[1]
            read += self.waits[1]
        self._upstream_counter.inc()
        loop = asyncio.get_running_loop()
        sent = loop.time()

        def current() -> bool:  # a fetch that failed over, finished or was abandoned feeds nothing more
            return fill.attempt == cmd.attempt and not fill.finished and self._fills.get(key.key) is fill

        try:
            if self._session is None:
                raise RuntimeError("engine.start(session) was not called")
            # The status line within `first_byte` of sending (a new connection's `connect` included), or
            # later from an upstream that shows it is alive; then each body read within `read` of the last.
            resp = await self._head(cmd.upstream, url, headers, connect, step, bound)
            async with asyncio.timeout(read) as deadline, resp:
                self._answered(cmd.upstream, loop.time() - sent, resp.status)
                if current():
                    fill.asked = Asked(cmd.upstream, resp.status, loop.time() - sent, fill.request_id)
                head = tuple((k.lower(), v) for k, v in resp.headers.items())
                # Without a length and not chunked, the body ends when the connection does: a cut looks complete.
                framed = resp.status in (204, 304) or "content-length" in resp.headers or \
                    "chunked" in resp.headers.get("Transfer-Encoding", "").lower()
                if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
                    # Asked for identity, got an encoding anyway: aiohttp decodes it, so the
                    # stored body is plain and the declared length no longer applies.
                    head = tuple((k, v) for k, v in head if k not in ("content-encoding", "content-length"))
                self._feed(fill, UpstreamResponded(resp.status, head, time.time(), framed))
                if not current():
                    return
                deadline.reschedule(loop.time() + read)  # feeding took its time
                async for chunk in resp.content.iter_any():
                    self._feed(fill, UpstreamChunk(chunk))
                    if not current():
                        return
                    deadline.reschedule(loop.time() + read)
                self._feed(fill, UpstreamDone(time.time()))
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as e:
            # A transport failure ejects (a ValueError is a bad request of ours; a slow upstream is alive).
            if not isinstance(e, ValueError | UpstreamSlow):
                error = "timeout" if isinstance(e, TimeoutError) else \
                    "connect" if isinstance(e, aiohttp.ClientConnectorError) else "broken"
                metrics.UPSTREAM_ERRORS.labels(self.node, cmd.upstream, error).inc()
                self._unreachable(cmd.upstream, "timed out" if isinstance(e, TimeoutError) else _describe(e))
            if current():
                timed_out = isinstance(e, asyncio.TimeoutError)
                if fill.asked is None or fill.asked.upstream != cmd.upstream:  # no head from this upstream
                    fill.asked = Asked(cmd.upstream, 504 if timed_out else 502, loop.time() - sent, fill.request_id)
                self._feed(fill, UpstreamFailed(_failure(e), time.time(), timed_out,
                                                "timed out" if timed_out else _describe(e)))
        except Exception as e:  # noqa: BLE001 - a bug here must not strand the fill's clients
            if current():
                log.exception("%s: the fetch from %s failed", key, cmd.upstream)
                self._abandon(fill, f"internal error: {_describe(e)}")
                self._forget(fill)

    async def _head(self, upstream: str, url: str, headers: dict[str, str], connect: float,
                    step: float, patience: float) -> aiohttp.ClientResponse:
        """The upstream's answer head: within `step`, or later from an upstream that proves alive.

        A slow upstream (an origin packaging just in time, a shield waiting on
        a slow origin) answers a probe; a hung one (stopped, wedged) does not.
        After each `step` without a head the upstream is probed, and the fetch
        fails as timed out when the probe goes unanswered or `patience` is spent.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        bound = started + patience
        get = asyncio.ensure_future(self._session_for(upstream).get(
            url, headers=headers, timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect),
            allow_redirects=False, auto_decompress=True, ssl=self.upstream_ssl(upstream)))
        try:
            while True:
                done, _ = await asyncio.wait({get}, timeout=min(step, max(0.0, bound - loop.time())))
                if done:
                    return get.result()
                if loop.time() >= bound:
                    raise UpstreamSlow(f"no answer head within {bound - started:g} s")
                if not await self._alive(upstream):
                    raise TimeoutError(f"no answer head within {step:g} s and no sign of life")
        except BaseException:
            if not get.done():
                get.cancel()
            elif not get.cancelled() and get.exception() is None:
                get.result().release()  # it answered just as this fetch gave up
            raise

    async def _alive(self, upstream: str) -> bool:
        """Does `upstream` answer anything at all, quickly? (Any HTTP status counts: it is not hung.)"""
        try:
            async with asyncio.timeout(PROBE_WAIT), self._session_for(upstream).options(
                    upstream + "/", allow_redirects=False, ssl=self.upstream_ssl(upstream)):
                return True
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    def _session_for(self, upstream: str) -> aiohttp.ClientSession:
        """The session `upstream` is asked on: a sibling worker's own, else the node's."""
        session = self.siblings.get(upstream)
        if session is None:
            session = self._session
        assert session is not None
        return session

    def held(self, key: CacheKey) -> Held | None:
        """The newest read this process stored of the playlist `key` asks a version of: its plain
        reload's, or a blocking or delta answer's when that one went further."""
        return self._newest.get(dataclasses.replace(key, query="").key)

    def _held_target(self, key: CacheKey) -> float | None:
        held = self.held(key)
        return held.manifest.info.target_duration if held is not None else None

    def _target_duration(self, key: CacheKey) -> float:
        """The target duration of the playlist a blocking request asks a later version of, as last held."""
        return self._held_target(key) or BLOCKING_TARGET_GUESS

    def _answered(self, upstream: str, seconds: float, status: int) -> None:
        """An upstream sent a status line: alive, whatever the status (the tier behind it may have failed)."""
        metrics.UPSTREAM_SECONDS.labels(self.node, upstream).observe(seconds)
        metrics.UPSTREAM_RESPONSES.labels(self.node, upstream, metrics.status_class(status)).inc()
        if self.health is not None and self.health.succeeded(upstream):
            log.warning("upstream %s answers again: back in the ring", upstream)

    def _unreachable(self, upstream: str, reason: str) -> None:
        """An upstream failed to connect, timed out or broke: told to its health, whichever fill asked."""
        if self.health is None:
            return
        out = self.health.failed(upstream, time.monotonic(), reason)
        if out is not None:
            metrics.UPSTREAM_EJECTIONS.labels(self.node, upstream).inc()
            log.warning("upstream %s ejected for %.1f s (%s): its keys go to the next upstream", upstream, out,
                        reason)

    def _store(self, obj: Stored, disk: bool = True) -> None:
        """Keep `obj` in memory, and on disk unless told not to (a sibling worker wrote it there)."""
        if self._failures:
            self._failures.pop(obj.key, None)  # the upstream answers again
        if obj.manifest is not None and obj.size >= GZIP_MIN_BYTES:
            obj.gzipped = gzip.compress(obj.body, compresslevel=6, mtime=0)
        in_memory = self.memory.put(obj)
        if obj.manifest is not None and obj.status == 200:
            self._runs[obj.key] = Held(obj.manifest, obj.born)
            self._runs.move_to_end(obj.key)
            if len(self._runs) > MAX_HELD_RUNS:
                self._runs.popitem(last=False)
            self._learn_hints(obj)
            self._keep_newest(obj)
            if self._playlist_observers:
                self._observed.append(obj)
        if disk and self.disk is not None and obj.lifetime.fresh >= DISK_MIN_LIFETIME:
            if not in_memory:
                self._writing[obj.key] = obj
            self._spawn(self._write_disk(obj))

    def _keep_newest(self, obj: Stored) -> None:
        assert obj.manifest is not None
        base = obj.key.partition("?")[0]
        run, before = obj.manifest.run, self._newest.get(base)
        if before is not None and run.media_sequence is not None and before.manifest.run.media_sequence is not None \
                and run.media_sequence + (run.segments or 0) < before.manifest.run.media_sequence + (
                    before.manifest.run.segments or 0):
            return  # an older version than the one held (a blocking answer for a part long made)
        self._newest[base] = Held(obj.manifest, obj.born)
        self._newest.move_to_end(base)
        if len(self._newest) > MAX_HELD_RUNS:
            self._newest.popitem(last=False)

    def _learn_hints(self, obj: Stored) -> None:
        """Remember the playlist's preload hints with its target duration (their fetches wait as blocking ones)."""
        target = obj.manifest.info.target_duration if obj.manifest is not None else None
        announced = obj.manifest.announced if obj.manifest is not None else None
        if not target or announced is None or not announced.hints:
            return
        origin = origin_of(obj.key)
        for hint in announced.hints:
            self._hints[origin + hint] = target
            self._hints.move_to_end(origin + hint)
        while len(self._hints) > MAX_HINTS:
            self._hints.popitem(last=False)

    async def _write_disk(self, obj: Stored) -> None:
        assert self.disk is not None
        try:
            await self.disk.put(obj)
        except (OSError, sqlite3.Error) as e:
            log.error("disk write of %s failed: %s", obj.key, e)
        finally:
            if self._writing.get(obj.key) is obj:
                del self._writing[obj.key]

    def _drop_run(self, cmd: DropRun) -> None:
        """A stream restarted: its previous run's objects leave memory now, before anything else is answered."""

        def match(k: str) -> bool:  # a key is its origin's identity, then the path (`CacheKey.key`)
            return k != cmd.keep and k[:k.find("/")] == cmd.origin and directory(path_of(k)) in cmd.directories

        in_memory = self.drop_run(match)
        log.info("dropped %d objects of a previous run under %s from memory", in_memory,
                 ", ".join(sorted(cmd.directories)))
        for observer in self._restart_observers:
            try:
                observer(cmd.directories)
            except Exception:  # noqa: BLE001 - telling others must not break this fill's dispatch
                log.exception("restart observer %r failed", observer)

    def drop_run(self, match: Callable[[str], bool]) -> int:
        """Drop a previous run's objects: from memory now, from disk soon, read from disk by nobody meanwhile.

        Called when this process finds a restart, and when a sibling worker tells
        it of one (its disk drop may still be under way: this one's read of the
        shared disk would find the old copies, and keep them in memory).

        Returns:
            How many objects left this process's memory tier.
        """
        in_memory = self._drop_memory(match)
        if self.disk is not None:
            self._dropping.append(match)  # until the disk drop is done, disk hits it matches are misses
            self._spawn(self._drop_disk(match))
        return in_memory

    async def _drop_disk(self, match: Callable[[str], bool]) -> None:
        assert self.disk is not None
        try:
            dropped = await self.disk.drop(match)
        except (OSError, sqlite3.Error) as e:
            log.error("disk drop of a previous run failed: %s", e)
        else:
            log.info("dropped %d objects of a previous run from disk", dropped)
        finally:
            self._dropping.remove(match)

    def _drop_memory(self, match: Callable[[str], bool]) -> int:
        for k in [k for k in self._writing if match(k)]:
            del self._writing[k]
        return self.memory.drop(match)

    async def purge(self, match: Callable[[str], bool], *, disk: bool = True) -> tuple[int, int]:
        """Drop every stored object whose storage key `match` accepts, from disk (unless `disk` is false) and memory.

        The disk goes first: a memory miss in between would otherwise read the
        old copy back into memory from the disk tier. Sibling workers pass
        `disk=False` (one of them has already dropped the shared disk tier).

        Returns:
            (objects dropped from this process's memory tier, objects dropped from the disk tier).
            Fetches in flight are not cut: what they store was asked for after the purge began.
        """
        on_disk = 0
        if disk and self.disk is not None:
            try:
                on_disk = await self.disk.drop(match)
            except (OSError, sqlite3.Error) as e:
                log.error("disk purge failed: %s", e)
                raise
        in_memory = self._drop_memory(match)
        for k in [k for k in self._vary if match(k)]:  # learned again from the next answer, as by a new process
            del self._vary[k]
        for k in [k for k in self._failures if match(k)]:  # a purged name is asked for afresh
            del self._failures[k]
        return in_memory, on_disk

    async def close(self, timeout: float = 5.0) -> None:
        """Let disk writes finish, then cancel what is left (fetches without clients)."""
        if self._tasks:
            done, pending = await asyncio.wait(list(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("cancelled %d engine tasks at shutdown", len(pending))
                await asyncio.gather(*pending, return_exceptions=True)


def _settled(ticket: Admitted | None, answer: Answer) -> Answer:
    """Tell the admission how the request it admitted was answered; its refusal closes the answer."""
    if ticket is not None:
        try:
            ticket.settle(answer.status)
        except BaseException:
            answer.close()
            raise
    return answer


def _failure(e: BaseException) -> str:
    """What a failed fetch did, in words a player may read: exception texts name addresses, these never do."""
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, aiohttp.ClientConnectorCertificateError):
        return "presented a TLS certificate that is not trusted (see its ca_file)"
    if isinstance(e, aiohttp.ClientSSLError):
        return "failed the TLS handshake"
    if isinstance(e, aiohttp.ClientConnectorError):
        return "could not be reached"
    if isinstance(e, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, ConnectionError)):
        return "closed the connection"
    if isinstance(e, (aiohttp.ClientResponseError, ValueError)):
        return "sent a bad answer"
    return "failed"


def _describe(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text.splitlines()[0][:200]
