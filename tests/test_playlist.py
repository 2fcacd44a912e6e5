"""Playlist classification (HLS with m3u8, a little DASH) and refusal of what is not a playlist."""

from __future__ import annotations

import pytest

from livecdn.media.kinds import Kind
from livecdn.media.playlist import MAX_PLAYLIST_BYTES, MalformedPlaylist, PlaylistInfo, analyze

MEDIA = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{td}\n#EXT-X-MEDIA-SEQUENCE:7\n" \
        "#EXTINF:4.0,\nseg7.ts\n#EXTINF:4.0,\nseg8.ts\n"
LLHLS = ("#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:4\n"
         "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=3.0\n"
         "#EXT-X-PART-INF:PART-TARGET=1.002\n#EXT-X-MEDIA-SEQUENCE:7\n"
         "#EXTINF:4.0,\nseg7.ts\n#EXT-X-PART:DURATION=1.0,URI=\"seg8.0.m4s\"\n"
         "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"seg8.1.m4s\"\n")
MASTER = ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=640x360\nlow/index.m3u8\n"
          "#EXT-X-STREAM-INF:BANDWIDTH=2500000,RESOLUTION=1280x720\nhigh/index.m3u8\n")
MPD_DYNAMIC = ('<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="dynamic"\n'
               '  minimumUpdatePeriod="PT4S" availabilityStartTime="2024-01-01T00:00:00Z"></MPD>')


@pytest.mark.parametrize(("extension", "body", "info"), [
    (".m3u8", MEDIA.format(td=4), PlaylistInfo(Kind.LIVE, 4.0)),
    (".m3u8", MEDIA.format(td=6) + "#EXT-X-ENDLIST\n", PlaylistInfo(Kind.ENDED, 6.0)),
    (".m3u8", LLHLS, PlaylistInfo(Kind.LIVE, 4.0, 1.002)),
    (".m3u8", MASTER, PlaylistInfo(Kind.MASTER)),
    (".m3u", MEDIA.format(td=2), PlaylistInfo(Kind.LIVE, 2.0)),
    (".m3u8", "\ufeff" + MEDIA.format(td=4), PlaylistInfo(Kind.LIVE, 4.0)),  # BOM
    (".m3u8", "\r\n  " + MEDIA.format(td=4).replace("\n", "\r\n"), PlaylistInfo(Kind.LIVE, 4.0)),
    (".m3u8", "#EXTM3U\n#EXT-X-TARGETDURATION:4\n", PlaylistInfo(Kind.LIVE, 4.0)),  # no segment yet
    (".mpd", MPD_DYNAMIC, PlaylistInfo(Kind.LIVE, 4.0)),
    (".mpd", MPD_DYNAMIC.replace('minimumUpdatePeriod="PT4S"', 'minimumUpdatePeriod="PT0.5S"'),
     PlaylistInfo(Kind.LIVE, 0.5)),
    (".mpd", MPD_DYNAMIC.replace('  minimumUpdatePeriod="PT4S"', ""), PlaylistInfo(Kind.LIVE, 2.0)),
    (".mpd", MPD_DYNAMIC.replace("dynamic", "static"), PlaylistInfo(Kind.ENDED)),
    (".mpd", "<MPD type='dynamic' minimumUpdatePeriod='PT3S'/>", PlaylistInfo(Kind.LIVE, 3.0)),
    (".mpd", '<MPD xmlns="urn:mpeg:dash:schema:mpd:2011"></MPD>', PlaylistInfo(Kind.ENDED)),  # static by default
])
def test_classify(extension: str, body: str, info: PlaylistInfo) -> None:
    assert analyze(extension, body.encode()) == info


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
    (".mpd", b"<html>not found</html>", "<MPD>"),
    (".mpd", b"", "<MPD>"),
    (".mpd", b"<MPD \xff>", "UTF-8"),
])
def test_malformed(extension: str, body: bytes, reason: str) -> None:
    with pytest.raises(MalformedPlaylist, match=reason):
        analyze(extension, body)


def test_malformed_is_a_value_error() -> None:
    # Callers that only know ValueError still catch it.
    assert issubclass(MalformedPlaylist, ValueError)
