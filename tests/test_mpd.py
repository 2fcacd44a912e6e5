"""Reading DASH manifests: templates, timelines, lists, base URLs, the availability window, bounds, junk."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from livecdn.cache.freshness import Rules, lifetime
from livecdn.media import mpd
from livecdn.media.kinds import ManifestKind, NameKind
from livecdn.media.playlist import MAX_PLAYLIST_BYTES, MalformedPlaylist, PlaylistInfo, read

PATH = "/live/cam/manifest.mpd"
AST = "2026-12-02T01:00:00Z"
T0 = datetime.fromisoformat(AST).timestamp()

# What ffmpeg's dash muxer writes with `-streaming 1 -ldash 1 -use_timeline 0` (trimmed).
LLDASH = f"""<?xml version="1.0" encoding="utf-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" xmlns:xlink="http://www.w3.org/1999/xlink"
  profiles="urn:mpeg:dash:profile:isoff-live:2011" type="dynamic" minimumUpdatePeriod="PT500S"
  availabilityStartTime="{AST}" timeShiftBufferDepth="PT5.0S" maxSegmentDuration="PT1.0S">
 <Period id="0" start="PT0.0S">
  <AdaptationSet id="0" contentType="video">
   <Representation id="0" mimeType="video/mp4" bandwidth="226160">
    <SegmentTemplate timescale="1000000" duration="1000000" availabilityTimeOffset="0.960"
      availabilityTimeComplete="false" initialization="init-stream$RepresentationID$.m4s"
      media="chunk-stream$RepresentationID$-$Number%05d$.m4s" startNumber="1"/>
   </Representation>
  </AdaptationSet>
  <AdaptationSet id="1" contentType="audio">
   <Representation id="1" mimeType="audio/mp4" bandwidth="64000">
    <SegmentTemplate timescale="1000000" duration="1000000" availabilityTimeOffset="0.979"
      initialization="init-stream$RepresentationID$.m4s"
      media="chunk-stream$RepresentationID$-$Number%05d$.m4s" startNumber="1"/>
   </Representation>
  </AdaptationSet>
 </Period>
</MPD>"""

# What ffmpeg writes with `-use_timeline 1` (and `-media_seg_name` using $Time$ for the video).
TIMELINE = f"""<?xml version="1.0" encoding="utf-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="dynamic" minimumUpdatePeriod="PT1S"
  availabilityStartTime="{AST}" timeShiftBufferDepth="PT5.0S" maxSegmentDuration="PT1.0S">
 <Period id="0" start="PT0.0S">
  <AdaptationSet id="0" contentType="video">
   <Representation id="0" bandwidth="203376">
    <SegmentTemplate timescale="12800" initialization="init-$RepresentationID$.m4s"
      media="chunk-$RepresentationID$-$Time$.m4s">
     <SegmentTimeline><S t="0" d="12800" r="4" /></SegmentTimeline>
    </SegmentTemplate>
   </Representation>
  </AdaptationSet>
  <AdaptationSet id="1" contentType="audio">
   <Representation id="1" bandwidth="64000">
    <SegmentTemplate timescale="48000" initialization="init-$RepresentationID$.m4s"
      media="chunk-$RepresentationID$-$Number%05d$.m4s" startNumber="1">
     <SegmentTimeline><S t="0" d="47104" /><S d="48128" r="3" /></SegmentTimeline>
    </SegmentTemplate>
   </Representation>
  </AdaptationSet>
 </Period>
