"""JSON logs: one object per line, for the node's own messages and access lines.

Messages go through `logging`. Access lines do not: a node writes one per
request, and `logging` (a record, a formatter, a lock and a write per line)
would cost several times the hit it describes. `AccessLog` formats each line
directly and writes them out in batches, as nginx's `access_log ... buffer=
flush=` does.

Times are ISO 8601 in UTC with milliseconds (`2026-12-02T04:55:12.345Z`),
as log pipelines parse them without a hint. Access lines go to stderr, or to
a file (`setup(access_file=...)`) that SIGUSR1 reopens under the same name:
logrotate's usual contract (rename, then signal), as nginx's.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import secrets
import select
import sys
import time
import weakref
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, RequestKey, StreamResponse

__all__ = ["AccessLog", "CLIENT", "FLUSH_BYTES", "FLUSH_INTERVAL", "JsonAccessLogger", "iso_time",
           "redacted", "reopen", "report_death", "request_id", "setup"]

# Access lines are held until this many bytes are waiting, or for FLUSH_INTERVAL
# seconds after the first of them, whichever comes first; then one write.
FLUSH_BYTES = 64 << 10
FLUSH_INTERVAL = 1.0
# The key under which an aiohttp handler leaves the client address a trusted
# proxy named (geo/redirect.py), for the access line's "remote".
CLIENT = RequestKey("livecdn.client", str)
# A signed URL's token segment starts so (`livecdn.signing.MARK`): an access line never holds a token.
_SIGNED = "/~"
# Where AccessLogs made without a descriptor write: stderr, or the file `setup()` was given.
_access_file: str | None = None
_open_files: weakref.WeakSet[AccessLog] = weakref.WeakSet()

# The second an ISO time was last made for, and its text: formatting a date per line would cost
# more than the rest of the line, and every line of a second shares it.
_second = -1
_second_text = ""


def iso_time(now: float) -> str:
    """`now` (epoch seconds) as ISO 8601 UTC with milliseconds."""
    global _second, _second_text
    whole = int(now)
    if whole != _second:
        _second, _second_text = whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{_second_text}.{int((now - whole) * 1000):03d}Z"


# A request without X-Request-Id gets one made here: this process's random prefix and a count,
# unique across a fleet's processes without a random draw per request.
_ID_PREFIX = secrets.token_hex(6)
_ids = itertools.count(1)


def request_id(given: str | None) -> str:
    """The client's X-Request-Id when it is a plain token of at most 128 characters, else a new one.

    The id is logged and passed to the tier above, so one that could bloat every
    line or smuggle odd bytes upstream is replaced, not trimmed.
    """
    if given and _GOOD_ID.match(given):
        return given
    return f"{_ID_PREFIX}{next(_ids):08x}"


# What a client's X-Request-Id may be to be kept: the usual id alphabets (UUIDs, hex, base64, ULIDs), bounded.
_GOOD_ID = re.compile(r"[A-Za-z0-9._~:+/=@-]{1,128}\Z")


class _JsonFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": iso_time(record.created), "level": record.levelname.lower(), "node": self.node,
               "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))


def setup(node: str, level: int = logging.INFO, access_file: str | None = None) -> None:
    """Send every log record to stderr as JSON, tagged with the node's name; access lines to `access_file`."""
    global _access_file
    _access_file = access_file
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter(node))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").propagate = False


def reopen() -> None:
    """Open every access log file anew under its name (after logrotate moved it away): SIGUSR1."""
    for access in list(_open_files):
        access.reopen()


