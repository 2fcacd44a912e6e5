"""The player HTTP/1.1 connection without sockets: request framing and limits, answers and keep-alive."""

from __future__ import annotations

import pytest

from livecdn.front.http1 import (
    NEED_DATA,
    PARSE_SLICE,
    ProtocolError,
    Request,
    ServerConnection,
    date_line,
    header_lines,
    http_date,
)
from livecdn.front.plan import Fields

NOW = 0.0  # Date: Thu, 01 Jan 1970 00:00:00 GMT
DATE = date_line(NOW)


def events(*pieces: bytes, **limits: int) -> list[Request | ProtocolError]:
    """Feed the pieces in order; every event that comes out."""
    conn = ServerConnection(**limits)
    out: list[Request | ProtocolError] = []
    for piece in pieces:
        conn.receive_data(piece)
        while (event := conn.next_event()) is not NEED_DATA:
            out.append(event)  # type: ignore[arg-type]
    return out


def error(*pieces: bytes, **limits: int) -> tuple[int, str]:
    evs = events(*pieces, **limits)
    assert evs and isinstance(evs[-1], ProtocolError), evs
    return evs[-1].status, evs[-1].reason


def request(conn: ServerConnection, head: bytes) -> Request:
    conn.receive_data(head)
    req = conn.next_event()
    assert isinstance(req, Request), req
    return req


# --- requests ------------------------------------------------------------------

def test_a_simple_get() -> None:
    [req] = events(b"GET /live/a.m3u8?token=x HTTP/1.1\r\nHost: cdn\r\nRange: bytes=0-9\r\n\r\n")
    assert isinstance(req, Request)
    assert (req.method, req.target, req.version, req.keep_alive) == ("GET", "/live/a.m3u8?token=x", "1.1", True)
    assert req.header(b"range") == "bytes=0-9" and req.header(b"host") == "cdn"
    assert req.header(b"if-none-match") is None


def test_header_names_are_case_insensitive_and_repeats_join() -> None:
    [req] = events(b"GET / HTTP/1.1\r\nHOST: a\r\nAccept-Encoding: gzip\r\naccept-encoding: br\r\n\r\n")
    assert req.headers[b"accept-encoding"] == b"gzip, br"  # type: ignore[union-attr]


def test_nothing_complete_is_need_data() -> None:
    conn = ServerConnection()
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n")
    assert conn.next_event() is NEED_DATA and conn.pending == 0


