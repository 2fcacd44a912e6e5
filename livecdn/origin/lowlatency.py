"""The built-in origin's low-latency HLS: what parts exist, and the playlists that list them. Pure.

A `Parts` is one rendition's state at one moment: the complete segments
listed (each as its parts' durations) and the parts made so far of the
segment being made. Both sources build one (synthetic: from the clock's
`Timeline`; ffmpeg: from the part files ffmpeg has finished), and everything
LL-HLS asks is answered from it: is this part there yet (a blocking reload's
wait), is this request too far ahead (a 400), and the playlist itself, whole
or as a delta update (rfc8216bis 4.4.4.9, 4.4.5.2, 6.2.5).

Names: segment N is `seg{N}.ts` (its parts' bytes in order), part I of
segment N is `seg{N}.{I}.ts`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from livecdn.media.directives import MAX_MSN_AHEAD

__all__ = ["BLOCKING_TARGETS", "HOLD_TARGETS", "PART_SEGMENTS", "SKIP_TARGETS", "Parts", "Report", "hold_back",
           "parse_part_uri", "part_uri", "playlist"]

# Segments (before the one being made) whose parts the playlist lists: a player
# joining PART-HOLD-BACK (3 parts) behind the end finds its parts listed.
PART_SEGMENTS = 2
# How long a blocking reload is held before its 503, in target durations (rfc8216bis 6.2.5.2).
HOLD_TARGETS = 3
# A blocking answer's max-age, in target durations (rfc8216bis Appendix B.1).
BLOCKING_TARGETS = 6
# CAN-SKIP-UNTIL, in target durations: rfc8216bis 4.4.3.8 asks for at least six.
SKIP_TARGETS = 6
# PART-HOLD-BACK, in part targets: rfc8216bis 4.4.3.8 asks for at least two; three is Apple's advice.
HOLD_BACK_PARTS = 3
_MAX_DIGITS = 18


def part_uri(msn: int, part: int) -> str:
    return f"seg{msn}.{part}.ts"


def parse_part_uri(name: str) -> tuple[int, int] | None:
    """`seg12.3.ts` → (12, 3); None for anything else (canonical digits only: one name per part)."""
    if not (name.startswith("seg") and name.endswith(".ts")):
        return None
    msn, dot, part = name[3:-3].partition(".")
    for digits in (msn, part):
        if not digits or len(digits) > _MAX_DIGITS or not digits.isascii() or not digits.isdigit() or (
                digits != "0" and digits.startswith("0")):
            return None
    return (int(msn), int(part)) if dot else None


def hold_back(part_target: float) -> float:
    return HOLD_BACK_PARTS * part_target


@dataclass(frozen=True, slots=True)
class Report:
    """An EXT-X-RENDITION-REPORT: another rendition's newest part, so a player switching asks it at once."""

    uri: str
    last_msn: int
    last_part: int


@dataclass(frozen=True, slots=True)
class Parts:
    """One low-latency rendition at one moment."""

    first: int  # Media Sequence Number of the first segment listed
    segments: tuple[tuple[float, ...], ...]  # each complete segment listed, as its parts' durations
    current: tuple[float, ...]  # the parts made so far of segment `first + len(segments)`
    target: float  # the target duration (seconds)
    part_target: float

    @property
    def making(self) -> int:
        """The Media Sequence Number of the segment being made."""
        return self.first + len(self.segments)

    @property
    def last_msn(self) -> int:
        """The playlist's last segment: the one being made once it has a part, else the last complete one."""
        return self.making if self.current else self.making - 1

    def last_part(self) -> tuple[int, int]:
        """(msn, part index) of the newest part."""
        if self.current:
            return self.making, len(self.current) - 1
        return self.making - 1, len(self.segments[-1]) - 1 if self.segments else 0

    def too_far(self, msn: int) -> bool:
        """rfc8216bis 6.2.5.2: more than two segments past the last one cannot be waited for: a 400."""
        return msn > self.last_msn + MAX_MSN_AHEAD

    def has(self, msn: int, part: int | None) -> bool:
        """Does this state answer a blocking reload for `msn` (and `part`)?

        Without a part, segment `msn` must be complete; a part index past the
        last part of a complete segment means the next segment's first part.
        """
        if part is None:
            return msn < self.making
        if msn < self.making:
            index = msn - self.first
            if index < 0 or part < len(self.segments[index]):
                return True
            return self.has(msn + 1, 0)
        return msn == self.making and part < len(self.current)


def _tag(target: float) -> int:
    return max(1, math.ceil(target - 1e-9))


def playlist(parts: Parts, *, skip: bool = False, reports: Sequence[Report] = ()) -> str:
    """The LL-HLS media playlist of `parts`; with `skip`, the delta update (EXT-X-SKIP) of it."""
    skip_until = SKIP_TARGETS * parts.target
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:9",
        f"#EXT-X-TARGETDURATION:{_tag(parts.target)}",
        f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={hold_back(parts.part_target):.3f},"
        f"CAN-SKIP-UNTIL={skip_until:.1f}",
        f"#EXT-X-PART-INF:PART-TARGET={parts.part_target:.3f}",
        f"#EXT-X-MEDIA-SEQUENCE:{parts.first}",
    ]
    durations = [sum(s) for s in parts.segments]
    skipped = 0
    if skip:
        # Segments that end more than CAN-SKIP-UNTIL before the playlist's end are left out (4.4.5.2).
        left = sum(durations) + sum(parts.current)
        while skipped < len(durations) and left - durations[skipped] >= skip_until:
            left -= durations[skipped]
            skipped += 1
        lines.append(f"#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}")
    with_parts = len(parts.segments) - PART_SEGMENTS
    for i in range(skipped, len(parts.segments)):
        msn = parts.first + i
        if i >= with_parts:
            lines += _parts(msn, parts.segments[i])
        lines.append(f"#EXTINF:{durations[i]:.3f},")
        lines.append(f"seg{msn}.ts")
    lines += _parts(parts.making, parts.current)
    lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{part_uri(parts.making, len(parts.current))}"')
    for r in reports:
        lines.append(f'#EXT-X-RENDITION-REPORT:URI="{r.uri}",LAST-MSN={r.last_msn},LAST-PART={r.last_part}')
    return "\n".join(lines) + "\n"


def _parts(msn: int, durations: Sequence[float]) -> list[str]:
    # Every part starts with a keyframe (both sources make them so): each is INDEPENDENT.
    return [f'#EXT-X-PART:DURATION={d:.3f},URI="{part_uri(msn, i)}",INDEPENDENT=YES'
            for i, d in enumerate(durations)]
