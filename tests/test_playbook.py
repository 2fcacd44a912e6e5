"""The playbook harness's own promise: a playbook left unasserted fails its test.

The check runs at teardown of every test (`tests/conftest.py`), so it is
proved here on a small test file run by pytester: each way of leaving steps
unasserted must fail, and an asserted playbook must not.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

TINY = '''
from livecdn.cache.fill import ClientRequested, Fill, StartFetch
from livecdn.cache.freshness import Rules
from livecdn.cache.keys import cache_key
from livecdn.media.kinds import kind_of
from tests.playbook import Playbook

KEY = cache_key("/live/cam/seg7.ts")
KEPT = []


def book():
    return Playbook(Fill(KEY, kind_of(KEY.extension), ("http://up",), Rules(), 1 << 20))


def test_asserted():
    assert book() >> ClientRequested(1) << StartFetch("http://up", 0)


def test_kept_alive_unasserted():
    KEPT.append(book() >> ClientRequested(11) << StartFetch("http://up", 0))


def test_dropped_unasserted():
    book() >> ClientRequested(12) << StartFetch("http://up", 0)


def test_extended_after_its_assertion():
    pb = book() >> ClientRequested(1) << StartFetch("http://up", 0)
    assert pb
    pb >> ClientRequested(13)
'''


def test_an_unasserted_playbook_fails_its_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_tiny=TINY)
    run = pytester.inline_run("-p", "tests.playbook", "-p", "no:cacheprovider", "-p", "no:asyncio")
    reports = run.getreports("pytest_runtest_logreport")
    calls = {r.head_line: r.outcome for r in reports if r.when == "call"}
    assert calls == dict.fromkeys(["test_asserted", "test_kept_alive_unasserted", "test_dropped_unasserted",
                                   "test_extended_after_its_assertion"], "passed")
    failed = {r.head_line: r.longreprtext for r in reports if r.when == "teardown" and r.failed}
    assert sorted(failed) == ["test_dropped_unasserted", "test_extended_after_its_assertion",
                              "test_kept_alive_unasserted"]
    for name, client in (("test_kept_alive_unasserted", 11), ("test_dropped_unasserted", 12),
                         ("test_extended_after_its_assertion", 13)):
        assert failed[name].startswith("Unfinished playbook!")
        assert f"ClientRequested(client={client})" in failed[name]  # its own steps, nobody else's
