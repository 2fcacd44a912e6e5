"""Purge: drop what only an operator knows is wrong, from every worker process of a node.

A purge request reaches one worker (the workers share the admin port with
SO_REUSEPORT), but each worker has its own memory tier. That worker drops the
shared disk tier and its own memory first, then asks every sibling to drop its
memory and waits, bounded, for their answers, which it adds up.

Siblings find each other in a directory the node's parent process creates for
them (`livecdn/cli.py`): each worker binds a Unix datagram socket there named
by its pid, and removes it when it stops. A datagram arrives whole or not at
all, so concurrent purges from several workers never interleave; an answer is
delivered the moment it is sent, so nothing polls. A socket left by a worker
that died refuses datagrams, and is removed by the first purge that finds it.

The pure parts are the `Selector` (what a purge names, checked), `authorized`
(the bearer token, compared in constant time), the two messages (`Ask`,
`Told`) with their byte form, and the `Tally` of the siblings' answers. The
I/O shell is `Purges`, the one object a node (or anything else that must
drop objects in every worker, e.g. a stream restart) calls.

A purge applies to objects stored before it: fetches in flight are not cut,
and what they store was asked for from the origin after the purge began.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import itertools
import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from livecdn.cache.engine import Engine
from livecdn.cache.keys import path_of
from livecdn.media.kinds import is_playlist
from livecdn.media.names import MAX_PATH_BYTES, BadName, directory, extension, normalize

__all__ = ["ANSWER_TIMEOUT", "Ask", "BadMessage", "BadSelector", "Busy", "MAX_MESSAGE", "Purged", "Purges",
           "Selector", "Tally", "Told", "authorized", "decode"]

log = logging.getLogger("livecdn.node.purge")

# Bytes of one message between workers, and of one purge request body: a
# selector is a path of at most MAX_PATH_BYTES, spelled in JSON (an escaped
# character takes six bytes) with a few fields around it.
MAX_MESSAGE = 6 * MAX_PATH_BYTES + 512
# How long the worker that took a purge waits for its siblings. Dropping a
# memory tier takes milliseconds; a sibling silent this long is stuck or dying,
# and the purge is reported incomplete rather than held open.
ANSWER_TIMEOUT = 5.0
# Purges one worker runs at once: each holds a request open (and scans the
# disk tier) until its siblings answer, so a runaway script cannot pile them up.
MAX_PENDING = 16
Kind = Literal["url", "prefix", "stream"]
KINDS: tuple[Kind, ...] = ("url", "prefix", "stream")


class BadSelector(ValueError):
    """A purge that names nothing valid; the reason is answered with a 400."""


class BadMessage(ValueError):
    """A datagram in the purge directory that is not one of ours."""


class Busy(Exception):
    """MAX_PENDING purges are already in progress on this worker; answered with a 503."""


# --- what a purge names ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selector:
    """The objects one purge drops, chosen by the normalized path of their storage key (`keys.path_of`).

    - ``url``: one object, every stored variant of it (LL-HLS `_HLS_msn`...
      playlists included). A full URL's host is ignored for now: the path
      names the object.
    - ``prefix``: every path starting with it, as written (``/live/seg_1``
      also takes ``seg_10.ts``; ``/live`` also takes ``/live2/``).
    - ``stream``: a playlist's directory and everything under it (the master
      playlist, rendition playlists and segments beside it or in its
      subdirectories); a directory name may be given instead of a playlist.
      It always ends at a directory boundary.
    """

    kind: Kind
    given: str  # as the operator wrote it
    path: str = field(init=False)  # what storage paths are compared with

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise BadSelector(f"unknown selector {self.kind!r}: give one of {', '.join(KINDS)}")
        if not isinstance(self.given, str) or not self.given:
            raise BadSelector(f"{self.kind}: expected a non-empty string, got {self.given!r}")
        if len(self.given) > MAX_PATH_BYTES:  # a URL's host and query too: a message must stay one datagram
            raise BadSelector(f"{self.kind}: longer than {MAX_PATH_BYTES} characters")
        object.__setattr__(self, "path", _PATHS[self.kind](self.given))

    @classmethod
    def of(cls, raw: object) -> Selector:
        """A selector from its JSON form: an object with exactly one of "url", "prefix", "stream"."""
        if not isinstance(raw, dict) or len(raw) != 1:
            raise BadSelector('expected a JSON object with exactly one of "url", "prefix", "stream"')
        ((kind, given),) = raw.items()
        return cls(kind, given)

    @classmethod
    def from_json(cls, body: bytes) -> Selector:
        """A purge request body (`of`, as JSON text)."""
        try:
            raw = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise BadSelector('body is not JSON: expected {"url": ...}, {"prefix": ...} or {"stream": ...}') \
                from None
        return cls.of(raw)

    def matches(self, key: str) -> bool:
        """Does this purge drop the object stored under `key`?"""
        path = path_of(key)
        return path == self.path if self.kind == "url" else path.startswith(self.path)

    def to_json(self) -> dict[str, str]:
        return {self.kind: self.given}


def _path(text: str) -> str:
    try:
        return normalize(text)
    except BadName as e:
        raise BadSelector(f"{text[:64]!r}: {e.reason}") from None


def _url(text: str) -> str:
    # "http://host/a.ts?x" or "/a.ts?x": the path, in the spelling keys use; every query variant.
    return _path(urlsplit(text).path if "://" in text else text.partition("?")[0])


def _prefix(text: str) -> str:
    if not text.startswith("/"):
        raise BadSelector(f"prefix must start with '/', got {text[:64]!r}")
    if text == "/":
        return "/"  # everything
    # normalize() drops a trailing "/": put it back, it is what the operator meant.
    return _path(text) + ("/" if text.endswith("/") else "")


def _stream(text: str) -> str:
    if not text.startswith("/"):
        raise BadSelector(f"stream must start with '/', got {text[:64]!r}")
    if text == "/":
        return "/"
    path = _path(text)
    return directory(path) if is_playlist(extension(path)) and not text.endswith("/") else path + "/"


_PATHS = {"url": _url, "prefix": _prefix, "stream": _stream}


def authorized(header: str | None, token: str) -> bool:
    """Does an Authorization header carry `token` as its bearer token? Constant time in the token's bytes."""
    if not token or header is None:
        return False
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


