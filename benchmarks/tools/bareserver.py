"""The ceiling for a Python HTTP/1.1 hit: an `asyncio.Protocol` on uvloop that answers every request with one answer.

    cd benchmarks && python -m tools.bareserver --port P --origin URL [--parse]

It fetches the answer's body from `--origin` once at start (the playlist the
caches serve), then answers each request on a connection with a head (Date
rebuilt once a second) and that body in one `transport.write`. Without
`--parse` a read that ends a head is taken as one request (right for
wrk's one request per connection at a time); with `--parse` every read goes
through httptools first, as a minimal real server would. No cache, no
policy, no clock beyond Date: what is left between livecdn's edge and this
is the edge's own work per hit (issue 16's "bare-server ceiling").
"""

from __future__ import annotations

import argparse
import asyncio
import time
import urllib.request
from email.utils import formatdate

import httptools
import uvloop


class Answer:
    """The one answer, its head rebuilt when the second changes."""

    def __init__(self, body: bytes, content_type: str) -> None:
        self.body = body
        self.prefix = (f"HTTP/1.1 200 OK\r\nServer: bare\r\nContent-Type: {content_type}\r\n"
                       f"Cache-Control: max-age=1\r\nContent-Length: {len(body)}\r\n").encode()
        self.second = -1
        self.whole = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self.second:
            self.second = second
            self.whole = self.prefix + f"Date: {formatdate(second, usegmt=True)}\r\n\r\n".encode() + self.body
        return self.whole


class Bare(asyncio.Protocol):
    """Answers each request head it reads."""

    def __init__(self, answer: Answer, parse: bool) -> None:
        self.answer = answer
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self) if parse else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.parser is not None:
            self.parser.feed_data(data)
        elif data.endswith(b"\r\n\r\n"):
            self.transport.write(self.answer.now())  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        self.transport.write(self.answer.now())  # type: ignore[union-attr]


async def serve(port: int, origin: str, parse: bool) -> None:
    with urllib.request.urlopen(origin, timeout=10) as r:
        answer = Answer(r.read(), r.headers.get("content-type", "application/octet-stream"))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Bare(answer, parse), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--origin", required=True, help="the URL whose body every answer carries")
    p.add_argument("--parse", action="store_true", help="parse every read with httptools")
    args = p.parse_args()
    uvloop.run(serve(args.port, args.origin, args.parse))


if __name__ == "__main__":
    main()
