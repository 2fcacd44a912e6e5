"""Transcripts of the coalescing fill: events in, commands out, no I/O."""

from __future__ import annotations

import pytest

import livecdn.cache.fill
from livecdn.cache.fill import (
    REPLICA_PATIENCE,
    UNFRAMED_HEADER,
    AbortResponse,
    CacheResult,
    ClientGone,
    ClientRequested,
    DropRun,
    EndResponse,
    Fill,
    Head,
    Held,
    Log,
    RefreshRequested,
    Respond,
    SendBytes,
    ServeStored,
    StaleTimer,
    StartFetch,
    StoreObject,
    UpstreamChunk,
    UpstreamDone,
    UpstreamFailed,
    UpstreamResponded,
    VaryLearned,
)
from livecdn.cache.freshness import Lifetime, Rules
from livecdn.cache.keys import CacheKey, cache_key
from livecdn.cache.stored import Stored
from livecdn.media.kinds import NameKind, kind_of
from livecdn.media.playlist import Manifest, read
from tests.parses import count_loads
from tests.playbook import Placeholder, Playbook, take_unfinished

T0 = 1_700_000_000.0
RULES = Rules(error_ttl=0)  # failures are not remembered here: tests/test_error_storm.py has that memory
SEG = cache_key("/live/cam/seg7.ts")
PLAYLIST = cache_key("/live/cam/index.m3u8")
UPSTREAMS = ("http://shield-a", "http://shield-b")
TS = ("content-type", "video/mp2t")
M3U8 = ("content-type", "application/vnd.apple.mpegurl")
# The same headers as kept and replayed: names lower-case.
TS_KEPT = ("content-type", "video/mp2t")
M3U8_KEPT = ("content-type", "application/vnd.apple.mpegurl")
LIVE_BODY = (b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:4\n#EXT-X-MEDIA-SEQUENCE:7\n"
             b"#EXTINF:4.0,\nseg7.ts\n#EXTINF:4.0,\nseg8.ts\n")


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every playlist text `m3u8` parses from now on, in order."""
    return count_loads(monkeypatch)


def make_fill(key: CacheKey = SEG, *, upstreams: tuple[str, ...] = UPSTREAMS,
              stale: Stored | None = None, max_bytes: int = 1 << 20) -> Fill:
    return Fill(key, kind_of(key.extension), upstreams, RULES, max_bytes, stale)


def ok(length: int | None = None, *extra: tuple[str, str], ct: tuple[str, str] = TS,
       at: float = T0) -> UpstreamResponded:
    """A 200 with a content-type, optionally a content-length and more headers."""
    hdrs = (ct,) + ((("content-length", str(length)),) if length is not None else ()) + extra
    return UpstreamResponded(200, hdrs, at)


def head(cache: str, length: int | None, *, hdrs: tuple[tuple[str, str], ...] = (TS_KEPT,),
         status: int = 200, born: float = T0) -> Head:
    return Head(status, hdrs, length, cache, born)


def stale_copy(key: CacheKey = SEG, *, born: float = T0, fresh: float = 10.0, sie: float = 30.0,
               headers: tuple[tuple[str, str], ...] = (TS_KEPT, ("etag", '"v1"'),
                                                       ("last-modified", "Tue, 14 Nov 2023 22:13:20 GMT")),
               body: bytes = b"old body", status: int = 200, manifest: Manifest | None = None) -> Stored:
    return Stored(key.key, status, headers, body, born, Lifetime(fresh, 2.0, sie), kind_of(key.extension), manifest)


# --- the harness itself -------------------------------------------------------

def test_playbook_mismatch_shows_an_ndiff() -> None:
    pb = Playbook(make_fill()) >> ClientRequested(1) << StartFetch("http://shield-b", 0)
    with pytest.raises(AssertionError, match="Playbook mismatch!") as info:
        assert pb
    assert "- StartFetch(upstream='http://shield-b'" in str(info.value)
    assert "+ StartFetch(upstream='http://shield-a'" in str(info.value)


def test_playbook_missing_command_is_a_mismatch() -> None:
    pb = Playbook(make_fill()) >> ClientRequested(1)
    with pytest.raises(AssertionError, match="Playbook mismatch!"):
        assert pb


def test_unasserted_playbook_is_reported() -> None:
    pb = Playbook(make_fill()) >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
    with pytest.warns(RuntimeWarning, match="Unfinished playbook!"):
        del pb  # collected unasserted: warns, and leaves a report for the teardown check
    reports = take_unfinished()
    assert len(reports) == 1 and "Unfinished playbook!" in reports[0]
    assert "ClientRequested(client=1)" in reports[0]


def test_placeholder_binds_once_and_must_match_later() -> None:
    h = Placeholder(Head)
    with pytest.raises(AssertionError, match="never matched"):
        h()
    assert not h.bind("not a head")
    first, other = head(CacheResult.MISS, 3), head(CacheResult.COALESCED, 3)
    assert h.bind(first) and h() is first
    assert h.bind(head(CacheResult.MISS, 3))  # equal value
    assert not h.bind(other)


# --- coalescing ---------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 50])
def test_n_requests_make_one_fetch(n: int) -> None:
    fill = make_fill()
    stored = Placeholder(Stored)
    pb = Playbook(fill) >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
    for c in range(2, n + 1):
        pb >> ClientRequested(c)  # no second StartFetch, no command at all
    pb >> ok(12)
    for c in range(1, n + 1):
        pb << Respond(c, head(CacheResult.MISS if c == 1 else CacheResult.COALESCED, 12))
    pb >> UpstreamChunk(b"x" * 12)
    for c in range(1, n + 1):
        pb << SendBytes(c, 0, 12)
    pb >> UpstreamDone(T0 + 0.5) << StoreObject(stored)
    for c in range(1, n + 1):
        pb << EndResponse(c)
    assert pb
    assert fill.finished
    assert stored().key == SEG.key and stored().body == b"x" * 12 and stored().status == 200
    assert stored().kind is NameKind.MEDIA and stored().manifest is None
    assert stored().lifetime.fresh == RULES.media_ttl
    assert stored().headers == (TS_KEPT,)  # content-length is rebuilt by the front, not kept


def test_late_joiner_gets_bytes_so_far_then_the_rest() -> None:
    fill = make_fill()
    assert (
        Playbook(fill)
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> ok(10) << Respond(1, head(CacheResult.MISS, 10))
        >> UpstreamChunk(b"0123") << SendBytes(1, 0, 4)
        >> UpstreamChunk(b"456") << SendBytes(1, 4, 7)
        >> ClientRequested(2) << Respond(2, head(CacheResult.COALESCED, 10)) << SendBytes(2, 0, 7)
        >> UpstreamChunk(b"789") << SendBytes(1, 7, 10) << SendBytes(2, 7, 10)
        >> UpstreamDone(T0) << StoreObject(Placeholder(Stored)) << EndResponse(1) << EndResponse(2)
    )
    assert b"".join(fill.body) == b"0123456789"


def test_joiner_before_headers_gets_head_with_the_first() -> None:
    assert (
        Playbook(make_fill())
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> ClientRequested(2)
        >> ok(None) << Respond(1, head(CacheResult.MISS, None)) << Respond(2, head(CacheResult.COALESCED, None))
        >> ClientRequested(3) << Respond(3, head(CacheResult.COALESCED, None))  # headers, but no empty SendBytes
        >> UpstreamChunk(b"ab") << SendBytes(1, 0, 2) << SendBytes(2, 0, 2) << SendBytes(3, 0, 2)
    )


def test_missing_content_type_is_filled_in_and_age_moves_born_back() -> None:
    assert (
        Playbook(make_fill())
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> UpstreamResponded(200, (("age", "5"), ("content-length", "1"), ("server", "x")), T0)
        << Respond(1, Head(200, (TS_KEPT,), 1, CacheResult.MISS, T0 - 5))
    )


@pytest.mark.parametrize(("path", "upstream", "kept"), [
    # a generic type on a name we know is replaced by the name's type
    ("/live/cam/seg7.ts", "application/octet-stream", "video/mp2t"),
    ("/live/cam/seg7.ts", "binary/octet-stream", "video/mp2t"),
    ("/live/cam/seg7.ts", "text/plain; charset=utf-8", "video/mp2t"),
    ("/live/cam/seg7.ts", "Application/Octet-Stream", "video/mp2t"),
    ("/live/cam/key7.key", "text/plain", "application/octet-stream"),
    # a specific type is the origin's word, even if it is not ours
    ("/live/cam/seg7.m4s", "video/mp4", "video/mp4"),
    ("/live/cam/seg7.ts", "video/MP2T", "video/MP2T"),
    # a name we do not know keeps whatever it was given
    ("/live/cam/notes.html", "text/plain", "text/plain"),
])
def test_generic_content_type_is_replaced_by_the_extensions(path: str, upstream: str, kept: str) -> None:
    assert (
        Playbook(make_fill(cache_key(path)))
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> UpstreamResponded(200, (("content-type", upstream), ("content-length", "1")), T0)
        << Respond(1, Head(200, (("content-type", kept),), 1, CacheResult.MISS, T0))
    )


def test_playlist_served_as_text_plain_gets_the_playlist_type() -> None:
    stored = Placeholder(Stored)
    n = len(LIVE_BODY)
    assert (
        Playbook(make_fill(PLAYLIST))
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> UpstreamResponded(200, (("content-type", "text/plain"),), T0)
        >> UpstreamChunk(LIVE_BODY)
        >> UpstreamDone(T0) << StoreObject(stored)
        << ServeStored(1, stored, CacheResult.MISS)  # whole, as a hit: nobody had seen a byte
    )
    assert stored().headers == (M3U8_KEPT,) and stored().size == n


def test_unknown_name_without_content_type_gets_none() -> None:
    assert (
        Playbook(make_fill(cache_key("/live/cam/notes")))
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> UpstreamResponded(200, (("content-length", "1"),), T0)
        << Respond(1, Head(200, (), 1, CacheResult.MISS, T0))
    )


def test_kept_headers_are_lower_case_with_content_type_first() -> None:
    upstream = (("etag", '"v1"'), ("server", "x"), ("cache-control", "max-age=60"),
                ("content-type", "application/octet-stream"), ("x-custom", "y"),
                ("last-modified", "Tue, 14 Nov 2023 22:13:20 GMT"), ("connection", "keep-alive"))
    assert (
        Playbook(make_fill())
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> UpstreamResponded(200, upstream, T0)
        << Respond(1, head(CacheResult.MISS, None, hdrs=(
            TS_KEPT, ("etag", '"v1"'), ("cache-control", "max-age=60"),
            ("last-modified", "Tue, 14 Nov 2023 22:13:20 GMT"))))
    )


@pytest.mark.parametrize("leaving", [[2], [1, 2, 3]])
def test_client_gone_does_not_cancel_the_fetch(leaving: list[int]) -> None:
    fill = make_fill()
    stored = Placeholder(Stored)
    pb = (Playbook(fill)
          >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
          >> ClientRequested(2) >> ClientRequested(3)
          >> ok(4) << Respond(1, head(CacheResult.MISS, 4)) << Respond(2, head(CacheResult.COALESCED, 4))
          << Respond(3, head(CacheResult.COALESCED, 4))
          >> UpstreamChunk(b"ab") << SendBytes(1, 0, 2) << SendBytes(2, 0, 2) << SendBytes(3, 0, 2))
    for c in leaving:
        pb >> ClientGone(c)  # no command: the fetch is not cancelled
    staying = [c for c in (1, 2, 3) if c not in leaving]
    pb >> UpstreamChunk(b"cd")
    for c in staying:
        pb << SendBytes(c, 2, 4)
    pb >> UpstreamDone(T0) << StoreObject(stored)
    for c in staying:
        pb << EndResponse(c)
    assert pb
    assert stored().body == b"abcd" and fill.finished


def test_failure_mid_body_stores_nothing_and_aborts_everyone() -> None:
    fill = make_fill()  # a second upstream exists, but headers are out: no failover
    assert (
        Playbook(fill, logs=True)
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> ClientRequested(2)
        >> ok(100) << Respond(1, head(CacheResult.MISS, 100)) << Respond(2, head(CacheResult.COALESCED, 100))
        >> UpstreamChunk(b"a" * 40) << SendBytes(1, 0, 40) << SendBytes(2, 0, 40)
        >> UpstreamFailed("connection reset", T0 + 1)
        << Log("warning", f"{SEG}: broken mid-body: {UPSTREAMS[0]}: connection reset; nothing stored")
        << AbortResponse(1, f"{UPSTREAMS[0]}: connection reset")
        << AbortResponse(2, f"{UPSTREAMS[0]}: connection reset")
    )
    assert fill.finished
    with pytest.raises(RuntimeError):
        fill.handle(ClientRequested(3))  # a finished fill takes no one; the shell starts a new one


def test_body_shorter_than_content_length_is_not_stored() -> None:
    assert (
        Playbook(make_fill())
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> ok(10) << Respond(1, head(CacheResult.MISS, 10))
        >> UpstreamChunk(b"abc") << SendBytes(1, 0, 3)
        >> UpstreamDone(T0) << AbortResponse(1, f"{UPSTREAMS[0]}: body ended at 3 of 10 bytes")
    )


def test_body_longer_than_content_length_is_not_stored_nor_sent() -> None:
    fill = make_fill()
    assert (
        Playbook(fill)
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> ok(4) << Respond(1, head(CacheResult.MISS, 4))
        >> UpstreamChunk(b"abc") << SendBytes(1, 0, 3)
        >> UpstreamChunk(b"def") << AbortResponse(1, "body longer than its content-length (4)")
    )
    assert fill.finished


def test_content_length_over_max_bytes_is_a_502() -> None:
    h = Placeholder(Head)
    fill = make_fill(max_bytes=100)
    assert (
        Playbook(fill)
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> ok(101) << Respond(1, h) << EndResponse(1)
    )
    assert h().status == 502 and h().cache == CacheResult.ERROR and b"exceeds max_object_bytes" in h().body
    assert h().length == len(h().body) and fill.finished


def test_streamed_body_over_max_bytes_is_cut_and_not_stored() -> None:
    assert (
        Playbook(make_fill(max_bytes=5))
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> ok(None) << Respond(1, head(CacheResult.MISS, None))
        >> UpstreamChunk(b"abcd") << SendBytes(1, 0, 4)
        >> UpstreamChunk(b"ef") << AbortResponse(1, "body exceeds max_object_bytes (5)")
    )


# --- failover and errors ------------------------------------------------------

FAILURES = {
    "refused": UpstreamFailed("connection refused", T0),
    "timeout": UpstreamFailed("timed out", T0, timeout=True),
    "500": UpstreamResponded(500, (), T0),
    "502": UpstreamResponded(502, (), T0),
    "503": UpstreamResponded(503, (), T0),
    "504": UpstreamResponded(504, (), T0),
    "304 unasked": UpstreamResponded(304, (), T0),
}


@pytest.mark.parametrize("failure", FAILURES.values(), ids=FAILURES.keys())
def test_failover_to_next_upstream_before_headers(failure: UpstreamFailed | UpstreamResponded) -> None:
    fill = make_fill()
    assert (
        Playbook(fill)
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> ClientRequested(2)
        >> failure << StartFetch(UPSTREAMS[1], 1)
        >> ClientRequested(3)
        >> ok(2) << Respond(1, head(CacheResult.MISS, 2)) << Respond(2, head(CacheResult.COALESCED, 2))
        << Respond(3, head(CacheResult.COALESCED, 2))
        >> UpstreamChunk(b"ok") << SendBytes(1, 0, 2) << SendBytes(2, 0, 2) << SendBytes(3, 0, 2)
        >> UpstreamDone(T0) << StoreObject(Placeholder(Stored))
        << EndResponse(1) << EndResponse(2) << EndResponse(3)
    )
    assert fill.attempt == 1


def test_failover_is_logged() -> None:
    assert (
        Playbook(make_fill(), logs=True)
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> UpstreamResponded(502, (), T0)
        << Log("warning", f"{SEG}: {UPSTREAMS[0]} answered 502; trying {UPSTREAMS[1]}")
        << StartFetch(UPSTREAMS[1], 1)
    )


SIBLING = "http://worker-1"


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_sibling_workers_error_is_the_answer(status: int) -> None:
    """It asked the node's upstreams itself: asking them again would double their load and the player's wait."""
    fill = Fill(SEG, kind_of(SEG.extension), (SIBLING, *UPSTREAMS), RULES, 1 << 20,
                tiers=("worker", "shield", "shield"), siblings=frozenset({SIBLING}))
    h = Placeholder(Head)
    assert (
        Playbook(fill)
        >> ClientRequested(1) << StartFetch(SIBLING, 0)
        >> UpstreamResponded(status, (("x-livecdn-error", "shield timed out"),), T0)
        << Respond(1, h) << EndResponse(1)
    )
    assert h().status == (status if status in (503, 504) else 502)


@pytest.mark.parametrize("failure", [FAILURES["refused"], FAILURES["timeout"]], ids=["dead", "hung"])
def test_a_sibling_that_does_not_answer_is_passed_over(failure: UpstreamFailed) -> None:
    fill = Fill(SEG, kind_of(SEG.extension), (SIBLING, *UPSTREAMS), RULES, 1 << 20,
                siblings=frozenset({SIBLING}))
    assert (
        Playbook(fill)
        >> ClientRequested(1) << StartFetch(SIBLING, 0)
        >> failure << StartFetch(UPSTREAMS[0], 1)
    )


def error_headers(reason: str) -> tuple[tuple[str, str], ...]:
    return (("content-type", "text/plain; charset=utf-8"), ("x-livecdn-error", reason))


@pytest.mark.parametrize(("last", "status", "reason"), [
    (UpstreamFailed("refused the connection", T0), 502, "shield refused the connection"),
    (UpstreamResponded(503, (), T0), 503, "shield answered 503"),
    (UpstreamResponded(500, (), T0), 502, "shield answered 500"),
    (UpstreamResponded(504, (), T0), 504, "shield answered 504"),
    (UpstreamFailed("timed out", T0, timeout=True), 504, "shield timed out"),
])
def test_all_upstreams_failed_is_an_error_head_for_everyone(last: object, status: int, reason: str) -> None:
    fill = Fill(SEG, kind_of(SEG.extension), UPSTREAMS, RULES, 1 << 20, tiers=("shield", "shield"))
    h1, h2 = Placeholder(Head), Placeholder(Head)
    assert (
        Playbook(fill)
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> ClientRequested(2)
        >> UpstreamFailed("connection refused", T0) << StartFetch(UPSTREAMS[1], 1)
        >> last << Respond(1, h1) << EndResponse(1) << Respond(2, h2) << EndResponse(2)
    )  # and no StoreObject
    for h in (h1(), h2()):
        assert h.status == status and h.cache == CacheResult.ERROR
        assert h.body == f"{status} {reason}\n".encode() and h.length == len(h.body)
        assert h.headers == error_headers(reason)
    assert fill.finished


def test_reason_from_a_livecdn_tier_above_reaches_the_502() -> None:
    h = Placeholder(Head)
    why = "origin answered 503"
    said = f"{UPSTREAMS[0]} answered 502 ({why})"
    assert (
        Playbook(make_fill(upstreams=UPSTREAMS[:1]), logs=True)
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> UpstreamResponded(502, (("content-type", "text/plain; charset=utf-8"),
                                   ("x-livecdn-error", why)), T0)
        << Log("warning", f"{SEG}: {said}; answering 502")
        << Respond(1, h) << EndResponse(1)
    )
    assert h().body == f"502 upstream answered 502 ({why})\n".encode()
    assert h().headers == error_headers(f"upstream answered 502 ({why})")


def test_error_header_is_made_safe_but_the_body_keeps_the_reason() -> None:
    h = Placeholder(Head)
    assert (
        Playbook(make_fill(upstreams=UPSTREAMS[:1]))
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> UpstreamFailed("reset\r\nSet-Cookie: x=1 \u2013 é", T0) << Respond(1, h) << EndResponse(1)
    )
    assert h().headers == error_headers("upstream reset??Set-Cookie: x=1 ? ?")
    assert h().body == "502 upstream reset\r\nSet-Cookie: x=1 \u2013 é\n".encode()


STALE_BOUND = 10.0 + 30.0  # fresh + stale_if_error of stale_copy()


@pytest.mark.parametrize(("after", "served_stale"), [
    (11.0, True), (STALE_BOUND - 0.1, True), (STALE_BOUND, False), (STALE_BOUND + 100, False),
])
def test_stale_if_error_within_its_bound(after: float, served_stale: bool) -> None:
    old = stale_copy()
    fill = make_fill(upstreams=UPSTREAMS[:1], stale=old)
    pb = (Playbook(fill)
          >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0, (
              ("if-none-match", '"v1"'), ("if-modified-since", "Tue, 14 Nov 2023 22:13:20 GMT")))
          << StaleTimer(RULES.stale_after)
          >> ClientRequested(2)
          >> UpstreamFailed("connection refused", T0 + after))
    if served_stale:
        pb << ServeStored(1, old, CacheResult.STALE) << ServeStored(2, old, CacheResult.STALE)
    else:
        h = Placeholder(Head)
        pb << Respond(1, h) << EndResponse(1) << Respond(2, h) << EndResponse(2)
    assert pb
    if not served_stale:
        assert h().status == 502
    assert fill.finished


@pytest.mark.parametrize(("headers", "conditional"), [
    ((TS_KEPT, ("etag", '"v1"')), (("if-none-match", '"v1"'),)),
    ((TS_KEPT, ("last-modified", "Tue, 14 Nov 2023 22:13:20 GMT")),
     (("if-modified-since", "Tue, 14 Nov 2023 22:13:20 GMT"),)),
    ((TS_KEPT,), ()),
])
def test_start_fetch_carries_validators_of_the_stale_copy(
        headers: tuple[tuple[str, str], ...], conditional: tuple[tuple[str, str], ...]) -> None:
    fill = make_fill(stale=stale_copy(headers=headers))
    assert (
        Playbook(fill)
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0, conditional) << StaleTimer(RULES.stale_after)
        >> UpstreamFailed("refused", T0 + 11) << StartFetch(UPSTREAMS[1], 1, conditional)
    )


def test_304_revalidates_the_stale_copy_for_everyone() -> None:
    old = stale_copy()
    fresh = Placeholder(Stored)
    fill = make_fill(stale=old)
    assert (
        Playbook(fill)
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0, (
            ("if-none-match", '"v1"'), ("if-modified-since", "Tue, 14 Nov 2023 22:13:20 GMT")))
        << StaleTimer(RULES.stale_after)
        >> ClientRequested(2)
        >> UpstreamResponded(304, (("etag", '"v1"'), ("cache-control", "max-age=5"), ("age", "2"),
                                   ("server", "x")), T0 + 100)
        << StoreObject(fresh) << ServeStored(1, fresh, CacheResult.MISS) << ServeStored(2, fresh, CacheResult.COALESCED)
    )
    new = fresh()
    assert new is not old and new.body == old.body and new.status == 200
    assert new.born == T0 + 98  # arrival minus the Age the upstream declared
    assert new.lifetime.fresh == 5.0  # the 304's max-age is stricter than a year
    assert new.headers == (TS_KEPT, ("etag", '"v1"'), ("last-modified", "Tue, 14 Nov 2023 22:13:20 GMT"),
                           ("cache-control", "max-age=5"))  # lower-case names, no server
    assert new.etag == '"v1"' and new.fresh(T0 + 102) and not new.fresh(T0 + 103)
    assert old.born == T0  # the stale copy itself is untouched
    assert fill.finished


DAMAGED = b"#EXTM3U\n#EXT-X-TARGETDURATION:x\n"  # read whole before it was stored, then damaged on disk


@pytest.mark.parametrize(("body", "kept", "parses", "lifetime"), [
    (LIVE_BODY, True, 0, 2.0),  # stored by a fill: its manifest is reused; half of TARGETDURATION 4
    (LIVE_BODY, False, 1, 2.0),  # read back from disk, which keeps no manifest: read once, kept from now on
    (DAMAGED, False, 1, RULES.other_ttl),  # no manifest to be had: the lifetime of its name alone
], ids=["manifest kept", "from disk", "damaged on disk"])
def test_304_for_a_live_playlist_gets_its_manifests_lifetime(body: bytes, kept: bool, parses: int,
                                                             lifetime: float, loads: list[str]) -> None:
    old = stale_copy(PLAYLIST, headers=(M3U8_KEPT, ("etag", '"p1"')), body=body,
                     manifest=read(PLAYLIST.path, body) if kept else None)
    loads.clear()
    fresh = Placeholder(Stored)
    assert (
        Playbook(make_fill(PLAYLIST, stale=old))
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0, (("if-none-match", '"p1"'),))
        << StaleTimer(2.0 if kept else RULES.stale_after)  # half of TARGETDURATION 4, when the copy says it
        >> UpstreamResponded(304, (("etag", '"p1"'),), T0 + 50)
        << StoreObject(fresh) << ServeStored(1, fresh, CacheResult.MISS)
    )
    assert len(loads) == parses and fresh().lifetime.fresh == lifetime
    assert fresh().manifest == (read(PLAYLIST.path, body) if body is LIVE_BODY else None)


def test_304_for_a_stored_404_keeps_the_negative_ttl() -> None:
    old = stale_copy(headers=(("etag", '"gone"'),), body=b"not found", status=404)
    fresh = Placeholder(Stored)
    assert (
        Playbook(make_fill(stale=old))
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0, (("if-none-match", '"gone"'),)) << StaleTimer(1.0)
        >> UpstreamResponded(304, (("etag", '"gone"'),), T0 + 50)
        << StoreObject(fresh) << ServeStored(1, fresh, CacheResult.MISS)
    )
    assert fresh().status == 404 and fresh().lifetime.fresh == RULES.negative_ttl
    assert (fresh().lifetime.stale_while_revalidate, fresh().lifetime.stale_if_error) == (0.0, 0.0)


def test_304_without_cache_control_keeps_the_stored_one() -> None:
    # The stored cache-control counts on revalidation too.
    old = stale_copy(headers=(TS_KEPT, ("etag", '"v1"'), ("cache-control", "max-age=10, must-revalidate")))
    fresh = Placeholder(Stored)
    assert (
        Playbook(make_fill(stale=old))
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0, (("if-none-match", '"v1"'),)) << StaleTimer(1.0)
        >> UpstreamResponded(304, (("etag", '"v1"'),), T0 + 50)
        << StoreObject(fresh) << ServeStored(1, fresh, CacheResult.MISS)
    )
    assert fresh().lifetime == Lifetime(10.0, 0.0, 0.0)


def test_304_with_no_store_serves_without_storing() -> None:
    old = stale_copy()
    fresh = Placeholder(Stored)
    assert (
        Playbook(make_fill(stale=old))
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0, (
            ("if-none-match", '"v1"'), ("if-modified-since", "Tue, 14 Nov 2023 22:13:20 GMT"))) << StaleTimer(1.0)
        >> UpstreamResponded(304, (("cache-control", "no-store"),), T0 + 50)
        << ServeStored(1, fresh, CacheResult.MISS)
    )
    assert not fresh().lifetime.store


# --- playlists ----------------------------------------------------------------

def test_playlist_is_held_until_complete(loads: list[str]) -> None:
    fill = make_fill(PLAYLIST)
    stored = Placeholder(Stored)
    playlist_head = (M3U8, ("cache-control", "max-age=60"))
    kept = (M3U8_KEPT, ("cache-control", "max-age=60"))
    assert (
        Playbook(fill)
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> UpstreamResponded(200, playlist_head, T0)  # no Respond yet
        >> UpstreamChunk(LIVE_BODY[:20])  # no SendBytes
        >> ClientRequested(2)  # nothing either
        >> UpstreamChunk(LIVE_BODY[20:])
        >> UpstreamDone(T0) << StoreObject(stored)
        << ServeStored(1, stored, CacheResult.MISS) << ServeStored(2, stored, CacheResult.COALESCED)
    )
    assert stored().headers == kept and stored().born == T0
    assert stored().kind is NameKind.PLAYLIST and stored().body == LIVE_BODY
    assert loads == [LIVE_BODY.decode()]  # read once, when whole
    assert stored().manifest == read(PLAYLIST.path, LIVE_BODY)
    assert stored().lifetime.fresh == 2.0  # half of 4 s, stricter than max-age=60


MALFORMED = {
    "html": b"<html><body>502 Bad Gateway</body></html>",
    "no target duration": b"#EXTM3U\n#EXTINF:4.0,\nseg7.ts\n",
    "not utf-8": b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n\xff\xfe\n",
    "bad number": b"#EXTM3U\n#EXT-X-TARGETDURATION:four\n",
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_playlist_fails_over_and_is_never_stored(body: bytes) -> None:
    stored = Placeholder(Stored)
    assert (
        Playbook(make_fill(PLAYLIST))
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> ok(None, ct=M3U8) >> UpstreamChunk(body)
        >> UpstreamDone(T0) << StartFetch(UPSTREAMS[1], 1)
        >> ok(None, ct=M3U8) >> UpstreamChunk(LIVE_BODY)
        >> UpstreamDone(T0) << StoreObject(stored)
        << ServeStored(1, stored, CacheResult.MISS)
    )
    assert stored().body == LIVE_BODY


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_playlist_from_the_last_upstream_is_a_502(body: bytes) -> None:
    h = Placeholder(Head)
    assert (
        Playbook(make_fill(PLAYLIST, upstreams=UPSTREAMS[:1]))
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> ok(None, ct=M3U8) >> UpstreamChunk(body)
        >> UpstreamDone(T0) << Respond(1, h) << EndResponse(1)
    )
    assert h().status == 502 and b"malformed playlist" in h().body


@pytest.mark.parametrize("end", [
    UpstreamFailed("connection reset", T0),
    UpstreamDone(T0),  # short of its content-length
])
def test_playlist_broken_mid_body_fails_over(end: UpstreamFailed | UpstreamDone) -> None:
    assert (
        Playbook(make_fill(PLAYLIST))
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> ok(len(LIVE_BODY), ct=M3U8) >> UpstreamChunk(LIVE_BODY[:10])
        >> end << StartFetch(UPSTREAMS[1], 1)  # nobody saw a byte, so trying again is safe
    )


def test_playlist_over_max_bytes_is_an_error_head_not_a_cut() -> None:
    h = Placeholder(Head)
    fill = make_fill(PLAYLIST, max_bytes=16)
    assert (
        Playbook(fill)
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> ok(None, ct=M3U8) >> UpstreamChunk(LIVE_BODY)
        << Respond(1, h) << EndResponse(1)  # the client never had a head, so no AbortResponse
    )
    assert h().status == 502 and fill.finished


def test_playlist_404_is_streamed_not_held() -> None:
    assert (
        Playbook(make_fill(PLAYLIST))
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> UpstreamResponded(404, (("content-type", "text/plain"),), T0)
        # only a 200 gets our type
        << Respond(1, Head(404, (("content-type", "text/plain"),), None, CacheResult.MISS, T0))
    )


# --- what is stored -----------------------------------------------------------

@pytest.mark.parametrize(("status", "fresh"), [(404, RULES.negative_ttl), (410, RULES.negative_ttl), (403, None)])
def test_error_answers_negative_ttl_or_not_stored(status: int, fresh: float | None) -> None:
    stored = Placeholder(Stored)
    pb = (Playbook(make_fill())
          >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
          >> UpstreamResponded(status, (("content-type", "text/plain"), ("content-length", "4")), T0)
          << Respond(1, Head(status, (("content-type", "text/plain"),), 4, CacheResult.MISS, T0))
          >> UpstreamChunk(b"nope") << SendBytes(1, 0, 4)
          >> UpstreamDone(T0))
    if fresh is not None:
        pb << StoreObject(stored)
    assert pb << EndResponse(1)
    if fresh is not None:
        assert stored().status == status and stored().lifetime.fresh == fresh
        assert stored().lifetime.stale_if_error == 0.0  # an error is never a fallback
        assert stored().lifetime.stale_while_revalidate == 0.0  # nor served stale while a segment appears


@pytest.mark.parametrize("cc", ["no-store", "private", "private, max-age=60"])
def test_no_store_is_served_but_not_stored(cc: str) -> None:
    assert (
        Playbook(make_fill())
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> UpstreamResponded(200, (TS, ("cache-control", cc)), T0)
        << Respond(1, Head(200, (TS_KEPT, ("cache-control", cc)), None, CacheResult.MISS, T0))
        >> UpstreamChunk(b"abc") << SendBytes(1, 0, 3)
        >> UpstreamDone(T0) << EndResponse(1)
    )


def test_origin_max_age_caps_the_stored_lifetime() -> None:
    # The kept headers (names lower-case): the origin's Cache-Control must still count.
    stored = Placeholder(Stored)
    assert (
        Playbook(make_fill())
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> ok(3, ("cache-control", "max-age=10")) << Respond(1, head(CacheResult.MISS, 3, hdrs=(
            TS_KEPT, ("cache-control", "max-age=10"))))
        >> UpstreamChunk(b"abc") << SendBytes(1, 0, 3)
        >> UpstreamDone(T0) << StoreObject(stored) << EndResponse(1)
    )
    assert stored().lifetime.fresh == 10.0


# --- background refresh and bounds ---------------------------------------------

def test_refresh_with_no_clients_stores_the_object() -> None:
    stored = Placeholder(Stored)
    fill = make_fill(PLAYLIST)
    assert (
        Playbook(fill)
        >> RefreshRequested() << StartFetch(UPSTREAMS[0], 0)
        >> ok(None, ct=M3U8) >> UpstreamChunk(LIVE_BODY)
        >> UpstreamDone(T0) << StoreObject(stored)
    )
    assert stored().body == LIVE_BODY and fill.finished


def test_refresh_revalidates_and_a_client_may_join() -> None:
    old = stale_copy()
    fresh = Placeholder(Stored)
    fill = make_fill(stale=old)
    assert (
        Playbook(fill)
        >> RefreshRequested() << StartFetch(UPSTREAMS[0], 0, (
            ("if-none-match", '"v1"'), ("if-modified-since", "Tue, 14 Nov 2023 22:13:20 GMT")))
        >> ClientRequested(9) << StaleTimer(1.0)  # the first client's wait for the upstream starts
        >> UpstreamResponded(304, (), T0 + 20) << StoreObject(fresh) << ServeStored(9, fresh, CacheResult.COALESCED)
    )
    with pytest.raises(RuntimeError, match="requested twice"):
        fill.handle(RefreshRequested())


def test_max_clients_per_fill_gives_a_503(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(livecdn.cache.fill, "MAX_CLIENTS_PER_FILL", 2)
    fill = make_fill()
    h, full = Placeholder(Head), Placeholder(Head)
    assert (
        Playbook(fill)
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> ClientRequested(2)
        >> ClientRequested(3) << Respond(3, h) << EndResponse(3)
        >> ok(1) << Respond(1, head(CacheResult.MISS, 1)) << Respond(2, head(CacheResult.COALESCED, 1))  # not 3
        >> ClientGone(2)
        >> ClientRequested(4) << Respond(4, head(CacheResult.COALESCED, 1))  # room again
        >> ClientRequested(5) << Respond(5, full) << EndResponse(5)  # 1 and 4: full again
    )
    assert h().status == 503 and h().cache == CacheResult.ERROR and full().status == 503


# --- shell bugs are loud --------------------------------------------------------

def test_impossible_events_raise() -> None:
    fill = make_fill()
    with pytest.raises(RuntimeError):
        fill.handle(UpstreamChunk(b"x"))  # before any fetch
    with pytest.raises(RuntimeError):
        fill.handle(UpstreamResponded(200, (), T0))
    fill.handle(ClientRequested(1))
    with pytest.raises(RuntimeError):
        fill.handle(UpstreamDone(T0))  # before headers
    with pytest.raises(ValueError, match="at least one upstream"):
        make_fill(upstreams=())


# --- Vary (issue 10, item 7) ----------------------------------------------------

def test_a_fetch_that_finds_the_object_varies_sends_its_clients_back_for_their_variant() -> None:
    fill = make_fill()
    pb = (Playbook(fill) >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0) >> ClientRequested(2)
          >> ok(12, ("vary", "Accept-Language, accept-encoding")) << VaryLearned(("accept-language",), (1, 2)))
    assert pb
    assert fill.finished  # nothing is stored, nobody gets this answer


def test_a_variant_whose_vary_matches_is_stored_with_its_vary() -> None:
    key = SEG.varied(("accept-language",), {b"accept-language": b"fr"})
    fill = make_fill(key)
    stored = Placeholder(Stored)
    pb = (Playbook(fill) >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
          >> ok(2, ("vary", "Accept-Language"))
          << Respond(1, head(CacheResult.MISS, 2, hdrs=(TS_KEPT, ("vary", "Accept-Language"))))
          >> UpstreamChunk(b"fr") << SendBytes(1, 0, 2) >> UpstreamDone(T0) << StoreObject(stored) << EndResponse(1))
    assert pb
    assert stored().key == key.key != SEG.key


@pytest.mark.parametrize(("vary", "learned"), [
    ("*", ()), ("Accept-Language, Cookie", (("accept-language", "cookie"),))])
def test_a_variant_answered_with_another_vary_is_served_but_not_stored(vary: str,
                                                                        learned: tuple[tuple[str, ...], ...]) -> None:
    key = SEG.varied(("accept-language",), {b"accept-language": b"fr"})
    fill = make_fill(key)
    pb = Playbook(fill) >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0) >> ok(2, ("vary", vary))
    for names in learned:  # the names to use from now on (none for `*`: it says nothing to key by)
        pb << VaryLearned(names)
    pb << Respond(1, head(CacheResult.MISS, 2, hdrs=(TS_KEPT, ("vary", vary))))
    pb >> UpstreamChunk(b"fr") << SendBytes(1, 0, 2) >> UpstreamDone(T0) << EndResponse(1)  # no StoreObject
    assert pb


# --- stream restarts, lagging replicas, close-delimited bodies (issue 10) ---

def playlist_body(sequence: int, segments: int) -> bytes:
    lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:4", f"#EXT-X-MEDIA-SEQUENCE:{sequence}"]
    for i in range(sequence, sequence + segments):
        lines += ["#EXTINF:4.0,", f"seg{i}.ts"]
    return ("\n".join(lines) + "\n").encode()


def playlist_fill(held_body: bytes, held_born: float, *, stale: Stored | None = None) -> Fill:
    held = Held(read(PLAYLIST.path, held_body), held_born)
    return Fill(PLAYLIST, NameKind.PLAYLIST, UPSTREAMS, RULES, 1 << 20, stale, held=held)


def fetching(fill: Fill, first: ClientRequested | RefreshRequested | None = None) -> Playbook:
    """A playbook (with logs) whose fetch has started, for client 1 unless `first` says otherwise."""
    return Playbook(fill, logs=True) >> (first or ClientRequested(1)) << StartFetch(UPSTREAMS[0], 0)


def answered(pb: Playbook, data: bytes, *, at: float = T0) -> Playbook:
    """The upstream's 200 playlist, `data` whole."""
    return pb >> ok(len(data), ct=M3U8, at=at) >> UpstreamChunk(data) >> UpstreamDone(at)


