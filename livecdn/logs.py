"""JSON logs: one object per line, for the node's own messages and access lines.

Messages go through `logging`. Access lines do not: a node writes one per
request, and `logging` (a record, a formatter, a lock and a write per line)
would cost several times the hit it describes. `AccessLog` formats each line
directly and writes them out in batches, as nginx's `access_log ... buffer=
flush=` does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import sys
import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, RequestKey, StreamResponse

__all__ = ["AccessLog", "CLIENT", "FLUSH_BYTES", "FLUSH_INTERVAL", "JsonAccessLogger", "redacted", "report_death",
           "setup"]

# Access lines are held until this many bytes are waiting, or for FLUSH_INTERVAL
# seconds after the first of them, whichever comes first; then one write.
FLUSH_BYTES = 64 << 10
FLUSH_INTERVAL = 1.0
# The key under which an aiohttp handler leaves the client address a trusted
# proxy named (geo/redirect.py), for the access line's "remote".
CLIENT = RequestKey("livecdn.client", str)
# A signed URL's token segment starts so (`livecdn.signing.MARK`): an access line never holds a token.
_SIGNED = "/~"


class _JsonFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": round(record.created, 3), "level": record.levelname.lower(), "node": self.node,
               "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))


def setup(node: str, level: int = logging.INFO) -> None:
    """Send every log record to stderr as JSON, tagged with the node's name."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter(node))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").propagate = False


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
        fd: where lines go (stderr by default, like the node's other logs).

    Lines wait in memory until FLUSH_BYTES of them are waiting or
    FLUSH_INTERVAL has passed since the first; the node calls `flush()` on its
    way out. Lines are written whole and in order.
    """

    __slots__ = ("node", "fd", "_node_json", "_lines", "_size", "_timer")

    def __init__(self, node: str, fd: int = 2) -> None:
        self.node = node
        self.fd = fd
        self._node_json = _json_str(node)
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def write(self, remote: str, method: str, path: str, status: int, sent: int, seconds: float,
              cache: str, ua: str, proto: str = "HTTP/1.1") -> None:
        """One answer's line: the same fields whichever listener answered (`proto`: HTTP/1.1 or HTTP/2)."""
        now = time.time()
        line = (f'{{"time":{now:.3f},"node":{self._node_json},"remote":{_json_str(remote)},'
                f'"method":{_json_str(method)},"path":{_json_str(path)},"status":{status},"bytes":{sent},'
                f'"ms":{seconds * 1000:.2f},"cache":{_json_str(cache)},"proto":"{proto}","ua":{_json_str(ua)}}}\n')
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


class JsonAccessLogger(AbstractAccessLogger):
    """aiohttp's access-logger hook, writing through an `AccessLog`.

    aiohttp builds it from the `access_log` given to the runner, which
    `livecdn.node.sites` sets to the node's `AccessLog`.
    """

    def log(self, request: BaseRequest, response: StreamResponse, duration: float) -> None:
        access: AccessLog = self.logger  # type: ignore[assignment]
        access.write(request.get(CLIENT) or request.remote or "", request.method, redacted(request.raw_path),
                     response.status,
                     response.body_length, duration, response.headers.get("X-Cache", ""),
                     request.headers.get("User-Agent", ""))
