"""Cache-key normalization: which request targets are one object, which are refused (and the names under it)."""

from __future__ import annotations

import pytest

from livecdn.cache.keys import ANY, MAX_PATH_BYTES, BadRequest, CacheKey, cache_key, path_of, vary_names
from livecdn.media.names import BadName, directory, normalize


@pytest.mark.parametrize(("raw", "key"), [
    ("/live/cam/seg7.ts", "/live/cam/seg7.ts"),
    # duplicate slashes and "." segments collapse
    ("/live//cam///seg7.ts", "/live/cam/seg7.ts"),
    ("//live/cam/seg7.ts", "/live/cam/seg7.ts"),
    ("/live/./cam/seg7.ts", "/live/cam/seg7.ts"),
    ("/live/cam/", "/live/cam"),
    # percent-encoding is normalized: decoded, then re-encoded one way
    ("/live/%63am/seg7.ts", "/live/cam/seg7.ts"),
    ("/live/cam/seg%7E1.ts", "/live/cam/seg~1.ts"),
    ("/live/caf%c3%a9/a.ts", "/live/caf%C3%A9/a.ts"),
    ("/live/café/a.ts", "/live/caf%C3%A9/a.ts"),
    ("/live/a b.ts", "/live/a%20b.ts"),
    ("/live/a%20b.ts", "/live/a%20b.ts"),
    ("/live/%2e/a.ts", "/live/a.ts"),
    ("/live/%252F.ts", "/live/%252F.ts"),  # a literal "%2F" in a name stays a name
    ("/Live/CAM.TS", "/Live/CAM.TS"),  # paths are case-sensitive
    # only _HLS_msn/_HLS_part/_HLS_skip are kept, sorted; tokens and busters are dropped
    ("/live/cam/seg7.ts?token=abc.def&exp=123", "/live/cam/seg7.ts"),
    ("/live/cam/seg7.ts?", "/live/cam/seg7.ts"),
    ("/live/cam/index.m3u8?_HLS_msn=10", "/live/cam/index.m3u8?_HLS_msn=10"),
    ("/live/cam/index.m3u8?_HLS_part=2&token=x&_HLS_msn=10",
     "/live/cam/index.m3u8?_HLS_msn=10&_HLS_part=2"),
    ("/live/cam/index.m3u8?_HLS_skip=YES&_HLS_part=0&_HLS_msn=3&cb=99",
     "/live/cam/index.m3u8?_HLS_msn=3&_HLS_part=0&_HLS_skip=YES"),
    ("/live/cam/index.m3u8?_hls_msn=10", "/live/cam/index.m3u8"),  # names are case-sensitive
])
def test_normalization(raw: str, key: str) -> None:
    assert cache_key(raw).key == key


@pytest.mark.parametrize(("a", "b"), [
    ("/live/cam/seg7.ts?token=1", "/live/cam/seg7.ts?token=2"),
    ("/live/cam/i.m3u8?_HLS_part=1&_HLS_msn=4", "/live/cam/i.m3u8?_HLS_msn=4&_HLS_part=1&t=z"),
    ("/live/%63am//seg7.ts", "/live/cam/seg7.ts"),
])
def test_same_object(a: str, b: str) -> None:
    assert cache_key(a) == cache_key(b)


@pytest.mark.parametrize(("a", "b"), [
    ("/live/cam/i.m3u8?_HLS_msn=4", "/live/cam/i.m3u8?_HLS_msn=5"),
    ("/live/cam/i.m3u8?_HLS_msn=4", "/live/cam/i.m3u8?_HLS_msn=4&_HLS_part=0"),
    ("/live/cam/seg7.ts", "/live/cam/Seg7.ts"),
])
def test_different_objects(a: str, b: str) -> None:
    assert cache_key(a) != cache_key(b)


@pytest.mark.parametrize(("raw", "status", "reason"), [
    ("/live/../etc/passwd", 400, "'..'"),
    ("/live/cam/..", 400, "'..'"),
    ("/live/%2e%2e/secret.ts", 400, "'..'"),
    ("/live/%2E%2E/secret.ts", 400, "'..'"),
    ("/live/a%2Fb.ts", 400, "encoded slash"),
    ("/live/a%2fb.ts", 400, "encoded slash"),
    ("/live/a%5Cb.ts", 400, "encoded slash"),
    ("/live/a\\b.ts", 400, "backslash"),
    ("/live/a%00.ts", 400, "control character"),
    ("/live/a%0d%0aX: y.ts", 400, "control character"),
    ("/live/a%7F.ts", 400, "control character"),
    ("/live/%ff.ts", 400, "UTF-8"),
    ("/live/%c3.ts", 400, "UTF-8"),
    ("live/cam/seg7.ts", 400, "absolute path"),
    ("http://evil.example/live/seg7.ts", 400, "absolute path"),
    ("", 400, "absolute path"),
    ("/", 404, "empty path"),
    ("//./", 404, "empty path"),
    ("/" + "a" * MAX_PATH_BYTES, 414, "longer than"),
])
def test_refused(raw: str, status: int, reason: str) -> None:
    with pytest.raises(BadRequest) as info:
        cache_key(raw)
    assert info.value.status == status
    assert reason in info.value.reason


