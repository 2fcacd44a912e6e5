"""Freshness rules: how long a stored answer may be served, and its Age.

Lifetime comes from the manifest where it can be known (a live media playlist
lives half its target duration, an ended one at most one, a segment forever),
or from the operator's first path rule that matches where it cannot, and is
capped by the origin's own Cache-Control when that is stricter. Pure
functions: every time is passed in.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from livecdn.config.schema import YEAR, CacheSettings, PathRule
from livecdn.media.kinds import ManifestKind, NameKind
from livecdn.media.playlist import PlaylistInfo

# rfc8216bis Appendix B.1, in target durations: a blocking reload's answer is kept long, since its URL
# names one future version of the playlist, which never changes once it exists; a failure of one is kept
# longer than a plain playlist's (the same future state is asked again by every player behind it).
BLOCKING_TARGETS = 6.0
FAILURE_TARGETS = 1.0
BLOCKING_FAILURE_TARGETS = 4.0

__all__ = ["BLOCKING_TARGETS", "YEAR", "Lifetime", "Rules", "failure_lifetime", "parse_cache_control", "lifetime",
           "rule_for",
           "stale_after"]


@dataclass(frozen=True, slots=True)
class Rules:
    """A node's freshness settings: the lifetimes of its `[cache]` table, whose defaults these are."""

    master_ttl: float = CacheSettings.master_ttl
    ended_ttl: float = CacheSettings.ended_ttl
    media_ttl: float = CacheSettings.media_ttl
    other_ttl: float = CacheSettings.other_ttl
    negative_ttl: float = CacheSettings.negative_ttl
    stale_while_revalidate: float = CacheSettings.stale_while_revalidate
    stale_if_error: float = CacheSettings.stale_if_error
    stale_after: float = CacheSettings.stale_after
    stale_after_targets: float = CacheSettings.stale_after_targets
    error_ttl: float = CacheSettings.error_ttl
    rules: tuple[PathRule, ...] = ()  # the operator's, first match wins

    @classmethod
    def of(cls, cache: CacheSettings) -> Rules:
        """The rules a node's cache settings give, every field by its name."""
        return cls(**{name: getattr(cache, name) for name in cls.__dataclass_fields__})


@dataclass(frozen=True, slots=True)
class Lifetime:
    """How long an answer stays fresh, and how long past that it may still be used."""

    fresh: float
    stale_while_revalidate: float
    stale_if_error: float
    store: bool = True  # False for no-store / private answers


def parse_cache_control(value: str | None) -> dict[str, str | None]:
    """`"max-age=2, no-cache"` → {"max-age": "2", "no-cache": None}; names lower-cased."""
    out: dict[str, str | None] = {}
    if not value:
        return out
    for part in value.split(","):
        name, eq, arg = part.strip().partition("=")
        if name:
            out[name.lower()] = arg.strip().strip('"') if eq else None
    return out


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(int(value))) if value is not None else None
    except ValueError:
        return None


@functools.cache
def _matcher(pattern: str) -> Callable[[str], bool]:
    """A path rule's test: a prefix, or a glob (`*` within one segment, `**` across, `?` one character)."""
    if not any(c in pattern for c in "*?"):
        return lambda path: path.startswith(pattern)
    glob = {"**": ".*", "*": "[^/]*", "?": "[^/]"}
    compiled = re.compile("".join(glob.get(p) or re.escape(p) for p in re.split(r"(\*\*|\*|\?)", pattern)))
    return lambda path: compiled.fullmatch(path) is not None


def rule_for(rules: Rules, path: str) -> PathRule | None:
    """The operator's first rule that matches `path`, or None."""
    return next((r for r in rules.rules if _matcher(r.path)(path)), None)


