"""A node process's garbage collector: whole-heap passes on a timer, not on allocation counts.

CPython scans the whole heap (generation 2) once enough objects have
survived the young collections. A node under bursts keeps thousands of
requests waiting at a time (a thousand LL-HLS viewers hold a blocking reload
each, answered together when the part is made), and their objects survive:
an edge under `benchmarks/llhls.py`'s 1,000 viewers scanned its whole heap 12
times in 30 s, 40-50 ms of CPU each and up to 122 ms of wall time on the
loaded machine, while every answer due meanwhile waited.

So, once a node has started: what it built to run (modules, config, tables)
is frozen out of the collector's sight (`gc.freeze`: it is never garbage,
and is never scanned again), the young generations are collected as before,
and the whole heap every `FULL_INTERVAL` seconds by a timer. Cyclic garbage
that outlives the young collections waits at most that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator

__all__ = ["FULL_INTERVAL", "timed_collections"]

# Seconds between whole-heap collections: a pause of some ms this often, not every few seconds of load.
FULL_INTERVAL = 30.0
# A generation-2 threshold no count of young collections reaches: CPython never starts a full pass itself.
_NEVER = 1 << 30


@contextlib.asynccontextmanager
async def timed_collections(interval: float = FULL_INTERVAL) -> AsyncIterator[None]:
    """Inside: the startup heap frozen, full collections every `interval` seconds; the collector as it was after."""
    before = gc.get_threshold()
    gc.collect()  # what starting left behind goes now, not into the frozen heap
    gc.freeze()
    gc.set_threshold(before[0], before[1], _NEVER)
    task = asyncio.ensure_future(_collect_every(interval))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        gc.set_threshold(*before)
        gc.unfreeze()


async def _collect_every(interval: float) -> None:
    while True:
        await asyncio.sleep(interval)  # housekeeping on a clock, not a data-path wait
        gc.collect()
