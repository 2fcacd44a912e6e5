"""A node's aiohttp listeners (admin, router HTTP): opened in order, closed in reverse.

Each listener is an aiohttp runner/site pair. Closing goes one at a time,
like aiohttp's own `cleanup()`: gathering them would leave the list in an
unknown state after an error.
"""

from __future__ import annotations

from aiohttp import web

from livecdn.config import Address
from livecdn.logs import AccessLog, JsonAccessLogger

__all__ = ["Sites"]


class Sites:
    __slots__ = ("_pairs",)

    def __init__(self) -> None:
        self._pairs: list[tuple[web.AppRunner, web.TCPSite]] = []

    async def open(self, app: web.Application, addr: Address, *, access_log: AccessLog | None = None,
                   reuse_port: bool = False) -> None:
        """Serve `app` on `addr` (port 0: any free port, see `port()`), logging answers to `access_log`."""
        kwargs: dict[str, object] = {"access_log": None}
        if access_log is not None:
            kwargs = {"access_log_class": JsonAccessLogger, "access_log": access_log}
        runner = web.AppRunner(app, handle_signals=False, **kwargs)  # type: ignore[arg-type]
        await runner.setup()
        site = web.TCPSite(runner, addr.host, addr.port, reuse_port=reuse_port, backlog=1024)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._pairs.append((runner, site))

    def port(self, index: int) -> int:
        """The port listener `index` (in opening order) actually bound."""
        server = self._pairs[index][1]._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    async def close(self, timeout: float) -> None:
        """Stop listening, end idle keep-alives, wait up to `timeout` for answers in flight."""
        while self._pairs:
            runner, _ = self._pairs.pop()
            runner._shutdown_timeout = timeout
            await runner.cleanup()
