"""Every Prometheus metric livecdn exports, and their exposition.

A node with several worker processes runs prometheus-client in multiprocess
mode: the CLI sets PROMETHEUS_MULTIPROC_DIR before this module is imported,
each worker writes its samples there, and `/metrics` on any worker sums them.
The sans-io core never imports this module; the shells count what happened.
"""

from __future__ import annotations

import collections
import os
import platform
from bisect import bisect_right
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from livecdn import __version__

__all__ = [
    "BUILD_INFO", "CONNECTIONS", "DISK_BYTES", "RESPONSE_BUCKETS", "RESPONSE_SECONDS", "RESPONSES", "SENT_BYTES",
    "Tally", "UPSTREAM_ERRORS", "UPSTREAM_RESPONSES", "status_class",
    "GUARD_FILTER_BYTES", "GUARD_REFRESHES", "GUARD_REJECTIONS", "GUARD_STREAMS", "GUARD_UNKNOWN",
    "INFLIGHT", "MEMORY_BYTES", "PREFETCHES", "PREFETCH_DROPPED", "PREFETCH_HITS", "RATE_LIMITED",
    "REQUESTS", "TOKEN_REFUSALS", "UPSTREAM_EJECTIONS", "UPSTREAM_REQUESTS", "UPSTREAM_SECONDS", "UPSTREAM_UP",
    "exposition", "RouterReading", "forget_router", "watch_router",
]

disable_created_metrics()  # the _created series only double the output of every counter


REQUESTS = Counter("livecdn_requests_total", "Player-facing requests by cache result", ["node", "cache"])
UPSTREAM_REQUESTS = Counter("livecdn_upstream_requests_total", "Requests this node sent upstream", ["node"])
INFLIGHT = Gauge("livecdn_inflight_requests", "Requests being answered now", ["node"],
                 multiprocess_mode="livesum")
# Upstream health (livecdn/cache/health.py), labelled by upstream base URL: a topology's few shields and origins.
UPSTREAM_UP = Gauge("livecdn_upstream_up", "1 while the upstream is in the ring, 0 while ejected (any worker)",
                    ["node", "upstream"], multiprocess_mode="livemin")
UPSTREAM_EJECTIONS = Counter("livecdn_upstream_ejections_total",
                             "Times an upstream was taken out of the ring: it failed to connect, timed out or broke",
                             ["node", "upstream"])
# Live segments are small and near: the buckets are about the first-byte timeout's range.
UPSTREAM_SECONDS = Histogram("livecdn_upstream_first_byte_seconds",
                             "From sending a request upstream to its status line", ["node", "upstream"],
                             buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0))
MEMORY_BYTES = Gauge("livecdn_memory_cache_bytes", "Bytes held by the memory tier", ["node"],
                     multiprocess_mode="livesum")
DISK_BYTES = Gauge("livecdn_disk_cache_bytes", "Bytes the disk tier holds (shared by the node's workers)", ["node"],
                   multiprocess_mode="livemax")
CONNECTIONS = Gauge("livecdn_open_connections", "Client connections open on the player listener", ["node"],
                    multiprocess_mode="livesum")
UPSTREAM_RESPONSES = Counter("livecdn_upstream_responses_total", "Answers from each upstream, by status class",
                             ["node", "upstream", "code"])
UPSTREAM_ERRORS = Counter("livecdn_upstream_errors_total", "Upstream requests that got no answer, by what happened "
                          "(connect, timeout, broken)", ["node", "upstream", "error"])
BUILD_INFO = Gauge("livecdn_build_info", "Always 1: the version running", ["version", "python"],
                   multiprocess_mode="max")
BUILD_INFO.labels(__version__, platform.python_version()).set(1)

# --- what the player listener answered (livecdn/front/listener.py), counted in batches by `Tally` ---
# A memory hit is answered in tens of microseconds: the low buckets resolve it, the high ones a
# segment streamed from upstream to a slow player.
RESPONSE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0, 30.0)
RESPONSE_SECONDS = Histogram("livecdn_response_seconds", "From a request's head to its answer's last byte "
                             "handed to the socket, by tier and cache result", ["node", "tier", "cache"],
                             buckets=RESPONSE_BUCKETS)
RESPONSES = Counter("livecdn_responses_total", "Answers to clients by status class", ["node", "tier", "code"])
SENT_BYTES = Counter("livecdn_sent_bytes_total", "Body bytes sent to clients", ["node", "tier"])
CODES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_BOUNDS = (*RESPONSE_BUCKETS, float("inf"))
# Answers a lane holds before the Tally flushes on its own (besides the node's once a second): a
# flush sorts them, and this many floats sort in tens of microseconds and stay in the CPU's cache.
# At 65536 each flush held the loop ~8 ms (and its 2 MiB of floats competed with the hit path for
# the caches): a cached playlist's p99 under wrk was 3.6-5.3 ms, against 1.5-2.4 ms at 1024 (issue 16).
MAX_TALLIED = 1024
# Fields a Tally remembers the lane of: stored objects' hit fields, and refusals' own until it empties.
MAX_LANES = 4096


