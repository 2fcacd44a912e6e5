"""Run one node in this process until a signal says stop: the one shutdown path.

Signal handlers only set state. SIGTERM or SIGINT starts a graceful stop
(stop listening, drain in-flight responses, close the stores); a second
SIGINT forces it; SIGHUP re-reads the topology file and applies it; SIGUSR1
reopens the access log file (logrotate). While it serves, the garbage
collector scans the whole heap on a timer (`livecdn.node.collector`). The
original handlers are restored on the way out (`captured_signals`, as
uvicorn's `capture_signals`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from livecdn import logs
from livecdn.config import ConfigError, Topology
from livecdn.node import notify
from livecdn.node.collector import timed_collections

__all__ = ["Node", "captured_signals", "run", "serve"]

log = logging.getLogger("livecdn.node.serve")

# How long in-flight responses may take to finish once a stop is asked for ([cdn] drain_timeout).
DRAIN_TIMEOUT = 10.0


class Node(Protocol):
    async def start(self) -> None: ...
    async def stop(self, timeout: float = ...) -> None: ...


@contextlib.contextmanager
def captured_signals(handlers: Mapping[signal.Signals, Callable[[], None]]) -> Iterator[None]:
    """Route `handlers`' signals to the running loop while inside; put the previous handlers back after.

    `loop.add_signal_handler` is what wakes the loop on a signal, but its
    `remove_signal_handler` resets a signal to the default rather than to what
    was there before; so the previous Python-level handlers are read first and
    put back with `signal.signal`. Unlike uvicorn, a captured signal is not
    raised again on the way out: it has been handled (the node stopped), and
    a SIGTERM raised again under the default handler would turn a clean exit
    into death by signal.
    """
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in handlers}
    try:
        for sig, handler in handlers.items():
            loop.add_signal_handler(sig, handler)
        yield
    finally:
        for sig, before in previous.items():
            loop.remove_signal_handler(sig)
            if before is not None:  # None: installed outside Python, which remove_signal_handler cannot undo either
                signal.signal(sig, before)


async def serve(node: Node, reload: Callable[[], Topology] | None = None,
                on_ready: Callable[[], None] | None = None, *, drain_timeout: float = DRAIN_TIMEOUT) -> None:
    """Start `node`, wait for a stop signal, stop it gracefully (answers in flight get `drain_timeout`)."""
    stopping = asyncio.Event()
    forced = asyncio.Event()

    def on_stop(sig: signal.Signals) -> None:
        if stopping.is_set() and sig is signal.SIGINT:
            forced.set()
        stopping.set()

    def on_hup() -> None:
        if reload is None or not hasattr(node, "reload"):
            log.info("SIGHUP: nothing to reload for this node")
            return
        try:
            node.reload(reload())
        except ConfigError as e:
            log.error("SIGHUP: keeping the running config: %s", e)

    handlers: dict[signal.Signals, Callable[[], None]] = {
        signal.SIGTERM: functools.partial(on_stop, signal.SIGTERM),
        signal.SIGINT: functools.partial(on_stop, signal.SIGINT),
        signal.SIGHUP: on_hup,
        signal.SIGUSR1: logs.reopen,  # logrotate's contract, as nginx's USR1: the access log file anew
    }
    with captured_signals(handlers):
        try:
            await node.start()
            notify.ready()  # systemd's Type=notify: bound and answering
            if on_ready is not None:
                on_ready()
            async with timed_collections():
                await stopping.wait()
            notify.stopping()
            stop = asyncio.ensure_future(node.stop(drain_timeout))
            force = asyncio.ensure_future(forced.wait())
            await asyncio.wait([stop, force], return_when=asyncio.FIRST_COMPLETED)
            if not stop.done():
                log.warning("second SIGINT: stopping without draining")
                stop.cancel()
                await asyncio.gather(stop, return_exceptions=True)
                await node.stop(0)
            force.cancel()
        finally:
            await node.stop(0)


def run(main: Callable[[], object]) -> None:
    """Run a coroutine function on uvloop when it is installed."""
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())  # type: ignore[arg-type]