</MPD>"""


def mpd_of(body: str, *, dynamic: bool = True, extra: str = "") -> str:
    """An MPD around one Period body."""
    kind = f'type="dynamic" availabilityStartTime="{AST}"' if dynamic else 'type="static"'
    return f'<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" {kind} {extra}><Period>{body}</Period></MPD>'


def names(body: str, at: float = T0 + 20, path: str = PATH) -> tuple[str, ...]:
    announced = read(path, body.encode(), at).announced
    assert announced is not None
    return announced.names


def test_lldash_numbers_follow_the_availability_window() -> None:
    m = read(PATH, LLDASH.encode(), T0 + 6.0)
    assert m.info == PlaylistInfo(ManifestKind.LIVE, 1.0)
    assert m.run.started == AST  # another reader compares it between reads to notice a restart
    assert m.announced is not None and m.announced.live
    said = m.announced.names
    assert said[0] == "/live/cam/init-stream0.m4s" and "/live/cam/init-stream1.m4s" in said
    # Segment 1 ended at 1 s and stays 5 s (timeShiftBufferDepth); names run AHEAD past now.
    video = [n for n in said if n.startswith("/live/cam/chunk-stream0-")]
    assert video[0] == "/live/cam/chunk-stream0-00001.m4s"
    assert video[-1] == f"/live/cam/chunk-stream0-{int(6 + mpd.AHEAD):05d}.m4s"
    # Computed from the clock, not listed by the packager: nothing for prefetch to take.
    assert m.announced.segments == () and m.announced.hints == ()


def test_the_window_moves_with_the_fetch_time() -> None:
    said = names(LLDASH, T0 + 100.0)
    assert "/live/cam/chunk-stream1-00094.m4s" not in said  # ended at 94 s: 6 s ago, past the 5 s depth
    assert "/live/cam/chunk-stream1-00095.m4s" in said
    assert "/live/cam/chunk-stream1-00100.m4s" in said  # being written (availabilityTimeOffset)
    assert f"/live/cam/chunk-stream1-{100 + int(mpd.AHEAD):05d}.m4s" in said
    assert f"/live/cam/chunk-stream1-{101 + int(mpd.AHEAD):05d}.m4s" not in said


def test_before_the_start_only_names_ahead_are_announced() -> None:
    assert [n for n in names(LLDASH, T0 - 3600) if "chunk" in n] == []


def test_timeline_with_time_and_number() -> None:
    m = read(PATH, TIMELINE.encode(), T0 + 6.0)
    assert m.info == PlaylistInfo(ManifestKind.LIVE, 1.0)
    assert m.announced is not None
    video = [f"/live/cam/chunk-0-{t}.m4s" for t in (0, 12800, 25600, 38400, 51200)]
    audio = [f"/live/cam/chunk-1-{n:05d}.m4s" for n in range(1, 6)]
    # A live timeline goes on at its last duration: the next segments pass the guard before an MPD lists them.
    # Up to AHEAD past now (6 s): these times follow the clock. Video: segments ending by 16 s.
    video_next = [f"/live/cam/chunk-0-{64000 + i * 12800}.m4s" for i in range(11)]
    audio_next = [f"/live/cam/chunk-1-{n:05d}.m4s" for n in range(6, 16)]  # 10 more at the last 48128
    assert m.announced.names == ("/live/cam/init-0.m4s", *video, *video_next,
                                 "/live/cam/init-1.m4s", *audio, *audio_next)
    assert m.announced.segments == (*video, *audio)  # listed by the packager: prefetch may follow them


def test_timeline_repeat_minus_one_runs_to_the_next_entry_or_to_now() -> None:
    template = ('<AdaptationSet><Representation id="v"><SegmentTemplate timescale="10" media="s$Time$.m4s">'
                '<SegmentTimeline>{}</SegmentTimeline></SegmentTemplate></Representation></AdaptationSet>')
    until_next = names(mpd_of(template.format('<S t="0" d="20" r="-1"/><S t="100" d="20"/>')))
    ahead = int((20 + mpd.AHEAD) * 10)
    assert until_next == tuple(f"/live/cam/s{t}.m4s" for t in range(0, ahead, 20))  # 100 listed, then going on
    until_now = names(mpd_of(template.format('<S t="0" d="20" r="-1"/>')), T0 + 20)
    assert until_now[-1] == f"/live/cam/s{int((20 + mpd.AHEAD) * 10) - 20}.m4s"
    static = names(mpd_of(template.format('<S t="0" d="20" r="-1"/>'), dynamic=False,
                          extra='mediaPresentationDuration="PT8S"'))
    assert static == tuple(f"/live/cam/s{t}.m4s" for t in range(0, 80, 20))


def test_a_timeline_whose_times_do_not_follow_the_clock_goes_on_a_bounded_while() -> None:
    body = mpd_of('<AdaptationSet><Representation id="v"><SegmentTemplate media="$Time$.m4s"><SegmentTimeline>'
                  '<S t="0" d="2" r="2"/></SegmentTimeline></SegmentTemplate></Representation></AdaptationSet>')
    year = 365 * 86400.0  # the clock says a year in; the packager's times say 6 s
    said = names(body, T0 + year)
    assert said[:3] == ("/live/cam/0.m4s", "/live/cam/2.m4s", "/live/cam/4.m4s")  # listed: never pushed out
    assert said[3:] == tuple(f"/live/cam/{t}.m4s" for t in range(6, 6 + 2 * int(mpd.AHEAD), 2))  # 2 x AHEAD past it
    assert names(body, T0 - year)[3:] == tuple(f"/live/cam/{t}.m4s" for t in range(6, 6 + int(mpd.AHEAD), 2))


def test_presentation_time_offset_and_start_number() -> None:
    body = mpd_of('<AdaptationSet><Representation id="v"><SegmentTemplate timescale="1000" duration="2000" '
                  'startNumber="7" presentationTimeOffset="500" media="$Number$-$Time$.m4s"/>'
                  '</Representation></AdaptationSet>', dynamic=False, extra='mediaPresentationDuration="PT6S"')
    assert names(body) == ("/live/cam/7-500.m4s", "/live/cam/8-2500.m4s", "/live/cam/9-4500.m4s")


def test_printf_widths_bandwidth_and_dollar() -> None:
    body = mpd_of('<AdaptationSet><Representation id="hd" bandwidth="800000">'
                  '<SegmentTemplate duration="2" media="$RepresentationID$/$Bandwidth%09d$/$$$Number%03d$$$.m4s" '
                  'initialization="$RepresentationID$/$Bandwidth$/init.mp4"/></Representation></AdaptationSet>',
                  dynamic=False, extra='mediaPresentationDuration="PT4S"')
    assert names(body) == ("/live/cam/hd/800000/init.mp4", "/live/cam/hd/000800000/$001$.m4s",
                           "/live/cam/hd/000800000/$002$.m4s")


def test_template_attributes_are_inherited_down_to_the_representation() -> None:
    body = mpd_of('<SegmentTemplate timescale="1000" duration="4000" media="$RepresentationID$-$Number$.m4s"/>'
                  '<AdaptationSet><SegmentTemplate initialization="$RepresentationID$-init.mp4"/>'
                  '<Representation id="a"/><Representation id="b"><SegmentTemplate startNumber="10"/>'
                  '</Representation></AdaptationSet>', dynamic=False, extra='mediaPresentationDuration="PT8S"')
    assert names(body) == ("/live/cam/a-init.mp4", "/live/cam/a-1.m4s", "/live/cam/a-2.m4s",
                           "/live/cam/b-init.mp4", "/live/cam/b-10.m4s", "/live/cam/b-11.m4s")


def test_initialization_element_and_segment_list() -> None:
    body = mpd_of('<AdaptationSet><Representation id="v"><SegmentList duration="2">'
                  '<Initialization sourceURL="v/init.mp4"/><SegmentURL media="v/1.m4s"/><SegmentURL media="v/2.m4s"/>'
                  '<SegmentURL media="http://elsewhere.example/v/3.m4s"/></SegmentList></Representation>'
                  '</AdaptationSet>')
    m = read(PATH, body.encode(), T0)
    assert m.announced is not None
    assert m.announced.names == ("/live/cam/v/init.mp4", "/live/cam/v/1.m4s", "/live/cam/v/2.m4s")
    assert m.announced.segments == ("/live/cam/v/1.m4s", "/live/cam/v/2.m4s")
    assert m.info.target_duration == 2.0


def test_base_urls_resolve_level_by_level_and_other_hosts_are_left_out() -> None:
    tmpl = '<SegmentTemplate duration="2" media="$Number$.m4s" initialization="init.mp4"/>'
    body = (f'<MPD type="static" mediaPresentationDuration="PT2S"><BaseURL>/cdn/</BaseURL><Period>'
            f'<BaseURL>event/</BaseURL><AdaptationSet><BaseURL>video/</BaseURL>'
            f'<Representation id="hi"><BaseURL>hi/</BaseURL>{tmpl}</Representation>'
            f'<Representation id="lo"><BaseURL>https://other.example/lo/</BaseURL>{tmpl}</Representation>'
            f'<Representation id="mid"><BaseURL>../mid/</BaseURL><BaseURL>never/</BaseURL>{tmpl}</Representation>'
            f'<Representation id="vod"><BaseURL>whole.mp4</BaseURL><SegmentBase>'
            f'<Initialization sourceURL="whole-init.mp4"/></SegmentBase></Representation>'
            f'</AdaptationSet></Period></MPD>')
    assert names(body) == ("/cdn/event/video/hi/init.mp4", "/cdn/event/video/hi/1.m4s",
                           "/cdn/event/mid/init.mp4", "/cdn/event/mid/1.m4s",
                           "/cdn/event/video/whole-init.mp4", "/cdn/event/video/whole.mp4")


def test_period_start_places_its_numbers() -> None:
    body = (f'<MPD type="dynamic" availabilityStartTime="{AST}" timeShiftBufferDepth="PT4S">'
            '<Period id="a" start="PT0S" duration="PT10S"><AdaptationSet><Representation id="a">'
            '<SegmentTemplate duration="2" media="a$Number$.m4s"/></Representation></AdaptationSet></Period>'
            '<Period id="b"><AdaptationSet><Representation id="b">'
            '<SegmentTemplate duration="2" media="b$Number$.m4s"/></Representation></AdaptationSet></Period></MPD>')
    said = names(body, T0 + 14.0)
    # Period a ended at 10 s: only its last segment (8-10 s) is within the 4 s depth.
    assert [n for n in said if "/a" in n] == ["/live/cam/a5.m4s"]
    # Period b started at 10 s: 4 s in, its 2nd segment is the newest complete one.
    assert "/live/cam/b1.m4s" in said and "/live/cam/b2.m4s" in said


@pytest.mark.parametrize(("attrs", "target"), [
    ('minimumUpdatePeriod="PT500S" maxSegmentDuration="PT1.0S"', 1.0),  # ffmpeg's LL-DASH: not 250 s
    ('minimumUpdatePeriod="PT500S"', 4.0),  # the longest segment of the templates
    ('minimumUpdatePeriod="PT2S"', 2.0),  # an update period shorter than a segment wins
    ('minimumUpdatePeriod="P1DT1H"', 4.0),
    ("", 4.0),
])
def test_a_live_mpd_lives_about_a_segment(attrs: str, target: float) -> None:
    body = mpd_of('<AdaptationSet><Representation id="v"><SegmentTemplate timescale="1000" duration="4000" '
                  'media="$Number$.m4s"/></Representation></AdaptationSet>', extra=attrs)
    info = read(PATH, body.encode(), T0 + 30).info
    assert info == PlaylistInfo(ManifestKind.LIVE, target)
    assert lifetime(Rules(), NameKind.PLAYLIST, 200, {}, info).fresh == target / 2


@pytest.mark.parametrize(("body", "info"), [
    (f'<MPD type="dynamic" minimumUpdatePeriod="PT3S" availabilityStartTime="{AST}"/>',
     PlaylistInfo(ManifestKind.LIVE, 3.0)),
    (f'<MPD type="dynamic" availabilityStartTime="{AST}"/>', PlaylistInfo(ManifestKind.LIVE, mpd.DEFAULT_TARGET)),
    ('<MPD xmlns="urn:mpeg:dash:schema:mpd:2011"></MPD>', PlaylistInfo(ManifestKind.ENDED, mpd.DEFAULT_TARGET)),
    ('\ufeff<?xml version="1.0"?><MPD type="static" maxSegmentDuration="PT6S"/>',
     PlaylistInfo(ManifestKind.ENDED, 6.0)),
])
def test_kind_and_target(body: str, info: PlaylistInfo) -> None:
    assert read(PATH, body.encode(), T0).info == info


def test_names_are_bounded_newest_first_when_live() -> None:
    # A year-old stream of 1 s segments with no timeShiftBufferDepth: ~31M numbers exist.
    reps = "".join(f'<Representation id="r{i}"/>' for i in range(4))
    body = mpd_of(f'<AdaptationSet><SegmentTemplate duration="1" media="$RepresentationID$-$Number$.m4s"/>{reps}'
                  '</AdaptationSet>')
    at = T0 + 365 * 86400
    started = time.monotonic()
    said = names(body, at)
    assert time.monotonic() - started < 5  # a guard against expanding every number, not a speed test
    assert len(said) == mpd.MAX_NAMES
    share = mpd.MAX_NAMES // 4
    newest = 365 * 86400 + int(mpd.AHEAD)
    for i in range(4):
        mine = [n for n in said if n.startswith(f"/live/cam/r{i}-")]
        assert len(mine) == share
        assert mine[-1] == f"/live/cam/r{i}-{newest}.m4s"
        assert mine[0] == f"/live/cam/r{i}-{newest - share + 1}.m4s"


def test_a_huge_timeline_repeat_is_bounded_first_names_when_static() -> None:
    body = mpd_of('<AdaptationSet><Representation id="v"><SegmentTemplate media="$Number$.m4s">'
                  f'<SegmentTimeline><S t="0" d="1" r="{10 ** 15}"/></SegmentTimeline></SegmentTemplate>'
                  '</Representation></AdaptationSet>', dynamic=False)
    said = names(body)
    assert len(said) == mpd.MAX_NAMES and said[0] == "/live/cam/1.m4s" and said[-1] == f"/live/cam/{mpd.MAX_NAMES}.m4s"


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE MPD [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>
<MPD type="static"><BaseURL>&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;</BaseURL></MPD>"""
EXTERNAL = """<?xml version="1.0"?><!DOCTYPE MPD [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<MPD type="static"><BaseURL>&x;</BaseURL></MPD>"""