# --- between the workers of a node ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ask:
    """A worker asks a sibling to drop what `selector` names from its memory tier."""

    id: str
    selector: Selector

    def encode(self) -> bytes:
        return json.dumps({"ask": self.id, "selector": self.selector.to_json()}).encode()


@dataclass(frozen=True, slots=True)
class Told:
    """A sibling's answer to an `Ask`: how many objects it dropped, or why it could not."""

    id: str
    pid: int
    memory: int = 0
    error: str = ""

    def encode(self) -> bytes:
        return json.dumps({"told": self.id, "pid": self.pid, "memory": self.memory, "error": self.error}).encode()


def decode(data: bytes) -> Ask | Told:
    """One datagram as a message; BadMessage when it is none."""
    try:
        raw = json.loads(data)
        if "ask" in raw:
            return Ask(str(raw["ask"]), Selector.of(raw["selector"]))
        return Told(str(raw["told"]), int(raw["pid"]), int(raw["memory"]), str(raw["error"]))
    except (ValueError, TypeError, KeyError) as e:  # BadSelector is a ValueError
        raise BadMessage(f"not a purge message ({e}): {data[:64]!r}") from None


class Tally:
    """The answers one purge is waiting for, from the siblings it was sent to."""

    __slots__ = ("waiting", "memory", "errors")

    def __init__(self, siblings: Iterable[int]) -> None:
        self.waiting = set(siblings)
        self.memory: dict[int, int] = {}
        self.errors: dict[int, str] = {}

    def told(self, answer: Told) -> None:
        if answer.pid not in self.waiting:
            return  # an answer from no sibling asked, or a second one
        self.waiting.discard(answer.pid)
        if answer.error:
            self.errors[answer.pid] = answer.error
        else:
            self.memory[answer.pid] = answer.memory

    @property
    def done(self) -> bool:
        return not self.waiting


@dataclass(frozen=True)
class Purged:
    """What one purge dropped in a node."""

    selector: Selector
    memory: Mapping[int, int]  # worker pid -> objects dropped from its memory tier
    disk: int  # objects dropped from the node's disk tier
    seconds: float
    unanswered: tuple[int, ...] = ()  # siblings that did not answer within ANSWER_TIMEOUT
    errors: Mapping[int, str] = dataclasses.field(default_factory=dict)  # siblings that failed, and why

    @property
    def dropped(self) -> int:
        return sum(self.memory.values()) + self.disk

    @property
    def complete(self) -> bool:
        return not self.unanswered and not self.errors

    def to_json(self) -> dict[str, object]:
        return {"selector": self.selector.to_json(), "dropped": self.dropped,
                "memory": {str(pid): n for pid, n in self.memory.items()}, "disk": self.disk,
                "workers": len(self.memory), "unanswered": list(self.unanswered),
                "errors": {str(pid): e for pid, e in self.errors.items()}, "ms": round(self.seconds * 1000, 1)}


# --- the I/O shell ---------------------------------------------------------------------


