"""Operator rules where the manifest can't know (issue 10): path rules, and thumbnails, JSON, subtitles, keys.

Seen: `.jpg` and `.json` names listed in a playlist got 404 "not a media
object type" at the edge. Now a playlist's thumbnails, session data,
subtitles and keys are served through a guarded edge with their types, and
`[[cache.rules]]` (a prefix or a glob → ttl, negative_ttl, store) decide
lifetimes the manifest cannot.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from livecdn.cache.freshness import YEAR, Lifetime, Rules, lifetime, rule_for
from livecdn.config import CacheSettings, GuardSettings, PathRule, load
from livecdn.config.schema import FieldError
from livecdn.media.kinds import ManifestKind, NameKind, kind_of
from livecdn.media.playlist import PlaylistInfo
from tests.cdn import NO_LIMITS, Stack
from tests.fakeorigin import FakeOrigin, body
from tests.test_config import MINIMAL, problem, write

HLS = "application/vnd.apple.mpegurl"
MASTER = b"""#EXTM3U
#EXT-X-SESSION-DATA:DATA-ID="com.example.chapters",URI="chapters.json"
#EXT-X-IMAGE-STREAM-INF:BANDWIDTH=10000,RESOLUTION=320x180,CODECS="jpeg",URI="thumbs/index.m3u8"
#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID="subs",NAME="English",LANGUAGE="en",URI="subs/index.m3u8"
#EXT-X-STREAM-INF:BANDWIDTH=1000,SUBTITLES="subs"
720p/index.m3u8
"""
PLAYLISTS = {
    "/live/thumbs/index.m3u8": ["#EXT-X-IMAGES-ONLY", "thumb0.jpg", "thumb1.png", "thumb2.webp"],
    "/live/subs/index.m3u8": ["sub0.vtt", "sub1.webvtt"],
    "/live/720p/index.m3u8": ['#EXT-X-KEY:METHOD=AES-128,URI="key.key"', "seg0.ts"],
}
# What each object is served as through the edge; the origin says only "application/octet-stream".
TYPES = {
    "/live/chapters.json": "application/json",
    "/live/thumbs/thumb0.jpg": "image/jpeg",
    "/live/thumbs/thumb1.png": "image/png",
    "/live/thumbs/thumb2.webp": "image/webp",
    "/live/subs/sub0.vtt": "text/vtt",
    "/live/subs/sub1.webvtt": "text/vtt",
    "/live/720p/key.key": "application/octet-stream",
    "/live/720p/seg0.ts": "video/mp2t",
}


def media_playlist(lines: list[str]) -> bytes:
    out = ["#EXTM3U", "#EXT-X-TARGETDURATION:4"]
    for line in lines:
        out += [line] if line.startswith("#") else ["#EXTINF:4.0,", line]
    return ("\n".join(out) + "\n").encode()


@pytest.fixture
def packager(origin: FakeOrigin) -> FakeOrigin:
    origin.routes["/live/master.m3u8"] = body(MASTER, HLS)
    for path, lines in PLAYLISTS.items():
        origin.routes[path] = body(media_playlist(lines), HLS)
    for path in TYPES:
        origin.routes[path] = body(f"bytes of {path}".encode(), "application/octet-stream")
    return origin


async def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, dict(r.headers), await r.read()


async def play(stack: Stack) -> dict[str, tuple[int, str]]:
    """A player's walk: the master, every playlist it names, every object they name."""
    for path in ["/live/master.m3u8", *PLAYLISTS]:
        assert (await fetch(stack.edge + path))[0] == 200
    out = {}
    for path in TYPES:
        status, headers, data = await fetch(stack.edge + path)
        out[path] = (status, headers.get("Content-Type", ""))
        assert status != 200 or data == f"bytes of {path}".encode()
    return out


GUARD = GuardSettings(prefetch=False)


async def test_thumbnails_json_subtitles_and_keys_a_playlist_lists_are_served_with_their_types(
        packager: FakeOrigin) -> None:
    stack = await Stack(packager.url, guard=GUARD, limits=NO_LIMITS).start()
    try:
        assert await play(stack) == {path: (200, ctype) for path, ctype in TYPES.items()}
        memory = stack.edges[0].engine.memory  # type: ignore[union-attr]
        fresh = {path: memory.get(stack.key(path).key).lifetime.fresh for path in TYPES}  # type: ignore[union-attr]
        rules = Rules()
        # Images and JSON may be rewritten under their name; keys and subtitles are immutable like segments.
        assert fresh == {path: rules.other_ttl if path.endswith((".json", ".jpg", ".png", ".webp")) else YEAR
                         for path in TYPES}
        # A name of those kinds that no playlist announced is still refused.
        status, _, text = await fetch(stack.edge + "/live/thumbs/thumb9.jpg")
        assert status == 404 and b"not announced" in text and packager.hits["/live/thumbs/thumb9.jpg"] == 0
    finally:
        await stack.stop()


async def test_path_rules_set_lifetimes_and_what_is_not_stored(packager: FakeOrigin) -> None:
    cache = CacheSettings(disk_path="", upstream_timeout=3.0, rules=(
        PathRule("/live/thumbs/*.jpg", ttl=0.5), PathRule("/live/**.json", store=False)))
    stack = await Stack(packager.url, guard=GUARD, limits=NO_LIMITS, cache=cache).start()
    try:
        assert (await play(stack))["/live/thumbs/thumb0.jpg"] == (200, "image/jpeg")
        memory = stack.edges[0].engine.memory  # type: ignore[union-attr]
        assert memory.get(stack.key("/live/thumbs/thumb0.jpg").key).lifetime.fresh == 0.5  # type: ignore[union-attr]
        assert memory.get(stack.key("/live/thumbs/thumb1.png").key).lifetime.fresh == Rules().other_ttl  # type: ignore[union-attr]
        assert memory.get(stack.key("/live/chapters.json").key) is None
        assert (await fetch(stack.edge + "/live/chapters.json"))[0] == 200
        assert packager.hits["/live/chapters.json"] == 2  # never stored: each request goes to the origin
        assert packager.hits["/live/thumbs/thumb0.jpg"] == 1
    finally:
        await stack.stop()