def report_death(log: logging.Logger, what: str) -> Callable[[asyncio.Future[Any]], None]:
    """A done-callback for a background task: one that died is logged with its traceback.

    Without it an exception in a task nobody awaits is seen only as "Task
    exception was never retrieved", if at all. Cancelled tasks pass quietly.
    """

    def done(task: asyncio.Future[Any]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s died", what, exc_info=exc)

    return done


class AccessLog:
    """A node's access lines: one JSON object per answer, written in batches.

    Args:
        node: the node's name, in every line.
        fd: where lines go; None: the file `setup()` named, else stderr (like the node's other logs).

    Lines wait in memory until FLUSH_BYTES of them are waiting or
    FLUSH_INTERVAL has passed since the first; the node calls `flush()` on its
    way out. Lines are written whole and in order.
    """

    __slots__ = ("node", "fd", "path", "_node_json", "_lines", "_size", "_timer", "__weakref__")

    def __init__(self, node: str, fd: int | None = None) -> None:
        self.node = node
        self.path = _access_file if fd is None else None
        self.fd = 2 if fd is None else fd
        if self.path is not None:
            self.fd = _open_append(self.path)
            _open_files.add(self)
        self._node_json = _json_str(node)
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def write(self, remote: str, method: str, path: str, status: int, sent: int, seconds: float,
              cache: str, ua: str, host: str = "", referer: str = "", range_: str = "",
              protocol: str = "HTTP/1.1", rid: str = "",
              upstream: tuple[str, int, float, str] | None = None) -> None:
        """One answer's line: the same fields whichever listener answered (`range_`: the request's Range).

        An answer that asked the tier above (`upstream`: `livecdn.cache.fill.Asked`) names it, its
        status, how long its head took and the request id it carried, as nginx's `$upstream_*` do.
        """
        if upstream is None:
            tail = "}\n"
        else:
            where, status, took, asked_id = upstream
            tail = (f',"upstream":{_json_str(where)},"upstream_status":{status},"upstream_ms":{took * 1000:.2f},'
                    f'"upstream_request_id":{_json_str(asked_id)}}}\n')
        line = (f'{{"time":"{iso_time(time.time())}","node":{self._node_json},"remote":{_json_str(remote)},'
                f'"method":{_json_str(method)},"host":{_json_str(host)},"path":{_json_str(path)},'
                f'"protocol":"{protocol}","status":{status},"bytes":{sent},"ms":{seconds * 1000:.2f},'
                f'"cache":{_json_str(cache)},"range":{_json_str(range_)},"referer":{_json_str(referer)},'
                f'"ua":{_json_str(ua)},"request_id":{_json_str(rid)}{tail}')
        self._lines.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        """Write out every waiting line now.

        In writes of whole lines up to PIPE_BUF bytes: worker processes share
        the node's stderr, and a pipe keeps only writes that small from being
        interleaved with another writer's.
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lines, self._lines, self._size = self._lines, [], 0
        chunk: list[str] = []
        size = 0
        for line in lines:
            if size + len(line) > select.PIPE_BUF and chunk:
                self._write("".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._write("".join(chunk))

    def reopen(self) -> None:
        """Point this log at a fresh file of its name; lines waiting go to the new one."""
        if self.path is None:
            return
        try:
            fd = _open_append(self.path)
        except OSError as e:  # keep writing to the old file rather than lose lines
            logging.getLogger("livecdn.logs").error("cannot reopen access log %s: %s", self.path, e)
            return
        os.dup2(fd, self.fd)  # one step: no moment without a descriptor for a write to go to
        os.close(fd)

    def _write(self, text: str) -> None:
        data = memoryview(text.encode("ascii"))  # `_json_str` has escaped everything else
        while data:
            try:
                data = data[os.write(self.fd, data):]
            except InterruptedError:
                continue
            except BlockingIOError:  # someone made the descriptor non-blocking: wait for room
                select.select([], [self.fd], [])
            except OSError:  # the log's reader is gone: nowhere left to write to
                return


def redacted(target: str) -> str:
    """A request target fit for a log line: a signed URL's token replaced by "redacted".

    (The edge takes tokens off before it logs; the router logs what players ask it.)
    """
    if not target.startswith(_SIGNED):
        return target
    end = target.find("/", len(_SIGNED))
    return _SIGNED + "redacted" + (target[end:] if end > 0 else "")


def _open_append(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


class JsonAccessLogger(AbstractAccessLogger):
    """aiohttp's access-logger hook, writing through an `AccessLog`.

    aiohttp builds it from the `access_log` given to the runner, which
    `livecdn.node.sites` sets to the node's `AccessLog`.
    """

    def log(self, request: BaseRequest, response: StreamResponse, duration: float) -> None:
        access: AccessLog = self.logger  # type: ignore[assignment]
        h = request.headers
        access.write(request.get(CLIENT) or request.remote or "", request.method, redacted(request.raw_path),
                     response.status,
                     response.body_length, duration, response.headers.get("X-Cache", ""),
                     h.get("User-Agent", ""), h.get("Host", ""), h.get("Referer", ""), h.get("Range", ""),
                     f"HTTP/{request.version.major}.{request.version.minor}", request_id(h.get("X-Request-Id")))
