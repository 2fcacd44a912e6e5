"""LL-HLS delivery directives (`_HLS_msn`, `_HLS_part`, `_HLS_skip`) against what a playlist says: pure.

rfc8216bis 6.2.5.2: a blocking reload for a Media Sequence Number more than
two past the last segment of the current playlist cannot be answered within
its hold, so it is a 400. A tier that holds a recent read of the playlist can
tell so itself, without asking upstream (the tier above would hold nothing
and answer the same 400).
"""

from __future__ import annotations

import math
from urllib.parse import parse_qsl

from livecdn.media.playlist import Run

__all__ = ["MAX_MSN_AHEAD", "blocking_msn", "too_far_ahead"]

# How far past the playlist's last segment a blocking reload may ask (rfc8216bis 6.2.5.2).
MAX_MSN_AHEAD = 2


def blocking_msn(query: str) -> int | None:
    """The `_HLS_msn` of a key's (checked, normalized) query, None when it is not a blocking reload."""
    for name, value in parse_qsl(query):
        if name == "_HLS_msn":
            return int(value)
    return None


def too_far_ahead(query: str, run: Run | None, age: float, target: float | None) -> str | None:
    """Why a blocking reload cannot be answered from the playlist read `run`, `age` seconds ago, or None.

    The last segment is the playlist's newest one, the one whose parts are
    still being made included (its Media Sequence Number is the first one's
    plus the segments listed or skipped, less one). The read may be old (LL-HLS
    players reload by blocking requests, other keys): the stream has made a
    segment per target duration since, so those count as made, and one more.
    """
    msn = blocking_msn(query)
    if msn is None or run is None or run.media_sequence is None or not run.segments or not target:
        return None
    # One more than the segments made since: the read's last segment may have been about to complete.
    last = run.media_sequence + run.segments - 1 + math.floor(max(0.0, age) / target) + 1
    if msn > last + MAX_MSN_AHEAD:
        return (f"_HLS_msn={msn} is more than two segments ahead of the playlist's last ({last}) "
                f"(rfc8216bis 6.2.5.2)")
    return None
