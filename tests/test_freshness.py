"""Lifetimes by kind and Cache-Control, and the Age / fresh / stale windows of `Stored`."""

from __future__ import annotations

import dataclasses

import pytest

from livecdn.cache.freshness import YEAR, Lifetime, Rules, failure_lifetime, lifetime, parse_cache_control
from livecdn.cache.stored import Stored
from livecdn.media.kinds import ManifestKind, NameKind, is_hls_playlist, is_playlist, kind_of
from livecdn.media.playlist import PlaylistInfo

RULES = Rules()
LIVE4 = PlaylistInfo(ManifestKind.LIVE, 4.0)
LIVE6 = PlaylistInfo(ManifestKind.LIVE, 6.0)
LLHLS = PlaylistInfo(ManifestKind.LIVE, 4.0, 1.0)
MASTER = PlaylistInfo(ManifestKind.MASTER)
ENDED = PlaylistInfo(ManifestKind.ENDED, 6.0)


@pytest.mark.parametrize(("value", "parsed"), [
    (None, {}),
    ("", {}),
    ("max-age=2, no-cache", {"max-age": "2", "no-cache": None}),
    ("Max-Age=5,S-MAXAGE=1", {"max-age": "5", "s-maxage": "1"}),
    ('max-age="7"', {"max-age": "7"}),
    (" , public ,", {"public": None}),
])
def test_parse_cache_control(value: str | None, parsed: dict[str, str | None]) -> None:
    assert parse_cache_control(value) == parsed


@pytest.mark.parametrize(("kind", "status", "cc", "playlist", "fresh"), [
    # by kind, no origin cache-control
    (NameKind.PLAYLIST, 200, None, LIVE4, 2.0),  # live: half the target duration
    (NameKind.PLAYLIST, 200, None, LIVE6, 3.0),
    (NameKind.PLAYLIST, 200, None, LLHLS, 2.0),  # LL-HLS too: half the target (rfc8216bis Appendix B.1)
    (NameKind.PLAYLIST, 200, None, PlaylistInfo(ManifestKind.LIVE, 0.3, 0.1), 0.2),  # never under 0.2 s
    (NameKind.PLAYLIST, 200, None, PlaylistInfo(ManifestKind.LIVE), 1.0),  # DASH default update period 2 s
    (NameKind.PLAYLIST, 200, None, MASTER, RULES.master_ttl),
    (NameKind.PLAYLIST, 200, None, ENDED, 6.0),  # ended: one target duration (it may start again)
    (NameKind.PLAYLIST, 200, None, PlaylistInfo(ManifestKind.ENDED), RULES.ended_ttl),  # static MPD: no target
    (NameKind.MEDIA, 200, None, None, YEAR),  # segments are immutable
    (NameKind.OTHER, 200, None, None, RULES.other_ttl),
    (NameKind.MEDIA, 404, None, None, RULES.negative_ttl),
    (NameKind.PLAYLIST, 410, None, None, RULES.negative_ttl),
    # a stricter origin wins, a laxer one does not
    (NameKind.MEDIA, 200, "max-age=10", None, 10.0),
    (NameKind.PLAYLIST, 200, "max-age=1", LIVE4, 1.0),
    (NameKind.PLAYLIST, 200, "max-age=60", LIVE4, 2.0),
    (NameKind.PLAYLIST, 200, "max-age=86400", MASTER, RULES.master_ttl),
    (NameKind.MEDIA, 404, "max-age=600", None, RULES.negative_ttl),
    (NameKind.MEDIA, 200, "max-age=-5", None, 0.0),
    (NameKind.MEDIA, 200, "max-age=abc", None, YEAR),  # unparsable: ignored
    # s-maxage is for shared caches, so it takes precedence over max-age
    (NameKind.MEDIA, 200, "max-age=0, s-maxage=30", None, 30.0),
    (NameKind.MEDIA, 200, "s-maxage=5, max-age=300", None, 5.0),
    # no-cache: store, but revalidate every time
    (NameKind.MEDIA, 200, "no-cache", None, 0.0),
    (NameKind.PLAYLIST, 200, "no-cache, max-age=60", LIVE4, 0.0),
])
def test_fresh_lifetime(kind: NameKind, status: int, cc: str | None, playlist: PlaylistInfo | None,
                        fresh: float) -> None:
    headers = {"cache-control": cc} if cc is not None else {}
    lt = lifetime(RULES, kind, status, headers, playlist)
    assert lt.store
    assert lt.fresh == pytest.approx(fresh)