@pytest.mark.parametrize(("body", "reason"), [
    (BILLION_LAUGHS.encode(), "DOCTYPE"),
    (EXTERNAL.encode(), "DOCTYPE"),
    (b'<!DOCTYPE MPD><MPD type="static"/>', "DOCTYPE"),
    (b"<MPD type='static'><BaseURL>&nope;</BaseURL></MPD>", "well-formed"),
    (b"<html>not found</html>", "<MPD>"),
    (b"", "well-formed"),
    (b"<MPD type='static'>", "well-formed"),
    (b"<MPD \xff>", "UTF-8"),
    (b"<Period/>", "<MPD>"),
    (b"<MPD type='dynamic'/>", "availabilityStartTime"),
    (b"<MPD type='dynamic' availabilityStartTime='yesterday'/>", "date and time"),
    (b"<MPD type='static' minimumUpdatePeriod='500'/>", "duration"),
    (b"<MPD type='static' maxSegmentDuration='PT'/>", "duration"),
    (mpd_of('<AdaptationSet><Representation id="v"><SegmentTemplate duration="2" media="$SubNumber$.m4s"/>'
            '</Representation></AdaptationSet>').encode(), "cannot fill"),
    (mpd_of('<AdaptationSet><Representation><SegmentTemplate duration="2" media="$RepresentationID$.m4s"/>'
            '</Representation></AdaptationSet>').encode(), "needs an id"),
    (mpd_of('<AdaptationSet><Representation id="v"><SegmentTemplate duration="2" media="$Number$.m4s" '
            'initialization="init-$Number$.mp4"/></Representation></AdaptationSet>').encode(), "names a segment"),
    (mpd_of('<AdaptationSet><Representation id="v"><SegmentTemplate media="$Number$.m4s"/>'
            '</Representation></AdaptationSet>').encode(), "neither @duration"),
    (mpd_of('<AdaptationSet><Representation id="v"><SegmentTemplate duration="-2" media="$Number$.m4s"/>'
            '</Representation></AdaptationSet>').encode(), "non-negative integer"),
    (mpd_of('<AdaptationSet><Representation id="v"><SegmentTemplate timescale="0" duration="2" media="$Number$"/>'
            '</Representation></AdaptationSet>').encode(), "timescale"),
    (mpd_of('<AdaptationSet><Representation id="v"><SegmentTemplate media="$Number$.m4s"><SegmentTimeline>'
            '<S t="0" d="2" r="-2"/></SegmentTimeline></SegmentTemplate></Representation></AdaptationSet>').encode(),
     "r="),
    (mpd_of('<AdaptationSet><Representation id="v"><SegmentTemplate duration="2" media="$Number$.m4s"/>'
            '</Representation></AdaptationSet>', dynamic=False).encode(), "no end"),
    (b"<MPD type='static'>" + b"<Period/>" * (mpd.MAX_ELEMENTS + 1) + b"</MPD>", "elements"),
    (b"<MPD>" + b" " * MAX_PLAYLIST_BYTES + b"</MPD>", "larger than"),
])
def test_malformed(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedPlaylist, match=reason):
        read(PATH, body, T0)


def test_reading_an_mpd_needs_its_fetch_time() -> None:
    with pytest.raises(TypeError, match="time it was fetched"):
        read(PATH, LLDASH.encode())
