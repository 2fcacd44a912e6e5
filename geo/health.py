"""Active health checks: is each edge up, and is it overloaded?

Every edge's admin `/healthz` is fetched every `interval` seconds with a
`timeout`. A `Tracker` turns the results into a state with hysteresis: the
first result decides at once (so a router started beside a dead edge does not
send players there), then `failures` failures in a row take an edge out and
`rise` successes in a row bring it back. Load and the overloaded flag are
taken from every successful check as they come: spilling must follow load
without delay. With the defaults (1 s, 1 s, 3) a stopped edge leaves the
answers about 2 s after its first failed check, a hung one about 4 s after.

Each check opens a fresh connection (`Connection: close`): a connection kept
open from an earlier check would go on answering while the edge can accept
no new one (issue 12: an edge out of file descriptors stayed "up" for the
whole attack), and a new connection is what a player needs. An edge that
answers 503 with `"overloaded": true` is up and overloaded: players spill
past it, yet it is still the answer when every edge is overloaded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

import aiohttp

from livecdn.logs import report_death

from .choose import EdgeState

__all__ = ["HealthChecker", "Tracker"]

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


class HealthChecker:
    """One checking task per edge, reporting state changes to `on_change`.

    Args:
        targets: edge name → its `/healthz` URL.
        on_change: called with (edge, new state) whenever a state changes.
        interval: seconds from the start of one check to the start of the next.
        timeout: seconds one check may take.
        failures, rise: see `Tracker`.
    """

    def __init__(self, targets: Mapping[str, str], on_change: Callable[[str, EdgeState], None], *,
                 interval: float, timeout: float, failures: int, rise: int) -> None:
        self.targets = dict(targets)
        self.on_change = on_change
        self.interval, self.timeout = interval, timeout
        self.trackers = {name: Tracker(failures, rise) for name in targets}
        self.last_error: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, session: aiohttp.ClientSession) -> None:
        if self._tasks:
            raise RuntimeError("health checker already started")
        for name, url in self.targets.items():
            task = asyncio.ensure_future(self._watch(session, name, url))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(report_death(log, f"health check of {name}"))

    def cancel(self) -> None:
        """Stop checking without waiting for the tasks to finish."""
        for task in self._tasks:
            task.cancel()

    async def stop(self) -> None:
        tasks = list(self._tasks)
        self.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self, session: aiohttp.ClientSession, name: str, url: str) -> None:
        loop = asyncio.get_running_loop()
        tracker = self.trackers[name]
        # Until an edge has once been up, failures are its start (the router and its edges start
        # together): it is only said to be down once it has failed as many checks in a row as take
        # an up edge down.
        starting, failed = True, 0
        while True:
            started = loop.time()
            ok, overloaded, load = await self._check(session, name, url)
            before = tracker.state
            state = tracker.observe(ok, overloaded, load)
            if starting:
                starting, failed = not ok, failed + 1
                if failed == tracker.failures and not ok:
                    log.warning("edge %s is down: %s", name, self.last_error.get(name))
                elif ok:
                    log.info("edge %s is up", name)
            elif state != before and state.up != before.up:  # type: ignore[union-attr]  # set once up
                log.log(logging.INFO if state.up else logging.WARNING, "edge %s is %s%s", name,
                        "up" if state.up else "down", "" if state.up else f": {self.last_error.get(name)}")
            if state != before:
                self.on_change(name, state)
            # A fixed cadence (a housekeeping tick, not a data-path wait): a slow
            # check shortens the pause after it instead of stretching the period.
            await asyncio.sleep(max(0.0, started + self.interval - loop.time()))

    async def _check(self, session: aiohttp.ClientSession, name: str,
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
