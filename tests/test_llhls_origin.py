"""The built-in origin's low-latency HLS (issue 15): the pure part state, and real origins over HTTP.

`livecdn.origin.lowlatency` is driven with plain values; the synthetic source
with a fake clock (what exists when); then real `OriginNode`s, synthetic and
ffmpeg, answer a real HTTP client: blocking reloads held until their part
exists, 400s for what cannot be waited for, delta updates, preload-hint parts
streamed as they are made, parts that are the encoder's own keyframed files.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator

import aiohttp
import m3u8
import pytest
import pytest_asyncio

from livecdn.config import Address, OriginConfig
from livecdn.config.schema import FieldError
from livecdn.origin import OriginNode
from livecdn.origin import lowlatency as ll
from livecdn.origin.sources import PART_KEPT_TARGETS, Body, PartStream, SyntheticSource, parts_of

P = 0.5
FOUR = (P,) * 4


def test_a_part_is_there_once_made_and_a_later_one_is_waited_for():
    parts = ll.Parts(10, (FOUR, FOUR), (P,), 2.0, P)  # 10, 11 complete; 12 has one part
    assert parts.making == 12 and parts.last_msn == 12 and parts.last_part() == (12, 0)
    assert parts.has(11, None) and not parts.has(12, None)
    assert parts.has(12, 0) and not parts.has(12, 1)
    assert parts.has(11, 4) is parts.has(12, 0)  # past a complete segment's last part: the next segment's first
    assert not parts.too_far(14) and parts.too_far(15)  # rfc8216bis 6.2.5.2: two ahead of the last, no more


def test_the_playlist_lists_recent_parts_a_hint_reports_and_a_delta_skips_old_segments():
    parts = ll.Parts(0, (FOUR,) * 8, (P, P), 2.0, P)
    text = ll.playlist(parts, reports=[ll.Report("../lo/index.m3u8", 8, 1)])
    doc = m3u8.loads(text)
    assert doc.server_control.can_block_reload == "YES" and doc.server_control.part_hold_back == 1.5
    assert doc.server_control.can_skip_until == 12.0 and doc.part_inf.part_target == 0.5
    assert doc.preload_hint.uri == "seg8.2.ts"
    listed = [p.uri for s in doc.segments for p in s.parts]
    assert listed == [f"seg{n}.{i}.ts" for n in (6, 7) for i in range(4)] + ["seg8.0.ts", "seg8.1.ts"]
    assert doc.rendition_reports[0].last_msn == 8 and doc.rendition_reports[0].last_part == 1
    delta = m3u8.loads(ll.playlist(parts, skip=True))
    # 17 s listed; segments ending more than 12 s before the end are skipped: 0, 1 (end 4 s: 13 s before)
    assert delta.skip.skipped_segments == 2 and delta.media_sequence == 0
    assert [s.uri for s in delta.segments if s.uri][0] == "seg2.ts"


@pytest.mark.parametrize(("name", "parsed"), [
    ("seg12.3.ts", (12, 3)), ("seg0.0.ts", (0, 0)), ("seg12.ts", None), ("seg012.1.ts", None),
    ("seg1.01.ts", None), ("seg1..ts", None), ("seg1.2.m4s", None), ("seg１.2.ts", None)])
def test_part_names_are_canonical(name: str, parsed: tuple[int, int] | None):
    assert ll.parse_part_uri(name) == parsed


def test_ffmpegs_part_playlist_groups_into_segments():
    text = "#EXTM3U\n" + "".join(f"#EXTINF:0.500000,\npart{k}.ts\n" for k in range(2, 15))
    parts = parts_of(text, 4, 10, 2.0, 0.5)
    assert parts is not None
    # part2..part15: segment 0 lacks parts 0, 1 (deleted): 1, 2 complete, 3 has parts 12..14
    assert (parts.first, len(parts.segments), parts.current) == (1, 2, (0.5, 0.5, 0.5))


def test_low_latency_needs_whole_parts_per_segment():
    with pytest.raises(FieldError, match="part_target"):
        OriginConfig("o", Address("127.0.0.1", 0), low_latency=True, target_duration=2.0, part_target=0.75)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.asyncio
async def test_parts_stay_downloadable_three_targets_after_they_leave_the_playlist():
    """rfc8216bis 6.2.2: a player that read a playlist just before the parts left it can still get them."""
    clock = Clock()
    src = SyntheticSource(OriginConfig("o", Address("127.0.0.1", 0), low_latency=True, window=3), clock)
    await src.start()
    clock.now += 2.0 * 5 + 0.1  # segments 0..4 complete
    state = src.parts("live", "720p")
    assert state is not None
    listed = {p.uri for s in m3u8.loads(ll.playlist(state)).segments for p in s.parts}
    assert "seg2.0.ts" not in listed and "seg3.0.ts" in listed  # segment 2's parts have just left the playlist
    clock.now += PART_KEPT_TARGETS * 2.0 - 0.2
    assert isinstance(await src.part("live", "720p", 2, 0), Body)  # still there, 3 targets later
    clock.now += 2.0 * 10
    assert await src.part("live", "720p", 2, 0) is None  # gone with its segment, long after


@pytest.mark.asyncio
async def test_a_hold_that_read_the_state_just_before_a_part_wakes_for_that_part_not_the_next():
    """Seen in benchmarks/llhls.py: about one blocking reload in 150 was answered a part (500 ms) late. The hold
    read the parts just before a part's time and asked to be woken just after it: counted from then, the wake
    was the next part's time."""
    clock = Clock()
    src = SyntheticSource(OriginConfig("o", Address("127.0.0.1", 0), low_latency=True), clock)
    await src.start()
    clock.now += 2.0 + 0.5 - 1e-6  # part 1.0 is about to be made
    seen = src.parts("live", "720p")
    assert seen is not None and not seen.has(1, 0)
    clock.now += 2e-6  # ... and now it is
    assert src.parts("live", "720p") != seen
    await asyncio.wait_for(src.changed("live", "720p", 5.0, seen), 0.2)  # at once: not after part 1.1 is made
    now = src.parts("live", "720p")
    assert now is not None and now.has(1, 0)


