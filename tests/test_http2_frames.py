"""The HTTP/2 server connection's own frame layer (livecdn/front/http2.py), sans-io, against the `h2` client.

The request memo must never hand back a stale head (the dynamic table moves
under it); malformed requests are stream errors that leave the connection
up; a request body is dropped with its window given back; an answer whose
fields pass one frame goes out as HEADERS plus CONTINUATION.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livecdn.front.http2 import ErrorCodes, RequestReceived, ServerConnection, StreamCancelled
from livecdn.front.plan import Fields

PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=200)
OK = Fields(200, (("content-type", "video/mp2t"),))


def pair(**config: bool) -> tuple[h2.connection.H2Connection, ServerConnection]:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None, **config))
    client.initiate_connection()
    server = ServerConnection()
    server.initiate()
    return client, server


def turn(client: h2.connection.H2Connection, server: ServerConnection) -> tuple[list[object], list[object]]:
    """The client's bytes to the server and the server's answer back: (server events, client events)."""
    got = server.receive_data(client.data_to_send(), 0.0)
    server.pump(1 << 20)
    return got, client.receive_data(server.data_to_send())


GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"e"), (b":path", b"/a.ts")]


def open_get(client: h2.connection.H2Connection, server: ServerConnection, *, end_stream: bool = True,
             method: bytes = b"GET") -> tuple[int, list[object]]:
    """A new stream asking for /a.ts, sent and read: (its id, the server's events)."""
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, [(b":method", method), *GET[1:]], end_stream=end_stream)
    return sid, turn(client, server)[0]


_NAMES = st.sampled_from([b"user-agent", b"accept", b"x-a", b"x-b", b"range", b"cookie"])
_VALUES = st.sampled_from([b"1", b"2", b"hls.js", b"bytes=0-99", b"a" * 300])
_HEADS = st.tuples(st.sampled_from([b"/a.ts", b"/live/index.m3u8?_HLS_msn=4", b"/b.ts"]),
                   st.lists(st.tuples(_NAMES, _VALUES), max_size=4, unique_by=lambda f: f[0]),
                   st.sampled_from([None, 0, 64, 256, 4096]))


@PROPERTY
@given(st.lists(_HEADS, min_size=1, max_size=25))
def test_every_request_reads_back_as_sent_while_the_dynamic_table_moves(heads: list[tuple]) -> None:
    """The memo is keyed by the block's bytes: the same bytes after a table change must be read again."""
    client, server = pair()
    turn(client, server)
    for path, fields, table_size in heads:
        if table_size is not None:
            client.encoder.header_table_size = table_size  # the next block starts with a size update
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"e"),
                                  (b":path", path), *fields], end_stream=True)
        events, _ = turn(client, server)
        (ev,) = events
        assert isinstance(ev, RequestReceived) and ev.stream_id == sid
        assert (ev.request.method, ev.request.target.encode()) == ("GET", path)
        assert ev.request.headers == {b"host": b"e", **dict(fields)}
        ev.request.headers[b"x-mutated"] = b"1"  # a front that changes its request changes no later one
        ev.request.target = "/changed"
        server.respond(sid, ev.request, OK, b"ok", None, 0.0)
        turn(client, server)


def test_malformed_requests_are_stream_errors_and_the_connection_goes_on() -> None:
    client, server = pair(validate_outbound_headers=False, normalize_outbound_headers=False)
    turn(client, server)
    malformed = [
        [*GET, (b"User-Agent", b"x")],  # upper case
        [*GET, (b"connection", b"keep-alive")],  # connection-specific
        [*GET, (b"te", b"gzip")],  # te other than trailers
        [*GET, (b"x-a", b"v\x00")],  # NUL in a value
        [*GET, (b"x-a", b" v")],  # whitespace at an end
        GET[:3],  # no :path
        [(b"x-a", b"1"), *GET],  # a pseudo-header after a field
        [*GET, (b":method", b"GET")],  # a pseudo-header twice
        [*GET, (b":status", b"200")],  # a response's pseudo-header
    ]
    for headers in malformed:
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, headers, end_stream=True)
        events, received = turn(client, server)
        assert events == []
        resets = [e for e in received if isinstance(e, h2.events.StreamReset)]
        assert [(e.stream_id, e.error_code) for e in resets] == [(sid, ErrorCodes.PROTOCOL_ERROR)], headers
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, [*GET, (b"te", b"trailers")], end_stream=True)
    (ev,), _ = turn(client, server)
    assert isinstance(ev, RequestReceived) and not server.ended


