"""The one read of a DASH manifest (MPD): its freshness, the names it announces, the run it belongs to.

An MPD names its segments by rule rather than by list: a SegmentTemplate with
`$Number$` and a segment duration says which numbers exist from the clock
(the availability window: availabilityStartTime, the period's start,
timeShiftBufferDepth, and now), a SegmentTimeline lists start times with
repeats, a SegmentList lists URLs. `read` turns all of them into the same
`Manifest` an HLS playlist gives, so the edge's guard and prefetch need not
know which format a stream uses. Because the names depend on the time, the
read takes the time the body was fetched.

The XML is parsed with the standard library's expat, and an MPD with a
DOCTYPE is refused: MPDs have no use for one, and it is where entity tricks
(billion laughs, external entities) live. No other XML package is needed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urljoin, urlsplit
from xml.parsers import expat

from livecdn.media.kinds import ManifestKind
from livecdn.media.names import BadName, normalize
from livecdn.media.playlist import Announced, MalformedPlaylist, Manifest, PlaylistInfo, Run

__all__ = ["AHEAD", "MAX_ELEMENTS", "MAX_NAMES", "read"]

# Names one MPD may announce. They go into the guard's Bloom filter for the
# stream, whose generation holds 4096 names by default: more than that from
# one read would rotate the filter within the read and forget its own first
# names. Each name also costs the event loop some microseconds per read.
# Past the bound every representation keeps an equal share: the newest
# segments of a live window (what players ask for), the first of a static one.
MAX_NAMES = 4096
# Elements one MPD may hold: a real one has hundreds (a long, irregular
# SegmentTimeline a few thousand); more is not an MPD a packager wrote, and
# building a tree of it would cost memory and time.
MAX_ELEMENTS = 50_000
# Seconds past the fetch time whose template names are announced as well.
# Players compute `$Number$` from their own clock, which may run ahead of the
# edge's, and the names must stay known while the copy is held; a name
# announced early only passes the guard (the origin answers for it).
AHEAD = 10.0
# The lifetime basis of a live MPD that states neither an update period nor
# any segment duration: what livecdn assumed before it read MPDs.
DEFAULT_TARGET = 2.0
# Where relative URIs resolve; a URI that comes back on another host names an
# object of another origin and is left out (as for HLS).
_HOST = "mpd.invalid"
# Stand-ins for a template's number and time while its URI is resolved once
# per representation (alphanumeric: resolving and normalizing keep them).
_NUMBER, _TIME = "livecdnNUMBERmark", "livecdnTIMEmark"

_DURATION = re.compile(
    r"P(?:(\d+(?:\.\d*)?)Y)?(?:(\d+(?:\.\d*)?)M)?(?:(\d+(?:\.\d*)?)D)?"
    r"(?:T(?:(\d+(?:\.\d*)?)H)?(?:(\d+(?:\.\d*)?)M)?(?:(\d+(?:\.\d*)?)S)?)?")
_DURATION_UNITS = (365 * 86400, 30 * 86400, 86400, 3600, 60, 1)  # years and months as DASH players count them
_IDENTIFIER = re.compile(r"\$(RepresentationID|Number|Bandwidth|Time|)(?:%0?(\d*)d)?\$")


@dataclass(slots=True)
class _Element:
    tag: str  # local name, namespace dropped
    attrs: dict[str, str]
    children: list[_Element]
    text: str = ""

    def first(self, tag: str) -> _Element | None:
        return next((c for c in self.children if c.tag == tag), None)

    def all(self, tag: str) -> list[_Element]:
        return [c for c in self.children if c.tag == tag]


@dataclass(frozen=True, slots=True)
class _Segments:
    """A run of `count` segments of one duration, in timescale units: `number`, `time` the first one's."""

    number: int
    time: int
    duration: int
    count: int
    listed: bool  # written out by the packager (a timeline entry), not computed from the clock