@pytest.mark.asyncio
async def test_a_segment_is_its_parts_and_the_hint_part_is_streamed_as_it_is_made():
    clock = Clock()
    src = SyntheticSource(OriginConfig("o", Address("127.0.0.1", 0), low_latency=True), clock)
    await src.start()
    clock.now += 2.1  # segment 0 complete, part 4.0 (seg1.0) being made
    seg = await src.segment("live", "720p", 0)
    pieces = [await src.part("live", "720p", 0, i) for i in range(4)]
    assert seg is not None and b"".join(p.data for p in pieces if isinstance(p, Body)) == seg.data
    hint = await src.part("live", "720p", 1, 1)  # the next part: made from 2.5 s on
    assert isinstance(hint, PartStream)
    assert await src.part("live", "720p", 1, 3) is None  # a part further ahead does not exist
    clock.now += 10.0
    assert len(b"".join([c async for c in hint.chunks])) == hint.size


@pytest_asyncio.fixture
async def origin() -> AsyncIterator[OriginNode]:
    node = OriginNode(OriginConfig("origin", Address("127.0.0.1", 0), low_latency=True, target_duration=1.0,
                                   part_target=0.25, window=10))
    await node.start()
    try:
        yield node
    finally:
        await node.stop(1.0)


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, str, float, dict[str, str]]:
    started = time.monotonic()
    async with http.get(url) as r:
        return r.status, (await r.read()).decode("latin-1"), time.monotonic() - started, dict(r.headers)


@pytest.mark.asyncio
async def test_blocking_reloads_are_held_until_their_part_exists(origin: OriginNode):
    await asyncio.sleep(1.2)
    base = f"{origin.url}/live/720p/index.m3u8"
    async with aiohttp.ClientSession() as http:
        status, text, _, headers = await _get(http, base)
        assert status == 200 and headers["Cache-Control"] == "max-age=1"
        hint = re.search(r'PRELOAD-HINT:TYPE=PART,URI="seg(\d+)\.(\d+)\.ts"', text)
        assert hint is not None
        msn, part = int(hint[1]), int(hint[2])
        status, text, waited, headers = await _get(http, f"{base}?_HLS_msn={msn}&_HLS_part={part}")
        assert status == 200 and f'URI="seg{msn}.{part}.ts"' in text and waited <= 0.25 + 0.1, waited
        assert headers["Cache-Control"] == "max-age=6"  # rfc8216bis Appendix B.1: 6 targets
        assert (await _get(http, f"{base}?_HLS_msn={msn + 3}"))[0] == 400  # more than two ahead
        assert (await _get(http, f"{base}?_HLS_part=1"))[0] == 400
        # The encoder stalls (the source's clock stops): a reload for the next part is held 3 targets, then 503.
        frozen = time.time()
        origin._source._clock = lambda: frozen  # type: ignore[attr-defined]
        status, text, waited, _ = await _get(http, f"{base}?_HLS_msn={msn + 1}&_HLS_part=0")
        assert status == 503 and 3.0 <= waited < 3.5, (status, text, waited)


