"""One edge process's hit path, in-process: memory hits fed to a player connection on a fake transport.

    cd benchmarks && PYTHONPATH=TREE python -m tools.hitloop --hits N [--reps R] [--signed]

Imports livecdn from whatever tree is first on the path (this layout or the
flat one before issue 9), builds an edge's engine, front and policy (prefetch
bookkeeping on, access log off, metrics tally on: as `speed.py` runs it), puts one 1 KiB
segment in the memory tier and feeds N one-request reads to one connection.
With `--forwarded`, the connection is from a trusted proxy and each request
names its client in X-Forwarded-For (issue 13's resolution on every hit).
Prints one JSON line: microseconds per hit (median of R passes) and hits.
With `--signed` the edge wants signed URLs and every read carries one token
(a viewer's, remembered after its first check).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import uvloop

from edge.policy import EdgePolicy
from livecdn.config import Address, EdgeConfig

try:  # the rooms of issue 9
    from livecdn.cache.engine import Engine
    from livecdn.cache.freshness import Lifetime, Rules
    from livecdn.cache.memory import MemoryStore
    from livecdn.cache.stored import Stored
    from livecdn.front.answers import PlayerFront
    from livecdn.front.listener import PlayerServer
    from livecdn.media.kinds import NameKind as Kind
except ImportError:  # the flat layout before them
    from livecdn.engine import Engine  # type: ignore[no-redef]
    from livecdn.freshness import Lifetime, Rules  # type: ignore[no-redef]
    from livecdn.listener import PlayerServer  # type: ignore[no-redef]
    from livecdn.memory import MemoryStore  # type: ignore[no-redef]
    from livecdn.stored import Stored  # type: ignore[no-redef]

    from livecdn.front import PlayerFront  # type: ignore[no-redef]
    from livecdn.media import Kind  # type: ignore[no-redef]

KEY = "/live/720p/seg1.ts"


class Transport:
    """Just enough of a transport for the listener; counts writes."""

    def __init__(self) -> None:
        self.writes = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None) -> None: ...

    def writelines(self, data: Any) -> None:
        self.writes += 1

    def write(self, data: Any) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def close(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def signed(config: EdgeConfig) -> tuple[EdgeConfig, dict[str, Any], str]:
    """The policy's signing keyword and a signed target (trees without signed URLs cannot run this)."""
    from livecdn.config import SigningKey, SigningSettings
    from livecdn.signing import sign

    key = SigningKey("bench", "bench-secret-0123456789")
    target = sign(KEY, key.id, key.secret.encode(), int(time.time()) + 3600)
    return config, {"signing": SigningSettings((key,))}, target


# What a load balancer in front of the edge adds: the player, and the balancer's own hop.
FORWARDED = "X-Forwarded-For: 203.0.113.7, 10.0.0.2\r\n"


async def loop(hits: int, reps: int, forwarded: bool = False, signing: bool = False) -> dict[str, float]:
    memory = MemoryStore(64 << 20)
    engine = Engine("bench", memory, None, lambda key: ("http://upstream.invalid",), Rules(), 1 << 24, 1.0)
    memory.put(Stored(KEY, 200, (("content-type", "video/mp2t"),), b"x" * 1024, time.time(),
                      Lifetime(3600, 0, 0), Kind.MEDIA))
    local = Address("127.0.0.1", 0)
    config, extra, target = EdgeConfig("bench", "eu", local, local, (50.0, 8.0)), {}, KEY
    if signing:
        config, extra, target = signed(config)
    front = PlayerFront(engine, "bench", EdgePolicy(config, engine, **extra))
    options: dict[str, Any] = {}
    if forwarded:
        from livecdn.front.forwarded import ClientAddresses  # issue 13's trees only
        options["addresses"] = ClientAddresses(["127.0.0.1/32", "10.0.0.0/8"])
    try:  # as a node runs it: every answer tallied for the metrics (issue 14)
        from livecdn.metrics import Tally
        options["tally"] = Tally("bench", "edge")
    except ImportError:  # a tree from before
        pass
    server = PlayerServer(front, **options)
    conn = server()
    transport = Transport()
    conn.connection_made(transport)
    request = f"GET {target} HTTP/1.1\r\nHost: cdn\r\nUser-Agent: wrk\r\n{FORWARDED if forwarded else ''}\r\n".encode()
    passes = []
    for _ in range(reps):
        started = time.perf_counter()
        for _ in range(hits):
            conn.data_received(request)
        passes.append((time.perf_counter() - started) / hits * 1e6)
    if transport.writes < hits * reps:
        raise SystemExit(f"only {transport.writes} answers written for {hits * reps} requests")
    return {"us_per_hit": round(statistics.median(passes), 3), "hits": hits * reps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hits", type=int, default=100_000)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--forwarded", action="store_true", help="a trusted proxy's connection, X-Forwarded-For per request")
    p.add_argument("--signed", action="store_true", help="the edge wants signed URLs; every read has one")
    args = p.parse_args()
    print(json.dumps(uvloop.run(loop(args.hits, args.reps, args.forwarded, args.signed))))


if __name__ == "__main__":
    main()