@pytest.mark.parametrize(("status", "cc"), [
    (200, "no-store"),
    (200, "private"),
    (200, "private, max-age=60"),
    (200, "public, NO-STORE"),
    (404, "no-store"),
    (500, None),
    (502, None),
    (503, "max-age=60"),
    (206, None),
    (301, None),
    (403, None),
])
def test_not_stored(status: int, cc: str | None) -> None:
    headers = {"cache-control": cc} if cc is not None else {}
    assert lifetime(RULES, NameKind.MEDIA, status, headers) == Lifetime(0.0, 0.0, 0.0, store=False)


@pytest.mark.parametrize(("cc", "swr", "sie"), [
    (None, RULES.stale_while_revalidate, RULES.stale_if_error),
    ("stale-while-revalidate=1, stale-if-error=10", 1.0, 10.0),
    ("stale-while-revalidate=600, stale-if-error=600", RULES.stale_while_revalidate, RULES.stale_if_error),
])
def test_stale_windows_are_capped_by_rules(cc: str | None, swr: float, sie: float) -> None:
    headers = {"cache-control": cc} if cc is not None else {}
    lt = lifetime(RULES, NameKind.MEDIA, 200, headers)
    assert (lt.stale_while_revalidate, lt.stale_if_error) == (swr, sie)


@pytest.mark.parametrize("status", [404, 410])
@pytest.mark.parametrize("cc", [None, "stale-while-revalidate=2, stale-if-error=30"])
def test_an_error_answer_has_no_stale_windows(status: int, cc: str | None) -> None:
    # A stale 404 would hide a segment that has just been published.
    headers = {"cache-control": cc} if cc is not None else {}
    assert lifetime(RULES, NameKind.MEDIA, status, headers) == Lifetime(RULES.negative_ttl, 0.0, 0.0)


@pytest.mark.parametrize(("cc", "fresh"), [
    ("must-revalidate", YEAR),
    ("max-age=10, must-revalidate", 10.0),
    ("proxy-revalidate, max-age=10", 10.0),
    ("Must-Revalidate, stale-while-revalidate=2, stale-if-error=30", YEAR),
])
def test_must_revalidate_allows_no_stale_serving(cc: str, fresh: float) -> None:
    assert lifetime(RULES, NameKind.MEDIA, 200, {"cache-control": cc}) == Lifetime(fresh, 0.0, 0.0)


def test_rules_are_used() -> None:
    rules = Rules(master_ttl=5.0, ended_ttl=7.0, media_ttl=9.0, other_ttl=3.0, negative_ttl=0.5)
    assert lifetime(rules, NameKind.PLAYLIST, 200, {}, MASTER).fresh == 5.0
    assert lifetime(rules, NameKind.PLAYLIST, 200, {}, ENDED).fresh == 6.0  # its target duration is shorter
    assert lifetime(dataclasses.replace(rules, ended_ttl=2.0), NameKind.PLAYLIST, 200, {}, ENDED).fresh == 2.0
    # An ended playlist is revalidated before it is served again: stale, it would hide a restart.
    assert lifetime(RULES, NameKind.PLAYLIST, 200, {}, ENDED).stale_while_revalidate == 0.0
    assert lifetime(RULES, NameKind.PLAYLIST, 200, {}, ENDED).stale_if_error == RULES.stale_if_error
    # So is a live one: stale, it is a segment behind its sibling renditions. A failing upstream still gets it used.
    assert lifetime(RULES, NameKind.PLAYLIST, 200, {}, LIVE4).stale_while_revalidate == 0.0
    assert lifetime(RULES, NameKind.PLAYLIST, 200, {}, LIVE4).stale_if_error == RULES.stale_if_error
    assert lifetime(RULES, NameKind.PLAYLIST, 200, {}, MASTER).stale_while_revalidate == RULES.stale_while_revalidate
    assert lifetime(rules, NameKind.MEDIA, 200, {}).fresh == 9.0
    assert lifetime(rules, NameKind.OTHER, 200, {}).fresh == 3.0
    assert lifetime(rules, NameKind.MEDIA, 404, {}).fresh == 0.5


@pytest.mark.parametrize(("extension", "kind"), [
    (".m3u8", NameKind.PLAYLIST), (".mpd", NameKind.PLAYLIST), (".ts", NameKind.MEDIA), (".m4s", NameKind.MEDIA),
    (".key", NameKind.MEDIA), (".html", NameKind.OTHER), ("", NameKind.OTHER),
])
def test_kind_of(extension: str, kind: NameKind) -> None:
    assert kind_of(extension) is kind
    assert is_playlist(extension) == (kind is NameKind.PLAYLIST)


