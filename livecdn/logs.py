"""JSON logs: one object per line, for the node's own messages and access lines."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TYPE_CHECKING

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

if TYPE_CHECKING:
    from .http1 import Request

__all__ = ["AccessLog", "JsonAccessLogger", "setup"]


class _JsonFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": round(record.created, 3), "level": record.levelname.lower(), "node": self.node,
               "logger": record.name, "msg": record.getMessage()}
        if isinstance(record.args, dict) and record.name == "livecdn.access":
            out = {"time": out["time"], "node": self.node, **record.args}
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


class JsonAccessLogger(AbstractAccessLogger):
    """aiohttp access logger writing one JSON record per response."""

    def log(self, request: BaseRequest, response: StreamResponse, duration: float) -> None:
        self.logger.info("access", _record(
            request.remote or "", request.method, request.raw_path, response.status, response.body_length,
            duration, response.headers.get("X-Cache", ""), request.headers.get("User-Agent", "")))


class AccessLog:
    """The player listener's access log: the same JSON record as `JsonAccessLogger`.

    The front holds one only when access logging is on, so with
    `--no-access-log` not even a method call is left on the hot path.
    """

    __slots__ = ("logger",)

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("livecdn.access")

    def log(self, remote: str, request: Request, status: int, sent: int, cache: str) -> None:
        took = time.perf_counter() - request.received if request.received else 0.0
        self.logger.info("access", _record(remote, request.method, request.target, status, sent, took,
                                           cache.upper(), request.header(b"user-agent") or ""))


def _record(remote: str, method: str, path: str, status: int, sent: int, seconds: float,
            cache: str, ua: str) -> dict[str, object]:
    """One access line's fields, the same for every listener."""
    return {"remote": remote, "method": method, "path": path, "status": status, "bytes": sent,
            "ms": round(seconds * 1000, 2), "cache": cache, "ua": ua, "at": round(time.time(), 3)}
