"""Property-based fuzzing of the sans-io HTTP/2 server connection (livecdn/front/http2.py), with Hypothesis.

Two drivers, both as the I/O shell would use the connection (feed a read,
answer every request event, pump within some room, write what it gives):

- a well-behaved `h2` client (requests, resets, PINGs, SETTINGS with small
  windows, WINDOW_UPDATEs) talking to the server through a loop-back link:
  nothing raises on either side, every request is answered whole (its body's
  length) or reset, and what the server writes is valid HTTP/2 to the client;
- arbitrary frames (any type, flags, stream id, payload) after a good
  preface, cut into arbitrary reads: nothing escapes but the connection's own
  events, and streams answered never exceed `MAX_STREAMS`.

Derandomized (a fixed sequence of examples, no example database), so CI sees
the same cases on every run.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livecdn.front.http2 import (
    MAX_STREAMS,
    PREFACE,
    ConnectionEnded,
    RequestReceived,
    RequestRejected,
    ServerConnection,
    StreamCancelled,
)
from livecdn.front.plan import Fields

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=300,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
OK = Fields(200, (("content-type", "video/mp2t"), ("connection", "close")))  # the latter must never go out


def answer(server: ServerConnection, events: list[object], sizes: dict[int, int], size_of: int) -> None:
    """Answer every request event: even streams' bodies whole, odd ones piece by piece (as a Stream)."""
    for ev in events:
        if isinstance(ev, RequestReceived):
            body = bytes([ev.stream_id % 251]) * size_of
            sizes[ev.stream_id] = size_of
            if ev.stream_id % 4 == 1:
                server.respond(ev.stream_id, ev.request, OK, body, 0.0, 1.0)
            else:
                server.send_head(ev.stream_id, ev.request, OK, None, None, 1.0)
                for i in range(0, size_of, 1000):
                    server.send_data(ev.stream_id, body[i:i + 1000])
                server.end(ev.stream_id)
        elif isinstance(ev, RequestRejected):
            sizes[ev.stream_id] = 0
            server.respond(ev.stream_id, None, Fields(ev.error.status, ()), b"", None, 1.0)
        assert server.active <= MAX_STREAMS


ACTIONS = st.lists(st.one_of(
    st.tuples(st.just("get"), st.sampled_from(["/a.ts", "/live/index.m3u8", "/x?y=z", "/" + "p" * 9000]),
              st.sampled_from(["GET", "HEAD", "OPTIONS", "POST"])),
    st.tuples(st.just("reset"), st.integers(0, 20)),
    st.tuples(st.just("ping")),
    st.tuples(st.just("window"), st.integers(0, 70000)),
    st.tuples(st.just("settings"), st.integers(0, 70000)),
    st.tuples(st.just("pump"), st.integers(0, 200_000)),
), max_size=40)


@FUZZ
@given(actions=ACTIONS, size_of=st.integers(0, 70_000), room=st.integers(1, 100_000))
def test_a_well_behaved_client_gets_every_request_answered_or_reset(actions: list[tuple], size_of: int,
                                                                     room: int) -> None:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="latin-1"))
    client.initiate_connection()
    server = ServerConnection()
    server.initiate()
    sizes: dict[int, int] = {}
    got: dict[int, int] = {}
    done: set[int] = set()
    opened: list[int] = []
    heads: set[int] = set()  # HEAD requests: answered with no body
    whole: set[int] = set()  # streams the server ended (not reset)
    ended = False

    def exchange(room: int) -> None:
        nonlocal ended
        for _ in range(200):  # until neither side has anything to say
            data = client.data_to_send()
            if data:
                events = server.receive_data(data, 0.0)
                ended = ended or any(isinstance(e, ConnectionEnded) for e in events)
                done.update(e.stream_id for e in events if isinstance(e, StreamCancelled))
                answer(server, events, sizes, size_of)
            server.pump(room)
            out = server.data_to_send()
            if not out and not data:
                return
            if out:
                for ev in client.receive_data(out):
                    if isinstance(ev, h2.events.ResponseReceived):
                        assert b"connection" not in dict(ev.headers)
                    elif isinstance(ev, h2.events.DataReceived):
                        got[ev.stream_id] = got.get(ev.stream_id, 0) + len(ev.data)
                        client.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        done.add(ev.stream_id)
                        whole.add(ev.stream_id)
                    elif isinstance(ev, h2.events.StreamReset):
                        done.add(ev.stream_id)
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        ended = True

    for action in actions:
        if ended:
            break
        kind = action[0]
        try:
            if kind == "get":
                sid = client.get_next_available_stream_id()
                client.send_headers(sid, [(":method", action[2]), (":scheme", "http"), (":authority", "e"),
                                          (":path", action[1])], end_stream=True)
                opened.append(sid)
                if action[2] == "HEAD":
                    heads.add(sid)
            elif kind == "reset" and opened:
                client.reset_stream(opened[action[1] % len(opened)], 8)
            elif kind == "ping":
                client.ping(b"12345678")
            elif kind == "window" and action[1]:
                client.increment_flow_control_window(action[1])
            elif kind == "settings":
                client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: action[1]})
        except (h2.exceptions.StreamClosedError, h2.exceptions.TooManyStreamsError,
                h2.exceptions.FlowControlError):
            continue  # the client's own rules: nothing sent
        exchange(action[1] if kind == "pump" else room)
    if not ended:
        client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
        client.increment_flow_control_window(1 << 24)
        exchange(1 << 30)
        for sid in opened:
            assert sid in done, f"stream {sid} neither answered nor reset"
            if sid in whole:
                assert got.get(sid, 0) == (0 if sid in heads else sizes[sid]), f"stream {sid} answered in part"


FRAME = st.tuples(st.integers(0, 11), st.integers(0, 255), st.integers(0, 9),
                  st.binary(max_size=64)).map(
    lambda f: len(f[3]).to_bytes(3, "big") + bytes([f[0], f[1]]) + f[2].to_bytes(4, "big") + f[3])


@FUZZ
@given(frames=st.lists(FRAME, max_size=30), cuts=st.lists(st.integers(1, 200), max_size=20),
       room=st.integers(0, 70_000))
def test_arbitrary_frames_never_raise_and_stay_bounded(frames: list[bytes], cuts: list[int], room: int) -> None:
    server = ServerConnection()
    server.initiate()
    data = PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + b"".join(frames)
    sizes: dict[int, int] = {}
    pos = 0
    for cut in [*cuts, len(data)]:
        read, pos = data[pos:pos + cut], pos + cut
        events = server.receive_data(read, 0.0)
        answer(server, events, sizes, 100)
        server.pump(room)
        server.data_to_send()
        if server.ended:
            assert server.active == 0
            assert server.receive_data(b"more", 0.0) == []
            break
