"""A node's worker processes as one cache: each key's owner fetches it for all (issue 16, politeness).

The ownership is pure (every worker computes it alike); the process tests run
real `livecdn` processes (one shield, one edge of two workers) and stop or kill
the worker that owns the names asked, as a wedged or crashing process would.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from livecdn.cache.keys import cache_key, origin_identity
from livecdn.cache.upstreams import ORIGIN_HEADER, Upstreams, Workers, owner, worker_url
from livecdn.config import load
from livecdn.config.schema import DEFAULT_ORIGIN, OriginRoute
from tests.cdn import run_cdn, topology_toml, wait_until
from tests.fakeorigin import FakeOrigin, body, in_thread

ROUTES = (OriginRoute(DEFAULT_ORIGIN, "http://origin.test"),)
SHIELDS = ["http://shield-a", "http://shield-b"]
NAMES = 40  # segments the playlist announces
HLS = "application/vnd.apple.mpegurl"


def test_every_key_has_one_owner_and_the_others_ask_it_first() -> None:
    keys = [cache_key(f"/live/hi/seg{i}.ts", "o.1").key for i in range(2000)]
    for count in (2, 3, 4):
        owners = Counter(owner(k, count) for k in keys)
        assert set(owners) == set(range(count))
        assert max(owners.values()) < 1.2 * len(keys) / count  # spread evenly, near enough
    key = cache_key("/live/hi/seg7.ts", origin_identity(ROUTES[0]))
    mine = owner(key.key, 3)
    nodes = {slot: Upstreams(SHIELDS, ROUTES, workers=Workers(slot, 3)) for slot in range(3)}
    plain = Upstreams(SHIELDS, ROUTES).order(key)
    assert nodes[mine].order(key) == plain  # the owner asks the node's upstreams
    for slot, ups in nodes.items():
        if slot != mine:
            assert ups.order(key) == (worker_url(mine), *plain)
            assert ups.tier(worker_url(mine)) == "worker"
            assert dict(ups.headers(key, worker_url(mine))) == {ORIGIN_HEADER: key.origin}  # as a shield is told
    assert set(nodes[0].known) == {worker_url(1), worker_url(2), *SHIELDS}
    assert Upstreams(SHIELDS, ROUTES, workers=Workers(0, 1)).order(key) == plain  # one worker: nobody to ask
    with pytest.raises(ValueError, match="slot 3"):
        Workers(3, 3)


# --- real processes ------------------------------------------------------------------


def get(base: str, path: str, timeout: float = 10) -> tuple[int, bytes, float]:
    """GET on a new connection (SO_REUSEPORT may pick either worker): status, body, seconds taken."""
    url = urllib.parse.urlsplit(base)
    started = time.monotonic()
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read(), time.monotonic() - started
    finally:
        conn.close()


def health_of(admin: str, slot: int) -> dict[str, object]:
    """The /healthz of the worker in `slot` (asked over new connections until it answers)."""
    for _ in range(60):
        try:
            health: dict[str, object] = json.loads(get(admin, "/healthz", timeout=2)[1])
        except OSError:  # a stopped worker holds the connection; a dead one's queue is reset
            continue
        if health["worker"] == slot:
            return health
    raise AssertionError(f"worker {slot} did not answer /healthz")


def segment(i: int) -> bytes:
    return f"segment {i} ".encode() * 400


@pytest.mark.slow
def test_a_stopped_or_killed_owner_costs_its_siblings_players_at_most_a_probe(tmp_path: Path) -> None:
    with in_thread(FakeOrigin()) as origin:
        names = [f"seg_{i}.ts" for i in range(NAMES)]
        origin.routes["/live/master.m3u8"] = body(b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1000\na/index.m3u8\n", HLS)
        origin.routes["/live/a/index.m3u8"] = body(
            ("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:20\n#EXT-X-MEDIA-SEQUENCE:0\n" +
             "".join(f"#EXTINF:20.0,\n{n}\n" for n in names) + "#EXT-X-ENDLIST\n").encode(), HLS)
        for i, n in enumerate(names):
            origin.routes[f"/live/a/{n}"] = body(segment(i))
        config = tmp_path / "cdn.toml"
        config.write_text(topology_toml(origin=origin.url, edges=1, workers=2, router=False))
        identity = origin_identity(load(config).routes[0])
        # The names worker 1 owns, each asked for the first time below.
        owned = [i for i, n in enumerate(names) if owner(cache_key(f"/live/a/{n}", identity).key, 2) == 1]
        with run_cdn(config) as info:
            edge = next(n for n in info["nodes"] if n["role"] == "edge")
            for _ in range(10):  # new connections: both workers' guards learn the names from the playlist
                assert get(edge["url"], "/live/a/index.m3u8")[0] == 200
            first = health_of(edge["admin"], 1)["pid"]
            assert isinstance(first, int)

            def asked(i: int) -> list[tuple[int, bytes, float]]:
                """Worker 1's name `i`, asked on ten new connections at once; those the stopped worker took
                time out."""
                def one(_: int) -> tuple[int, bytes, float] | None:
                    try:
                        return get(edge["url"], f"/live/a/seg_{i}.ts", timeout=4)
                    except OSError:
                        return None
                with ThreadPoolExecutor(10) as pool:
                    return [a for a in pool.map(one, range(10)) if a is not None]

            os.kill(first, signal.SIGSTOP)
            try:
                for i in owned[:3]:
                    answers = asked(i)
                    assert answers, f"seg_{i}: no answer at all (all ten connections reached the stopped worker?)"
                    for status, data, took in answers:  # worker 0's: a probe of the stopped one at most
                        assert status == 200 and data == segment(i) and took < 3.0, (status, took)
                stopped = health_of(edge["admin"], 0)["upstreams"]
                assert stopped[worker_url(1)]["state"] == "ejected", stopped  # type: ignore[index]
            finally:
                os.kill(first, signal.SIGCONT)

            os.kill(first, signal.SIGKILL)  # the supervisor starts another worker in its slot
            for i in owned[3:6]:
                answers = asked(i)  # its listening socket is gone: every connection reaches worker 0
                assert [(s, d) for s, d, _ in answers] == [(200, segment(i))] * len(answers) and answers
                assert max(took for _, _, took in answers) < 3.0
            assert wait_until(lambda: health_of(edge["admin"], 1)["pid"] != first, 30)

            def due() -> bool:  # the replacement's back-off at worker 0 is over
                entry = health_of(edge["admin"], 0)["upstreams"][worker_url(1)]  # type: ignore[index]
                return entry["state"] == "up" or entry["ejected_for"] == 0
            assert wait_until(due, 40, step=0.5)
            answers = asked(owned[6])  # worker 0's first ask of a name it owns is its probe
            assert [(s, d) for s, d, _ in answers] == [(200, segment(owned[6]))] * len(answers) and answers
            again = health_of(edge["admin"], 0)["upstreams"]
            assert again[worker_url(1)]["state"] == "up", again  # type: ignore[index]
