"""A stored answer: what the cache keeps for one key, and its clock arithmetic."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from livecdn.cache.freshness import Lifetime
from livecdn.media.kinds import NameKind
from livecdn.media.playlist import Manifest

__all__ = ["Stored", "KEPT_HEADERS"]

# End-to-end headers worth keeping and replaying. Hop-by-hop and
# length/encoding headers are rebuilt by the front for each answer. Names are
# lower-case everywhere from the upstream answer to the protocol shell (as
# HTTP/2 sends them); HTTP/1.1 spells them on the wire.
KEPT_HEADERS = frozenset({
    "content-type", "etag", "last-modified", "cache-control", "expires",
    "content-language", "content-disposition", "location", "vary",
})


@dataclass(slots=True, eq=False, weakref_slot=True)
class Stored:
    """One complete upstream answer, ready to replay.

    `born` is the wall-clock time the answer was generated upstream (the time it
    arrived minus the Age the upstream declared), so the Age players see is correct across
    tiers and processes. A playlist's `manifest` is what its fill read from the
    body; it rides along (revalidated copies keep it) so no one parses the body
    again. It is None for other objects, for playlist errors, and for a
    playlist read back from disk, whose manifest is not kept there. Weakly
    referable: the player front keeps what it derives from an object (its hit
    plans) only as long as the object lives.
    """

    key: str
    status: int
    headers: tuple[tuple[str, str], ...]  # kept headers, names lower-case
    body: bytes = field(repr=False)
    born: float
    lifetime: Lifetime
    kind: NameKind
    manifest: Manifest | None = field(default=None, repr=False)
    size: int = -1  # body length; set from body when -1 (disk hits carry no body)
    gzipped: bytes | None = field(default=None, repr=False)  # compressed copy, made on first ask

    def __post_init__(self) -> None:
        if self.size < 0:
            self.size = len(self.body)

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    @property
    def etag(self) -> str | None:
        return self.header("etag")

    @property
    def last_modified(self) -> str | None:
        return self.header("last-modified")

    def fresh(self, now: float) -> bool:
        return now < self.born + self.lifetime.fresh

    def servable_while_revalidating(self, now: float) -> bool:
        return now < self.born + self.lifetime.fresh + self.lifetime.stale_while_revalidate

    def servable_on_error(self, now: float) -> bool:
        return now < self.born + self.lifetime.fresh + self.lifetime.stale_if_error

    def keep_until(self) -> float:
        """After this wall-clock time the object is of no use even as stale."""
        lt = self.lifetime
        return self.born + lt.fresh + max(lt.stale_while_revalidate, lt.stale_if_error, 60.0)

    def revalidated(self, headers: dict[str, str], born: float, lifetime: Lifetime,
                    manifest: Manifest | None) -> Stored:
        """The same body, confirmed by a 304: new clock, updated validators, the body's manifest."""
        merged = dict(self.headers)
        merged.update((k, v) for k, v in headers.items() if k in KEPT_HEADERS)
        return dataclasses.replace(self, headers=tuple(merged.items()), born=born,
                                   lifetime=lifetime, manifest=manifest)
