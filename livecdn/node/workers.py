"""Several worker processes for one node, sharing its port with SO_REUSEPORT.

The parent forks the workers before any event loop exists, forwards signals to
them, restarts one that dies unexpectedly, and waits for all on the way out.
Each worker has its own memory tier; the disk tier and the metrics directory
are shared, so /metrics on any worker reports the whole node.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable

__all__ = ["supervise"]

log = logging.getLogger("livecdn.node.workers")

# A worker that dies sooner than this after its start is not restarted in a
# loop: something is wrong with the node, not with one process.
MIN_UPTIME = 2.0


def supervise(workers: int, child: Callable[[], None]) -> int:
    """Fork `workers` processes running `child()`; return the exit status for the node."""
    from prometheus_client import multiprocess

    stopping = False
    started: dict[int, float] = {}

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            status = 0
            try:
                child()
            except BaseException:  # noqa: BLE001 - a worker must never return into the parent's code
                log.exception("worker failed")
                status = 1
            finally:
                os._exit(status)
        started[pid] = time.monotonic()

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for _ in range(workers):
        spawn()
    status = 0
    while started:
        try:
            pid, code = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        born = started.pop(pid, None)
        multiprocess.mark_process_dead(pid)
        if stopping or born is None:
            continue
        log.error("worker %d exited with status %d", pid, os.waitstatus_to_exitcode(code))
        if time.monotonic() - born < MIN_UPTIME:
            status = 1
            forward(signal.SIGTERM, None)
        else:
            spawn()
    return status
