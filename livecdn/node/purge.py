"""What a purge is: the pure half of purging every worker process of a node.

A purge request names objects (`Selector`, checked, matched against the
normalized path of each storage key) and carries the admin bearer token
(`authorized`, compared in constant time). Between the workers of a node it
travels as two messages, `Ask` and `Told`, one datagram each (`decode`), and
the worker that took the request adds up its siblings' answers in a `Tally`
into what it answers (`Purged`). No I/O here: the shell that sends and
receives is `livecdn.node.broadcast.Purges`.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from livecdn.cache.keys import path_of
from livecdn.media.kinds import is_playlist
from livecdn.media.names import MAX_PATH_BYTES, BadName, directory, extension, normalize

__all__ = ["Ask", "BadMessage", "BadSelector", "KINDS", "MAX_MESSAGE", "Purged", "Selector", "Tally", "Told",
           "authorized", "decode"]

# Bytes of one message between workers, and of one purge request body: a
# selector is a path of at most MAX_PATH_BYTES, spelled in JSON (an escaped
# character takes six bytes) with a few fields around it.
MAX_MESSAGE = 6 * MAX_PATH_BYTES + 512
Kind = Literal["url", "prefix", "stream"]
KINDS: tuple[Kind, ...] = ("url", "prefix", "stream")


class BadSelector(ValueError):
    """A purge that names nothing valid; the reason is answered with a 400."""


class BadMessage(ValueError):
    """A datagram in the purge directory that is not one of ours."""


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
    """A worker asks a sibling to drop what `selector` names from its memory tier.

    `restart`: a stream restarted, and the asking worker's drop of the shared
    disk tier is still under way: the sibling must not read those names back
    from the disk meanwhile (it drops them there as well, and misses until then).
    """

    id: str
    selector: Selector
    restart: bool = False

    def encode(self) -> bytes:
        return json.dumps({"ask": self.id, "selector": self.selector.to_json(), "restart": self.restart}).encode()


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
            return Ask(str(raw["ask"]), Selector.of(raw["selector"]), raw.get("restart") is True)
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
    unanswered: tuple[int, ...] = ()  # siblings that did not answer in time
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
