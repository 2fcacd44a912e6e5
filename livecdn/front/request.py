"""A request head as every player protocol hands it to the front (HTTP/1.1 today, HTTP/2 later)."""

from __future__ import annotations

__all__ = ["Request"]


class Request:
    """A request head, complete; the connection's next request to answer.

    `headers` maps lower-cased names to values (bytes); repeated fields are
    joined with ", ". `keep_alive` says whether the client lets the connection
    stay open after the answer (HTTP/1.0 needs `Connection: keep-alive`; a
    request that carries a body is never kept: its body is not read).
    `received` is when the shell took the request, for the access log (0 when it does not time them).
    `client` is the address a trusted proxy named for it (`livecdn.front.forwarded`); "" when the
    connection's own peer is the client. `rid` is its request id once one was settled (a request
    that asks the tier above carries it there); "" until then.
    """

    __slots__ = ("method", "target", "version", "headers", "keep_alive", "received", "client", "rid")

    def __init__(self, method: str, target: str, version: str, headers: dict[bytes, bytes],
                 keep_alive: bool) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.received = 0.0
        self.client = ""
        self.rid = ""

    def header(self, name: bytes) -> str | None:
        """A header's value as text, by lower-cased name."""
        v = self.headers.get(name)
        return None if v is None else v.decode("latin-1")

    def __repr__(self) -> str:
        return f"Request({self.method} {self.target} HTTP/{self.version}, keep_alive={self.keep_alive})"