class Purges:
    """One worker's part in purging its node.

    Args:
        engine: this worker's cache engine (its memory tier; the disk tier it shares).
        directory: where the node's workers find each other (None: this process is the node's only worker).
        timeout: how long a purge waits for the siblings' answers.
    """

    def __init__(self, engine: Engine, directory: str | None, timeout: float = ANSWER_TIMEOUT) -> None:
        self.engine = engine
        self.directory = directory
        self.timeout = timeout
        self._pid = os.getpid()
        self._sock: socket.socket | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[str, tuple[Tally, asyncio.Future[None]]] = {}
        self._running = 0  # purges this worker is carrying out
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str | None:
        """This worker's socket, where siblings ask it (None: no siblings)."""
        return None if self.directory is None else os.path.join(self.directory, f"{self._pid}.sock")

    def open(self) -> None:
        """Take this worker's place in the directory; raises RuntimeError when already open."""
        if self._sock is not None:
            raise RuntimeError("Purges.open() called twice")
        if self.address is None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address)  # left by a dead process that had this pid
            sock.bind(self.address)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        asyncio.get_running_loop().add_reader(sock.fileno(), self._receive)
        self._sock = sock

    async def close(self) -> None:
        """Leave the directory; purges still waiting end as they are. Closing twice is harmless."""
        sock, self._sock = self._sock, None
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address or "")
        for _, waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_result(None)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def purge(self, selector: Selector) -> Purged:
        """Drop what `selector` names from the disk tier and from the memory tier of every worker.

        Returns:
            What each worker and the disk dropped; `Purged.complete` is false
            when a sibling failed or did not answer in time.

        Raises:
            Busy: MAX_PENDING purges are already in progress on this worker.
            OSError, sqlite3.Error: the disk tier could not be purged (nothing was asked of the siblings).
        """
        if self._running >= MAX_PENDING:
            raise Busy(f"{MAX_PENDING} purges are already in progress on this worker")
        self._running += 1
        try:
            return await self._purge(selector)
        finally:
            self._running -= 1

    async def _purge(self, selector: Selector) -> Purged:
        started = time.monotonic()
        # Disk and this worker first, siblings after: a sibling's memory miss
        # must find the disk copy already gone, or it would read it back.
        mine, disk = await self.engine.purge(selector.matches)
        ask = Ask(f"{self._pid}.{next(self._ids)}", selector)
        tally = Tally(self._send(ask))
        if not tally.done:
            waiter = asyncio.get_running_loop().create_future()
            self._waiting[ask.id] = (tally, waiter)
            try:
                await asyncio.wait([waiter], timeout=self.timeout)
            finally:
                del self._waiting[ask.id]
        return Purged(selector, {self._pid: mine, **tally.memory}, disk, time.monotonic() - started,
                      tuple(sorted(tally.waiting)), tally.errors)

    def _siblings(self) -> list[tuple[int, str]]:
        assert self.directory is not None
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return [(int(n[:-5]), os.path.join(self.directory, n)) for n in names
                if n.endswith(".sock") and n[:-5].isdigit() and int(n[:-5]) != self._pid]

    def _send(self, ask: Ask) -> list[int]:
        """Send `ask` to every sibling; returns the pids that received it."""
        if self._sock is None:
            return []
        data, sent = ask.encode(), []
        for pid, path in self._siblings():
            try:
                self._sock.sendto(data, path)
            except (ConnectionRefusedError, FileNotFoundError):
                # No process reads this socket any more: a worker that died.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            except OSError as e:  # its queue is full (BlockingIOError): it is stuck, the purge says so
                log.warning("purge: cannot reach worker %d: %s", pid, e)
                sent.append(pid)
            else:
                sent.append(pid)
        return sent

    def _receive(self) -> None:
        """The socket is readable: handle every datagram queued."""
        while self._sock is not None:
            try:
                data, sender = self._sock.recvfrom(MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            try:
                message = decode(data)
            except BadMessage as e:
                log.warning("purge: %s", e)
                continue
            if isinstance(message, Ask):
                task = asyncio.ensure_future(self._answer(message, sender))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif (waiting := self._waiting.get(message.id)) is not None:
                tally, waiter = waiting
                tally.told(message)
                if tally.done and not waiter.done():
                    waiter.set_result(None)

    async def _answer(self, ask: Ask, sender: str) -> None:
        try:
            mine, _ = await self.engine.purge(ask.selector.matches, disk=False)
            answer = Told(ask.id, self._pid, mine)
        except Exception as e:  # noqa: BLE001 - the asking worker reports it; this one keeps serving
            log.exception("purge %s failed in this worker", ask.selector.to_json())
            answer = Told(ask.id, self._pid, error=str(e) or type(e).__name__)
        if self._sock is None:
            return
        try:
            self._sock.sendto(answer.encode(), sender)
        except OSError as e:  # the asking worker stopped, or gave up and is gone
            log.warning("purge: cannot answer worker %s: %s", sender, e)