def lifetime(rules: Rules, kind: NameKind, status: int, headers: Mapping[str, str],
             playlist: PlaylistInfo | None = None, path: str = "", *, blocking: bool = False,
             target: float | None = None) -> Lifetime:
    """The lifetime of an upstream answer.

    Args:
        rules: the node's settings.
        kind: the object's kind by name (a playlist's is refined by `playlist`).
        status: the upstream status.
        headers: upstream headers, names lower-cased.
        playlist: what the body said, for playlists.
        path: the object's normalized path, for the operator's path rules.
        blocking: an LL-HLS blocking reload's answer (`_HLS_msn`): rfc8216bis Appendix B.1 lifetimes.
        target: the target duration of the playlist as last held, for a blocking reload's 4xx.
    """
    cc = parse_cache_control(headers.get("cache-control"))
    rule = rule_for(rules, path) if rules.rules else None
    if "no-store" in cc or "private" in cc or (rule is not None and not rule.store):
        return Lifetime(0.0, 0.0, 0.0, store=False)
    if blocking and rule is None:
        return _blocking(status, cc, playlist.target_duration if playlist is not None else target)
    if status in (404, 410):
        ours = rules.negative_ttl if rule is None or rule.negative_ttl is None else rule.negative_ttl
    elif status != 200:
        return Lifetime(0.0, 0.0, 0.0, store=False)
    elif rule is not None and rule.ttl is not None:
        ours = rule.ttl
    elif playlist is not None:
        if playlist.kind is ManifestKind.MASTER:
            ours = rules.master_ttl
        elif playlist.kind is ManifestKind.ENDED:
            # An ended stream may start again under the same URL: one target duration
            # at most, so the players' next reload after a restart sees it live.
            ours = min(rules.ended_ttl, playlist.target_duration or rules.ended_ttl)
        else:
            # Half the target (rfc8216bis Appendix B.1, LL-HLS too: its players reload by blocking
            # requests, each its own key): a viewer never sees a playlist older than half of one.
            ours = max(0.2, (playlist.target_duration or 2.0) / 2)
    elif kind is NameKind.MEDIA:
        ours = rules.media_ttl
    else:
        ours = rules.other_ttl
    theirs = _seconds(cc.get("s-maxage")) if "s-maxage" in cc else _seconds(cc.get("max-age"))
    if "no-cache" in cc:
        theirs = 0.0
    fresh = ours if theirs is None else min(ours, theirs)
    swr = _seconds(cc.get("stale-while-revalidate"))
    sie = _seconds(cc.get("stale-if-error"))
    if status != 200 or "must-revalidate" in cc or "proxy-revalidate" in cc:
        # A stale 404 would hide a segment that has just been published.
        return Lifetime(fresh, 0.0, 0.0)
    if playlist is not None and playlist.kind in (ManifestKind.LIVE, ManifestKind.ENDED):
        # Revalidated before it is served again (a 304 is quick). A live playlist served stale while
        # revalidating is a segment behind, and behind its sibling renditions: hls.js, switching to a
        # variant whose copy starts a segment before the one it left, aligns it a segment off and stalls
        # (seen after a content-steering failover: 7-8 s). An ended one, stale, would hide a restart.
        # A slow upstream still gets the stale copy after `stale_after` (stale-if-error).
        swr = 0.0
    return Lifetime(
        fresh,
        rules.stale_while_revalidate if swr is None else min(swr, rules.stale_while_revalidate),
        rules.stale_if_error if sie is None else min(sie, rules.stale_if_error),
    )


def _blocking(status: int, cc: Mapping[str, str | None], target: float | None) -> Lifetime:
    """A blocking reload's answer: the version its URL names, or the failure to make it, for every player.

    Its 200 never changes, so the origin's own max-age is honoured even when
    longer than ours (Appendix B.1's 6 targets is the default, not a cap); a
    4xx/5xx lives 4 targets, never more than the origin allows. Never served
    stale: a stale version is the previous one, which the player did not ask for.
    """
    theirs = _seconds(cc.get("s-maxage")) if "s-maxage" in cc else _seconds(cc.get("max-age"))
    if "no-cache" in cc:
        theirs = 0.0
    if not target:
        return Lifetime(0.0, 0.0, 0.0, store=False)  # not a playlist answer anyone can date
    if status == 200:
        return Lifetime(BLOCKING_TARGETS * target if theirs is None else theirs, 0.0, 0.0)
    if 400 <= status < 600:
        ours = BLOCKING_FAILURE_TARGETS * target
        return Lifetime(ours if theirs is None else min(ours, theirs), 0.0, 0.0)
    return Lifetime(0.0, 0.0, 0.0, store=False)


def stale_after(rules: Rules, playlist: PlaylistInfo | None) -> float:
    """How long a request with a stale copy waits for a slow upstream before it gets the copy.

    A live playlist waits a share of its target duration (the player's reload
    period: waiting longer would stall it); anything else the fixed wait.
    """
    if playlist is not None and playlist.kind is ManifestKind.LIVE and playlist.target_duration:
        return rules.stale_after_targets * playlist.target_duration
    return rules.stale_after


def failure_lifetime(rules: Rules, target: float | None = None, blocking: bool = False) -> Lifetime:
    """The lifetime of a remembered failure: fresh `error_ttl`, never stale, never stored.

    A playlist's, when its target duration is known, lives target durations
    instead (rfc8216bis Appendix B.1): one for a plain reload, four for a
    blocking one. `error_ttl` = 0 turns remembering off for all.
    """
    if target and rules.error_ttl:
        return Lifetime((BLOCKING_FAILURE_TARGETS if blocking else FAILURE_TARGETS) * target, 0.0, 0.0,
                        store=False)
    return Lifetime(rules.error_ttl, 0.0, 0.0, store=False)
