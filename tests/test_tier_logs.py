"""One request traced through the tiers by its access lines (issue 14, item 7): real `livecdn` processes.

An answer that asked the tier above says so in its access line: which
upstream, what it answered (or 502/504 when it sent no head, as nginx's
`$upstream_status`), how long its head took and the request id it carried.
The id is the client's X-Request-Id when it is a plain bounded token, and
travels edge → shield → origin, so one grep finds a request in every tier.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.cdn import ROOT, topology_toml, wait_until
from tests.fakeorigin import FakeOrigin, body, in_thread
from tests.test_operator import admin_of, fetch, listen_of

SEGMENT = b"\x47" * 188 * 100


async def hang_up(request: web.Request) -> web.StreamResponse:
    """No answer head at all: the connection closes under the request."""
    assert request.transport is not None
    request.transport.close()
    return web.Response()


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A fake origin, one shield and one edge, each cache node writing its access lines to a file."""
    origin = FakeOrigin()
    origin.routes.update({"/live/seg1.ts": body(SEGMENT), "/live/seg2.ts": body(SEGMENT),
                          "/live/seg3.ts": body(SEGMENT), "/live/gone.ts": hang_up})
    with in_thread(origin):
        text = topology_toml(origin=origin.url, edges=1, router=False)
        config = tmp_path / "cdn.toml"
        config.write_text(text)
        logs = {"shield-1": tmp_path / "shield.log", "edge-1": tmp_path / "edge.log"}
        procs = [subprocess.Popen([sys.executable, "-m", "livecdn", "run", "--config", str(config), "--node", name,
                                   "--log-level", "error", "--access-log", str(logs[name])], cwd=ROOT)
                 for name in ("shield-1", "edge-1")]
        edge = listen_of(text, "edges.edge-1")
        try:
            for node in ("shields.shield-1", "edges.edge-1"):
                assert wait_until(lambda node=node: _answers(admin_of(text, node) + "/healthz"), 30), node
            yield {"edge": edge, "shield": listen_of(text, "shields.shield-1"), "origin": origin, "logs": logs}
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            assert [p.wait(20) for p in procs] == [0, 0]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def _line(log: Path, path: str, request_id: str | None = None) -> dict[str, Any] | None:
    """The last access line for `path` (with that request id, when given), once it is written."""
    if not log.exists():
        return None
    found = None
    for ln in log.read_text().splitlines():
        line = json.loads(ln)
        if line["path"] == path and (request_id is None or line["request_id"] == request_id):
            found = line
    return found


def _wait_line(log: Path, path: str, request_id: str | None = None) -> dict[str, Any]:
    assert wait_until(lambda: _line(log, path, request_id) is not None, 10), (path, request_id, log.read_text())
    line = _line(log, path, request_id)
    assert line is not None
    return line


@pytest.mark.slow
def test_a_miss_names_its_upstream_status_time_and_the_id_it_carried_in_each_tier(chain: dict[str, Any]) -> None:
    edge, origin, logs = chain["edge"], chain["origin"], chain["logs"]
    assert fetch(edge + "/live/seg1.ts", {"X-Request-Id": "trace-7"}) == (200, SEGMENT)
    asked = [r.headers.get("X-Request-Id") for r in origin.requests if r.path == "/live/seg1.ts"]
    assert asked == ["trace-7"]  # the client's id reached the origin through both tiers
    at_edge = _wait_line(logs["edge-1"], "/live/seg1.ts", "trace-7")
    at_shield = _wait_line(logs["shield-1"], "/live/seg1.ts", "trace-7")
    assert (at_edge["cache"], at_edge["upstream"], at_edge["upstream_status"], at_edge["upstream_request_id"]) == (
        "MISS", chain["shield"], 200, "trace-7")
    assert (at_shield["cache"], at_shield["upstream"], at_shield["upstream_status"],
            at_shield["upstream_request_id"]) == ("MISS", origin.url, 200, "trace-7")
    # The edge waited for the shield's head, which waited for the origin's.
    assert 0 < at_shield["upstream_ms"] <= at_edge["upstream_ms"] <= at_edge["ms"]
    # A hit asked nobody: its line has no upstream fields.
    assert fetch(edge + "/live/seg1.ts", {"X-Request-Id": "trace-8"})[0] == 200
    hit = _wait_line(logs["edge-1"], "/live/seg1.ts", "trace-8")
    assert hit["cache"] == "HIT" and not {k for k in hit if k.startswith("upstream")}


@pytest.mark.slow
def test_an_id_that_is_no_plain_bounded_token_is_replaced_and_the_new_one_travels(chain: dict[str, Any]) -> None:
    edge, origin, logs = chain["edge"], chain["origin"], chain["logs"]
    for path, given in (("/live/seg2.ts", "x" * 129), ("/live/seg3.ts", 'a"b c')):
        assert fetch(edge + path, {"X-Request-Id": given})[0] == 200
        line = _wait_line(logs["edge-1"], path)
        made = line["request_id"]
        assert made and made != given and line["upstream_request_id"] == made
        assert [r.headers.get("X-Request-Id") for r in origin.requests if r.path == path] == [made]
        assert _wait_line(logs["shield-1"], path, made)["upstream_request_id"] == made


@pytest.mark.slow
def test_an_upstream_that_sent_no_head_is_logged_as_502_in_the_tier_that_asked_it(chain: dict[str, Any]) -> None:
    edge, logs = chain["edge"], chain["logs"]
    assert fetch(edge + "/live/gone.ts", {"X-Request-Id": "gone-1"})[0] == 502
    at_shield = _wait_line(logs["shield-1"], "/live/gone.ts", "gone-1")
    assert (at_shield["status"], at_shield["upstream"], at_shield["upstream_status"]) == (
        502, chain["origin"].url, 502)
    at_edge = _wait_line(logs["edge-1"], "/live/gone.ts", "gone-1")
    assert (at_edge["status"], at_edge["upstream"], at_edge["upstream_status"]) == (502, chain["shield"], 502)


@pytest.mark.slow
def test_an_access_log_the_node_cannot_open_is_one_line_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "cdn.toml"
    config.write_text(topology_toml(origin="http://127.0.0.1:9", edges=1, router=False))
    bad = tmp_path / "no-such-dir" / "access.log"
    done = subprocess.run([sys.executable, "-m", "livecdn", "run", "--config", str(config), "--node", "edge-1",
                           "--access-log", str(bad)], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"livecdn: {bad}: --access-log: cannot open for writing: No such file or directory"]
