"""The access log's batching, without sockets: lines whole, in order, written when due."""

from __future__ import annotations

import json
import os
import select
from pathlib import Path

import pytest

from livecdn.logs import FLUSH_BYTES, AccessLog


async def test_a_full_batch_is_written_at_once_in_whole_lines_and_in_order(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    with open(path, "wb") as out:
        access = AccessLog("edge-1", out.fileno())
        n = 0
        while not path.stat().st_size:  # nothing is written until a batch is full
            assert n < FLUSH_BYTES, "a full batch was never written"
            access.write("192.0.2.7", "GET", f"/s/seg{n}.ts", 200, n, 0.001, "HIT", "ua\u00e9\n")
            n += 1
        written = path.read_text().splitlines()
        assert len(written) == n and sum(len(line) + 1 for line in written) >= FLUSH_BYTES
        access.write("192.0.2.7", "GET", "/s/last.ts", 404, 0, 0.0, "REJECTED", "")
        access.flush()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["path"] for r in records] == [f"/s/seg{i}.ts" for i in range(n)] + ["/s/last.ts"]
    assert records[0] == {"time": records[0]["time"], "node": "edge-1", "remote": "192.0.2.7", "method": "GET",
                          "path": "/s/seg0.ts", "status": 200, "bytes": 0, "ms": 1.0, "cache": "HIT",
                          "ua": "ua\u00e9\n", "host": "", "protocol": "HTTP/1.1", "range": "", "referer": "",
                          "request_id": ""}


async def test_lines_go_out_in_writes_no_larger_than_a_pipe_keeps_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    real_write = os.write

    def write(fd: int, data: bytes | memoryview) -> int:
        sizes.append(len(data))
        return real_write(fd, data)
    monkeypatch.setattr(os, "write", write)
    path = tmp_path / "access.log"
    with open(path, "wb") as out:
        access = AccessLog("edge-1", out.fileno())
        for i in range(300):
            access.write("192.0.2.7", "GET", f"/s/seg{i}.ts", 200, i, 0.0, "HIT", "player")
        access.write("192.0.2.7", "GET", "/s/" + "x" * 6000 + ".ts", 200, 0, 0.0, "HIT", "")  # one long line
        access.flush()
    lines = path.read_text().splitlines()
    assert len(lines) == 301 and all(json.loads(line) for line in lines)
    assert len(sizes) > 1 and sorted(sizes)[-2] <= select.PIPE_BUF  # only the long line's write is larger