def test_pipelined_requests_come_out_in_order_however_the_bytes_are_cut() -> None:
    stream = b"".join(b"GET /%d.ts HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(5))
    whole = [r.target for r in events(stream)]  # type: ignore[union-attr]
    bytewise = [r.target for r in events(*(stream[i:i + 1] for i in range(len(stream))))]  # type: ignore[union-attr]
    assert whole == bytewise == [f"/{i}.ts" for i in range(5)]


def test_blank_line_split_across_reads() -> None:
    [req] = events(b"GET /a HTTP/1.1\r\nHost: a\r\n\r", b"\n")
    assert req.target == "/a"  # type: ignore[union-attr]


@pytest.mark.parametrize(("head", "keep"), [
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\n\r\n", False),  # HTTP/1.0 closes unless it asks
    (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", False),  # a body is never read
])
def test_keep_alive_rules(head: bytes, keep: bool) -> None:
    [req] = events(head)
    assert req.keep_alive is keep  # type: ignore[union-attr]


def test_bytes_after_a_closing_request_are_ignored() -> None:
    evs = events(b"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.0\r\n\r\n")
    assert [e.target for e in evs] == ["/a"]  # type: ignore[union-attr]


def test_other_methods_parse_and_are_left_to_the_front() -> None:
    [req] = events(b"PURGE /a.ts HTTP/1.1\r\nHost: a\r\n\r\n")
    assert req.method == "PURGE"  # type: ignore[union-attr]


def test_unknown_method_is_405_with_allow() -> None:
    [err] = events(b"BREW /pot HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(err, ProtocolError) and err.status == 405
    assert dict(err.headers)["allow"] == "GET, HEAD, OPTIONS"  # names lower-case; spelled on the wire


def test_expect_100_continue_is_accepted_anything_else_is_417() -> None:
    [req] = events(b"GET /a HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n")
    assert isinstance(req, Request) and req.keep_alive
    assert error(b"GET /a HTTP/1.1\r\nHost: a\r\nExpect: tea\r\n\r\n")[0] == 417


@pytest.mark.parametrize(("data", "status", "words"), [
    (b"GET / HTTP/1.1\r\n\r\n", 400, "without Host"),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, "HTTP/2.0"),
    (b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad request"),
    (b"GET /caf\xc3 HTTP/1.1\r\nHost: a\r\n\r\n", 400, ""),
    (b"GET / FTP/1.1\r\n\r\n", 400, "bad request"),
])
def test_malformed_requests_name_the_problem(data: bytes, status: int, words: str) -> None:
    got, reason = error(data)
    assert got == status and words in reason


def test_a_long_target_is_414() -> None:
    assert error(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n")[0] == 414
    assert error(b"GET /" + b"a" * 100, max_target=50)[0] == 414  # the line is not even complete


def test_a_long_header_field_is_431_and_names_it() -> None:
    status, reason = error(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
    assert status == 431 and "X-Big" in reason


def test_an_unfinished_head_cannot_grow_past_the_limit() -> None:
    # The field never ends: httptools would hold it whole; the parser refuses at the bound.
    pieces = [b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: "] + [b"a" * 1000] * 20
    status, _ = error(*pieces, max_head=4096, max_field=1 << 20)
    assert status == 431


def test_many_requests_in_one_read_do_not_count_as_one_big_head() -> None:
    stream = b"".join(b"GET /%d.ts HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(400))  # ~12 KiB
    evs = events(stream + b"GET /last.ts HTTP/1.1\r\n", b"Host: a\r\n\r\n", max_head=1024)
    assert len(evs) == 401 and all(isinstance(e, Request) for e in evs)


def test_too_many_header_fields_is_431() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(20)) + b"\r\n"
    assert error(head, max_headers=10)[0] == 431


def test_after_an_error_nothing_more_is_parsed_and_the_connection_must_close() -> None:
    conn = ServerConnection()
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBREW / HTTP/1.1\r\n\r\n")
    conn.receive_data(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
    first = conn.next_event()
    assert isinstance(first, Request)
    assert conn.respond(first, Fields(200, ()), b"a", None, NOW)[1] == b"a" and not conn.must_close
    assert isinstance(conn.next_event(), ProtocolError)
    assert conn.next_event() is NEED_DATA
    conn.respond(None, Fields(405, ()), b"no", None, NOW)
    assert conn.must_close


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_head must be positive, got 0"):
        ServerConnection(max_head=0)


# --- answers -------------------------------------------------------------------

TS = Fields(200, (("Content-Type", "video/mp2t"), ("X-Cache", "HIT")))
GET11 = b"GET /a.ts HTTP/1.1\r\nHost: a\r\n\r\n"


def test_a_kept_http11_answer_is_head_then_body() -> None:
    conn = ServerConnection()
    out = conn.respond(request(conn, GET11), TS, b"abc", 0.0, NOW)
    assert out == (b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nX-Cache: HIT\r\nContent-Length: 3\r\n"
                   b"Age: 0\r\n" + DATE + b"\r\n", b"abc")
    assert not conn.must_close


@pytest.mark.parametrize(("born", "age"), [
    (5.0, 0),  # a clock behind the upstream's never gives a negative Age
    (0.0, 0), (-0.99, 0), (-1.0, 1), (-59.5, 59),
])
@pytest.mark.parametrize("head", [GET11, b"GET /a.ts HTTP/1.0\r\n\r\n"])  # cached head, and built per answer
def test_age_is_whole_seconds_since_birth(born: float, age: int, head: bytes) -> None:
    conn = ServerConnection()
    out = conn.respond(request(conn, head), Fields(200, ()), b"abc", born, NOW)[0]
    assert b"\r\nAge: %d\r\n" % age in out


def test_no_age_without_a_birth_time() -> None:
    conn = ServerConnection()
    head = conn.respond(request(conn, GET11), Fields(404, ()), b"x", None, NOW)[0]
    assert b"Age" not in head


def test_a_shared_fields_head_is_built_once_per_second_age_and_length() -> None:
    fields = Fields(200, (("Content-Type", "video/mp2t"),))
    a, b = ServerConnection(), ServerConnection()
    first = a.respond(request(a, GET11), fields, b"abc", 0.0, NOW)[0]
    assert b.respond(request(b, GET11), fields, b"abc", 0.0, NOW + 0.5)[0] is first
    assert b.respond(request(b, GET11), fields, b"abcd", 0.0, NOW + 0.5)[0] != first


@pytest.mark.parametrize(("head", "line"), [
    (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", b"Connection: close\r\n"),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", b"Connection: keep-alive\r\n"),
    (b"GET / HTTP/1.0\r\n\r\n", b"Connection: close\r\n"),
])
def test_the_connection_line_follows_the_clients_wish(head: bytes, line: bytes) -> None:
    conn = ServerConnection()
    req = request(conn, head)
    out = conn.respond(req, TS, b"", None, NOW)[0]
    assert out.endswith(line + b"\r\n")
    assert conn.must_close is (not req.keep_alive)


def test_head_sends_the_length_and_no_body() -> None:
    conn = ServerConnection()
    out = conn.respond(request(conn, b"HEAD /a.ts HTTP/1.1\r\nHost: a\r\n\r\n"), TS, b"abc", None, NOW)
    assert len(out) == 1 and b"Content-Length: 3\r\n" in out[0]


@pytest.mark.parametrize("status", [204, 304])
def test_no_length_and_no_body_on_answers_without_a_body(status: int) -> None:
    conn = ServerConnection()
    out = conn.respond(request(conn, GET11), Fields(status, (("ETag", '"a"'),)), b"", None, NOW)
    assert len(out) == 1 and b"Content-Length" not in out[0] and out[0].startswith(b"HTTP/1.1 %d " % status)


def test_an_unknown_length_is_chunked_for_http11() -> None:
    conn = ServerConnection()
    head = conn.send_head(request(conn, GET11), TS, None, None, NOW)
    assert b"Transfer-Encoding: chunked\r\n" in head and conn.sends_body
    body = b"".join(conn.send_data(memoryview(b"hello"))) + conn.send_end()
    assert body == b"5\r\nhello\r\n0\r\n\r\n" and not conn.must_close


def test_an_unknown_length_ends_an_http10_connection() -> None:
    conn = ServerConnection()
    head = conn.send_head(request(conn, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), TS, None,
                          None, NOW)
    assert b"Transfer-Encoding" not in head and b"Content-Length" not in head
    assert b"Connection: close\r\n" in head and conn.must_close
    assert conn.send_data(b"hello") == (b"hello",) and conn.send_end() == b""


def test_a_broken_body_ends_the_connection() -> None:
    conn = ServerConnection()
    conn.send_head(request(conn, GET11), TS, 10, None, NOW)
    conn.send_data(b"12345")
    conn.send_failed()
    assert conn.must_close


def test_one_answer_at_a_time() -> None:
    conn = ServerConnection()
    conn.receive_data(GET11 * 2)
    first = conn.next_event()
    assert isinstance(first, Request) and conn.pending == 1
    conn.send_head(first, TS, 3, None, NOW)
    with pytest.raises(RuntimeError, match="already being sent"):
        conn.respond(first, TS, b"abc", None, NOW)
    conn.send_data(b"abc")
    conn.send_end()
    with pytest.raises(RuntimeError, match="without send_head"):
        conn.send_data(b"x")


def test_a_shutdown_makes_the_answer_in_flight_the_last() -> None:
    conn = ServerConnection()
    req = request(conn, GET11)
    head = conn.send_head(req, TS, 3, None, NOW)  # sent as kept alive
    assert b"Connection" not in head
    conn.start_closing()
    conn.send_data(b"abc")
    conn.send_end()
    assert conn.must_close


def test_a_shutdown_between_answers_closes_the_next_one() -> None:
    conn = ServerConnection()
    conn.start_closing()
    assert conn.must_close


def test_the_answer_to_bytes_that_were_no_request_closes() -> None:
    conn = ServerConnection()
    conn.receive_data(b"BREW / HTTP/1.1\r\n\r\n")
    assert isinstance(conn.next_event(), ProtocolError)
    out = conn.respond(None, Fields(405, ()), b"no\n", None, NOW)
    assert b"Connection: close\r\n" in out[0] and out[1] == b"no\n"


def test_header_values_cannot_split_the_head() -> None:
    assert header_lines([("X-A", "one\r\nInjected: yes")]) == b"X-A: one  Injected: yes\r\n"
    assert header_lines([("X-Name", "café")]) == "X-Name: café\r\n".encode("latin-1")


def test_dates() -> None:
    assert http_date(784111777) == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert date_line(784111777.9) == b"Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
    assert date_line(784111777.1) is date_line(784111777.5)  # built once per second


def test_names_kept_lower_case_are_spelled_on_the_wire() -> None:
    assert header_lines([("content-type", "a"), ("etag", '"e"'), ("x-cache", "HIT"),
                         ("access-control-allow-origin", "*")]) == (
        b'Content-Type: a\r\nETag: "e"\r\nX-Cache: HIT\r\nAccess-Control-Allow-Origin: *\r\n')


def test_absolute_form_gives_the_path_and_the_authority_as_host() -> None:
    [req] = events(b"GET http://cdn.example:8080/live/a.ts?x=1 HTTP/1.1\r\nHost: other\r\n\r\n")
    assert isinstance(req, Request)
    assert req.target == "/live/a.ts?x=1" and req.headers[b"host"] == b"cdn.example:8080"
    assert error(b"GET * HTTP/1.1\r\n\r\n") == (400, "HTTP/1.1 request without Host")  # only absolute form names one


def test_a_large_pipeline_is_parsed_only_as_far_as_it_is_answered() -> None:
    stream = b"".join(b"GET /%d.ts HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(8000))  # ~250 KiB in one read
    conn = ServerConnection(max_pending=16)
    conn.receive_data(stream)
    assert 16 <= conn.pending < 16 + PARSE_SLICE // 30  # at most one slice past the bound
    assert len(conn.backlog) > len(stream) - 2 * PARSE_SLICE  # the rest waits unparsed, not as 8,000 requests
    targets = []
    while (event := conn.next_event()) is not NEED_DATA:
        assert isinstance(event, Request)
        targets.append(event.target)
        assert conn.pending < 16 + PARSE_SLICE // 30
    assert targets == [f"/{i}.ts" for i in range(8000)] and not conn.backlog
