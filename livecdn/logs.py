"""JSON logs: one object per line, for the node's own messages and access lines."""

from __future__ import annotations

import json
import logging
import sys
import time

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

__all__ = ["JsonAccessLogger", "setup"]


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
        self.logger.info("access", {
            "remote": request.remote, "method": request.method, "path": request.raw_path,
            "status": response.status, "bytes": response.body_length,
            "ms": round(duration * 1000, 2), "cache": response.headers.get("X-Cache", ""),
            "ua": request.headers.get("User-Agent", ""), "at": round(time.time(), 3),
        })