def test_a_restart_drops_the_previous_run_before_the_new_playlist_is_stored() -> None:
    new = playlist_body(0, 1)
    why, stored = Placeholder(Log), Placeholder(Stored)
    pb = fetching(playlist_fill(playlist_body(20, 3), T0 - 2))
    assert (
        answered(pb, new)
        << why << DropRun(PLAYLIST.origin, frozenset({"/live/cam/"}), PLAYLIST.key) << StoreObject(stored)
        << ServeStored(1, stored, CacheResult.MISS)
    )
    assert "stream restarted (media sequence went from 20 (+3) to 0 (+1): the sequence started over)" in why().message
    assert stored().body == new


def test_an_answer_behind_the_held_playlist_is_not_stored_and_the_held_copy_is_served() -> None:
    newer = playlist_body(100, 3)
    held = stale_copy(PLAYLIST, body=newer, born=T0 - 3, fresh=2.0, manifest=read(PLAYLIST.path, newer),
                      headers=(M3U8_KEPT,))
    why = Placeholder(Log)
    pb = fetching(playlist_fill(newer, T0 - 3, stale=held)) << StaleTimer(2.0)  # half of TARGETDURATION 4
    assert answered(pb, playlist_body(90, 3)) << why << ServeStored(1, held, CacheResult.STALE)
    assert "10 segments behind" in why().message and "lagging replica" in why().message