def status_class(status: int) -> str:
    """A status's label: "2xx" and so on (anything outside 100..599 counts with the nearest class)."""
    return CODES[min(max(status // 100, 1), 5) - 1]


class Tally:
    """One listener's answers, kept as plain lists and added to the metrics above in one go (`flush`).

    An answer only appends its duration to the list of its (cache result,
    status), its *lane*, and adds its body bytes to `sent`: a histogram
    observation takes a lock per call (and in multiprocess mode writes a
    memory-mapped file), and even bucketing each duration in Python would
    be a tenth of a hit. The hit path finds its lane in `lanes` by the
    answer's `Fields` (shared by every hit on a stored object: one
    dictionary lookup by identity, no key to build); anything else calls
    `add`. `flush` sorts each cache result's durations and counts them per
    bucket with a bisection per bound (C does the work); the node flushes
    every second and before /metrics is read, as `PlayerFront.flush_hits`.
    Counts are exact: every answer is in one lane until the flush adds it.

    Args:
        node: the node's name; tier: its role (edge, shield).
    """

    __slots__ = ("node", "tier", "sent", "lanes", "_kinds")

    def __init__(self, node: str, tier: str) -> None:
        self.node, self.tier = node, tier
        self.sent = 0
        # An answer's fields (by identity) -> its lane; bounded by MAX_LANES, emptied when full.
        self.lanes: dict[object, list[float]] = {}
        # (X-Cache value, status) -> seconds of each answer since the last flush: a bounded set of lanes.
        self._kinds: dict[tuple[str, int], list[float]] = {}

    def add(self, status: int, sent: int, seconds: float, cache: str) -> None:
        """One answer: its status, body bytes, seconds taken and cache result as X-Cache says it."""
        times = self.lane(status, cache)
        times.append(seconds)
        self.sent += sent
        if len(times) >= MAX_TALLIED:
            self.flush()

    def lane(self, status: int, cache: str) -> list[float]:
        """The list answers of this status and cache result append their seconds to (emptied by `flush`)."""
        kind = (cache, status)
        times = self._kinds.get(kind)
        if times is None:
            times = self._kinds[kind] = []
        return times

    def lane_of(self, fields: object, status: int, cache: str) -> list[float]:
        """`lane()`, remembered in `lanes` under `fields` (the hit path looks there first)."""
        lanes = self.lanes
        if len(lanes) >= MAX_LANES:
            lanes.clear()  # answers' own fields (refusals) fill it; the shared ones of hits come back at once
        times = lanes[fields] = self.lane(status, cache)
        return times

    def flush(self) -> None:
        """Add what was counted since the last flush to the Prometheus metrics (lanes stay, emptied)."""
        node, tier = self.node, self.tier
        by_cache: dict[str, list[float]] = {}
        classes: collections.Counter[str] = collections.Counter()
        for (cache, status), times in self._kinds.items():
            if times:
                by_cache.setdefault(cache, []).extend(times)
                classes[status_class(status)] += len(times)
                times.clear()
        for cache, times in by_cache.items():
            times.sort()
            counts, below = [], 0
            for bound in _BOUNDS:  # cumulative: answers within each bound
                within = bisect_right(times, bound)
                counts.append(within - below)
                below = within
            _observe_many(RESPONSE_SECONDS.labels(node, tier, cache.lower()), counts, sum(times))
        for code, n in classes.items():
            RESPONSES.labels(node, tier, code).inc(n)
        if self.sent:
            SENT_BYTES.labels(node, tier).inc(self.sent)
            self.sent = 0


def _observe_many(child: Histogram, counts: list[int], total: float) -> None:
    """Add bucket counts and a sum to a histogram child as that many `observe()` calls would.

    prometheus-client has no public call for it; its histogram keeps one value
    per bucket (not cumulative, summed at collection) and one for the sum,
    the same objects in multiprocess mode. tests/test_metrics.py checks the
    exposition against the answers made, so a change there is caught.
    """
    for i, n in enumerate(counts):
        if n:
            child._buckets[i].inc(n)  # noqa: SLF001 - see above
    child._sum.inc(total)  # noqa: SLF001

# --- the edge's knowledge of its streams (edge/) ---
GUARD_REJECTIONS = Counter("livecdn_guard_rejections_total",
                           "Requests refused before any upstream fetch, by reason", ["node", "reason"])
GUARD_REFRESHES = Counter("livecdn_guard_refreshes_total",
                          "Playlist refreshes the guard triggered for a name it did not know", ["node"])
GUARD_UNKNOWN = Counter("livecdn_guard_unknown_names_total",
                        "Names of streams never seen that were asked upstream, by how (fetch, only_if_cached) "
                        "and whether they existed (only those that did not spend the budget)",
                        ["node", "asked", "found"])
GUARD_STREAMS = Gauge("livecdn_guard_streams", "Streams whose announced names the guard holds", ["node"],
                      multiprocess_mode="livesum")
GUARD_FILTER_BYTES = Gauge("livecdn_guard_filter_bytes", "Memory held by the guard's Bloom filters", ["node"],
                           multiprocess_mode="livesum")
PREFETCHES = Counter("livecdn_prefetches_total", "Objects fetched before any player asked", ["node"])
PREFETCH_HITS = Counter("livecdn_prefetch_hits_total",
                        "Prefetched objects whose first player request found them cached", ["node"])
PREFETCH_DROPPED = Counter("livecdn_prefetch_dropped_total", "Prefetches dropped: queue full", ["node"])
RATE_LIMITED = Counter("livecdn_rate_limited_total", "Requests answered 429, by limit", ["node", "limit"])
TOKEN_REFUSALS = Counter("livecdn_token_refusals_total", "Requests answered 403 for their signed-URL token, "
                         "by reason", ["node", "reason"])


# --- the geo router (geo/) ---
# The DNS hot path only adds to plain ints: a Counter.inc() takes a lock and
# costs about a third of a microsecond per label set, a tenth of a whole
# answer. These families are built from the router's counts at scrape time.

@dataclass(frozen=True)
class RouterReading:
    """The router's own counts at one moment."""

    dns: Mapping[tuple[str, str], int]  # (qtype, rcode) → messages answered
    dropped: int  # messages not answered (responses, runts)
    truncated: int  # UDP answers sent with TC
    unsent: int  # UDP replies the socket would not take (send buffer full) or could not send
    decisions: Mapping[tuple[str, str], int]  # (edge, reason) → routes handed out (DNS and HTTP)
    redirects: Mapping[str, int]  # edge → HTTP 302s
    edges: Mapping[str, tuple[bool, bool, bool, float | None]]  # edge → up, overloaded, suspect, load


class _RouterCollector:
    def __init__(self) -> None:
        self._sources: dict[str, Callable[[], RouterReading]] = {}

    def watch(self, node: str, read: Callable[[], RouterReading]) -> None:
        self._sources[node] = read

    def forget(self, node: str) -> None:
        self._sources.pop(node, None)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        queries = CounterMetricFamily("livecdn_dns_queries", "DNS messages answered, by question type and "
                                      "response code", labels=["node", "qtype", "rcode"])
        dropped = CounterMetricFamily("livecdn_dns_dropped", "DNS messages dropped unanswered", labels=["node"])
        truncated = CounterMetricFamily("livecdn_dns_truncated", "UDP answers truncated (TC)", labels=["node"])
        unsent = CounterMetricFamily("livecdn_dns_unsent", "UDP replies lost on the way out (the socket's send "
                                     "buffer full, the client unreachable)", labels=["node"])
        decisions = CounterMetricFamily("livecdn_route_decisions", "Routes handed out (DNS answers and "
                                        "redirects), by edge and reason", labels=["node", "edge", "reason"])
        redirects = CounterMetricFamily("livecdn_redirects", "HTTP 302s to an edge", labels=["node", "edge"])
        up = GaugeMetricFamily("livecdn_edge_up", "1 while the edge passes its health checks",
                               labels=["node", "edge"])
        overloaded = GaugeMetricFamily("livecdn_edge_overloaded", "1 while the edge reports itself overloaded",
                                       labels=["node", "edge"])
        suspect = GaugeMetricFamily("livecdn_edge_suspect", "1 while the edge's newest health check is slow, late "
                                    "or failed (still up: players go elsewhere first)", labels=["node", "edge"])
        load = GaugeMetricFamily("livecdn_edge_load", "The edge's last reported load (1 = capacity)",
                                 labels=["node", "edge"])
        for node, read in list(self._sources.items()):
            r = read()
            for (qtype, rcode), n in r.dns.items():
                queries.add_metric([node, qtype, rcode], n)
            dropped.add_metric([node], r.dropped)
            truncated.add_metric([node], r.truncated)
            unsent.add_metric([node], r.unsent)
            for (edge, reason), n in r.decisions.items():
                decisions.add_metric([node, edge, reason], n)
            for edge, n in r.redirects.items():
                redirects.add_metric([node, edge], n)
            for edge, (is_up, is_overloaded, is_suspect, edge_load) in r.edges.items():
                up.add_metric([node, edge], int(is_up))
                overloaded.add_metric([node, edge], int(is_overloaded))
                suspect.add_metric([node, edge], int(is_suspect))
                if edge_load is not None:
                    load.add_metric([node, edge], edge_load)
        yield from (queries, dropped, truncated, unsent, decisions, redirects, up, overloaded, suspect, load)


_ROUTER = _RouterCollector()
REGISTRY.register(_ROUTER)


def watch_router(node: str, read: Callable[[], RouterReading]) -> None:
    """Export a router's counts, read by `read()` at every scrape."""
    _ROUTER.watch(node, read)


def forget_router(node: str) -> None:
    _ROUTER.forget(node)


def exposition() -> tuple[bytes, str]:
    """The text format of every metric, summed over worker processes when there are several."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(_ROUTER)  # read from the router's own process, not the shared files
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
