"""The plain-HTTP listener of a node whose `tls.plain` is "redirect": every request sent to HTTPS.

A `Handler` for the listener (`livecdn.front.listener`) that never asks the
cache: the same host (from `Host`, its port replaced by the TLS one), path
and query, over https. GET and HEAD get a 301 (what every player and
HTTP/1.0 client follows); other methods a 308, which keeps the method.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from .plan import Fields, Later, Plan
from .request import Request

__all__ = ["HttpsRedirect"]

# A Host value a Location may be built from: a name or IPv4 address, or a bracketed IPv6 one, and a port.
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:\d{1,5})?")
_PLAIN = ("content-type", "text/plain; charset=utf-8")


class HttpsRedirect:
    """Answers every request with a redirect to the same URL over https on `port`."""

    __slots__ = ("port",)

    def __init__(self, port: int) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"the TLS port must be in 1..65535, got {port!r}")
        self.port = port

    def location(self, request: Request) -> str | None:
        """The https URL of `request`, or None when its Host cannot make one."""
        m = _HOST.fullmatch(request.header(b"host") or "")
        if m is None:
            return None
        target = request.target
        if not target.startswith("/"):  # absolute form: its path and query only (the host is Host's)
            parts = urlsplit(target)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        port = "" if self.port == 443 else f":{self.port}"
        return f"https://{m.group(1)}{port}{target}"

    def answer_now(self, request: Request, peer: str, now: float) -> Plan | Later:
        location = self.location(request)
        if location is None:
            return self.refuse(400, "a Host header naming this server is needed to redirect to https")
        status = 301 if request.method in ("GET", "HEAD") else 308
        body = f"{status} moved to {location}\n".encode()
        return Plan(Fields(status, (("location", location), _PLAIN)), body, len(body), None, None)

    async def answer_later(self, later: Later) -> Plan:
        raise AssertionError("HttpsRedirect answers every request at once")  # answer_now never returns Later

    def refuse(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> Plan:
        body = f"{status} {reason}\n".encode()
        return Plan(Fields(status, (*headers, _PLAIN)), body, len(body), None, None)