def test_longest_path_is_accepted() -> None:
    raw = "/" + "a" * (MAX_PATH_BYTES - 1)
    assert len(raw) == MAX_PATH_BYTES
    assert cache_key(raw).path == raw


@pytest.mark.parametrize(("path", "extension"), [
    ("/live/cam/seg7.ts", ".ts"),
    ("/live/cam/INDEX.M3U8", ".m3u8"),
    ("/live/cam.v1/init", ""),  # the dot is in a directory, not the name
    ("/live/cam/.hidden", ""),
    ("/live/cam/manifest.mpd", ".mpd"),
])
def test_extension(path: str, extension: str) -> None:
    assert cache_key(path).extension == extension


def test_key_and_str() -> None:
    k = CacheKey("/a/i.m3u8", "_HLS_msn=1")
    assert k.key == str(k) == "/a/i.m3u8?_HLS_msn=1"
    assert CacheKey("/a/s.ts", "").key == "/a/s.ts"


@pytest.mark.parametrize(("raw", "key"), [
    # LL-HLS directives select playlist versions only; on a segment they are noise
    ("/live/cam/seg7.ts?_HLS_msn=10", "/live/cam/seg7.ts"),
    ("/live/cam/index.m3u8?_HLS_skip=v2&_HLS_msn=3", "/live/cam/index.m3u8?_HLS_msn=3&_HLS_skip=v2"),
    # every HLS playlist name, as the engine and the guard tell them (kinds.is_hls_playlist)
    ("/live/cam/index.m3u?_HLS_msn=3", "/live/cam/index.m3u?_HLS_msn=3"),
    ("/live/cam/INDEX.M3U8?_HLS_msn=3", "/live/cam/INDEX.M3U8?_HLS_msn=3"),
    ("/live/cam/manifest.mpd?_HLS_msn=3", "/live/cam/manifest.mpd"),  # DASH has no such directives
])
def test_directives_only_on_playlists(raw: str, key: str) -> None:
    assert cache_key(raw).key == key


@pytest.mark.parametrize(("raw", "reason"), [
    ("/live/cam/index.m3u8?_HLS_msn=1&_HLS_msn=2", "given twice"),
    ("/live/cam/index.m3u8?_HLS_msn=-1", "bad _HLS_msn"),
    ("/live/cam/index.m3u8?_HLS_msn=5;x=1", "bad _HLS_msn"),
    ("/live/cam/index.m3u8?_HLS_part=x", "bad _HLS_part"),
    ("/live/cam/index.m3u8?_HLS_skip=NO", "bad _HLS_skip"),
    ("/live/cam/index.m3u8?_HLS_msn=" + "9" * 13, "bad _HLS_msn"),
])
def test_directives_that_would_split_the_cache_are_refused(raw: str, reason: str) -> None:
    """Each distinct value is an origin fetch: only values a player can mean pass."""
    with pytest.raises(BadRequest) as info:
        cache_key(raw)
    assert info.value.status == 400 and reason in info.value.reason


@pytest.mark.parametrize(("path", "normalized"), [
    ("/live//cam/./%61.ts", "/live/cam/a.ts"),
    ("/live/caf%c3%a9/", "/live/caf%C3%A9"),
])
def test_names_normalize_paths_alone(path: str, normalized: str) -> None:
    # A playlist's URIs go through the same normalization as request targets, without a query.
    assert normalize(path) == normalized == cache_key(path).path


@pytest.mark.parametrize(("path", "status"), [
    ("/live/../x.ts", 400), ("relative.ts", 400), ("/", 404), ("/" + "a" * MAX_PATH_BYTES, 414),
])
def test_bad_names_carry_the_status_a_request_gets(path: str, status: int) -> None:
    with pytest.raises(BadName) as bad:
        normalize(path)
    with pytest.raises(BadRequest) as refused:
        cache_key(path)
    assert bad.value.status == refused.value.status == status
    assert bad.value.reason == refused.value.reason


@pytest.mark.parametrize(("path", "d"), [
    ("/live/cam/seg7.ts", "/live/cam/"), ("/seg7.ts", "/"), ("/live/cam.v1/init", "/live/cam.v1/"),
])
def test_directory(path: str, d: str) -> None:
    assert directory(path) == cache_key(path).directory == d


def test_a_variant_is_its_own_storage_key_that_still_names_its_path() -> None:
    base = cache_key("/live/a/seg1.ts?token=x")
    fr = base.varied(("accept-language",), {b"accept-language": b"  fr,\t en "})
    none = base.varied(("accept-language",), {})
    assert len({base.key, fr.key, none.key}) == 3
    assert fr.vary == (("accept-language", "fr, en"),)  # whitespace folded, as RFC 9111 4.1 allows
    assert path_of(fr.key) == path_of(none.key) == path_of(base.key) == "/live/a/seg1.ts"


@pytest.mark.parametrize(("value", "names"), [
    (None, ()), ("", ()), ("Accept-Encoding", ()), ("accept-language, Accept-Encoding", ("accept-language",)),
    ("Origin,Accept-Language", ("accept-language", "origin")), ("Accept-Language, *", ANY),
])
def test_vary_names_leave_accept_encoding_to_livecdn(value: str | None, names: tuple[str, ...]) -> None:
    assert vary_names(value) == names