# --- the rules themselves ------------------------------------------------------------------

RULES = Rules(rules=(
    PathRule("/live/*/thumb?.jpg", ttl=5),
    PathRule("/live/ads/", store=False),
    PathRule("/live/**.json", ttl=2, negative_ttl=0),
    PathRule("/live/", negative_ttl=10),
))


@pytest.mark.parametrize(("path", "index"), [
    ("/live/720p/thumb1.jpg", 0),
    ("/live/720p/thumb12.jpg", 3),  # ? is one character; the prefix rule matches
    ("/live/a/b/thumb1.jpg", 3),  # * stays within one segment
    ("/live/ads/spot.ts", 1),  # prefix
    ("/live/a/b/c.json", 2),  # ** crosses segments
    ("/live/ads/x.json", 1),  # the first match wins
    ("/vod/a.json", None),
    ("/liveX/a.ts", None),
])
def test_the_first_rule_that_matches_the_whole_path_wins(path: str, index: int | None) -> None:
    assert rule_for(RULES, path) is (None if index is None else RULES.rules[index])


def test_a_rule_sets_what_it_names_and_the_kind_decides_the_rest() -> None:
    other = Rules()
    assert lifetime(RULES, NameKind.OTHER, 200, {}, None, "/live/720p/thumb1.jpg").fresh == 5
    assert lifetime(RULES, NameKind.OTHER, 404, {}, None, "/live/720p/thumb1.jpg").fresh == other.negative_ttl
    assert lifetime(RULES, NameKind.MEDIA, 200, {}, None, "/live/ads/spot.ts") == Lifetime(0, 0, 0, store=False)
    assert lifetime(RULES, NameKind.OTHER, 404, {}, None, "/live/a.json").fresh == 0
    assert lifetime(RULES, NameKind.MEDIA, 200, {}, None, "/live/720p/seg1.ts").fresh == YEAR  # negative_ttl only
    assert lifetime(RULES, NameKind.MEDIA, 404, {}, None, "/live/720p/seg1.ts").fresh == 10
    live = PlaylistInfo(ManifestKind.LIVE, 4.0)
    assert lifetime(RULES, NameKind.PLAYLIST, 200, {}, live, "/live/720p/index.m3u8").fresh == 2.0  # the manifest's
    # A stricter origin still wins; a rule's lifetime is livecdn's own, not more.
    assert lifetime(RULES, NameKind.OTHER, 200, {"cache-control": "max-age=1"}, None, "/live/a.json").fresh == 1
    assert lifetime(RULES, NameKind.OTHER, 200, {"cache-control": "no-store"}, None, "/live/a.json").store is False


@pytest.mark.parametrize(("extension", "kind"), [
    (".jpg", NameKind.OTHER), (".png", NameKind.OTHER), (".json", NameKind.OTHER),
    (".vtt", NameKind.MEDIA), (".srt", NameKind.MEDIA), (".ttml", NameKind.MEDIA), (".key", NameKind.MEDIA),
])
def test_images_and_json_may_change_subtitles_and_keys_do_not(extension: str, kind: NameKind) -> None:
    assert kind_of(extension) is kind


def test_rules_are_read_from_the_topology_with_the_usual_inheritance(tmp_path: Path) -> None:
    topo = load(write(tmp_path, MINIMAL + """
[[cache.rules]]
path = "/live/*/thumbs/"
ttl = 5
[[cache.rules]]
path = "/ads/"
store = false
[[edges.e.cache.rules]]
path = "/e/"
negative_ttl = 0.5
"""))
    assert topo.shields["s"].cache.rules == (PathRule("/live/*/thumbs/", ttl=5.0), PathRule("/ads/", store=False))
    assert topo.edges["e"].cache.rules == (PathRule("/e/", negative_ttl=0.5),)  # a node's own list replaces it
    assert Rules.of(topo.shields["s"].cache).rules == topo.shields["s"].cache.rules


@pytest.mark.parametrize(("rule", "expected"), [
    ('path = "live/"\nttl = 1', "cache.rules[0].path: must be a path starting with '/', got 'live/'"),
    ('path = "/x/"', "cache.rules[0].ttl: the rule for '/x/' sets nothing: give ttl, negative_ttl or store = false"),
    ('path = "/x/"\nttl = -1', "cache.rules[0].ttl: must be at least 0 s, got -1.0"),
    ('path = "/x/"\nttl = "5s"', "cache.rules[0].ttl: expected a number, got '5s'"),
    ('path = "/x/"\nstore = false\nttl = 1',
     "cache.rules[0].store: a rule that stores nothing cannot also set ttl or negative_ttl"),
    ('path = "/x/"\nttll = 1', "cache.rules[0].ttll: unknown key"),
    ("ttl = 1", "cache.rules[0].path: is required"),
])
def test_a_bad_rule_is_an_error_naming_file_and_key(tmp_path: Path, rule: str, expected: str) -> None:
    assert problem(tmp_path, MINIMAL + "[[cache.rules]]\n" + rule + "\n") == expected
    assert problem(tmp_path, MINIMAL + "[[edges.e.cache.rules]]\n" + rule + "\n") == "edges.e." + expected


def test_a_rule_built_by_hand_breaks_the_same_rules() -> None:
    with pytest.raises(FieldError, match=r"^ttl: the rule for '/x/' sets nothing"):
        PathRule("/x/")
