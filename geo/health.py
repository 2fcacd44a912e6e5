"""Active health checks: is each edge up, is it overloaded, and is it answering in time?

Every `interval` seconds, on a fixed schedule, every edge's admin `/healthz`
is fetched, all edges at once and each check on its own: a check that hangs
until its `timeout` delays neither the next tick nor any other edge's check
(checks of one hung edge overlap, at most `timeout / interval` of them). A
`Tracker` turns the results into up or down with hysteresis: the first result
decides at once (so a router started beside a dead edge does not send players
there), then `failures` failures in a row take an edge out and `rise` successes
in a row bring it back. Load and the overloaded flag are taken from every
successful check as they come: spilling must follow load without delay.

Down takes several checks, and a hung edge fails each only at its timeout, so
a `Watch` says sooner that an edge is *suspect*: its newest check failed, or
answered after `slow` seconds, or has been running longer than that (the
shell tells it so at `slow`, not at the timeout). Players are steered past a
suspect edge, yet it stays up: one slow answer is not an outage. So an edge
that hangs is behind the others in the answers within `interval + slow` of
hanging; it is down after about `interval * (failures - 1) + timeout`.

Each check opens a fresh connection (`Connection: close`): a connection kept
open from an earlier check would go on answering while the edge can accept
no new one (issue 12: an edge out of file descriptors stayed "up" for the
whole attack), and a new connection is what a player needs. An edge that
answers 503 with `"overloaded": true` is up and overloaded: players spill
past it, yet it is still the answer when every edge is overloaded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import aiohttp

from livecdn.config import HealthSettings
from livecdn.logs import report_death

from .choose import UNKNOWN, EdgeState

__all__ = ["HealthChecker", "Tracker", "Watch"]

log = logging.getLogger("livecdn.geo.health")
# Sent with every check: never a kept-alive connection (see above).
FRESH_CONNECTION = {"Connection": "close"}


class Tracker:
    """Consecutive check results of one edge → its state.

    Args:
        failures: failures in a row that take an up edge down.
        rise: successes in a row that bring a down edge back.
    """

    __slots__ = ("failures", "rise", "state", "_streak")

    def __init__(self, failures: int, rise: int) -> None:
        if failures < 1 or rise < 1:
            raise ValueError(f"failures and rise must be at least 1, got {failures} and {rise}")
        self.failures, self.rise = failures, rise
        self.state: EdgeState | None = None  # None until the first result
        self._streak = 0  # results in a row that disagree with the current state

    @property
    def settled(self) -> bool:
        """Known, and no streak under way towards the other state."""
        return self.state is not None and self._streak == 0

    def observe(self, ok: bool, overloaded: bool = False, load: float | None = None) -> EdgeState:
        """Feed one check result; returns the (possibly unchanged) state."""
        current = self.state
        if current is None:
            self.state = current = EdgeState(ok, overloaded and ok, load if ok else None)
            return current
        if ok == current.up:
            self._streak = 0
            if ok:
                self.state = current = EdgeState(True, overloaded, load)
            return current
        self._streak += 1
        if self._streak >= (self.rise if ok else self.failures):
            self._streak = 0
            self.state = current = EdgeState(ok, overloaded and ok, load if ok else None)
        return current


class Watch:
    """One edge's checks as they start, run late and end → its state, suspicion included (no clock: the
    shell passes the time).

    Args:
        failures, rise: see `Tracker`.
        slow: seconds after which a check that has not answered makes the edge suspect.
    """

    __slots__ = ("tracker", "slow", "state", "_running", "_late", "_next", "_newest", "_doubt")

    def __init__(self, failures: int, rise: int, slow: float) -> None:
        self.tracker = Tracker(failures, rise)
        self.slow = slow
        self.state = UNKNOWN
        self._running: dict[int, float] = {}  # checks under way: number → when it started
        self._late: set[int] = set()  # those of them past `slow`
        self._next = 0
        self._newest = -1  # the newest check that has ended: an older one ending after it is stale
        self._doubt = False  # the newest check that ended failed or was slow

    def start(self, now: float) -> int:
        """A check starts; returns its number, for `overdue` and `end`."""
        number, self._next = self._next, self._next + 1
        self._running[number] = now
        return number

    def overdue(self, number: int) -> EdgeState | None:
        """Check `number` has run `slow` seconds without an answer; returns the new state if it changed."""
        if number not in self._running:
            return None
        self._late.add(number)
        return self._update()

    def end(self, number: int, now: float, ok: bool, overloaded: bool = False,
            load: float | None = None) -> EdgeState | None:
        """Check `number` answered (ok) or failed; returns the new state if it changed."""
        started = self._running.pop(number)
        self._late.discard(number)
        if number < self._newest:
            return None  # a newer check has already said how the edge is
        self._newest = number
        self._doubt = not ok or now - started > self.slow
        self.tracker.observe(ok, overloaded, load)
        return self._update()

    def _update(self) -> EdgeState | None:
        base = self.tracker.state or UNKNOWN
        suspect = base.up and (self._doubt or any(n > self._newest for n in self._late))
        state = dataclasses.replace(base, suspect=suspect, settled=self.tracker.settled and not suspect)
        if state == self.state:
            return None
        self.state = state
        return state


class HealthChecker:
    """Checks every edge on a fixed schedule, reporting state changes to `on_change`.

    Args:
        targets: edge name → its `/healthz` URL.
        on_change: called with (edge, new state) whenever a state changes.
        interval: seconds from one round of checks to the next.
        timeout: seconds one check may take.
        slow: seconds after which an unanswered check makes its edge suspect (see `Watch`).
        failures, rise: see `Tracker`.
    """

    def __init__(self, targets: Mapping[str, str], on_change: Callable[[str, EdgeState], None], *,
                 interval: float, timeout: float, failures: int, rise: int,
                 slow: float = HealthSettings.slow) -> None:
        self.targets = dict(targets)
        self.on_change = on_change
        self.interval, self.timeout, self.slow = interval, timeout, slow
        self.watches = {name: Watch(failures, rise, slow) for name in targets}
        self.last_error: dict[str, str] = {}
        self._failed_at_start = dict.fromkeys(targets, 0)  # until an edge has once been up (see `_log`)
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, session: aiohttp.ClientSession) -> None:
        if self._tasks:
            raise RuntimeError("health checker already started")
        self._spawn(self._schedule(session), "health checks")

    def cancel(self) -> None:
        """Stop checking without waiting for the tasks to finish."""
        for task in self._tasks:
            task.cancel()

    async def stop(self) -> None:
        tasks = list(self._tasks)
        self.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, work: Coroutine[Any, Any, None], what: str) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(report_death(log, what))

    async def _schedule(self, session: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        tick = loop.time()
        while True:
            for name, url in self.targets.items():
                self._spawn(self._check(session, name, url), f"health check of {name}")
            # A fixed cadence (a housekeeping tick, not a data-path wait) that no check holds up; a tick
            # missed by a busy loop is skipped, not made up in a burst.
            tick += self.interval
            while tick <= loop.time():
                tick += self.interval
            await asyncio.sleep(tick - loop.time())

    async def _check(self, session: aiohttp.ClientSession, name: str, url: str) -> None:
        loop = asyncio.get_running_loop()
        watch = self.watches[name]
        number = watch.start(loop.time())
        late = loop.call_later(self.slow, self._overdue, name, number)
        try:
            ok, overloaded, load = await self._fetch(session, name, url)
        finally:
            late.cancel()
        before = watch.state
        state = watch.end(number, loop.time(), ok, overloaded, load)
        self._log(name, ok, before, state)
        self._report(name, before, state, None if ok else self.last_error.get(name))

    def _overdue(self, name: str, number: int) -> None:
        watch = self.watches[name]
        before = watch.state
        self._report(name, before, watch.overdue(number), f"no answer in {self.slow} s")

    def _report(self, name: str, before: EdgeState, state: EdgeState | None, why: str | None = None) -> None:
        if state is not None:
            if state.suspect and not before.suspect:
                log.info("edge %s is suspect: %s", name, why or self.last_error.get(name) or "slow answer")
            self.on_change(name, state)

    def _log(self, name: str, ok: bool, before: EdgeState, state: EdgeState | None) -> None:
        # Until an edge has once been up, failures are its start (the router and its edges start together): it
        # is only said to be down once it has failed as many checks in a row as take an up edge down.
        if (failed := self._failed_at_start.get(name)) is not None:
            if ok:
                del self._failed_at_start[name]
                log.info("edge %s is up", name)
            else:
                self._failed_at_start[name] = failed = failed + 1
                if failed == self.watches[name].tracker.failures:
                    log.warning("edge %s is down: %s", name, self.last_error.get(name))
        elif state is not None and state.up != before.up:
            log.log(logging.INFO if state.up else logging.WARNING, "edge %s is %s%s", name,
                    "up" if state.up else "down", "" if state.up else f": {self.last_error.get(name)}")

    async def _fetch(self, session: aiohttp.ClientSession, name: str,
                     url: str) -> tuple[bool, bool, float | None]:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=self.timeout),
                                   headers=FRESH_CONNECTION) as r:
                if r.status not in (200, 503):
                    self.last_error[name] = f"/healthz answered {r.status}"
                    return False, False, None
                status = r.status
                body = await r.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:
            self.last_error[name] = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            return False, False, None
        if not isinstance(body, dict) or body.get("status") != "ok":
            self.last_error[name] = "/healthz did not say status ok"
            return False, False, None
        overloaded = bool(body.get("overloaded"))
        if status == 503 and not overloaded:
            self.last_error[name] = "/healthz answered 503 without saying overloaded"
            return False, False, None
        load = body.get("load")
        return True, overloaded, float(load) if isinstance(load, (int, float)) else None