def read(path: str, text: str, at: float) -> Manifest:
    """Read an MPD body once.

    Args:
        path: the MPD's normalized path; relative URIs resolve against it.
        text: the whole body, decoded.
        at: when it was fetched (epoch seconds): which template names exist depends on it.

    Raises:
        MalformedPlaylist: not well-formed XML, a DOCTYPE, no <MPD> root, or
            attributes no player could use (bad durations, dates, templates).
    """
    root = _parse(text)
    dynamic = root.attrs.get("type", "static") == "dynamic"
    started = root.attrs.get("availabilityStartTime")
    if dynamic and started is None:
        raise MalformedPlaylist("dynamic MPD without availabilityStartTime")
    clock = _Clock(
        dynamic=dynamic,
        since_start=at - _datetime(started) if started is not None else 0.0,
        depth=_duration(root.attrs.get("timeShiftBufferDepth"), math.inf),
    )
    representations = [(period, adaptation, rep) for period in root.all("Period")
                       for adaptation in period.all("AdaptationSet") for rep in adaptation.all("Representation")]
    share = max(1, MAX_NAMES // max(1, len(representations)))
    names: list[str] = []
    segments: list[str] = []
    longest = 0.0
    mpd_base = _base(f"http://{_HOST}{path}", root)
    for period, start, end in _periods(root):
        if start == math.inf:
            continue  # after a period of unknown length: not placed in time until the MPD says more
        period_base = _base(mpd_base, period)
        for adaptation in period.all("AdaptationSet"):
            adaptation_base = _base(period_base, adaptation)
            for rep in adaptation.all("Representation"):
                levels = (period, adaptation, rep)
                said = _representation(levels, _base(adaptation_base, rep), clock, start, end, share)
                names += said.names
                segments += said.segments
                longest = max(longest, said.longest)
    declared = _duration(root.attrs.get("maxSegmentDuration"), 0.0)
    update = _duration(root.attrs.get("minimumUpdatePeriod"), 0.0)
    # A player reloads about once a segment, whatever minimumUpdatePeriod says
    # (ffmpeg writes 500 s for LL-DASH), and a restarted encoder's new
    # availabilityStartTime must reach it within about that: the shorter wins.
    target = min((x for x in (update, declared or longest) if x > 0), default=DEFAULT_TARGET)
    info = PlaylistInfo(ManifestKind.LIVE if dynamic else ManifestKind.ENDED, target)
    unique = tuple(dict.fromkeys(names))[:MAX_NAMES]
    announced = Announced(unique, tuple(dict.fromkeys(segments)), (), dynamic)
    return Manifest(info, announced, Run(started=started))


# --- XML ---

def _parse(text: str) -> _Element:
    """The element tree of an MPD; no DOCTYPE (so no entity of any kind), bounded in elements."""
    parser = expat.ParserCreate(encoding="UTF-8", namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    stack: list[_Element] = []
    top: list[_Element] = []
    count = 0

    def start(tag: str, attrs: dict[str, str]) -> None:
        nonlocal count
        count += 1
        if count > MAX_ELEMENTS:
            raise MalformedPlaylist(f"MPD with more than {MAX_ELEMENTS} elements")
        element = _Element(tag.rpartition(" ")[2], attrs, [])
        (stack[-1].children if stack else top).append(element)
        stack.append(element)

    def end(tag: str) -> None:
        stack.pop()

    def data(chars: str) -> None:
        if stack and stack[-1].tag == "BaseURL":  # the only element whose text is read
            stack[-1].text += chars

    def doctype(*_: object) -> None:
        raise MalformedPlaylist("MPD with a DOCTYPE (its entities are refused)")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = data
    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = doctype
    try:
        parser.Parse(text.encode("utf-8"), True)
    except expat.ExpatError as e:
        raise MalformedPlaylist(f"MPD is not well-formed XML: {e}") from None
    if len(top) != 1 or top[0].tag != "MPD":
        raise MalformedPlaylist("manifest has no <MPD> element at its root")
    return top[0]


def _duration(value: str | None, default: float) -> float:
    """An xs:duration in seconds ("PT1.5S", "P1DT2H"); `default` when absent."""
    if value is None:
        return default
    m = _DURATION.fullmatch(value.strip())
    if m is None or not any(m.groups()):
        raise MalformedPlaylist(f"{value!r} is not a duration")
    return sum(float(v) * unit for v, unit in zip(m.groups(), _DURATION_UNITS, strict=True) if v)


def _datetime(value: str) -> float:
    """An xs:dateTime in epoch seconds; one without a zone is UTC, as DASH-IF says to write it."""
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise MalformedPlaylist(f"{value!r} is not a date and time") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _number(attrs: dict[str, str], name: str, default: float) -> float:
    value = attrs.get(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise MalformedPlaylist(f"{name}={value!r} is not a number") from None
    if not number >= 0:
        raise MalformedPlaylist(f"{name}={value!r} is negative")
    return number


def _integer(attrs: dict[str, str], name: str, default: int) -> int:
    value = attrs.get(name)
    if value is None:
        return default
    if not value.strip().isdigit():
        raise MalformedPlaylist(f"{name}={value!r} is not a non-negative integer")
    return int(value)


def _timescale(attrs: dict[str, str]) -> int:
    timescale = _integer(attrs, "timescale", 1)
    if timescale == 0:
        raise MalformedPlaylist("timescale 0")
    return timescale


def _base(parent: str, element: _Element) -> str:
    """The base URL below `element`: its first BaseURL (players use the first; others are failovers)."""
    base = element.first("BaseURL")
    return urljoin(parent, base.text.strip()) if base is not None and base.text.strip() else parent


def _resolve(base: str, uri: str) -> str | None:
    """A URI as a normalized path on the MPD's own host; None for another host or a name no request could use."""
    target = urlsplit(urljoin(base, uri))
    if target.netloc != _HOST:
        return None
    try:
        return normalize(target.path)
    except BadName:
        return None


# --- time ---

@dataclass(frozen=True, slots=True)
class _Clock:
    dynamic: bool
    since_start: float  # seconds from availabilityStartTime to the fetch
    depth: float  # timeShiftBufferDepth, seconds (inf: everything since the start stays available)


def _periods(root: _Element) -> list[tuple[_Element, float, float]]:
    """Each Period with its start and end in seconds from the presentation's start (end inf: still open)."""
    periods = root.all("Period")
    total = _duration(root.attrs.get("mediaPresentationDuration"), math.inf)
    starts: list[float] = []
    for i, period in enumerate(periods):
        default = 0.0 if i == 0 else starts[-1] + _duration(periods[i - 1].attrs.get("duration"), math.inf)
        starts.append(_duration(period.attrs.get("start"), default))
    out = []
    for i, period in enumerate(periods):
        end = starts[i + 1] if i + 1 < len(periods) else total
        own = _duration(period.attrs.get("duration"), math.inf)
        out.append((period, starts[i], min(end, starts[i] + own)))
    return out


# --- names ---

@dataclass(frozen=True, slots=True)
class _Said:
    names: list[str]
    segments: list[str]
    longest: float  # the longest segment, seconds (0 when unknown)


def _representation(levels: tuple[_Element, ...], base: str, clock: _Clock, start: float, end: float,
                    share: int) -> _Said:
    """What one Representation announces: its initialization and the share of its segments in the window."""
    rep = levels[-1]
    templates = [t for level in levels if (t := level.first("SegmentTemplate")) is not None]
    if templates:
        return _template(templates, rep, base, clock, start, end, share)
    listed = next((s for level in reversed(levels) if (s := level.first("SegmentList")) is not None), None)
    if listed is not None:
        return _list(listed, base, clock, share)
    # SegmentBase, or nothing: the Representation's BaseURL is the media itself.
    names = [init for level in levels if (init := _initialization(level.first("SegmentBase"), base)) is not None]
    whole = _resolve(base, "")
    if whole is not None and not whole.endswith("/"):
        names.append(whole)
    return _Said(names, [], 0.0)


def _initialization(holder: _Element | None, base: str) -> str | None:
    init = holder.first("Initialization") if holder is not None else None
    source = init.attrs.get("sourceURL") if init is not None else None
    return _resolve(base, source) if source else None


def _list(segment_list: _Element, base: str, clock: _Clock, share: int) -> _Said:
    urls = [u.attrs["media"] for u in segment_list.all("SegmentURL") if u.attrs.get("media")]
    urls = urls[-share:] if clock.dynamic else urls[:share]
    names = [n for u in urls if (n := _resolve(base, u)) is not None]
    init = _initialization(segment_list, base)
    longest = _integer(segment_list.attrs, "duration", 0) / _timescale(segment_list.attrs)
    return _Said(([init] if init else []) + names, names, longest)


def _template(templates: list[_Element], rep: _Element, base: str, clock: _Clock, start: float, end: float,
              share: int) -> _Said:
    """Names from a SegmentTemplate, its attributes inherited from Period to AdaptationSet to Representation."""
    attrs: dict[str, str] = {}
    for t in templates:
        attrs.update(t.attrs)
    timeline = next((tl for t in reversed(templates) if (tl := t.first("SegmentTimeline")) is not None), None)
    timescale = _timescale(attrs)
    names: list[str] = []
    init = attrs.get("initialization")
    if init:
        pattern = _expand(init, rep, base, media=False)
        names += [pattern.format()] if pattern is not None else []
    else:
        element = next((e for t in reversed(templates) if (e := _initialization(t, base)) is not None), None)
        names += [element] if element is not None else []
    media = attrs.get("media")
    if not media:
        return _Said(names, [], 0.0)
    if timeline is not None:
        runs = _timeline(timeline, attrs, timescale, clock, start, end)
    else:
        runs = _numbered(attrs, timescale, clock, start, end)
    longest = max((r.duration for r in runs), default=0) / timescale
    pattern = _expand(media, rep, base, media=True)
    if pattern is None:
        return _Said(names, [], longest)
    segments: list[str] = []
    for run in _choose(runs, share, newest=clock.dynamic):
        for i in range(run.count):
            name = pattern.format(n=run.number + i, t=run.time + i * run.duration)
            names.append(name)
            if run.listed:
                segments.append(name)
    return _Said(names, segments, longest)


def _numbered(attrs: dict[str, str], timescale: int, clock: _Clock, start: float, end: float) -> list[_Segments]:
    """A template with a fixed @duration: the numbers whose segments are available around the fetch time."""
    duration = _integer(attrs, "duration", 0)
    if duration <= 0:
        raise MalformedPlaylist("SegmentTemplate with neither @duration nor a SegmentTimeline")
    seconds = duration / timescale
    first, last = 0, math.inf
    if end < math.inf:
        last = math.ceil((end - start) / seconds) - 1
    if clock.dynamic:
        # Segment k spans [k, k+1) * seconds of the period; it may be asked for from its end less
        # availabilityTimeOffset (LL-DASH), and stays available timeShiftBufferDepth after its end.
        early = min(_number(attrs, "availabilityTimeOffset", 0.0), seconds)
        now = clock.since_start - start
        last = min(last, math.floor((now + AHEAD + early) / seconds) - 1)
        if clock.depth < math.inf:
            first = max(0, math.ceil((now - clock.depth) / seconds) - 1)
    elif last == math.inf:
        raise MalformedPlaylist("static MPD whose template has no end (no duration anywhere)")
    if last < first:
        return []
    offset = _integer(attrs, "presentationTimeOffset", 0)
    return [_Segments(_integer(attrs, "startNumber", 1) + first, offset + first * duration, duration,
                      int(last) - first + 1, listed=False)]


def _timeline(timeline: _Element, attrs: dict[str, str], timescale: int, clock: _Clock, start: float,
              end: float) -> list[_Segments]:
    """A SegmentTimeline's runs (`@r` repeats; -1 repeats up to the next entry, the period's end or now)."""
    offset = _integer(attrs, "presentationTimeOffset", 0)
    number = _integer(attrs, "startNumber", 1)
    entries = timeline.all("S")
    runs: list[_Segments] = []
    time = 0
    for i, s in enumerate(entries):
        time = _integer(s.attrs, "t", time)
        duration = _integer(s.attrs, "d", 0)
        if duration <= 0:
            raise MalformedPlaylist("SegmentTimeline entry without a positive @d")
        r = s.attrs.get("r", "0").strip()
        if not re.fullmatch(r"-1|\d+", r):
            raise MalformedPlaylist(f"SegmentTimeline entry with r={r!r}")
        listed = r != "-1"
        if listed:
            count = int(r) + 1
        else:
            nxt = _integer(entries[i + 1].attrs, "t", -1) if i + 1 < len(entries) else -1
            if nxt >= 0:
                until = nxt
            elif end < math.inf:
                until = offset + round((end - start) * timescale)
            elif clock.dynamic:
                until = offset + math.floor((clock.since_start - start + AHEAD) * timescale)
            else:
                until = time + duration
            count = max(1, -(-(until - time) // duration))
        runs.append(_Segments(number, time, duration, count, listed))
        number += count
        time += count * duration
    if clock.dynamic and runs and runs[-1].listed:
        # A live timeline goes on: players ask for the segment after its last one
        # (at its end time) before the MPD that lists it, so it and the ones after
        # it for AHEAD (at the last duration) pass the guard too: AHEAD past the
        # timeline's end, or past now where the packager's times follow the clock
        # (at most twice as many: its times need not follow the clock at all).
        last = runs[-1].duration
        ahead = max(1, math.ceil(AHEAD * timescale / last))
        by_clock = (offset + math.floor((clock.since_start - start + AHEAD) * timescale) - time) // last
        runs.append(_Segments(number, time, last, max(ahead, min(by_clock, 2 * ahead)), listed=False))
    return runs


def _choose(runs: list[_Segments], share: int, newest: bool) -> list[_Segments]:
    """At most `share` segments of these runs: the newest (live) or the first (static)."""
    out: list[_Segments] = []
    left = share
    for run in reversed(runs) if newest else runs:
        if left <= 0:
            break
        take = min(run.count, left)
        skip = run.count - take if newest else 0
        out.append(_Segments(run.number + skip, run.time + skip * run.duration, run.duration, take, run.listed))
        left -= take
    return out[::-1] if newest else out


def _expand(template: str, rep: _Element, base: str, media: bool) -> str | None:
    """A template resolved once, as a format string over {n} (number) and {t} (time); None for another host."""
    rep_id = rep.attrs.get("id")
    pieces: list[str] = []
    pos = 0
    for m in _IDENTIFIER.finditer(template):
        literal = template[pos:m.start()]
        if "$" in literal:
            raise MalformedPlaylist(f"template {template!r} has an identifier livecdn cannot fill")
        pieces.append(literal)
        ident, width = m.group(1), m.group(2)
        if ident == "":
            pieces.append("$")
        elif ident == "RepresentationID":
            if rep_id is None or width is not None:
                raise MalformedPlaylist(f"template {template!r}: $RepresentationID$ needs an id and takes no width")
            pieces.append(rep_id)
        elif ident == "Bandwidth":
            pieces.append(f"{_integer(rep.attrs, 'bandwidth', 0):0{width or 0}d}")
        elif not media:
            raise MalformedPlaylist(f"initialization template {template!r} names a segment")
        else:
            pieces.append(f"{_NUMBER if ident == 'Number' else _TIME}{width or 0}x")
        pos = m.end()
    if "$" in template[pos:]:
        raise MalformedPlaylist(f"template {template!r} has an identifier livecdn cannot fill")
    pieces.append(template[pos:])
    path = _resolve(base, "".join(pieces))
    if path is None:
        return None
    pattern = path.replace("{", "{{").replace("}", "}}")
    return re.sub(f"({_NUMBER}|{_TIME})(\\d+)x",
                  lambda m: "{" + ("n" if m.group(1) == _NUMBER else "t") + ":0" + m.group(2) + "d}", pattern)