@pytest.mark.asyncio
async def test_delta_updates_and_hint_parts_over_http(origin: OriginNode):
    await asyncio.sleep(7.1)  # 7 segments: more than CAN-SKIP-UNTIL (6 s) listed
    base = f"{origin.url}/live/360p/index.m3u8"
    async with aiohttp.ClientSession() as http:
        _, text, _, _ = await _get(http, f"{base}?_HLS_skip=YES")
        doc = m3u8.loads(text)
        assert doc.skip is not None and int(doc.skip.skipped_segments) >= 1
        assert doc.rendition_reports and doc.rendition_reports[0].uri == "../720p/index.m3u8"
        hinted = ll.parse_part_uri(doc.preload_hint.uri)
        assert hinted is not None
        msn, part = hinted
        after = ll.part_uri(msn, part + 1) if part < 3 else ll.part_uri(msn + 1, 0)  # begins within a part
        started = time.monotonic()
        async with http.get(f"{origin.url}/live/360p/{after}") as r:
            first = await r.content.readany()
            first_at = time.monotonic() - started
            rest = await r.read()
            whole_at = time.monotonic() - started
        # Held until made, its head at once and its bytes as made: the first piece well before the last.
        assert r.status == 200 and len(first) + len(rest) == int(r.headers["Content-Length"])
        assert first_at < whole_at - 0.1, (first_at, whole_at)


@pytest.mark.slow
@pytest.mark.asyncio
async def test_ffmpeg_low_latency_parts_are_the_encoders_own_keyframed_files(tmp_path):
    """Each part is a whole MPEG-TS file starting with a keyframe; a segment is its four parts."""
    ffprobe = shutil.which("ffprobe")
    assert ffprobe, "ffprobe (ffmpeg) is needed: run `make test`"
    node = OriginNode(OriginConfig("origin", Address("127.0.0.1", 0), mode="ffmpeg", low_latency=True,
                                   window=6, renditions=OriginConfig.renditions[1:]))
    await node.start()
    try:
        async with aiohttp.ClientSession() as http:
            await asyncio.sleep(2.5)
            base = f"{node.url}/live/360p"
            status, text, _, _ = await _get(http, f"{base}/index.m3u8?_HLS_msn=1&_HLS_part=0")
            assert status == 200 and 'URI="seg1.0.ts"' in text
            async with http.get(f"{base}/seg0.ts") as r:
                segment = await r.read()
            parts = []
            for i in range(4):
                async with http.get(f"{base}/seg0.{i}.ts") as r:
                    parts.append(await r.read())
    finally:
        await node.stop(2.0)
    assert segment == b"".join(parts)
    (tmp_path / "p1.ts").write_bytes(parts[1])
    probe = subprocess.run([ffprobe, "-v", "error", "-select_streams", "v", "-show_entries",
                            "frame=key_frame,pts_time", "-of", "csv=p=0", str(tmp_path / "p1.ts")],
                           capture_output=True, text=True, timeout=30)
    frames = [line.split(",") for line in probe.stdout.split()]
    assert frames and frames[0][0] == "1", probe.stdout[:200]  # the part starts with a keyframe
    assert 14 <= len(frames) <= 16, len(frames)  # 0.5 s at 30 fps


@pytest.mark.slow
def test_livecdn_demo_low_latency_serves_ll_hls_through_the_edges(tmp_path):
    """`livecdn demo --low-latency`: the built-in origin's LL-HLS, blocking reloads held through an edge.

    Before: the flag did not exist (exit 2) and the origin served plain HLS only.
    """
    import urllib.request

    from tests.cdn import run_cdn, topology_toml

    config = tmp_path / "cdn.toml"
    config.write_text(topology_toml(origin={"mode": "synthetic", "window": 10}))
    with run_cdn(config, "--low-latency") as info:
        edge = next(n for n in info["nodes"] if n["role"] == "edge")["url"]
        time.sleep(2.2)
        with urllib.request.urlopen(f"{edge}/live/720p/index.m3u8", timeout=10) as r:
            doc = m3u8.loads(r.read().decode())
        assert doc.part_inf.part_target == 0.5 and doc.server_control.can_block_reload == "YES"
        hinted = ll.parse_part_uri(doc.preload_hint.uri)
        assert hinted is not None
        started = time.monotonic()
        with urllib.request.urlopen(f"{edge}/live/720p/index.m3u8?_HLS_msn={hinted[0]}&_HLS_part={hinted[1]}",
                                    timeout=10) as r:
            held = r.read().decode()
        assert f'URI="{doc.preload_hint.uri}"' in held.split("PRELOAD-HINT")[0]  # the hinted part now listed
        assert time.monotonic() - started < 0.5 + 0.3
