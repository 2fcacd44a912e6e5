"""The player-facing front: (request, engine answer) → a response plan.

It holds no cache policy and writes nothing. What it owns is HTTP semantics
toward players: methods, CORS, conditional requests (304) and byte ranges
(206/416) through `negotiate`, HEAD, gzip for playlists, Via and X-Cache.
Edge and shield both serve through it; the edge adds a policy that may refuse
a request before the engine sees it, and that the engine asks before a
request costs a new upstream fetch.

`answer_now()` answers everything that needs no waiting: a memory hit costs
the key memo, the engine's dictionary lookup and the lookup of the plan built
once per stored object (its fields are serialized once by the protocol shell
too). What needs waiting (disk, admission, a fetch) is returned as `Later`,
and `answer_later()` gives its plan. The listener (`listener.py`) writes
plans; this module does not know HTTP/1.1.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Hashable
from typing import BinaryIO, Protocol

from livecdn import metrics
from livecdn.cache.engine import Admission, Answer, Attachment, Engine
from livecdn.cache.fill import AGE_HEADER, CacheResult, Head
from livecdn.cache.freshness import parse_cache_control
from livecdn.cache.keys import BadRequest, CacheKey, cache_key
from livecdn.cache.stored import Stored
from livecdn.logs import request_id

from .http1 import ALLOW
from .negotiate import accepts_gzip, negotiate
from .origins import Origins
from .plan import Fields, FileRange, Later, Plan, Stream
from .request import Request

__all__ = ["CORS", "PREFLIGHT", "Policy", "PlayerFront", "ShieldFront", "TokenCheck"]

log = logging.getLogger("livecdn.front")

# Header names are lower-case here, as the engine keeps them and HTTP/2 sends
# them; the HTTP/1.1 shell spells them on the wire.
CORS = (
    ("access-control-allow-origin", "*"),
    ("access-control-expose-headers", "Age, Content-Length, Content-Range, Date, ETag, X-Cache"),
)
PREFLIGHT = CORS + (
    ("access-control-allow-methods", ALLOW),
    ("access-control-allow-headers", "Range, If-None-Match, If-Modified-Since, Origin, Accept, Accept-Encoding"),
    ("access-control-max-age", "86400"),
)
# Request targets (with what routes them to an origin, where more than the
# target does) remembered with their cache key, so a hit skips normalizing
# its path and routing it again. Bounded: a flood of distinct targets
# (tokens, busters, Host names) empties it rather than growing it.
KEY_MEMO_BOUND = 4096
# Request fields that make a hit more than the stored 200 (see `_stored`).
NEGOTIATING = frozenset({b"range", b"if-none-match", b"if-modified-since"})
_PLAIN = ("content-type", "text/plain; charset=utf-8")
# Bound once: looking an enum member up on its class costs about 0.1 us, a
# lot on a hit that costs a few.
HIT = CacheResult.HIT
COALESCED = CacheResult.COALESCED


class TokenCheck(Protocol):
    """Signed URLs (the edge's `edge.tokens.TokenGate`): the token comes off a request before its key is made."""

    def unwrap(self, request: Request, peer: str, now: float) -> bool:
        """Take the token off `request.target`; True if it had one that allows it; raises `BadRequest` (403)."""

    def require(self, path: str) -> None:
        """A request without a token for this normalized path: raises `BadRequest` (403) where one is needed."""


class Policy(Admission, Protocol):
    """A node's say over requests (the edge has one): the engine's `Admission`, plus two per-request hooks.

    The hooks are attributes the front reads per request, so a hit calls them
    directly, or not at all when the policy has nothing to do there (None).
    """

    screen: Callable[[str], None] | None
    """Every request, before anything else, with the client address; raises `BadRequest` to refuse."""

    seen: Callable[[CacheKey, CacheResult], None] | None
    """A request was answered with this cache result."""

    @property
    def tokens(self) -> TokenCheck | None:
        """Signed URLs, when the topology asks for them: every request, first."""


def _wants_gzip(request: Request) -> bool:
    value = request.headers.get(b"accept-encoding")
    return value is not None and accepts_gzip(value)


def _only_if_cached(request: Request) -> bool:
    """Does the request take a stored answer only (RFC 9111 5.2.1.7; an edge asks its shield so)?"""
    value = request.headers.get(b"cache-control")
    return value is not None and "only-if-cached" in parse_cache_control(value.decode("latin-1"))


class PlayerFront:
    """HTTP semantics toward players, for one node process (the listener's `Handler`).

    Args:
        engine: the node's cache engine.
        node: the node's name (Via, metrics).
        policy: the node's policy, or None.
        origins: how requests are routed to origins; None: one unnamed origin (a bare engine's).
    """

    def __init__(self, engine: Engine, node: str, policy: Policy | None = None,
                 origins: Origins | None = None) -> None:
        self.engine = engine
        self.node = node
        self.policy = policy
        self.inflight = 0  # requests between answer_later() and the end of their answer
        self.hits = 0  # memory hits not yet added to the request counter (see `flush_hits()`)
        self._counted = dict.fromkeys(CacheResult, 0)  # other answers not yet added to it, by cache result
        self._via = f"1.1 {node} (livecdn)"
        self._counters = {c: metrics.REQUESTS.labels(node, c) for c in CacheResult}
        self._inflight_gauge = metrics.INFLIGHT.labels(node)
        self._keys: dict[Hashable, CacheKey] = {}
        self._origins: Origins | None = None
        self._select: Callable[[Request], Hashable] | None = None
        self.route(origins)
        # The plans of a stored 200 as a hit, by key: (a weak reference to the
        # object, identity plan, gzip plan), built on its first hit and used
        # only while that very object is the one hit. An entry goes when its
        # object does (evicted, or replaced by a revalidated copy), so a plan
        # never outlives the bytes it describes.
        self._hit_plans: dict[str, tuple[weakref.ref[Stored], Plan, Plan | None]] = {}
        # The same for the clients coalesced on a fill that served its object whole (a playlist arrives
        # whole): a blocking LL-HLS reload has hundreds of waiters answered at once, each with this plan.
        self._coalesced_plans: dict[str, tuple[weakref.ref[Stored], Plan, Plan | None]] = {}
        self._preflight = Plan(Fields(204, PREFLIGHT), b"", 0, None, None)
        # A hit is a fresh object in the engine's memory tier, asked directly: one call.
        self._memory_hit = engine.memory.hit

    def route(self, origins: Origins | None) -> None:
        """Route requests to these origins from now on (a reload): keys remembered for the old ones go."""
        self._origins, self._select = origins, None if origins is None else origins.select
        self._keys.clear()

    # --- the listener's entry points ---

    def answer_now(self, request: Request, peer: str, now: float) -> Plan | Later:
        """The plan for `request` if it needs no waiting, else `Later` (the policy's `screen` already ran).

        `now` is the shell's wall clock (freshness is judged against it). A
        signed URL's token is off `request.target` once this returns (the
        shell's access line then shows the path without it).
        """
        policy = self.policy
        try:
            tokens = None if policy is None else policy.tokens
            signed = tokens is not None and tokens.unwrap(request, peer, now)
            method = request.method
            if method != "GET" and method != "HEAD":
                if method == "OPTIONS":
                    return self._preflight
                return self.refuse(405, f"method {method} not allowed", (("allow", ALLOW),))
            select = self._select
            memo = request.target if select is None else select(request)
            key = self._keys.get(memo)
            if key is None:
                key = self._key(request, memo)
            if tokens is not None and not signed:
                tokens.require(key.path)
            if policy is not None and policy.screen is not None:
                policy.screen(peer)
            obj = self._memory_hit(key.key, now)
            if obj is None:
                return Later(request, peer, key)
            self.hits += 1
            if policy is not None and policy.seen is not None:
                policy.seen(key, HIT)
            if obj.status == 200 and request.headers.keys().isdisjoint(NEGOTIATING):
                return self._whole_hit(request, obj)
            return self._stored(request, obj, HIT)
        except BadRequest as e:
            return self.refuse(e.status, e.reason, e.headers)
        except Exception as e:  # noqa: BLE001 - policy or front bug: this request fails, with a reason
            return self._failed(request, e)

    async def answer_later(self, later: Later) -> Plan:
        """The plan for a request memory could not answer: the engine (and its admission), then HTTP."""
        request, key = later.request, later.key
        self.inflight += 1
        answer: Answer | None = None
        request.rid = rid = request_id(request.header(b"x-request-id"))
        try:
            answer = await self.engine.get(key, later.peer, self.policy, request.headers, _only_if_cached(request),
                                           rid)
            self._counted[answer.cache] += 1
            policy = self.policy
            if policy is not None and policy.seen is not None:
                policy.seen(key, answer.cache)
            plan = self._answer(request, answer)
        except BadRequest as e:
            plan = self.refuse(e.status, e.reason, e.headers)
        except Exception as e:  # noqa: BLE001 - policy, engine or front bug: this request fails, with a reason
            plan = self._failed(request, e)
        except BaseException:  # cancelled: the player went away
            self._finished(answer)
            raise
        # A plan of its own (never a shared hit plan): it carries this answer's release.
        return Plan(plan.fields, plan.body, plan.length, plan.born, plan.cache, lambda: self._finished(answer),
                    answer.upstream if answer is not None else None)

    def refuse(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> Plan:
        """A plain-text refusal (a 4xx for a request we do not serve; the listener's for bad bytes)."""
        self._counted[CacheResult.REJECTED] += 1
        return self._plain(status, reason, headers, CacheResult.REJECTED)

    def flush_hits(self) -> None:
        """Add the answers counted since the last call to the request counter; set the in-flight gauge.

        An answer only bumps an integer; the node calls this every second and
        before metrics are read, so Prometheus costs nothing per answer (its
        value's lock and checks were 6 % of an edge answering a blocking
        LL-HLS reload's hundreds of waiters at once).
        """
        if self.hits:
            self._counters[CacheResult.HIT].inc(self.hits)
            self.hits = 0
        counted = self._counted
        for cache, n in counted.items():
            if n:
                self._counters[cache].inc(n)
                counted[cache] = 0
        self._inflight_gauge.set(self.inflight)

    def _key(self, request: Request, memo: Hashable) -> CacheKey:
        """The cache key of a request the memo does not know, remembered under `memo` (raises `BadRequest`)."""
        origins = self._origins
        key = cache_key(request.target) if origins is None else origins.key(request)
        if len(self._keys) >= KEY_MEMO_BOUND:
            self._keys.clear()
        self._keys[memo] = key
        return key

    # --- plans ---

    def _finished(self, answer: Answer | None) -> None:
        if answer is not None:
            answer.close()
        self.inflight -= 1

    def _failed(self, request: Request, e: Exception) -> Plan:
        log.exception("answering %s %s failed", request.method, request.target[:200])
        self._counted[CacheResult.ERROR] += 1
        return self._plain(500, f"internal error: {type(e).__name__}", (), CacheResult.ERROR)

    def _plain(self, status: int, reason: str, extra: tuple[tuple[str, str], ...], cache: CacheResult) -> Plan:
        body = f"{status} {reason}\n".encode()
        fields = Fields(status, (("via", self._via), ("x-cache", cache.header), *CORS, *extra, _PLAIN))
        return Plan(fields, body, len(body), None, cache)

    def _headers(self, pairs: tuple[tuple[str, str], ...], cache: CacheResult) -> dict[str, str]:
        headers = dict(pairs)
        headers.update(CORS)
        headers["via"] = self._via
        headers["x-cache"] = cache.header
        return headers

    def _answer(self, request: Request, answer: Answer) -> Plan:
        if answer.obj is None:
            assert answer.head is not None and answer.stream is not None
            return self._stream(request, answer.head, answer.stream, answer.cache)
        if answer.file is None:
            return self._stored(request, answer.obj, answer.cache)
        return self._file(request, answer.obj, answer.file, answer.cache)

    def _stored(self, request: Request, obj: Stored, cache: CacheResult) -> Plan:
        """A stored answer whose body is in memory."""
        if obj.status == 200 and (cache is HIT or cache is COALESCED) and \
                request.headers.keys().isdisjoint(NEGOTIATING):
            return self._whole_hit(request, obj, cache)
        headers = self._headers(obj.headers, cache)
        if obj.status != 200:
            return Plan(Fields(obj.status, tuple(headers.items())), obj.body, obj.size, obj.born, cache)
        if obj.gzipped is not None:
            _vary_on_encoding(headers)
        status, start, stop = negotiate(request, headers, obj.size)
        body: bytes | memoryview
        if status == 200 and obj.gzipped is not None and _wants_gzip(request):
            headers["content-encoding"] = "gzip"
            body = obj.gzipped
        elif status == 200:
            body = obj.body
        else:
            body = memoryview(obj.body)[start:stop]
        return Plan(Fields(status, tuple(headers.items())), body, len(body), obj.born, cache)

    def _whole_hit(self, request: Request, obj: Stored, cache: CacheResult = HIT) -> Plan:
        """A whole 200 hit (or coalesced answer): the object's shared plan (identity, or gzip when asked and kept)."""
        memo = self._hit_plans if cache is HIT else self._coalesced_plans
        plans = memo.get(obj.key)
        if plans is None or plans[0]() is not obj:
            plans = self._hit(obj, cache, memo)
        if plans[2] is not None and _wants_gzip(request):
            return plans[2]
        return plans[1]

    def _hit(self, obj: Stored, cache: CacheResult,
             plans: dict[str, tuple[weakref.ref[Stored], Plan, Plan | None]]) -> tuple[weakref.ref[Stored], Plan,
                                                                                      Plan | None]:
        """The shared plans of a whole 200 `cache` answer (identity, and gzip when the object has a compressed
        copy), kept in `plans` while the object lives."""
        headers = self._headers(obj.headers, cache)
        if obj.gzipped is not None:
            _vary_on_encoding(headers)
        headers["accept-ranges"] = "bytes"
        plain = Plan(Fields(200, tuple(headers.items())), obj.body, obj.size, obj.born, cache)
        gzip = None
        if obj.gzipped is not None:
            headers["content-encoding"] = "gzip"
            gzip = Plan(Fields(200, tuple(headers.items())), obj.gzipped, len(obj.gzipped), obj.born, cache)
        key = obj.key

        def gone(ref: weakref.ref[Stored]) -> None:
            if plans.get(key, (None,))[0] is ref:  # a newer copy's entry stays
                del plans[key]

        entry = plans[key] = (weakref.ref(obj, gone), plain, gzip)
        return entry

    def _file(self, request: Request, obj: Stored, file: BinaryIO, cache: CacheResult) -> Plan:
        """A stored answer whose body is a disk-tier file."""
        headers = self._headers(obj.headers, cache)
        if obj.status != 200:
            return Plan(Fields(obj.status, tuple(headers.items())), FileRange(file, 0, obj.size), obj.size,
                        obj.born, cache)
        status, start, stop = negotiate(request, headers, obj.size)
        fields = Fields(status, tuple(headers.items()))
        if status in (304, 416) or stop is None:
            return Plan(fields, b"", 0, obj.born, cache)
        return Plan(fields, FileRange(file, start, stop), stop - start, obj.born, cache)

    def _stream(self, request: Request, head: Head, stream: Attachment, cache: CacheResult) -> Plan:
        """An answer arriving from upstream."""
        headers = self._headers(head.headers, cache)
        born = head.born or time.time()  # a generated error is born now: Age 0
        if head.body:
            return Plan(Fields(head.status, tuple(headers.items())), head.body, len(head.body), born, cache)
        start, stop, status = 0, head.length, head.status
        if status == 200:
            status, start, stop = negotiate(request, headers, head.length)
            if status in (304, 416):
                return Plan(Fields(status, tuple(headers.items())), b"", 0, born, cache)
        return Plan(Fields(status, tuple(headers.items())), Stream(stream, start, stop),
                    None if stop is None else stop - start, born, cache)


def _vary_on_encoding(headers: dict[str, str]) -> None:
    """Add Accept-Encoding to the answer's Vary (the origin's own names, kept with the object, stay)."""
    theirs = headers.get("vary")
    if theirs is None:
        headers["vary"] = "Accept-Encoding"
    elif "accept-encoding" not in theirs.lower():
        headers["vary"] = f"{theirs}, Accept-Encoding"


class ShieldFront(PlayerFront):
    """A shield's front: every answer with an Age also says it to the millisecond (`AGE_HEADER`).

    Age is whole seconds, and each tier that reads it rounds the age down once
    more: an edge would think a copy up to a second younger than it is, and
    serve it stale past its bound. The edge prefers the precise age. Only
    shields pay for it (their answers are fields of their own, not the shared
    hit plans), and only edges ask shields.
    """

    def answer_now(self, request: Request, peer: str, now: float) -> Plan | Later:
        plan = super().answer_now(request, peer, now)
        return plan if isinstance(plan, Later) else _aged(plan, now)

    async def answer_later(self, later: Later) -> Plan:
        return _aged(await super().answer_later(later), time.time())


def _aged(plan: Plan, now: float) -> Plan:
    """The plan with its age to the millisecond (rounded down, as Age is: never older than Age says)."""
    if plan.born is None:
        return plan
    age = f"{max(0, int((now - plan.born) * 1000)) / 1000:.3f}"
    fields = Fields(plan.fields.status, (*plan.fields.headers, (AGE_HEADER, age)))
    return Plan(fields, plan.body, plan.length, plan.born, plan.cache, plan.release, plan.upstream)
