"""Check results → edge state: the first result decides, then hysteresis both ways."""

from __future__ import annotations

import pytest

from geo.choose import EdgeState
from geo.health import Tracker


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
