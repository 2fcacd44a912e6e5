"""The origin's pure parts: schedule, playlists, segment names, synthetic bodies, ffmpeg argv."""

from __future__ import annotations

from pathlib import Path

import pytest

from livecdn.config import Rendition
from livecdn.origin.encoder import encoded_renditions, ffmpeg_command
from livecdn.origin.synthetic import PACKET_SIZE, SegmentCache, segment_body, segment_identity
from livecdn.origin.timeline import (
    Timeline,
    master_playlist,
    media_playlist,
    parse_segment_uri,
    segment_uri,
)

T0 = 1_000_000.0


def tl(window: int = 3, retain: int = 2, target: float = 2.0) -> Timeline:
    return Timeline(start=T0, target_duration=target, window=window, retain=retain)


# --- schedule -------------------------------------------------------------------


def test_nothing_is_published_during_the_first_segment():
    t = tl()
    assert t.produced(T0 - 5) == 0
    assert t.produced(T0) == 0
    assert t.produced(T0 + 1.999) == 0
    assert list(t.in_playlist(T0 + 1.999)) == []
    assert media_playlist(t, T0 + 1.999) is None


def test_segment_is_published_exactly_when_its_duration_has_elapsed():
    t = tl()
    for seq in range(50):
        at = t.published_at(seq)
        assert not t.is_available(seq, at - 1e-3), seq
        assert t.is_available(seq, at), seq


def test_published_at_is_exact_even_for_non_binary_durations():
    t = Timeline(start=1234.567, target_duration=0.1, window=3)
    for seq in range(1000):
        assert t.produced(t.published_at(seq)) == seq + 1


def test_window_slides_one_segment_per_target_duration():
    t = tl(window=3)
    assert list(t.in_playlist(T0 + 2)) == [0]
    assert list(t.in_playlist(T0 + 6.5)) == [0, 1, 2]
    assert list(t.in_playlist(T0 + 8)) == [1, 2, 3]
    assert list(t.in_playlist(T0 + 20)) == [7, 8, 9]


def test_segments_stay_fetchable_for_retain_more_then_vanish():
    t = tl(window=3, retain=2)
    now = T0 + 20  # 10 published: 0..9; playlist 7..9
    assert list(t.available(now)) == [5, 6, 7, 8, 9]
    assert not t.is_available(4, now)
    assert not t.is_available(10, now)
    # Segment 5 leaves exactly when segment 10 is published.
    assert not t.is_available(5, t.published_at(10))


@pytest.mark.parametrize("kwargs", [{"target_duration": 0}, {"target_duration": -1},
                                    {"window": 0}, {"retain": -1}])
def test_bad_timeline_values_are_rejected(kwargs):
    args = {"start": 0.0, "target_duration": 1.0, "window": 3, "retain": 2} | kwargs
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Timeline(**args)


# --- playlists --------------------------------------------------------------------


def test_media_playlist_text():
    text = media_playlist(tl(window=3, target=2.0), T0 + 9)
    assert text == (
        "#EXTM3U\n"
        "#EXT-X-VERSION:3\n"
        "#EXT-X-TARGETDURATION:2\n"
        "#EXT-X-MEDIA-SEQUENCE:1\n"
        "#EXTINF:2.000,\nseg1.ts\n"
        "#EXTINF:2.000,\nseg2.ts\n"
        "#EXTINF:2.000,\nseg3.ts\n"
    )
    assert "ENDLIST" not in text


@pytest.mark.parametrize(("target", "tag"), [(0.5, 1), (1.0, 1), (1.5, 2), (2.0, 2), (6.0, 6)])
def test_target_duration_tag_is_a_ceiled_integer(target, tag):
    text = media_playlist(Timeline(0.0, target, 3), 100.0)
    assert f"#EXT-X-TARGETDURATION:{tag}\n" in text


def test_media_sequence_matches_first_uri():
    t = tl(window=4)
    for k in range(1, 40):
        lines = media_playlist(t, T0 + 2 * k).splitlines()
        seq = int(lines[3].split(":")[1])
        uris = [ln for ln in lines if not ln.startswith("#")]
        assert uris[0] == segment_uri(seq)
        assert len(uris) == min(k, 4)


def test_master_playlist_lists_renditions_best_first():
    rs = (Rendition("low", 300_000, 320, 180), Rendition("high", 2_000_000, 1280, 720))
    text = master_playlist(rs, codecs="avc1.42c01f,mp4a.40.2")
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U"
    assert lines[-4:] == [
        '#EXT-X-STREAM-INF:BANDWIDTH=2000000,RESOLUTION=1280x720,CODECS="avc1.42c01f,mp4a.40.2"',
        "high/index.m3u8",
        '#EXT-X-STREAM-INF:BANDWIDTH=300000,RESOLUTION=320x180,CODECS="avc1.42c01f,mp4a.40.2"',
        "low/index.m3u8",
    ]
    assert "CODECS" not in master_playlist(rs)