def test_a_request_body_is_dropped_and_its_window_given_back() -> None:
    client, server = pair()
    turn(client, server)
    sid, (ev,) = open_get(client, server, end_stream=False, method=b"POST")
    assert isinstance(ev, RequestReceived)
    sent = 0
    while sent < 300_000:  # four times the initial windows: it goes on only as updates come back
        room = min(client.local_flow_control_window(sid), 16384)
        assert room > 0, f"the window stayed shut after {sent} bytes"
        client.send_data(sid, b"b" * room)
        sent += room
        events, _ = turn(client, server)
        assert events == [] and not server.ended
    client.end_stream(sid)
    turn(client, server)
    server.respond(sid, ev.request, Fields(405, ()), b"", None, 0.0)
    _, received = turn(client, server)
    assert any(isinstance(e, h2.events.StreamEnded) and e.stream_id == sid for e in received)


@pytest.mark.parametrize("answered", [False, True])
def test_trailers_that_do_not_end_the_stream_reset_it(answered: bool) -> None:
    """Whether or not its answer is still going out: the client broke the stream, RST_STREAM says so."""
    client, server = pair()
    turn(client, server)
    sid, (ev,) = open_get(client, server, end_stream=False)
    if answered:
        server.respond(sid, ev.request, OK, b"ok", None, 0.0)
        turn(client, server)
    raw = client.encoder.encode([(b"x-trailer", b"1")])
    client_bytes = len(raw).to_bytes(3, "big") + bytes([1, 0x4]) + sid.to_bytes(4, "big") + raw  # no END_STREAM
    events = server.receive_data(client_bytes, 0.0)
    assert [type(e) for e in events] == ([] if answered else [StreamCancelled])  # an answer under way stops
    data = server.data_to_send()
    assert data[3] == 3 and int.from_bytes(data[5:9], "big") == sid  # RST_STREAM on that stream
    assert int.from_bytes(data[9:13], "big") == ErrorCodes.PROTOCOL_ERROR and not server.ended


def test_fields_past_one_frame_go_as_headers_and_continuation() -> None:
    client, server = pair()
    turn(client, server)
    sid, (ev,) = open_get(client, server)
    big = Fields(200, tuple((f"x-pad-{i}", "v" * 1000) for i in range(40)))
    server.respond(sid, ev.request, big, b"body", None, 0.0)
    server.pump(1 << 20)
    data = server.data_to_send()
    kinds = []
    rest = data
    while rest:
        length = int.from_bytes(rest[:3], "big")
        kinds.append(rest[3])
        rest = rest[9 + length:]
    assert kinds[0] == 1 and kinds.count(9) >= 2 and kinds[-1] == 0  # HEADERS, CONTINUATION..., DATA
    (response, *_) = [e for e in client.receive_data(data) if isinstance(e, h2.events.ResponseReceived)]
    assert dict(response.headers)[b"x-pad-39"] == b"v" * 1000


def test_a_window_update_of_0_on_a_stream_resets_only_that_stream() -> None:
    client, server = pair()
    turn(client, server)
    sid, (ev,) = open_get(client, server)
    server.send_head(sid, ev.request, OK, None, None, 0.0)
    events = server.receive_data(b"\x00\x00\x04\x08\x00" + sid.to_bytes(4, "big") + b"\x00\x00\x00\x00", 0.0)
    assert [type(e) for e in events] == [StreamCancelled] and not server.ended
    assert server.active == 0