@pytest.mark.parametrize(("extension", "hls"), [
    (".m3u8", True), (".m3u", True), (".mpd", False), (".ts", False), ("", False),
])
def test_is_hls_playlist(extension: str, hls: bool) -> None:
    assert is_hls_playlist(extension) is hls


# --- Stored: the fresh / stale windows --------------------------------

BORN = 1_700_000_000.0


def stored(fresh: float = 10.0, swr: float = 2.0, sie: float = 30.0) -> Stored:
    return Stored("/a/seg.ts", 200, (("etag", '"x"'),), b"abc", BORN, Lifetime(fresh, swr, sie), NameKind.MEDIA)


@pytest.mark.parametrize(("after", "fresh", "while_revalidating", "on_error"), [
    (0.0, True, True, True),
    (9.9, True, True, True),
    (10.0, False, True, True),  # fresh until born + fresh, exclusive
    (11.9, False, True, True),
    (12.0, False, False, True),  # + stale-while-revalidate
    (39.9, False, False, True),
    (40.0, False, False, False),  # + stale-if-error
])
def test_windows(after: float, fresh: bool, while_revalidating: bool, on_error: bool) -> None:
    obj = stored()
    now = BORN + after
    assert (obj.fresh(now), obj.servable_while_revalidating(now), obj.servable_on_error(now)) == (
        fresh, while_revalidating, on_error)


@pytest.mark.parametrize(("lt", "until"), [
    ((10.0, 2.0, 30.0), BORN + 10 + 60),  # at least a minute past fresh
    ((10.0, 2.0, 120.0), BORN + 10 + 120),
    ((10.0, 90.0, 5.0), BORN + 10 + 90),
])
def test_keep_until(lt: tuple[float, float, float], until: float) -> None:
    assert stored(*lt).keep_until() == until


def test_size_and_headers() -> None:
    obj = stored()
    assert obj.size == 3 and obj.etag == '"x"' and obj.last_modified is None
    assert obj.header("etag") == '"x"' and obj.header("ETag") is None  # names are lower-case
    assert Stored("/a", 200, (), b"", BORN, Lifetime(1, 1, 1), NameKind.MEDIA, size=99).size == 99


def test_revalidated_keeps_body_and_updates_validators() -> None:
    obj = stored()
    # upstream names arrive lower-cased and are stored so
    new = obj.revalidated({"etag": '"y"', "cache-control": "max-age=5", "connection": "close"},
                          BORN + 100, Lifetime(5.0, 2.0, 30.0), None)
    assert new.body is obj.body and new.born == BORN + 100 and new.lifetime.fresh == 5.0
    assert new.kind is NameKind.MEDIA and new.manifest is None
    assert new.headers == (("etag", '"y"'), ("cache-control", "max-age=5"))
    assert new.etag == '"y"'
    assert obj.etag == '"x"' and obj.born == BORN


# --- rfc8216bis Appendix B.1: LL-HLS lifetimes (issue 15) ----------------------------------------

@pytest.mark.parametrize(("status", "cc", "fresh"), [
    (200, None, 6 * 4.0),  # a blocking answer names one future version: 6 targets
    (200, "max-age=60", 60.0),  # the origin's longer max-age is honoured: that version never changes
    (200, "max-age=1", 1.0),  # a shorter one too
    (400, None, 4 * 4.0),  # too far ahead: every player behind asks the same
    (503, "max-age=4", 4.0),  # never longer than the origin allows
])
def test_blocking_reload_answers_live_in_target_durations(status: int, cc: str | None, fresh: float) -> None:
    headers = {"cache-control": cc} if cc is not None else {}
    playlist = LLHLS if status == 200 else None
    lt = lifetime(RULES, NameKind.PLAYLIST, status, headers, playlist, blocking=True, target=4.0)
    assert lt.store and lt.fresh == pytest.approx(fresh)
    assert lt.stale_while_revalidate == lt.stale_if_error == 0.0  # a stale version is not the one asked for


def test_failures_of_playlists_live_one_target_and_blocking_ones_four() -> None:
    assert failure_lifetime(RULES, 4.0).fresh == 4.0
    assert failure_lifetime(RULES, 4.0, blocking=True).fresh == 16.0
    assert failure_lifetime(RULES).fresh == RULES.error_ttl  # not a playlist, or never held
    assert failure_lifetime(Rules(error_ttl=0.0), 4.0).fresh == 0.0  # remembering turned off


def test_parts_and_hints_live_as_segments() -> None:
    assert kind_of(".ts") is NameKind.MEDIA and kind_of(".m4s") is NameKind.MEDIA
    assert lifetime(RULES, kind_of(".ts"), 200, {}).fresh == RULES.media_ttl