@pytest.mark.parametrize(("name", "seq"), [
    ("seg0.ts", 0), ("seg7.ts", 7), ("seg123456.ts", 123456),
    ("seg.ts", None), ("seg01.ts", None), ("seg-1.ts", None), ("seg+1.ts", None),
    ("seg1.ts.tmp", None), ("seg1.mp4", None), ("Seg1.ts", None), ("seg１.ts", None),
    ("seg" + "9" * 19 + ".ts", None), ("index.m3u8", None),
])
def test_segment_names_are_canonical(name, seq):
    assert parse_segment_uri(name) == seq
    if seq is not None:
        assert segment_uri(seq) == name


# --- synthetic bodies -------------------------------------------------------------


def test_synthetic_body_is_deterministic_and_identifies_itself():
    a = segment_body("live", "720p", 42, 64 << 10)
    assert a == segment_body("live", "720p", 42, 64 << 10)
    assert len(a) == 64 << 10
    assert segment_identity(a) == ("live", "720p", 42)
    assert a != segment_body("live", "720p", 43, 64 << 10)
    assert a != segment_body("live", "360p", 42, 64 << 10)
    assert a != segment_body("other", "720p", 42, 64 << 10)
    assert segment_identity(b"not a segment") is None


def test_synthetic_body_is_transport_packets():
    body = segment_body("live", "360p", 3, PACKET_SIZE * 10)
    packets = [body[i:i + PACKET_SIZE] for i in range(0, len(body), PACKET_SIZE)]
    assert len(packets) == 10
    assert all(p[0] == 0x47 for p in packets)
    assert [p[3] & 0x0F for p in packets] == list(range(10))  # continuity counter
    assert packets[0][1] & 0x40 and not packets[1][1] & 0x40  # payload_unit_start


@pytest.mark.parametrize("size", [1, 187, 189, 1000])
def test_synthetic_body_has_exactly_the_configured_size(size):
    assert len(segment_body("s", "r", 1, size)) == size


def test_segment_cache_builds_once_and_stays_bounded():
    cache = SegmentCache(1000, max_entries=3)
    body, etag = cache.get("live", "a", 1)
    again, etag2 = cache.get("live", "a", 1)
    assert again is body and etag2 == etag  # the same object: not rebuilt
    assert cache.get("live", "a", 2)[1] != etag
    for seq in range(3, 10):
        cache.get("live", "a", seq)
    assert len(cache) == 3


# --- ffmpeg argv (no ffmpeg needed) -------------------------------------------------


def test_renditions_are_scaled_down_together_to_fit_the_cpu_budget():
    rs = (Rendition("720p", 2_000_000, 1280, 720), Rendition("360p", 600_000, 640, 360))
    out = encoded_renditions(rs)
    assert [(r.name, r.bandwidth, r.width, r.height) for r in out] == [
        ("720p", 2_000_000, 640, 360), ("360p", 600_000, 320, 180)]
    small = (Rendition("s", 300_000, 320, 180),)
    assert encoded_renditions(small) == small


def test_ffmpeg_command_keyframes_every_target_and_writes_each_rendition(tmp_path: Path):
    rs = (Rendition("hi", 1_000_000, 640, 360), Rendition("lo", 300_000, 320, 180))
    argv = ffmpeg_command("/usr/bin/ffmpeg", tmp_path, rs, target_duration=2.0, window=6, retain=2)
    joined = " ".join(argv)
    assert argv[0] == "/usr/bin/ffmpeg"
    assert "testsrc2=size=640x360:rate=25" in joined
    assert argv.count("-f") == 4  # two lavfi inputs, two hls outputs
    assert argv.count("-g") == 2 and argv[argv.index("-g") + 1] == "50"
    assert "expr:gte(t,n_forced*2)" in argv
    assert argv[argv.index("-hls_list_size") + 1] == "6"
    assert argv[argv.index("-hls_delete_threshold") + 1] == "2"
    assert str(tmp_path / "hi" / "index.m3u8") in argv
    assert str(tmp_path / "lo" / "seg%d.ts") in argv
    assert "delete_segments" in argv[argv.index("-hls_flags") + 1]


def test_ffmpeg_command_for_low_latency_cuts_a_keyframed_file_per_part(tmp_path: Path):
    rs = (Rendition("hi", 1_000_000, 640, 360),)
    argv = ffmpeg_command("/usr/bin/ffmpeg", tmp_path, rs, target_duration=2.0, window=6, retain=2,
                          part_target=0.5)
    assert "testsrc2=size=640x360:rate=30" in " ".join(argv)  # 0.5 s is 15 whole frames at 30 fps (12.5 at 25)
    assert argv[argv.index("-g") + 1] == "15" and "expr:gte(t,n_forced*0.5)" in argv
    assert argv[argv.index("-hls_time") + 1] == "0.5"
    assert argv[argv.index("-hls_list_size") + 1] == str(7 * 4)  # the window's parts and the segment being made
    assert str(tmp_path / "hi" / "part%d.ts") in argv
