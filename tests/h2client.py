"""A raw HTTP/2 client for tests: the `h2` package over an asyncio socket, every frame visible.

It speaks prior knowledge (h2c) or over TLS with ALPN "h2", and records per
stream what the server sent (head, body, end, reset) and for the connection
its SETTINGS and GOAWAY, so a test can check exactly what the server did.
It can also write raw bytes (bad frames, floods) the `h2` client would never
produce.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame


class Answer:
    """What the server sent on one stream."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.ended = asyncio.Event()
        self.reset: int | None = None  # the server's RST_STREAM error code

    @property
    def status(self) -> int:
        return int(self.headers[":status"])

    def __repr__(self) -> str:
        return f"Answer({self.headers.get(':status')}, {len(self.body)} bytes, reset={self.reset})"


class H2Client:
    """One HTTP/2 connection to a server.

    Args:
        window: the client's initial stream window (SETTINGS_INITIAL_WINDOW_SIZE); also the connection's.
        auto_ack: give flow-control credit back as DATA arrives (off: the server must stop at the window).
    """

    def __init__(self, window: int = 65535, auto_ack: bool = True) -> None:
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="latin-1"))
        self.window, self.auto_ack = window, auto_ack
        self.answers: dict[int, Answer] = {}
        self.server_settings: dict[int, int] = {}
        self.settings_acked = asyncio.Event()
        self.goaway: GoAwayFrame | None = None  # the last GOAWAY the server sent
        self._buf = b""  # received bytes not yet a whole frame
        self.closed = asyncio.Event()
        self.events: list[object] = []
        self.received = 0  # bytes the server sent in all
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def connect(self, port: int, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None,
                      server_hostname: str | None = None) -> H2Client:
        self._reader, self._writer = await asyncio.open_connection(host, port, ssl=tls,
                                                                   server_hostname=server_hostname)
        self.conn.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.window,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        })
        self.conn.initiate_connection()
        self._send()
        self._task = asyncio.get_running_loop().create_task(self._read())
        return self

    def raw(self, data: bytes) -> None:
        """Write bytes as they are (after what the h2 client queued)."""
        self._send()
        assert self._writer is not None
        self._writer.write(data)

    def _send(self) -> None:
        data = self.conn.data_to_send()
        if data and self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)

    async def _read(self) -> None:
        assert self._reader is not None
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    break
                self.received += len(data)
                try:
                    events = self.conn.receive_data(self._split_goaway(data))
                except h2.exceptions.ProtocolError as e:
                    self.events.append(e)
                    break
                for ev in events:
                    self.events.append(ev)
                    self._event(ev)
                self._send()
                self._changed.set()
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed.set()
            self._changed.set()
            for a in self.answers.values():
                a.ended.set()

    def _split_goaway(self, data: bytes) -> bytes:
        """The bytes without GOAWAY frames, which are recorded here.

        h2 takes any GOAWAY for the end of the connection and fails on every
        frame after it, so it could not show the streams a graceful GOAWAY
        lets finish; real clients (nghttp2, browsers) read them.
        """
        self._buf += data
        out = bytearray()
        buf = self._buf
        while len(buf) >= 9:
            length = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + length:
                break
            frame, buf = buf[:9 + length], buf[9 + length:]
            if frame[3] == 0x7:
                goaway, _ = GoAwayFrame.parse_frame_header(memoryview(frame[:9]))
                goaway.parse_body(memoryview(frame[9:]))
                self.goaway = goaway  # type: ignore[assignment]
            else:
                out += frame
        self._buf = buf
        return bytes(out)

    def _event(self, ev: object) -> None:
        if isinstance(ev, h2.events.ResponseReceived):
            self.answers[ev.stream_id].headers = dict(ev.headers)  # type: ignore[arg-type]
        elif isinstance(ev, h2.events.DataReceived):
            self.answers[ev.stream_id].body += ev.data  # type: ignore[operator]
            if self.auto_ack and ev.flow_controlled_length:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)  # type: ignore
        elif isinstance(ev, h2.events.StreamEnded):
            self.answers[ev.stream_id].ended.set()  # type: ignore[index]
        elif isinstance(ev, h2.events.StreamReset):
            a = self.answers.get(ev.stream_id)  # type: ignore[arg-type]
            if a is not None:
                a.reset = ev.error_code
                a.ended.set()
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            self.server_settings = {int(k): v.new_value for k, v in ev.changed_settings.items()}
        elif isinstance(ev, h2.events.SettingsAcknowledged):
            self.settings_acked.set()

    def request(self, path: str, *extra: tuple[str, str], method: str = "GET", authority: str = "edge",
                end: bool = True) -> int:
        """Open a stream with a request; returns its id."""
        sid = self.conn.get_next_available_stream_id()
        headers = [(":method", method), (":scheme", "http"), (":authority", authority), (":path", path), *extra]
        self.answers[sid] = Answer()
        self.conn.send_headers(sid, headers, end_stream=end)
        self._send()
        return sid

    async def get(self, path: str, *extra: tuple[str, str], method: str = "GET", timeout: float = 10.0) -> Answer:
        sid = self.request(path, *extra, method=method)
        answer = self.answers[sid]
        await asyncio.wait_for(answer.ended.wait(), timeout)
        return answer

    def reset(self, sid: int, code: int = 8) -> None:
        self.conn.reset_stream(sid, code)
        self._send()

    def ack(self, sid: int, size: int) -> None:
        """Give `size` bytes of credit back on the stream and the connection."""
        self.conn.increment_flow_control_window(size, sid)
        self.conn.increment_flow_control_window(size)
        self._send()

    async def wait(self, predicate: object, timeout: float = 10.0) -> bool:
        """Wait until predicate() holds (checked after every read); False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():  # type: ignore[operator]
            left = deadline - loop.time()
            if left <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return bool(predicate())  # type: ignore[operator]
        return True

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
