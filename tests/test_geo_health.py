"""Check results → edge state: the first result decides, then hysteresis both ways; a slow, late or failed
check makes an edge suspect at once; checks keep a fixed schedule whatever one edge does."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web

from geo.choose import UNKNOWN, EdgeState
from geo.health import HealthChecker, Tracker, Watch
from tests.fakeorigin import FakeAdmin


def test_the_first_result_decides_at_once() -> None:
    assert Tracker(3, 2).observe(False) == EdgeState(False)
    assert Tracker(3, 2).observe(True, load=0.5) == EdgeState(True, False, 0.5)


def test_down_after_n_failures_in_a_row() -> None:
    t = Tracker(3, 2)
    t.observe(True)
    assert [t.observe(False).up for _ in range(3)] == [True, True, False]


def test_a_success_resets_the_failure_count() -> None:
    t = Tracker(3, 2)
    t.observe(True)
    for ok in (False, False, True, False, False):
        assert t.observe(ok).up


def test_back_after_rise_successes_in_a_row() -> None:
    t = Tracker(2, 2)
    t.observe(False)
    assert [t.observe(ok).up for ok in (True, False, True, True)] == [False, False, False, True]


def test_load_and_overload_follow_every_good_check() -> None:
    t = Tracker(3, 2)
    t.observe(True, load=0.1)
    assert t.observe(True, overloaded=True, load=1.0) == EdgeState(True, True, 1.0)
    assert t.observe(True, load=0.4) == EdgeState(True, False, 0.4)
    assert t.observe(False) == EdgeState(True, False, 0.4)  # one failure: still up, last load kept


def test_bad_thresholds() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Tracker(0, 1)


# --- suspicion: a Watch over one edge's checks (failures 3, rise 2, slow 0.25 s) -------------------------

def watch() -> Watch:
    w = Watch(3, 2, slow=0.25)
    assert w.end(w.start(0.0), 0.01, True) == EdgeState(True)  # healthy and settled
    return w


def test_a_check_not_answered_by_slow_makes_the_edge_suspect_before_it_fails() -> None:
    w = watch()
    hung = w.start(1.0)
    assert w.overdue(hung) == EdgeState(True, suspect=True, settled=False)  # at 1.25 s, long before the timeout
    assert w.end(hung, 2.0, False) is None  # its failure: one of three, still up and suspect
    fresh = w.start(2.5)
    assert w.end(fresh, 2.51, True) == EdgeState(True)  # a fast answer clears it


def test_a_slow_answer_or_one_failure_is_suspect_and_still_up() -> None:
    w = watch()
    assert w.end(w.start(1.0), 1.4, True, load=0.2) == EdgeState(True, load=0.2, suspect=True, settled=False)
    w = watch()
    assert w.end(w.start(1.0), 1.01, False) == EdgeState(True, suspect=True, settled=False)


def test_a_down_edge_is_last_not_suspect_and_settled_once_its_failures_agree() -> None:
    w = watch()
    states = [w.end(w.start(t), t + 1, False) for t in (1.0, 1.5, 2.0, 2.5)]
    assert states == [EdgeState(True, suspect=True, settled=False), None, EdgeState(False), None]
    rising = w.end(w.start(3.0), 3.01, True)
    assert rising == EdgeState(False, settled=False)  # one success of two: on its way back
    assert w.end(w.start(3.5), 3.51, True) == EdgeState(True)


def test_overlapping_checks_an_older_result_after_a_newer_one_is_stale() -> None:
    w = watch()
    old, new = w.start(1.0), w.start(1.5)
    assert w.end(new, 1.51, True) is None  # healthy, as it was
    assert w.overdue(old) is None and w.end(old, 2.0, False) is None  # the hung older check says nothing now


def test_an_edge_not_yet_checked_is_up_but_unsettled_and_late_checks_of_it_are_suspect() -> None:
    w = Watch(3, 2, slow=0.25)
    assert w.state == UNKNOWN and UNKNOWN.up and not UNKNOWN.settled
    assert w.overdue(w.start(0.0)) == EdgeState(True, suspect=True, settled=False)


# --- the shell: a fixed schedule no hung check holds up -------------------------------------------------

class Admin(FakeAdmin):
    """A `/healthz` that answers at once or, while `hung`, never (as a SIGSTOPped edge's)."""

    def __init__(self) -> None:
        super().__init__()
        self.hung = False
        self.asked: list[float] = []

    async def _healthz(self, request: web.Request) -> web.Response:
        self.asked.append(time.monotonic())
        while self.hung:
            await asyncio.sleep(0.01)
        return web.json_response({"status": "ok", "load": 0.0})


async def test_checks_keep_their_schedule_while_an_edge_hangs_and_it_is_suspect_within_interval_and_slow() -> None:
    interval, timeout, slow = 0.1, 1.0, 0.25
    hung, fine = Admin(), Admin()
    await hung.start()
    await fine.start()
    seen: list[tuple[float, str, EdgeState]] = []
    checker = HealthChecker({"hung": hung.url, "fine": fine.url}, lambda e, s: seen.append((time.monotonic(), e, s)),
                            interval=interval, timeout=timeout, slow=slow, failures=3, rise=2)
    try:
        async with aiohttp.ClientSession() as session:
            checker.start(session)
            await asyncio.sleep(0.35)
            hung.hung = True
            at = time.monotonic()
            await asyncio.sleep(1.5)
            await checker.stop()
    finally:
        hung.hung = False
        for admin in (hung, fine):
            assert admin.runner is not None
            await admin.runner.cleanup()
    rounds = 1.5 / interval
    # Every round asks both edges, the hung one too (its checks overlap), however long its checks hang.
    for admin in (hung, fine):
        assert len([t for t in admin.asked if t > at]) >= rounds - 3, (len(admin.asked), rounds)
    suspect = next(t for t, e, s in seen if e == "hung" and s.suspect)
    assert suspect - at <= interval + slow + 0.1, suspect - at  # not at its first timeout, 1 s on
    down = next(t for t, e, s in seen if e == "hung" and not s.up)
    assert down - at <= interval * 3 + timeout + 0.1  # three failed checks: the last started 2 intervals on
    assert all(s.healthy for _, e, s in seen if e == "fine")
