"""A transcript harness for the sans-io `Fill`, after mitmproxy's `tutils.Playbook`.

    assert (
        Playbook(fill)
        >> ClientRequested(1)
        << StartFetch("shield-a", 0)
    )

`>>` feeds an event, `<<` expects a command. Nothing runs until the playbook is
asserted: `bool(playbook)` feeds every pending event, collects the commands the
fill answered with, and compares the two transcripts. A mismatch raises
"Playbook mismatch!" with an ndiff. A playbook that was added to but never
asserted again is reported as "Unfinished playbook!": a warning when it is
garbage-collected, and a test failure through the autouse fixture
`unfinished_playbooks`, which `tests/conftest.py` registers for every test.
It collects no garbage (two `gc.collect()` a test made the unit tests a
hundred times slower) because it needs none: an unasserted playbook is either
alive, and so in `_LIVE` (even unreachable in a reference cycle), or already
finalized, and then its `__del__` has left a report.
"""

from __future__ import annotations

import dataclasses
import difflib
import warnings
import weakref
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

import pytest

from livecdn.cache.fill import Command, Event, Fill, Log

__all__ = ["Placeholder", "Playbook", "take_unfinished", "unfinished_playbooks"]

T = TypeVar("T")

# Playbooks alive now, and reports of the ones collected while unfinished.
# `__del__` cannot fail a test (its exceptions are swallowed), so it leaves a
# note here and the fixture turns the notes into a failure at teardown.
_LIVE: weakref.WeakSet[Playbook] = weakref.WeakSet()
_UNFINISHED: list[str] = []


class Placeholder(Generic[T]):
    """Stands for an object the fill creates; bound to it at the first match.

    Call it to get the object: `stored()`. Once bound, it only matches an
    object equal to (or the very same as) the one it captured.
    """

    def __init__(self, cls: type[T]) -> None:
        self._cls = cls
        self._obj: T | None = None

    def __call__(self) -> T:
        if self._obj is None:
            raise AssertionError(f"{self!r} was never matched")
        return self._obj

    def bind(self, obj: Any) -> bool:
        """Capture `obj` if unbound and of the right type; else compare to the captured object."""
        if self._obj is None:
            if not isinstance(obj, self._cls):
                return False
            self._obj = obj
            return True
        return self._obj is obj or self._obj == obj

    def __repr__(self) -> str:
        return f"Placeholder({self._cls.__name__})" if self._obj is None else repr(self._obj)


def _match(expected: Any, actual: Any) -> bool:
    """Structural equality that lets a Placeholder stand anywhere inside a dataclass."""
    if isinstance(expected, Placeholder):
        return expected.bind(actual)
    if expected is actual:
        return True
    if type(expected) is not type(actual):
        return False
    if dataclasses.is_dataclass(expected):
        return all(_match(getattr(expected, f.name), getattr(actual, f.name))
                   for f in dataclasses.fields(expected))
    return bool(expected == actual)


class Playbook:
    """The expected transcript of one `Fill`: events fed, commands expected.

    Args:
        fill: the state machine under test.
        logs: when False (the default), `Log` commands are dropped from the
            actual transcript so tests need not spell out every log line.
    """

    def __init__(self, fill: Fill, logs: bool = False) -> None:
        self.fill = fill
        self.logs = logs
        self.expected: list[Event | Command | Placeholder[Any]] = []
        self.actual: list[Event | Command] = []
        self._fed = 0  # expected[:_fed] have been played
        self._dirty = False  # added to since the last assertion
        _LIVE.add(self)

    def __rshift__(self, event: Event) -> Playbook:
        """Feed `event` to the fill when the playbook is asserted."""
        if not isinstance(event, Event):
            raise TypeError(f"{event!r} is not an Event")
        self.expected.append(event)
        self._dirty = True
        return self

    def __lshift__(self, command: Command | Placeholder[Any]) -> Playbook:
        """Expect `command` (or any command a Placeholder accepts) next."""
        if not isinstance(command, (Command, Placeholder)):
            raise TypeError(f"{command!r} is not a Command")
        self.expected.append(command)
        self._dirty = True
        return self

    def __bool__(self) -> bool:
        """Play the pending events and compare transcripts.

        Raises:
            AssertionError: "Playbook mismatch!" and an ndiff of expected vs actual.
        """
        self._dirty = False
        pending, self._fed = self.expected[self._fed:], len(self.expected)
        for item in pending:
            if isinstance(item, Event):
                self.actual.append(item)
                self.actual += [c for c in self.fill.handle(item) if self.logs or not isinstance(c, Log)]
        matched = [i < len(self.actual) and _match(e, self.actual[i]) for i, e in enumerate(self.expected)]
        if len(self.expected) == len(self.actual) and all(matched):
            return True
        # Render a matched expectation as what it matched, so placeholders don't show as diffs.
        exp = [repr(self.actual[i] if ok else e) for i, (e, ok) in enumerate(zip(self.expected, matched, strict=True))]
        diff = "\n".join(difflib.ndiff(exp, [repr(a) for a in self.actual]))
        raise AssertionError(f"Playbook mismatch!\n(- expected, + actual)\n{diff}")

    def unfinished_report(self) -> str:
        return f"Unfinished playbook! {len(self.expected) - self._fed} step(s) never asserted:\n" + "\n".join(
            repr(x) for x in self.expected[self._fed:])

    def __del__(self) -> None:
        if self._dirty:
            report = self.unfinished_report()
            _UNFINISHED.append(report)
            warnings.warn(report, RuntimeWarning, stacklevel=1)


def take_unfinished() -> list[str]:
    """Return (and forget) every unfinished-playbook report: live playbooks and finalized ones."""
    reports = [p.unfinished_report() for p in list(_LIVE) if p._dirty]
    for p in list(_LIVE):
        p._dirty = False  # reported here; don't report again from __del__
    reports += _UNFINISHED
    _UNFINISHED.clear()
    return reports


@pytest.fixture(autouse=True)
def unfinished_playbooks() -> Iterator[None]:
    """Fail the test at teardown if any playbook it built was left unasserted."""
    take_unfinished()  # nothing from an earlier test is blamed on this one
    yield
    if reports := take_unfinished():
        pytest.fail("\n\n".join(reports), pytrace=False)
