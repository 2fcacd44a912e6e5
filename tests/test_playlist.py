"""Reading playlists (HLS with m3u8; DASH in test_mpd.py): freshness facts, announced names, refusal of junk."""

from __future__ import annotations

import pytest

from livecdn.media.kinds import ManifestKind
from livecdn.media.playlist import (
    MAX_PLAYLIST_BYTES,
    Announced,
    Change,
    MalformedPlaylist,
    PlaylistInfo,
    compare,
    proves_whole,
    read,
)
from tests.parses import count_loads

MEDIA = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{td}\n#EXT-X-MEDIA-SEQUENCE:7\n" \
        "#EXTINF:4.0,\nseg7.ts\n#EXTINF:4.0,\nseg8.ts\n"
LLHLS = ("#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:4\n"
         "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=3.0\n"
         "#EXT-X-PART-INF:PART-TARGET=1.002\n#EXT-X-MEDIA-SEQUENCE:7\n"
         "#EXTINF:4.0,\nseg7.ts\n#EXT-X-PART:DURATION=1.0,URI=\"seg8.0.m4s\"\n"
         "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"seg8.1.m4s\"\n")
MASTER = ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=640x360\nlow/index.m3u8\n"
          "#EXT-X-STREAM-INF:BANDWIDTH=2500000,RESOLUTION=1280x720\nhigh/index.m3u8\n")


@pytest.mark.parametrize(("extension", "body", "info"), [
    (".m3u8", MEDIA.format(td=4), PlaylistInfo(ManifestKind.LIVE, 4.0)),
    (".m3u8", MEDIA.format(td=6) + "#EXT-X-ENDLIST\n", PlaylistInfo(ManifestKind.ENDED, 6.0)),
    (".m3u8", LLHLS, PlaylistInfo(ManifestKind.LIVE, 4.0, 1.002)),
    (".m3u8", MASTER, PlaylistInfo(ManifestKind.MASTER)),
    (".m3u", MEDIA.format(td=2), PlaylistInfo(ManifestKind.LIVE, 2.0)),
    (".m3u8", "\ufeff" + MEDIA.format(td=4), PlaylistInfo(ManifestKind.LIVE, 4.0)),  # BOM
    (".m3u8", "\r\n  " + MEDIA.format(td=4).replace("\n", "\r\n"), PlaylistInfo(ManifestKind.LIVE, 4.0)),
    (".m3u8", "#EXTM3U\n#EXT-X-TARGETDURATION:4\n", PlaylistInfo(ManifestKind.LIVE, 4.0)),  # no segment yet
])
def test_classify(extension: str, body: str, info: PlaylistInfo) -> None:
    assert read("/live/cam/index" + extension, body.encode()).info == info