def test_an_answer_behind_with_no_copy_left_is_passed_on_unstored() -> None:
    behind = playlist_body(90, 3)
    pb = fetching(playlist_fill(playlist_body(100, 3), T0 - 3))
    assert (
        answered(pb, behind) << Placeholder(Log)
        << Respond(1, head(CacheResult.MISS, len(behind), hdrs=(M3U8_KEPT,))) << SendBytes(1, 0, len(behind))
        << EndResponse(1)
    )


def test_an_answer_behind_for_longer_than_the_patience_bound_is_a_restart() -> None:
    old_born = T0 - REPLICA_PATIENCE * 4 - 1  # the held copy is older than 3 target durations
    why = Placeholder(Log)
    pb = fetching(playlist_fill(playlist_body(100, 3), old_born), RefreshRequested())
    assert answered(pb, playlist_body(90, 3)) << why << Placeholder(DropRun) << StoreObject(Placeholder(Stored))
    assert "10 segments behind, for more than 12 s" in why().message


def test_the_same_run_drops_nothing() -> None:
    pb = fetching(playlist_fill(playlist_body(20, 3), T0 - 2), RefreshRequested())
    assert answered(pb, playlist_body(21, 3)) << StoreObject(Placeholder(Stored))


@pytest.mark.parametrize("upstream", [
    UpstreamResponded(200, (TS,), T0, framed=False),  # ended by the connection closing
    UpstreamResponded(200, (TS, (UNFRAMED_HEADER, "1")), T0),  # a livecdn tier above says so
])
def test_a_close_delimited_body_is_passed_on_not_stored(upstream: UpstreamResponded) -> None:
    why = Placeholder(Log)
    assert (
        Playbook(make_fill(), logs=True) >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> upstream << Respond(1, head(CacheResult.MISS, None, hdrs=(TS_KEPT, (UNFRAMED_HEADER, "1"))))
        >> UpstreamChunk(b"ts") << SendBytes(1, 0, 2)
        >> UpstreamDone(T0) << why << EndResponse(1)  # no StoreObject
    )
    assert "not stored" in why().message


def test_a_close_delimited_playlist_whose_text_is_whole_is_stored_without_the_mark() -> None:
    stored = Placeholder(Stored)
    assert (
        Playbook(make_fill(PLAYLIST)) >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> UpstreamResponded(200, (M3U8,), T0, framed=False)
        >> UpstreamChunk(LIVE_BODY) >> UpstreamDone(T0) << StoreObject(stored)
        << ServeStored(1, stored, CacheResult.MISS)
    )
    assert stored().headers == (M3U8_KEPT,)
