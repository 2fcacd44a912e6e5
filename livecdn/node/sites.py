"""A node's aiohttp listeners (admin, router HTTP, origin): opened in order, closed in reverse.

Each listener is an aiohttp runner/site pair, driven through aiohttp's public
API only: the drain bound is the runner's `shutdown_timeout`, the bound port
comes from `runner.addresses`. Closing goes one at a time, like aiohttp's own
`cleanup()`: gathering them would leave the list in an unknown state after an
error.
"""

from __future__ import annotations

import ssl

from aiohttp import web

from livecdn.config import Address
from livecdn.front.proxyaccept import NamedPeers, ProxyAcceptor
from livecdn.logs import AccessLog, JsonAccessLogger

__all__ = ["SITE_DRAIN", "Sites", "live"]

# How long a closing listener waits for the answers in flight on it. What
# these listeners answer (/healthz, /metrics, a 302, one origin segment) is
# ready at once, so a second is plenty; the player listener, whose answers are
# streams, drains under the node's own stop timeout instead.
SITE_DRAIN = 1.0


class Sites:
    """The aiohttp listeners of one node.

    Args:
        shutdown_timeout: seconds each listener waits for its answers in flight when closed.
    """

    __slots__ = ("shutdown_timeout", "_runners", "_acceptors")

    def __init__(self, shutdown_timeout: float = SITE_DRAIN) -> None:
        if shutdown_timeout < 0:
            raise ValueError(f"shutdown_timeout must not be negative, got {shutdown_timeout!r}")
        self.shutdown_timeout = shutdown_timeout
        self._runners: list[web.AppRunner] = []
        self._acceptors: dict[web.AppRunner, ProxyAcceptor] = {}  # listeners that read a PROXY header first

    async def open(self, app: web.Application, addr: Address, *, access_log: AccessLog | None = None,
                   reuse_port: bool = True, ssl_context: ssl.SSLContext | None = None,
                   proxied: NamedPeers | None = None, header_timeout: float = 10.0) -> int:
        """Serve `app` on `addr` (over TLS with `ssl_context`), logging answers to `access_log`.

        With `proxied`, every connection begins with a PROXY header (within
        `header_timeout` seconds), read before aiohttp sees the connection;
        `proxied` then knows each connection's client.

        SO_REUSEPORT by default: a node's new process binds beside the old one, which then drains.

        Returns:
            The port actually bound, so an address with port 0 works.
        """
        kwargs: dict[str, object] = {"access_log": None}
        if access_log is not None:
            kwargs = {"access_log_class": JsonAccessLogger, "access_log": access_log}
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=self.shutdown_timeout,
                               **kwargs)  # type: ignore[arg-type]
        await runner.setup()
        if proxied is not None:
            # aiohttp's own request handler per connection, once its header is read; no site of aiohttp's.
            server = runner.server
            assert server is not None  # made by setup()
            acceptor = ProxyAcceptor(proxied.factory(server), lambda: header_timeout, lambda: True,
                                     ssl=ssl_context)
            try:
                acceptor.open(addr.host, addr.port, reuse_port=reuse_port, backlog=1024)
            except BaseException:
                await runner.cleanup()
                raise
            self._runners.append(runner)
            self._acceptors[runner] = acceptor
            return acceptor.port
        site = web.TCPSite(runner, addr.host, addr.port, reuse_port=reuse_port, backlog=1024, ssl_context=ssl_context)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runners.append(runner)
        return int(runner.addresses[0][1])

    async def close(self) -> None:
        """Stop listening, end idle keep-alives, wait up to `shutdown_timeout` for answers in flight."""
        while self._runners:
            # Forgotten only once cleaned up: a close cancelled part-way (a forced
            # stop) leaves the runner here for the next close to finish.
            if (acceptor := self._acceptors.get(self._runners[-1])) is not None:
                await acceptor.close()  # safe twice
            await self._runners[-1].cleanup()
            self._acceptors.pop(self._runners[-1], None)
            self._runners.pop()


async def live(request: web.Request) -> web.Response:
    """`/livez`: 200 whenever the node's loop answers at all. Unlike /healthz, never a 503 for
    overload: a liveness probe restarts what fails it, and an overloaded node needs fewer players,
    not a restart."""
    return web.Response(text="ok\n")