@pytest.mark.parametrize(("extension", "body", "reason"), [
    (".m3u8", b"", "#EXTM3U"),
    (".m3u8", b"<html><body>502 Bad Gateway</body></html>", "#EXTM3U"),
    (".m3u8", b"seg7.ts\n#EXTM3U\n", "#EXTM3U"),
    (".m3u8", b"#EXTM3U\n", "TARGETDURATION"),
    (".m3u8", b"#EXTM3U\n#EXTINF:4.0,\nseg7.ts\n", "TARGETDURATION"),
    (".m3u8", MEDIA.format(td=0).encode(), "not positive"),
    (".m3u8", MEDIA.format(td=-4).encode(), "not positive"),
    (".m3u8", MEDIA.format(td="four").encode(), "unparsable"),
    (".m3u8", MEDIA.format(td="4.5").encode(), "unparsable"),  # RFC 8216: a decimal-integer
    (".m3u8", b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:abc,\nseg7.ts\n", "unparsable"),
    (".m3u8", b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXT-X-MEDIA-SEQUENCE:x\n", "unparsable"),
    (".m3u8", b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXT-X-PART-INF:PART-TARGET=abc\n", "unparsable"),
    (".m3u8", MASTER.replace("800000", "lots").encode(), "unparsable"),
    (".m3u8", b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n\xff\xfe\n", "UTF-8"),
    (".m3u8", MEDIA.format(td=4).encode("utf-16"), "UTF-8"),
    (".m3u8", b"#EXTM3U\n" + b"#" * MAX_PLAYLIST_BYTES, "larger than"),
])
def test_malformed(extension: str, body: bytes, reason: str) -> None:
    with pytest.raises(MalformedPlaylist, match=reason):
        read("/live/cam/index" + extension, body)


def test_malformed_is_a_value_error() -> None:
    # Callers that only know ValueError still catch it.
    assert issubclass(MalformedPlaylist, ValueError)


def test_hls_announces_every_name_it_lists_as_normalized_paths() -> None:
    body = ("#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:4\n#EXT-X-PART-INF:PART-TARGET=1.0\n"
            '#EXT-X-MAP:URI="init.mp4"\n#EXT-X-KEY:METHOD=AES-128,URI="/keys/k1.key"\n'
            "#EXTINF:4.0,\nseg7.m4s\n#EXTINF:4.0,\n..//cam/./seg8.m4s\n"
            '#EXT-X-PART:DURATION=1.0,URI="seg9.0.m4s"\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI="seg9.1.m4s"\n'
            "#EXTINF:4.0,\nhttp://elsewhere.example/live/cam/seg9.m4s\n"  # another host: not ours
            "#EXTINF:4.0,\nseg%2f10.m4s\n")  # no request could name it: left out
    said = read("/live/cam/index.m3u8", body.encode()).announced
    assert said == Announced(
        names=("/live/cam/seg7.m4s", "/live/cam/seg8.m4s", "/live/cam/seg9.1.m4s", "/live/cam/seg9.0.m4s",
               "/live/cam/init.mp4", "/keys/k1.key"),
        segments=("/live/cam/seg7.m4s", "/live/cam/seg8.m4s"),
        hints=("/live/cam/seg9.1.m4s",),
        live=True,
    )


def test_master_announces_its_children_and_is_not_live() -> None:
    said = read("/live/master.m3u8", MASTER.encode()).announced
    assert said is not None and said.names == ("/live/low/index.m3u8", "/live/high/index.m3u8")
    assert said.segments == () and not said.live


def test_ended_playlist_is_not_live() -> None:
    said = read("/vod/index.m3u8", (MEDIA.format(td=4) + "#EXT-X-ENDLIST\n").encode()).announced
    assert said is not None and said.segments == ("/vod/seg7.ts", "/vod/seg8.ts") and not said.live


def test_a_playlist_without_segments_announces_nothing_yet() -> None:
    assert read("/live/cam/index.m3u8", b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n").announced == Announced((), (), (), True)


def test_one_read_is_one_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_loads(monkeypatch)
    manifest = read("/live/cam/index.m3u8", LLHLS.encode())
    assert manifest.info == PlaylistInfo(ManifestKind.LIVE, 4.0, 1.002)
    assert manifest.announced is not None and manifest.announced.hints == ("/live/cam/seg8.1.m4s",)
    assert len(calls) == 1


# --- whole bodies only (issue 10, item 4) ---

MPD_DYNAMIC = ('<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="dynamic"\n'
               '  minimumUpdatePeriod="PT4S" availabilityStartTime="2024-01-01T00:00:00Z"></MPD>')
AT = 1_704_070_000.0  # when the MPDs here were fetched (their template names move with the clock)
HEAD = "#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXT-X-MEDIA-SEQUENCE:7\n#EXTINF:4.0,\nseg7.ts\n"


@pytest.mark.parametrize(("body", "reason"), [
    (HEAD + "#EXTI", "cut short: last line '#EXTI' has no line terminator"),  # cut mid-tag
    (HEAD + "#EXTINF:4.0,\nseg8", "cut short: last line 'seg8' has no line terminator"),  # cut mid-URI
    (HEAD + "#EXTINF:4.0,\n", "ends with #EXTINF and no URI"),  # cut at a line break
    (HEAD.replace("\n", "\r\n") + "#EXTINF:4.0,\r\n", "ends with #EXTINF and no URI"),
    ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000\nlow/index.m3u8\n#EXT-X-STREAM-INF:BANDWIDTH=2500000\n",
     "ends with #EXT-X-STREAM-INF"),
])
def test_a_cut_playlist_is_malformed(body: str, reason: str) -> None:
    with pytest.raises(MalformedPlaylist, match=reason):
        read("/live/cam/index.m3u8", body.encode())


def test_endlist_may_go_without_its_final_terminator() -> None:
    assert read("/vod/index.m3u8", (HEAD + "#EXT-X-ENDLIST").encode()).info.kind is ManifestKind.ENDED


@pytest.mark.parametrize(("path", "body", "whole"), [
    ("/live/cam/index.m3u8", HEAD, True),  # read accepted it: every line is terminated
    ("/live/cam/manifest.mpd", MPD_DYNAMIC + "\n", True),
    ("/live/cam/manifest.mpd", MPD_DYNAMIC[:-6], False),  # cut before its closing tag
])
def test_proves_whole(path: str, body: str, whole: bool) -> None:
    if whole:
        read(path, body.encode(), AT)  # what proves whole is read whole
    assert proves_whole(path, body.encode()) is whole


# --- runs: a stream that went on, restarted, or lags behind ---

def hls(sequence: int, segments: int, *, pdt: str | None = None, discontinuity: int = 0, ended: bool = False) -> str:
    lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:2", f"#EXT-X-MEDIA-SEQUENCE:{sequence}",
             f"#EXT-X-DISCONTINUITY-SEQUENCE:{discontinuity}"]
    for i in range(sequence, sequence + segments):
        if pdt is not None and i == sequence + segments - 1:
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{pdt}")
        lines += ["#EXTINF:2.0,", f"seg_{i:05d}.ts"]
    return "\n".join(lines + (["#EXT-X-ENDLIST"] if ended else [])) + "\n"


@pytest.mark.parametrize(("held", "new", "change", "why"), [
    (hls(20, 3), hls(21, 3), Change.SAME_RUN, ""),  # the window slid on
    (hls(20, 3), hls(20, 3), Change.SAME_RUN, ""),
    (hls(0, 2), hls(0, 3), Change.SAME_RUN, ""),  # a young stream grows
    (hls(20, 3), hls(0, 1), Change.RESTARTED, "started over"),  # ffmpeg killed and started again
    (hls(0, 5), hls(0, 1), Change.RESTARTED, "started over"),  # killed before its window slid
    (hls(100, 3), hls(90, 3), Change.BEHIND, "10 segments behind"),  # a lagging packager replica
    (hls(100, 3, pdt="2026-01-01T00:10:00Z"), hls(90, 3, pdt="2026-01-01T00:09:40Z"), Change.BEHIND,
     "program date-time went back 20.0 s"),
    (hls(100, 3, pdt="2026-01-01T00:10:00Z"), hls(90, 3, pdt="2026-01-01T00:10:30Z"), Change.RESTARTED,
     "while program date-time moved forward"),  # far from 0, but time went on: a restart
    (hls(100, 3, pdt="2026-01-01T00:10:00Z"), hls(101, 3, pdt="2026-01-01T00:02:00Z"), Change.RESTARTED,
     "program date-time went back"),
    (hls(100, 3), hls(90, 3, discontinuity=1), Change.RESTARTED, "new discontinuity sequence"),
    (hls(0, 3, ended=True), hls(0, 1), Change.RESTARTED, "ended playlist came back live"),
    (hls(0, 3, ended=True), hls(0, 3, ended=True), Change.SAME_RUN, ""),
    (MASTER, MASTER, Change.SAME_RUN, ""),
])
def test_compare(held: str, new: str, change: Change, why: str) -> None:
    path = "/live/cam/index.m3u8"
    got, reason = compare(read(path, held.encode()), read(path, new.encode()))
    assert got is change
    assert why in reason and bool(reason) == bool(why)


def test_a_delta_playlist_counts_its_skipped_segments() -> None:
    full = hls(20, 4)
    delta = full.replace("#EXTINF:2.0,\nseg_00020.ts\n#EXTINF:2.0,\nseg_00021.ts\n",
                         "#EXT-X-SKIP:SKIPPED-SEGMENTS=2\n")
    run = read("/live/cam/index.m3u8", delta.encode()).run
    assert (run.media_sequence, run.segments) == (20, 4)
    assert compare(read("/live/cam/index.m3u8", full.encode()), read("/live/cam/index.m3u8", delta.encode()))[0] \
        is Change.SAME_RUN


def test_compare_a_changed_availability_start_time() -> None:
    path = "/live/cam/manifest.mpd"
    later = MPD_DYNAMIC.replace("2024-01-01T00:00:00Z", "2024-01-01T01:00:00Z")
    assert compare(read(path, MPD_DYNAMIC.encode(), AT), read(path, later.encode(), AT))[0] is Change.RESTARTED
    assert compare(read(path, MPD_DYNAMIC.encode(), AT), read(path, MPD_DYNAMIC.encode(), AT))[0] is Change.SAME_RUN
