"""The front without sockets: (request, engine answer) -> plan, and a plan through the HTTP/1.1 connection.

A real engine whose memory tier the test fills; no upstream, no listener.
"""

from __future__ import annotations

import dataclasses
import gc
import gzip
import sys
import time

import pytest

from livecdn.cache.engine import Engine
from livecdn.cache.freshness import Lifetime, Rules
from livecdn.cache.memory import MemoryStore
from livecdn.cache.stored import Stored
from livecdn.front.answers import PlayerFront
from livecdn.front.http1 import Request, ServerConnection
from livecdn.front.plan import Later, Plan
from livecdn.media.kinds import NameKind
from livecdn.media.playlist import read

NOW = time.time()
SEG = b"s" * 1000
PLAYLIST = b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:1\n" + b"#EXTINF:2.0,\nseg1.ts\n" * 20


def stored(key: str, body: bytes) -> Stored:
    """A 200 as the engine stores it, born 3 s ago: a playlist (with its gzip copy) or a segment."""
    if key.endswith(".m3u8"):
        obj = Stored(key, 200, (("content-type", "application/vnd.apple.mpegurl"), ("etag", '"p"')), body,
                     NOW - 3, Lifetime(60, 0, 0), NameKind.PLAYLIST, read(key, body))
        obj.gzipped = gzip.compress(body)
        return obj
    return Stored(key, 200, (("content-type", "video/mp2t"), ("etag", '"s"')), body, NOW - 3,
                  Lifetime(3600, 0, 0), NameKind.MEDIA)


@pytest.fixture
def front() -> PlayerFront:
    memory = MemoryStore(16 << 20)
    memory.put(stored("/live/seg1.ts", SEG))
    memory.put(stored("/live/index.m3u8", PLAYLIST))
    engine = Engine("t", memory, None, lambda key: ("http://upstream.invalid",), Rules(), 1 << 20, 1.0)
    return PlayerFront(engine, "edge-t")


def req(target: str, method: str = "GET", **headers: str) -> Request:
    fields = {k.replace("_", "-").encode(): v.encode() for k, v in headers.items()}
    return Request(method, target, "1.1", {b"host": b"x", **fields}, True)


def plan(front: PlayerFront, request: Request) -> Plan:
    out = front.answer_now(request, "192.0.2.1", NOW)
    assert isinstance(out, Plan), out
    return out


def wire(p: Plan, request: Request) -> bytes:
    conn = ServerConnection()
    return b"".join(bytes(b) for b in conn.respond(request, p.fields, p.body, p.born, NOW))  # type: ignore[arg-type]


def test_a_hit_is_one_shared_plan_and_its_head_is_the_objects(front: PlayerFront) -> None:
    first, again = plan(front, req("/live/seg1.ts")), plan(front, req("/live/seg1.ts?token=1"))
    assert first is again  # built once per stored object
    assert first.cache == "hit" and first.body == SEG and first.length == len(SEG)
    out = wire(first, req("/live/seg1.ts"))
    assert out.startswith(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nETag: \"s\"\r\n")
    assert b"\r\nX-Cache: HIT\r\n" in out and b"\r\nAge: 3\r\n" in out and out.endswith(b"\r\n\r\n" + SEG)
    assert front.hits == 2


def test_gzip_only_for_a_client_that_asks(front: PlayerFront) -> None:
    plain = plan(front, req("/live/index.m3u8"))
    packed = plan(front, req("/live/index.m3u8", accept_encoding="gzip, deflate"))
    assert plain.body == PLAYLIST and gzip.decompress(packed.body) == PLAYLIST  # type: ignore[arg-type]
    assert ("content-encoding", "gzip") in packed.fields.headers and ("vary", "Accept-Encoding") in plain.fields.headers


@pytest.mark.parametrize(("headers", "status", "body"), [
    ({"if_none_match": '"s"'}, 304, b""),
    ({"range": "bytes=10-19"}, 206, SEG[10:20]),
    ({"range": "bytes=5000-"}, 416, b""),
    ({"range": "bytes=10-19", "if_range": '"other"'}, 200, SEG),
])
def test_conditional_and_range_answers(front: PlayerFront, headers: dict[str, str], status: int, body: bytes) -> None:
    p = plan(front, req("/live/seg1.ts", **headers))
    assert p.fields.status == status and bytes(p.body) == body  # type: ignore[arg-type]
    assert p is not plan(front, req("/live/seg1.ts"))  # never the shared plan


def test_a_miss_is_later_with_the_key(front: PlayerFront) -> None:
    later = front.answer_now(req("/live/seg2.ts?token=x"), "192.0.2.1", NOW)
    assert isinstance(later, Later) and later.key.key == "/live/seg2.ts" and later.peer == "192.0.2.1"


@pytest.mark.parametrize(("request_", "status", "words"), [
    (req("/live/a.ts", "OPTIONS"), 204, b""),
    (req("/live/a.ts", "DELETE"), 405, b"method DELETE not allowed"),
    (req("/live/../etc/passwd"), 400, b"'..' in path"),
])
def test_refusals_and_preflight_need_no_engine(front: PlayerFront, request_: Request, status: int,
                                               words: bytes) -> None:
    p = plan(front, request_)
    assert p.fields.status == status and words in bytes(p.body)  # type: ignore[arg-type]
    assert ("access-control-allow-origin", "*") in p.fields.headers


def test_a_plan_never_outlives_its_object(front: PlayerFront) -> None:
    memory = front.engine.memory
    first = plan(front, req("/live/seg1.ts"))
    old = memory.get("/live/seg1.ts")
    assert old is not None
    memory.put(dataclasses.replace(old, headers=(("content-type", "video/mp2t"), ("etag", '"s2"'))))
    del old
    gc.collect()
    second = plan(front, req("/live/seg1.ts"))  # a revalidated copy: its own plan, its own validators
    assert second is not first and ("etag", '"s2"') in second.fields.headers


def test_an_evicted_objects_bytes_are_not_kept_by_its_plans(front: PlayerFront) -> None:
    body = bytes(bytearray(b"u" * 5000))  # an object of its own, to count its references
    baseline = sys.getrefcount(body)
    front.engine.memory.put(stored("/live/seg9.ts", body))
    assert plan(front, req("/live/seg9.ts")).body is body
    front.engine.memory.remove("/live/seg9.ts")
    gc.collect()
    assert sys.getrefcount(body) == baseline
