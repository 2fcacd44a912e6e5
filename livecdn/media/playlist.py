"""What a playlist body says: its own freshness and the names it announces.

`read` is the one parse of a playlist body (HLS with `m3u8`, DASH with `livecdn.media.mpd`):
the cache's fill calls it once, when the body has arrived whole, and the
resulting `Manifest` travels with the stored object to whoever needs it
(freshness, revalidation, the edge's guard and prefetch), so no one parses
the same bytes again. A body that is not a playlist raises
`MalformedPlaylist`, so a broken packager answer is treated as an upstream
failure instead of being cached and handed to players.

`compare` tells what changed between two reads of one playlist (the stream
went on, the encoder restarted, or the answer comes from a replica that lags
behind): the cache's fill decides with it whether to drop a previous run's
objects or keep the newer copy it holds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import m3u8

from livecdn.media.kinds import ManifestKind
from livecdn.media.names import BadName, extension, normalize

__all__ = ["Announced", "Change", "MAX_PLAYLIST_BYTES", "MalformedPlaylist", "Manifest", "PlaylistInfo", "Run",
           "compare", "proves_whole", "read"]

# Playlists are small text files; a "playlist" larger than this is not one,
# and parsing it would cost the event loop real time.
MAX_PLAYLIST_BYTES = 4 << 20
# Any host will do: relative URIs are resolved against it, and a URI that
# comes back on another host names an object of another origin (left out).
_HOST = "playlist.invalid"


class MalformedPlaylist(ValueError):
    """An upstream answered a playlist name with something that is not a playlist."""


@dataclass(frozen=True, slots=True)
class PlaylistInfo:
    """What a playlist says about its own freshness."""

    kind: ManifestKind
    target_duration: float | None = None  # seconds; media playlists only
    part_target: float | None = None  # LL-HLS part target, when announced


@dataclass(frozen=True, slots=True)
class Announced:
    """The names a playlist (HLS or DASH) says exist, as normalized absolute paths."""

    names: tuple[str, ...]  # every name: segments, parts, init sections, hints, child playlists, keys, session data
    segments: tuple[str, ...]  # full segments in playlist order (what prefetch follows)
    hints: tuple[str, ...]  # preload hints: objects about to exist
    live: bool  # a media playlist without ENDLIST


@dataclass(frozen=True, slots=True)
class Run:
    """What tells one encoder run of a stream from the next: compared between two reads of one playlist.

    Every field is None where the playlist does not say it.
    """

    media_sequence: int | None = None  # HLS media playlists: EXT-X-MEDIA-SEQUENCE (0 when absent)
    discontinuity_sequence: int | None = None  # HLS: EXT-X-DISCONTINUITY-SEQUENCE (0 when absent)
    newest_pdt: float | None = None  # HLS: the last segment's EXT-X-PROGRAM-DATE-TIME, epoch seconds
    segments: int | None = None  # HLS media playlists: how many segments are listed (or skipped, in a delta)
    started: str | None = None  # DASH: the MPD's availabilityStartTime, as written


@dataclass(frozen=True, slots=True)
class Manifest:
    """One read of a playlist body."""

    info: PlaylistInfo
    # None where names are not read, which is not the same as a playlist
    # that announces nothing so far (livecdn.media.mpd reads DASH's).
    announced: Announced | None
    run: Run = Run()


def read(path: str, body: bytes, at: float | None = None) -> Manifest:
    """Read a playlist body once: its freshness and what it announces.

    Args:
        path: the playlist's normalized path; its extension says HLS or DASH,
            and its relative URIs resolve against it.
        body: the whole body.
        at: when it was fetched (epoch seconds); needed for DASH, whose
            template names are known from the clock.

    Raises:
        MalformedPlaylist: with the reason, for anything a player could not use.
    """
    if len(body) > MAX_PLAYLIST_BYTES:
        raise MalformedPlaylist(f"playlist larger than {MAX_PLAYLIST_BYTES} bytes")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise MalformedPlaylist("playlist is not UTF-8 text") from None
    if extension(path) == ".mpd":
        from livecdn.media import mpd  # here: mpd.py builds on this module's types

        if at is None:
            raise TypeError("reading an MPD needs the time it was fetched (at)")
        return mpd.read(path, text, at)
    if not text.lstrip().startswith("#EXTM3U"):
        raise MalformedPlaylist("playlist does not start with #EXTM3U")
    _check_whole(text)
    try:
        parsed = m3u8.loads(text)
    except (ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise MalformedPlaylist(f"unparsable playlist: {e}") from None
    return Manifest(_hls_info(parsed), _announced(path, parsed), _hls_run(parsed))


def _hls_info(parsed: m3u8.M3U8) -> PlaylistInfo:
    if parsed.is_variant:
        return PlaylistInfo(ManifestKind.MASTER)
    if parsed.target_duration is None:
        raise MalformedPlaylist("media playlist without #EXT-X-TARGETDURATION")
    target = float(parsed.target_duration)
    if target <= 0:
        raise MalformedPlaylist(f"target duration {target} is not positive")
    part = float(parsed.part_inf.part_target) if parsed.part_inf and parsed.part_inf.part_target else None
    return PlaylistInfo(ManifestKind.ENDED if parsed.is_endlist else ManifestKind.LIVE, target, part)


def _hls_run(parsed: m3u8.M3U8) -> Run:
    if parsed.is_variant:
        return Run()
    newest = parsed.segments[-1].current_program_date_time if parsed.segments else None
    skipped = int(parsed.skip.skipped_segments or 0) if parsed.skip else 0  # an LL-HLS delta playlist's
    return Run(parsed.media_sequence or 0, parsed.discontinuity_sequence or 0,
               newest.timestamp() if newest is not None else None, skipped + len(parsed.segments))


# Tags that announce the URI on the next line: a playlist whose last line is one was cut at a line break.
_NEEDS_URI = ("#EXTINF", "#EXT-X-STREAM-INF")


def _check_whole(text: str) -> None:
    """Refuse an HLS text that was cut short: every line ends with a terminator (RFC 8216 4.1).

    A cut inside a line leaves the last line without its terminator; a cut at a
    line break can leave a tag whose URI line is missing. `#EXT-X-ENDLIST`
    alone may go without the final terminator: no cut of a longer line looks like it.
    """
    last = text.rstrip("\r\n").rsplit("\n", 1)[-1].strip()
    if not text.endswith("\n") and last != "#EXT-X-ENDLIST":
        raise MalformedPlaylist(f"playlist cut short: last line {last[:40]!r} has no line terminator")
    if last.startswith(_NEEDS_URI):
        raise MalformedPlaylist(f"playlist cut short: it ends with {last.split(':')[0]} and no URI after it")


def proves_whole(path: str, body: bytes) -> bool:
    """Does a playlist body that `read` accepted show by its own text that nothing is missing?

    For a body whose length the upstream never said (close-delimited): an HLS
    playlist does whenever `read` accepted it (every line is terminated, no tag
    waits for its URI; a cut at a line break can only have dropped the newest
    segments, which is what a slightly older playlist says too); an MPD does
    when it ends with its closing `</MPD>`.
    """
    if extension(path) == ".mpd":
        return body.rstrip().endswith(b"</MPD>")
    return True


class Change(enum.Enum):
    """What a new read of a playlist says about the copy already held."""

    SAME_RUN = "same run"  # the stream went on (or nothing can be told)
    RESTARTED = "restarted"  # a new encoder run: the previous run's objects are not this stream's any more
    BEHIND = "behind"  # older than the held copy: a lagging replica answered


def compare(held: Manifest, new: Manifest) -> tuple[Change, str]:
    """Tell a stream that went on from one that restarted and from an answer that lags behind.

    The rule (README, "Restarts are followed"): an ended playlist that comes
    back live, or an MPD whose availabilityStartTime changed, restarted. An
    HLS media playlist whose end (media sequence + segments) went back
    restarted when its newest program date-time moved forward or its
    discontinuity sequence went up; it is behind when the program date-time
    went back too. Without either, a sequence that started over (within one
    window of 0) restarted, one further along is behind. How long
    "behind" is believed is the caller's bound.

    Returns:
        The change, and why, for the log.
    """
    h, n = held.run, new.run
    if held.info.kind is ManifestKind.ENDED and new.info.kind is ManifestKind.LIVE:
        return Change.RESTARTED, "an ended playlist came back live"
    if h.started is not None and n.started is not None and h.started != n.started:
        return Change.RESTARTED, f"availabilityStartTime changed from {h.started} to {n.started}"
    if h.media_sequence is None or n.media_sequence is None or h.segments is None or n.segments is None:
        return Change.SAME_RUN, ""
    held_end, new_end = h.media_sequence + h.segments, n.media_sequence + n.segments
    went = f"media sequence went from {h.media_sequence} (+{h.segments}) to {n.media_sequence} (+{n.segments})"
    if h.newest_pdt is not None and n.newest_pdt is not None and new_end >= held_end and n.newest_pdt < h.newest_pdt:
        return Change.RESTARTED, f"program date-time went back {h.newest_pdt - n.newest_pdt:.1f} s" \
            f" while the media sequence went on from {h.media_sequence} to {n.media_sequence}"
    if new_end >= held_end:
        return Change.SAME_RUN, ""
    if h.newest_pdt is not None and n.newest_pdt is not None:
        if n.newest_pdt > h.newest_pdt:
            return Change.RESTARTED, f"{went} while program date-time moved forward"
        return Change.BEHIND, f"{went} and program date-time went back {h.newest_pdt - n.newest_pdt:.1f} s"
    if (n.discontinuity_sequence or 0) > (h.discontinuity_sequence or 0):
        return Change.RESTARTED, f"{went} with a new discontinuity sequence {n.discontinuity_sequence}"
    if n.media_sequence <= max(h.segments, n.segments):
        return Change.RESTARTED, f"{went}: the sequence started over"
    return Change.BEHIND, f"{went}: {held_end - new_end} segments behind"


def _announced(path: str, parsed: m3u8.M3U8) -> Announced:
    """What a playlist at `path` announces (names on other hosts, and names no request could use, are left out)."""
    base = f"http://{_HOST}{path}"

    def resolve(uris: list[str | None]) -> list[str]:
        out = []
        for uri in uris:
            if not uri:
                continue
            target = urlsplit(urljoin(base, uri))
            if target.netloc != _HOST:
                continue
            try:
                out.append(normalize(target.path))
            except BadName:
                continue
        return out

    segments = resolve([seg.uri for seg in parsed.segments])
    hints = resolve([parsed.preload_hint.uri] if parsed.preload_hint else [])
    others = resolve(
        [part.uri for seg in parsed.segments for part in seg.parts]
        + [m.uri for m in parsed.segment_map]
        + [k.uri for k in parsed.keys if k is not None]
        + [r.uri for r in parsed.rendition_reports]
        + [p.uri for p in parsed.playlists]
        + [m.uri for m in parsed.media]
        + [p.uri for p in parsed.iframe_playlists]
        + [p.uri for p in parsed.image_playlists]  # thumbnails (EXT-X-IMAGE-STREAM-INF)
        + [d.uri for d in parsed.session_data] + [k.uri for k in parsed.session_keys if k is not None]
    )
    live = not parsed.is_variant and not parsed.is_endlist
    return Announced(tuple(dict.fromkeys(segments + hints + others)), tuple(segments), tuple(hints), live)

