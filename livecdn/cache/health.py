"""Passive health of each upstream, learned from the fetches themselves: sans-io.

A hung shield still accepts connections (its kernel does), so nothing fails
fast: every fetch sent to it waits out its first-byte timeout. `Health`
remembers what fetches found, so that once one of them has paid that wait the
others do not: `eject_after` transport failures or timeouts in a row (an HTTP
answer, even a 5xx, proves the upstream alive: the tier behind it may be what
failed) take the upstream out of every key's list for a back-off that doubles
with each ejection in a row, up to a cap. When the back-off is over, the next
request that would go to it first is its probe, one at a time: it answers and
the upstream is back, or it fails and the next back-off is twice as long.
Requests that would have gone to it meanwhile go to the next upstream on the
ring at once; when every upstream of a key is ejected, the one due back first
is still tried: failing without trying helps nobody.

No clock, no I/O: the shell passes `now` (monotonic seconds) and reports what
each fetch found; tests drive it with plain numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Health", "PROBE_PATIENCE", "UpstreamHealth"]

# A probe handed out and never reported (its fetch was cancelled at shutdown,
# say) would keep its upstream out for ever: after this long another request
# may probe. Longer than any single fetch's first-byte wait, a blocking LL-HLS
# request's included.
PROBE_PATIENCE = 60.0


@dataclass(slots=True)
class UpstreamHealth:
    """What the fetches to one upstream found lately."""

    failures: int = 0  # transport failures and timeouts in a row
    ejections: int = 0  # ejections in a row (the back-off's exponent); 0 once it answers again
    until: float = 0.0  # ejected until then (monotonic); 0: never ejected since it last answered
    probe: float | None = None  # when the probe now in flight was handed out
    reason: str = ""  # the last failure

    @property
    def ejected(self) -> bool:
        return self.ejections > 0


class Health:
    """The health of every upstream one process fetches from.

    Args:
        eject_after: transport failures or timeouts in a row that eject an upstream.
        backoff: seconds out after its first ejection in a row; doubled for each next one.
        max_backoff: the longest back-off.

    Raises:
        ValueError: a bound that makes no sense (named in the message).
    """

    __slots__ = ("eject_after", "backoff", "max_backoff", "_states")

    def __init__(self, eject_after: int = 1, backoff: float = 1.0, max_backoff: float = 30.0) -> None:
        if eject_after < 1:
            raise ValueError(f"eject_after must be at least 1, not {eject_after}")
        if not 0 < backoff <= max_backoff:
            raise ValueError(f"need 0 < backoff ({backoff}) <= max_backoff ({max_backoff})")
        self.eject_after, self.backoff, self.max_backoff = eject_after, backoff, max_backoff
        self._states: dict[str, UpstreamHealth] = {}

    def state(self, upstream: str) -> UpstreamHealth:
        """The upstream's state (a fresh, healthy one for an upstream never reported)."""
        return self._states.setdefault(upstream, UpstreamHealth())

    def order(self, upstreams: tuple[str, ...], now: float) -> tuple[str, ...]:
        """`upstreams` (best first) without those ejected now; never empty when `upstreams` is not.

        An upstream whose back-off is over is kept where it leads the list and no
        probe is in flight: that request is its probe. Further down the list it
        would be asked only if those before it failed, so it is left out there.
        """
        if not self._states:  # nothing ever failed: the common case costs one test
            return upstreams
        kept = tuple(u for i, u in enumerate(upstreams) if self._usable(u, now, first=not i))
        if kept or not upstreams:
            return kept
        return (min(upstreams, key=lambda u: self.state(u).until),)  # all ejected: the one due back first

    def _usable(self, upstream: str, now: float, first: bool) -> bool:
        s = self._states.get(upstream)
        if s is None or not s.ejected:
            return True
        if now < s.until or not first:
            return False
        if s.probe is not None and now - s.probe < PROBE_PATIENCE:
            return False  # another request is probing it
        s.probe = now
        return True

    def succeeded(self, upstream: str) -> bool:
        """The upstream answered (any status). Returns whether that brought it back from an ejection."""
        s = self._states.get(upstream)
        if s is None:
            return False
        back = s.ejected
        del self._states[upstream]  # healthy again: as if never reported
        return back

    def failed(self, upstream: str, now: float, reason: str) -> float | None:
        """A fetch from `upstream` failed to connect, timed out or broke.

        Returns:
            The back-off in seconds when this failure ejected it, else None. A
            failure while it is already out (a fetch sent before the ejection)
            changes nothing; a failed probe ejects it again for twice as long.
        """
        s = self.state(upstream)
        s.reason = reason
        if s.ejected and (now < s.until or s.probe is None):
            return None  # already out; its probe (or its fetches from before) decide
        s.probe = None
        s.failures += 1
        if s.failures < self.eject_after and not s.ejected:
            return None
        s.ejections += 1
        out = min(self.backoff * 2 ** (s.ejections - 1), self.max_backoff)
        s.until = now + out
        return out

    def report(self, upstreams: tuple[str, ...], now: float) -> dict[str, dict[str, object]]:
        """Each upstream's state for `/healthz`: up or ejected, failures in a row, seconds until its probe."""
        out: dict[str, dict[str, object]] = {}
        for u in upstreams:
            s = self._states.get(u) or UpstreamHealth()
            entry: dict[str, object] = {"state": "ejected" if s.ejected else "up", "failures": s.failures}
            if s.ejected:
                entry.update(ejected_for=round(max(s.until - now, 0.0), 3), ejections=s.ejections,
                             probing=s.probe is not None, reason=s.reason)
            out[u] = entry
        return out
