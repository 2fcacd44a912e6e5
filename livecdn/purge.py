"""`livecdn purge`: one purge on every shield and edge of the topology, through their admin listeners.

Shields first, then edges: an edge purged before its shield could refill
from the shield's old copy. The nodes of a tier are purged at once. A tier
that fails does not stop the next (purging an edge never hurts); the command
reports every node and exits 1 when any failed, so it can simply be run again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass

import aiohttp

from livecdn.config import ConfigError, Topology
from livecdn.config.load import TOKEN_ENV
from livecdn.node.broadcast import ANSWER_TIMEOUT
from livecdn.node.purge import BadSelector, Selector

__all__ = ["NodeResult", "run_purge", "selector_of"]

# How long one node may take to answer: a purge scans its whole disk tier
# (seconds for millions of objects), then waits up to ANSWER_TIMEOUT for its
# sibling workers.
NODE_TIMEOUT = 60.0 + ANSWER_TIMEOUT


@dataclass(frozen=True)
class NodeResult:
    """One node's answer to the purge: its JSON, or what went wrong."""

    role: str
    name: str
    admin: str
    answer: dict[str, object] | None
    error: str = ""

    @property
    def dropped(self) -> int:
        n = (self.answer or {}).get("dropped", 0)
        return n if isinstance(n, int) else 0

    def line(self) -> str:
        head = f"{self.role:<7} {self.name:<12}"
        if self.answer is None:
            return f"{head} error: {self.error}"
        memory = self.answer.get("memory") or {}
        assert isinstance(memory, dict)
        per_worker = "+".join(str(n) for n in memory.values())
        return (f"{head} dropped {self.dropped} (memory {per_worker} in {len(memory)} worker(s), "
                f"disk {self.answer.get('disk')}) in {self.answer.get('ms')} ms"
                + (f"; error: {self.error}" if self.error else ""))


def selector_of(args: argparse.Namespace) -> Selector:
    """The one selector the command line names; ConfigError (exit 2) for a bad one."""
    kind, given = next((k, v) for k, v in (("url", args.path), ("prefix", args.prefix), ("stream", args.stream))
                       if v is not None)
    try:
        return Selector(kind, given)  # type: ignore[arg-type]  # one of KINDS by construction
    except BadSelector as e:
        raise ConfigError(args.config, kind if kind != "url" else "PATH", str(e)) from None


async def _purge_node(session: aiohttp.ClientSession, role: str, name: str, admin: str, token: str,
                      selector: Selector) -> NodeResult:
    try:
        async with session.post(f"{admin}/purge", json=selector.to_json(),
                                headers={"Authorization": f"Bearer {token}"}) as r:
            text = await r.text()
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        return NodeResult(role, name, admin, None, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
    try:
        answer = json.loads(text)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        return NodeResult(role, name, admin, None, f"HTTP {r.status}: {text.strip()[:200]}")
    if r.status == 200:
        return NodeResult(role, name, admin, answer)
    reason = answer.get("error") or f"no answer from worker(s) {answer.get('unanswered')}, " \
                                    f"failed: {answer.get('errors')}"
    return NodeResult(role, name, admin, answer if "dropped" in answer else None, f"HTTP {r.status}: {reason}")


async def purge_all(topo: Topology, token: str, selector: Selector) -> list[NodeResult]:
    """Purge every shield, then every edge; one result per node, in that order."""
    tiers = [[("shield", s.name, s.admin.url) for s in topo.shields.values()],
             [("edge", e.name, e.admin.url) for e in topo.edges.values()]]
    results: list[NodeResult] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=NODE_TIMEOUT)) as session:
        for tier in tiers:
            results += await asyncio.gather(*(_purge_node(session, role, name, admin, token, selector)
                                              for role, name, admin in tier))
    return results


def run_purge(args: argparse.Namespace, topo: Topology) -> int:
    """Purge every node, print one line per node (or one JSON object); 1 when any node failed."""
    selector = selector_of(args)
    if not topo.admin_token:
        raise ConfigError(topo.path, "cdn.admin_token", f"no admin token: set it, or {TOKEN_ENV}")
    started = time.monotonic()
    results = asyncio.run(purge_all(topo, topo.admin_token, selector))
    seconds = time.monotonic() - started
    failed = [r for r in results if r.answer is None or r.error]
    dropped = sum(r.dropped for r in results)
    if args.json:
        print(json.dumps({"selector": selector.to_json(), "dropped": dropped, "seconds": round(seconds, 3),
                          "nodes": [{"role": r.role, "name": r.name, "admin": r.admin, "answer": r.answer,
                                     "error": r.error} for r in results]}))
    else:
        for r in results:
            print(r.line())
        print(f"purged {selector.to_json()}: {dropped} objects on {len(results) - len(failed)} of "
              f"{len(results)} nodes in {seconds:.2f} s")
    if failed:
        print(f"livecdn purge: failed on {', '.join(r.name for r in failed)}", file=sys.stderr)
    return 1 if failed else 0
