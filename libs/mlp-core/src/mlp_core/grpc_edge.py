"""Unary gRPC on HTTP/2 cleartext (h2c) for hot methods, served by ``mlp_core.edge`` on the same port.

A client that opens a connection with the HTTP/2 preface (any gRPC client on an insecure channel,
``h2load``) is handed from the edge's HTTP/1.1 parser to ``H2Connection``; the routes in
``GrpcRoutes`` answer its calls. Everything else of the service stays on its grpc.aio server.

Why: grpc.aio spends 200-550 µs of server CPU on an *empty* call, and its interceptor chain
(trace context, token check, error mapping, metrics) as much again; a feature read that itself costs
about 150 µs then runs at a fifth of what Redis allows. Here a call costs the frame parsing, a
header decode against the connection's table and one socket write.

What is implemented (RFC 9113, RFC 7541, gRPC over HTTP/2):

- the server side of HTTP/2 without TLS (prior knowledge), every frame type; SETTINGS, PING and
  GOAWAY answered; CONTINUATION, padding and priority fields read; unknown frame types ignored;
- HPACK decoding with the connection's dynamic table (Huffman strings through ``hpack``); answers
  are encoded without indexing, so the client's table size never matters;
- flow control both ways: the client's windows are respected (large answers wait for its
  WINDOW_UPDATE and are cut at its MAX_FRAME_SIZE), and ours are given back as data is read;
- unary calls only: one length-prefixed message each way, ``grpc-timeout`` (DEADLINE_EXCEEDED, the
  handler is cancelled), RST_STREAM cancels the handler, ``grpc-message`` percent-encoded;
- refusals: unknown method UNIMPLEMENTED, compressed message UNIMPLEMENTED, a message over the limit
  RESOURCE_EXHAUSTED (refused as soon as its length prefix arrives), zero or several messages
  INTERNAL, non-POST 405, non-gRPC content type 415, header list over 64 KiB 431; protocol errors
  close the connection with GOAWAY and the RFC's error code; more than 256 open streams
  REFUSED_STREAM; more than 500 streams cancelled by the client within 10 s ENHANCE_YOUR_CALM
  (the "Rapid Reset" attack);
- ``mlp_grpc_requests_total`` / latency recorded per method and status like ``ErrorInterceptor``.

Not implemented: TLS (services talk plaintext inside the platform network, as their grpc.aio
servers do), server push (never used by gRPC), compression, streaming methods.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import grpc
from hpack.exceptions import HPACKDecodingError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable
from opentelemetry import context as otel_context

from mlp_core.errors import DomainError
from mlp_core.telemetry import GrpcMetrics, incoming_context

log = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PREFACE_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 300.0  # no open stream for this long: GOAWAY and close (clients reconnect on demand)
MAX_STREAMS = 256
MAX_HEADER_LIST = 64 * 1024
MAX_HEADER_BLOCK = 256 * 1024  # a header block (HEADERS + CONTINUATION) bigger than this closes the connection
MAX_FRAME = 16_384  # the largest frame we accept (the RFC's default; we do not raise it)
MAX_RESETS, RESET_WINDOW_S = 500, 10.0  # client-cancelled streams tolerated per window
STREAM_WINDOW = 1 << 20
CONN_WINDOW = 16 << 20
_MAX_WINDOW = (1 << 31) - 1

# frame types and flags
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# error codes
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x5, 0x6, 0x7, 0x8, 0x9
ENHANCE_YOUR_CALM = 0xB

GrpcHandler = Callable[["GrpcCall"], Awaitable[bytes]]


@dataclass(slots=True)
class GrpcCall:
    """One unary call as a route's handler gets it: the serialized request and the call's metadata."""

    method: str
    metadata: list[tuple[bytes, bytes]]  # non-pseudo headers, names lower-case, as sent
    message: bytes
    peer: str


@dataclass
class GrpcRoutes:
    """The unary methods one edge answers over HTTP/2, by full method path (``/pkg.Service/Method``)."""

    routes: dict[str, GrpcHandler]
    service: str = ""
    metrics: GrpcMetrics | None = None
    max_message_bytes: int = 64 * 1024 * 1024
    _children: dict[tuple[str, str], tuple[Any, Any]] = field(default_factory=dict)

    def observe(self, method: str, code: grpc.StatusCode, started: float) -> None:
        metrics = self.metrics
        if metrics is None or method not in self.routes:  # a path a client made up is no label (unbounded)
            return
        key = (method, code.name)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (metrics.requests.labels(self.service, method, code.name),
                                              metrics.latency.labels(self.service, method))
        children[0].inc()
        children[1].observe(time.perf_counter() - started)


# -- HPACK ---------------------------------------------------------------------------------------------


class HeaderError(Exception):
    """The header block cannot be decoded: a connection error (COMPRESSION_ERROR)."""


_STATIC = HeaderTable.STATIC_TABLE


def _int(data: bytes, pos: int, bits: int) -> tuple[int, int]:
    """An HPACK integer with a ``bits``-bit prefix at ``data[pos]``; returns (value, next position)."""
    mask = (1 << bits) - 1
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise HeaderError("truncated integer")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise HeaderError("integer too large")


#: Huffman strings up to this size are remembered per connection (a client sends the same never-indexed
#: ``authorization`` literal on every call; decoding ~550 bytes of it costs ~120 µs in pure Python).
_CACHED_STRING = 4096
_CACHED_STRINGS = 64


class HeaderDecoder:
    """RFC 7541 decoding with one connection's dynamic table."""

    def __init__(self, table_size: int = 4096) -> None:
        self.limit = table_size  # what our SETTINGS allow (the default: we never send the setting)
        self.max_size = table_size
        self.size = 0
        self.dynamic: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self.huffman: dict[bytes, bytes] = {}

    def _string(self, data: bytes, pos: int) -> tuple[bytes, int]:
        if pos >= len(data):
            raise HeaderError("truncated string")
        huffman = data[pos] & 0x80
        length, pos = _int(data, pos, 7)
        end = pos + length
        if end > len(data):
            raise HeaderError("truncated string")
        raw = data[pos:end]
        if not huffman:
            return raw, end
        decoded = self.huffman.get(raw)
        if decoded is None:
            try:
                decoded = decode_huffman(raw)
            except HPACKDecodingError as exc:
                raise HeaderError(f"bad Huffman string: {exc}") from None
            if length <= _CACHED_STRING:
                if len(self.huffman) >= _CACHED_STRINGS:
                    self.huffman.clear()
                self.huffman[raw] = decoded
        return decoded, end

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= 61:
            return _STATIC[index - 1]
        if 61 < index <= 61 + len(self.dynamic):
            return self.dynamic[index - 62]
        raise HeaderError(f"header index {index} is not in the table")

    def _evict(self, room: int) -> None:
        while self.dynamic and self.size + room > self.max_size:
            name, value = self.dynamic.pop()
            self.size -= 32 + len(name) + len(value)

    def _add(self, name: bytes, value: bytes) -> None:
        entry = 32 + len(name) + len(value)
        if entry > self.max_size:
            self.dynamic.clear()
            self.size = 0
            return
        self._evict(entry)
        self.dynamic.appendleft((name, value))
        self.size += entry

    def _literal(self, block: bytes, pos: int, bits: int) -> tuple[bytes, bytes, int]:
        """A literal field: its name by index (``bits``-bit prefix) or spelled out, then its value."""
        index, pos = _int(block, pos, bits)
        if index:
            name = self._entry(index)[0]
        else:
            name, pos = self._string(block, pos)
        value, pos = self._string(block, pos)
        return name, value, pos

    def decode(self, block: bytes) -> tuple[list[tuple[bytes, bytes]], int]:
        """The header list and its RFC size (names + values + 32 per field)."""
        headers: list[tuple[bytes, bytes]] = []
        total = 0
        pos, end = 0, len(block)
        while pos < end:
            byte = block[pos]
            if byte & 0x80:  # indexed field
                index, pos = _int(block, pos, 7)
                name, value = self._entry(index)
            elif byte & 0x40:  # literal, added to the table
                name, value, pos = self._literal(block, pos, 6)
                self._add(name, value)
            elif byte & 0x20:  # dynamic table size update: only before the first field
                if headers:
                    raise HeaderError("table size update after a header field")
                size, pos = _int(block, pos, 5)
                if size > self.limit:
                    raise HeaderError(f"table size {size} is over the limit of {self.limit}")
                self.max_size = size
                self._evict(0)
                continue
            else:  # literal without indexing (0000) or never indexed (0001)
                name, value, pos = self._literal(block, pos, 4)
            total += 32 + len(name) + len(value)
            headers.append((name, value))
        return headers, total


def _hint(value: int, bits: int, first: int = 0) -> bytes:
    mask = (1 << bits) - 1
    if value < mask:
        return bytes((first | value,))
    out = bytearray((first | mask,))
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes | int, value: bytes) -> bytes:
    """A field without indexing: by static name index, or with the name spelled out."""
    head = _hint(name, 4) if isinstance(name, int) else b"\x00" + _hint(len(name), 7) + name
    return head + _hint(len(value), 7) + value


_RESPONSE_HEADERS = b"\x88" + _literal(31, b"application/grpc")  # :status 200 (static 8), content-type (31)
_OK_TRAILERS = _literal(b"grpc-status", b"0")
# grpc-message: percent-encode everything outside printable ASCII, and '%'
_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def status_block(code: grpc.StatusCode, message: str) -> bytes:
    block = _literal(b"grpc-status", str(code.value[0]).encode())
    if message:
        block += _literal(b"grpc-message", quote(message[:4096], safe=_MESSAGE_SAFE).encode("ascii"))
    return block


# -- frames --------------------------------------------------------------------------------------------


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return ((len(payload) << 8) | kind).to_bytes(4, "big") + bytes((flags,)) + stream.to_bytes(4, "big") + payload


_SERVER_SETTINGS = frame(SETTINGS, 0, 0, b"".join(
    key.to_bytes(2, "big") + value.to_bytes(4, "big")
    for key, value in ((0x3, MAX_STREAMS), (0x4, STREAM_WINDOW), (0x6, MAX_HEADER_LIST), (0x2, 0))))
_SETTINGS_ACK = frame(SETTINGS, ACK, 0)


class _ConnectionError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _Stream:
    __slots__ = ("answered", "body", "deadline_hit", "id", "metadata", "method", "pending", "recv_window",
                 "remote_closed", "send_window", "started", "task", "timer", "trailers", "unacked")

    def __init__(self, sid: int, send_window: int) -> None:
        self.id = sid
        self.method = ""
        self.metadata: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.recv_window = STREAM_WINDOW
        self.unacked = 0
        self.send_window = send_window
        self.remote_closed = False
        self.answered = False  # our END_STREAM is written (or queued behind flow control)
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.started = time.perf_counter()
        self.pending: memoryview | None = None  # response DATA still waiting for window
        self.trailers = b""
        self.deadline_hit = False


_TIMEOUT_UNITS = {ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0, ord("m"): 1e-3, ord("u"): 1e-6, ord("n"): 1e-9}


def parse_timeout(value: bytes) -> float | None:
    """``grpc-timeout`` (1-8 digits and a unit) in seconds; ``None`` when malformed."""
    if 2 <= len(value) <= 9 and value[:-1].isdigit() and value[-1] in _TIMEOUT_UNITS:
        return int(value[:-1]) * _TIMEOUT_UNITS[value[-1]]
    return None


class H2Connection(asyncio.Protocol):
    """One HTTP/2 client connection carrying unary gRPC calls."""

    def __init__(self, routes: GrpcRoutes, transport: asyncio.Transport, peer: str,
                 on_close: Callable[[H2Connection], None] | None = None) -> None:
        self.routes = routes
        self.transport = transport
        self.peer = peer
        self.on_close = on_close
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()
        self.preface_ok = False
        self.decoder = HeaderDecoder()
        self.streams: dict[int, _Stream] = {}
        self.last_stream = 0
        self.send_initial = 65_535
        self.max_frame = 16_384
        self.conn_send_window = 65_535
        self.conn_recv_window = CONN_WINDOW
        self.conn_unacked = 0
        self.cont_sid = 0  # a header block is continuing on this stream
        self.cont_flags = 0
        self.cont_parts: list[bytes] = []
        self.cont_size = 0
        self.blocked: collections.deque[_Stream] = collections.deque()
        self.out: list[bytes] = []
        self.closed = False
        self.going_away = False  # GOAWAY sent or received: no new streams, close when the last one ends
        self.write_paused = False
        self.resets, self.reset_since = 0, 0.0
        self._timer: asyncio.TimerHandle | None = self.loop.call_later(PREFACE_TIMEOUT_S, self._expire)

    # -- transport -------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # handed over already connected
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._disarm()
        for stream in list(self.streams.values()):
            self._drop(stream)
        self.streams.clear()
        self.blocked.clear()
        if self.on_close is not None:
            self.on_close(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.transport.pause_reading()  # a client that does not read our frames gets no more of its own read

    def resume_writing(self) -> None:
        self.write_paused = False
        self.transport.resume_reading()
        self._pump()
        self._flush()

    def _soon(self, frames: tuple[bytes, ...]) -> None:
        """Queue an answer: every answer finished in this turn of the event loop goes out in one write
        (calls that arrived together and read Redis together are answered with one ``send``)."""
        if not self.out:
            self.loop.call_soon(self._flush)
        self.out.extend(frames)

    def _flush(self) -> None:
        if self.out and not self.closed:
            data = self.out[0] if len(self.out) == 1 else b"".join(self.out)
            self.out.clear()
            self.transport.write(data)

    def _close(self) -> None:
        if not self.closed:
            self._flush()
            self.closed = True
            self.transport.close()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if not self.streams:
            self.goaway(NO_ERROR, b"" if self.preface_ok else b"no HTTP/2 preface in time")

    def _idle(self) -> None:
        """No stream open: close when going away, else arm the idle timer."""
        if self.going_away:
            self._close()
        elif self._timer is None and not self.closed:
            self._timer = self.loop.call_later(IDLE_TIMEOUT_S, self._expire)

    def goaway(self, code: int, debug: bytes = b"") -> None:
        """Tell the client no stream above the last one will be served; close now on an error."""
        if self.closed:
            return
        if not self.preface_ok:
            self._close()
            return
        self.going_away = True
        self.out.append(frame(GOAWAY, 0, 0, self.last_stream.to_bytes(4, "big") + code.to_bytes(4, "big") + debug))
        if code != NO_ERROR or not self.streams:
            self._close()
        else:
            self._flush()

    def shutdown(self) -> None:
        """The server is stopping: finish the open calls, take no new ones."""
        self.goaway(NO_ERROR)

    # -- reading ---------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        buf = self.buf
        buf += data
        try:
            if not self.preface_ok:
                if len(buf) < len(PREFACE):
                    if not PREFACE.startswith(bytes(buf)):
                        self._close()
                    return
                if buf[:len(PREFACE)] != PREFACE:
                    self._close()
                    return
                del buf[:len(PREFACE)]
                self.preface_ok = True
                self._disarm()
                self.out.append(_SERVER_SETTINGS)
                self.out.append(frame(WINDOW_UPDATE, 0, 0, (CONN_WINDOW - 65_535).to_bytes(4, "big")))
                self._timer = self.loop.call_later(IDLE_TIMEOUT_S, self._expire)
            pos, end = 0, len(buf)
            while end - pos >= 9 and not self.closed:
                length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
                if length > MAX_FRAME:
                    raise _ConnectionError(FRAME_SIZE_ERROR, f"frame of {length} bytes is over {MAX_FRAME}")
                if end - pos - 9 < length:
                    break
                kind, flags = buf[pos + 3], buf[pos + 4]
                sid = int.from_bytes(buf[pos + 5:pos + 9], "big") & 0x7FFFFFFF
                payload = bytes(buf[pos + 9:pos + 9 + length])
                pos += 9 + length
                self._frame(kind, flags, sid, payload)
            del buf[:pos]
        except _ConnectionError as exc:
            self.goaway(exc.code, exc.reason.encode()[:256])
        except Exception:  # never a traceback to the client; the connection is closed
            log.exception("grpc edge: unexpected failure while reading a connection")
            self.goaway(INTERNAL_ERROR)
        self._flush()

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if self.cont_sid and (kind != CONTINUATION or sid != self.cont_sid):
            raise _ConnectionError(PROTOCOL_ERROR, "a header block was interrupted")
        if kind == DATA:
            self._data(flags, sid, payload)
        elif kind == HEADERS:
            self._headers(flags, sid, payload)
        elif kind == CONTINUATION:
            if not self.cont_sid:
                raise _ConnectionError(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
            self.cont_size += len(payload)
            if self.cont_size > MAX_HEADER_BLOCK:
                raise _ConnectionError(ENHANCE_YOUR_CALM, "header block too large")
            self.cont_parts.append(payload)
            if flags & END_HEADERS:
                block, flags = b"".join(self.cont_parts), self.cont_flags
                self.cont_sid, self.cont_parts, self.cont_size = 0, [], 0
                self._header_block(flags, sid, block)
        elif kind == SETTINGS:
            self._settings(flags, sid, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(sid, payload)
        elif kind == PING:
            if sid:
                raise _ConnectionError(PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise _ConnectionError(FRAME_SIZE_ERROR, "PING payload must be 8 bytes")
            if not flags & ACK:
                self.out.append(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            if not sid:
                raise _ConnectionError(PROTOCOL_ERROR, "RST_STREAM on stream 0")
            if len(payload) != 4:
                raise _ConnectionError(FRAME_SIZE_ERROR, "RST_STREAM payload must be 4 bytes")
            if sid > self.last_stream:
                raise _ConnectionError(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
            if sid in self.streams:
                self._count_reset()  # may close the connection: the stream is then dropped with the others
                self._forget(sid)
        elif kind == PRIORITY:
            if not sid:
                raise _ConnectionError(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                if sid > self.last_stream or not sid & 1:  # no RST_STREAM on an idle stream (RFC 9113 §6.4)
                    raise _ConnectionError(FRAME_SIZE_ERROR, "PRIORITY payload must be 5 bytes")
                self._reset(sid, FRAME_SIZE_ERROR)
        elif kind == GOAWAY:
            if sid:
                raise _ConnectionError(PROTOCOL_ERROR, "GOAWAY on a stream")
            self.going_away = True
            if not self.streams:
                self._close()
        elif kind == PUSH_PROMISE:
            raise _ConnectionError(PROTOCOL_ERROR, "clients must not push")
        # other frame types are ignored (RFC 9113 §4.1)

    def _count_reset(self) -> None:
        """Streams the client opens and cancels at once cost us work and it nothing ("Rapid Reset",
        CVE-2023-44487): more than ``MAX_RESETS`` in ``RESET_WINDOW_S`` closes the connection."""
        now = self.loop.time()
        if now - self.reset_since > RESET_WINDOW_S:
            self.reset_since, self.resets = now, 0
        self.resets += 1
        if self.resets > MAX_RESETS:
            raise _ConnectionError(ENHANCE_YOUR_CALM, "too many cancelled streams")

    def _settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid:
            raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS payload is not a multiple of 6")
        for i in range(0, len(payload), 6):
            key = int.from_bytes(payload[i:i + 2], "big")
            value = int.from_bytes(payload[i + 2:i + 6], "big")
            if key == 0x4:  # INITIAL_WINDOW_SIZE: applies to open streams too
                if value > _MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "initial window over 2^31-1")
                delta = value - self.send_initial
                self.send_initial = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > _MAX_WINDOW:
                        raise _ConnectionError(FLOW_CONTROL_ERROR, "stream window over 2^31-1")
            elif key == 0x5:
                if not 16_384 <= value <= 16_777_215:
                    raise _ConnectionError(PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
                self.max_frame = value
            elif key == 0x2 and value > 1:
                raise _ConnectionError(PROTOCOL_ERROR, "ENABLE_PUSH must be 0 or 1")
        self.out.append(_SETTINGS_ACK)
        self._pump()

    def _window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "WINDOW_UPDATE payload must be 4 bytes")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if not sid:
            if not increment:
                raise _ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.conn_send_window += increment
            if self.conn_send_window > _MAX_WINDOW:
                raise _ConnectionError(FLOW_CONTROL_ERROR, "connection window over 2^31-1")
        else:
            stream = self.streams.get(sid)
            if stream is None:
                if sid > self.last_stream:
                    raise _ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
                return  # closed stream: ignored
            if not increment:
                self._reset(sid, PROTOCOL_ERROR)
                return
            stream.send_window += increment
            if stream.send_window > _MAX_WINDOW:
                self._reset(sid, FLOW_CONTROL_ERROR)
                return
        self._pump()

    def _headers(self, flags: int, sid: int, payload: bytes) -> None:
        if not sid or not sid & 1:
            raise _ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0 or a server stream id")
        start, end = 0, len(payload)
        if flags & PADDED:
            if not payload:
                raise _ConnectionError(PROTOCOL_ERROR, "padded frame without a pad length")
            start, end = 1, end - payload[0]
        if flags & PRIORITY_FLAG:
            start += 5
        if end < start:
            raise _ConnectionError(PROTOCOL_ERROR, "padding longer than the frame")
        fragment = payload[start:end]
        if flags & END_HEADERS:
            self._header_block(flags, sid, fragment)
        else:
            self.cont_sid, self.cont_flags, self.cont_parts, self.cont_size = sid, flags, [fragment], len(fragment)

    def _header_block(self, flags: int, sid: int, block: bytes) -> None:
        try:
            headers, size = self.decoder.decode(block)  # always decoded: the table must stay in step
        except HeaderError as exc:
            raise _ConnectionError(COMPRESSION_ERROR, str(exc)) from None
        end_stream = bool(flags & END_STREAM)
        stream = self.streams.get(sid)
        if stream is not None:  # trailers from the client
            if stream.remote_closed or not end_stream:
                self._reset(sid, PROTOCOL_ERROR)
                return
            self._remote_end(stream)
            return
        if sid <= self.last_stream:
            return  # trailers of a stream we answered early or reset (decoded above: the table stays in step)
        self.last_stream = sid
        if self.going_away or len(self.streams) >= MAX_STREAMS:
            self.out.append(frame(RST_STREAM, 0, sid, REFUSED_STREAM.to_bytes(4, "big")))
            return
        self._disarm()
        stream = _Stream(sid, self.send_initial)
        self.streams[sid] = stream
        method = path = content_type = b""
        timeout: float | None = None
        metadata = stream.metadata
        for name, value in headers:
            if name[:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-timeout":
                timeout = parse_timeout(value)
            else:
                metadata.append((name, value))
        stream.method = path.decode("latin-1")
        stream.remote_closed = end_stream
        if size > MAX_HEADER_LIST:
            self._answer_http(stream, b"431")
        elif method != b"POST":
            self._answer_http(stream, b"405")
        elif not content_type.startswith(b"application/grpc"):
            self._answer_http(stream, b"415")
        elif timeout is not None:
            stream.timer = self.loop.call_later(timeout, self._deadline, stream)
        if end_stream and not stream.answered:
            self._remote_end(stream)

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        if not sid:
            raise _ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        length = len(payload)
        self.conn_recv_window -= length
        if self.conn_recv_window < 0:
            raise _ConnectionError(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        self.conn_unacked += length
        if self.conn_unacked >= CONN_WINDOW // 2:
            self.out.append(frame(WINDOW_UPDATE, 0, 0, self.conn_unacked.to_bytes(4, "big")))
            self.conn_recv_window += self.conn_unacked
            self.conn_unacked = 0
        stream = self.streams.get(sid)
        if stream is None:
            if sid > self.last_stream:
                raise _ConnectionError(PROTOCOL_ERROR, "DATA on an idle stream")
            return  # a stream we answered early or reset: what was in flight is dropped
        if stream.remote_closed:
            self._reset(sid, STREAM_CLOSED)
            return
        stream.recv_window -= length
        if stream.recv_window < 0:
            self._reset(sid, FLOW_CONTROL_ERROR)
            return
        if flags & PADDED:
            if not payload or payload[0] >= length:
                raise _ConnectionError(PROTOCOL_ERROR, "bad DATA padding")
            payload = payload[1:length - payload[0]]
        if not stream.answered:
            body = stream.body
            body += payload
            if len(body) >= 5:
                size = int.from_bytes(body[1:5], "big")
                limit = self.routes.max_message_bytes
                if size > limit:
                    body.clear()
                    self._fail(stream, grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"request message of {size} bytes is over the limit of {limit}")
        if flags & END_STREAM:
            self._remote_end(stream)
        elif not stream.answered:
            stream.unacked += length
            if stream.unacked >= STREAM_WINDOW // 2:
                self.out.append(frame(WINDOW_UPDATE, 0, sid, stream.unacked.to_bytes(4, "big")))
                stream.recv_window += stream.unacked
                stream.unacked = 0

    # -- calls -----------------------------------------------------------------------------------------

    def _remote_end(self, stream: _Stream) -> None:
        """The client half-closed: run the call (or finish a stream already answered)."""
        stream.remote_closed = True
        if stream.answered:
            self._finish(stream)
            return
        body = stream.body
        if not body:
            self._fail(stream, grpc.StatusCode.INTERNAL, "the call carried no request message")
            return
        size = int.from_bytes(body[1:5], "big") if len(body) >= 5 else -1
        if size < 0 or len(body) < 5 + size:
            self._fail(stream, grpc.StatusCode.INTERNAL, "the request message is truncated")
            return
        if len(body) > 5 + size:
            self._fail(stream, grpc.StatusCode.INTERNAL, "more than one request message for a unary method")
            return
        if body[0]:
            self._fail(stream, grpc.StatusCode.UNIMPLEMENTED, "compressed messages are not supported")
            return
        handler = self.routes.routes.get(stream.method)
        if handler is None:
            self._fail(stream, grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {stream.method}")
            return
        message = bytes(body[5:])
        stream.body = bytearray()
        stream.task = self.loop.create_task(self._run(stream, handler, GrpcCall(
            stream.method, stream.metadata, message, self.peer)))

    async def _run(self, stream: _Stream, handler: GrpcHandler, call: GrpcCall) -> None:
        for name, _value in call.metadata:
            if name == b"traceparent":  # the caller's trace, for the handler's logs and spans
                carrier = {k.decode("latin-1"): v for k, v in call.metadata
                           if k in (b"traceparent", b"tracestate")}
                otel_context.attach(incoming_context(carrier))  # this task's own context
                break
        try:
            response = await handler(call)
        except asyncio.CancelledError:
            if self.streams.get(stream.id) is stream and not stream.answered:
                # Not our cancellation (those drop or answer the stream first): something the handler
                # awaited was cancelled. The caller still gets an answer instead of waiting forever.
                log.error("the handler of %s was cancelled from inside", stream.method)
                self._fail(stream, grpc.StatusCode.INTERNAL, "internal error; see server logs")
                self._flush()
            elif not stream.deadline_hit and not stream.answered:
                self.routes.observe(stream.method, grpc.StatusCode.CANCELLED, stream.started)
            return
        except DomainError as exc:
            self._fail(stream, exc.grpc_code, exc.detail)
            self._flush()
            return
        except Exception:  # never a traceback to the client
            log.exception("unhandled error in %s", stream.method)
            self._fail(stream, grpc.StatusCode.INTERNAL, "internal error; see server logs")
            self._flush()
            return
        if stream.answered or self.closed:
            return
        self.routes.observe(stream.method, grpc.StatusCode.OK, stream.started)
        self._send(stream, response)

    def _deadline(self, stream: _Stream) -> None:
        stream.timer = None
        if stream.answered:
            return
        stream.deadline_hit = True
        self._fail(stream, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        self._flush()
        if stream.task is not None:
            stream.task.cancel()

    def _send(self, stream: _Stream, payload: bytes) -> None:
        """HEADERS, the message and the OK trailers; in one write when the client's windows allow."""
        stream.answered = True
        sid = stream.id
        size = len(payload) + 5
        message = b"\x00" + len(payload).to_bytes(4, "big") + payload
        head = frame(HEADERS, END_HEADERS, sid, _RESPONSE_HEADERS)
        trailers = frame(HEADERS, END_HEADERS | END_STREAM, sid, _OK_TRAILERS)
        if (size <= self.conn_send_window and size <= stream.send_window and size <= self.max_frame
                and not self.blocked and not self.write_paused):
            self.conn_send_window -= size
            stream.send_window -= size
            self._soon((head, frame(DATA, 0, sid, message), trailers))
            self._finish(stream)
            return
        self.out.append(head)
        stream.pending = memoryview(message)
        stream.trailers = trailers
        self.blocked.append(stream)
        self._pump()
        self._flush()

    def _pump(self) -> None:
        """Send queued answer data as far as the windows allow, oldest stream first."""
        while self.blocked and self.conn_send_window > 0 and not self.write_paused:
            stream = self.blocked[0]
            pending = stream.pending
            assert pending is not None
            while pending and self.conn_send_window > 0 and stream.send_window > 0:
                size = min(len(pending), self.conn_send_window, stream.send_window, self.max_frame)
                self.out.append(frame(DATA, 0, stream.id, bytes(pending[:size])))
                pending = pending[size:]
                self.conn_send_window -= size
                stream.send_window -= size
            stream.pending = pending
            if pending:
                if stream.send_window <= 0:  # this stream waits for its own window; the others go on
                    self.blocked.rotate(-1)
                    if all(s.send_window <= 0 for s in self.blocked):
                        return
                continue
            self.blocked.popleft()
            self.out.append(stream.trailers)
            stream.pending = None
            self._finish(stream)

    def _fail(self, stream: _Stream, code: grpc.StatusCode, message: str) -> None:
        """A trailers-only answer with the status (nothing was sent on this stream yet)."""
        if stream.answered or self.closed:
            return
        stream.answered = True
        self.routes.observe(stream.method, code, stream.started)
        block = _RESPONSE_HEADERS + status_block(code, message)
        self.out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block))
        self._finish(stream)

    def _answer_http(self, stream: _Stream, status: bytes) -> None:
        """Not a gRPC request at all: an HTTP status, as the gRPC spec asks (405, 415, 431)."""
        stream.answered = True
        self.out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, _literal(8, status)))
        self._finish(stream)

    def _finish(self, stream: _Stream) -> None:
        """Our side is done; the stream closes when the client's is too (else it is reset: we need no more)."""
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        if not stream.remote_closed:
            self.out.append(frame(RST_STREAM, 0, stream.id, NO_ERROR.to_bytes(4, "big")))
        if self.streams.pop(stream.id, None) is not None and not self.streams:
            self._idle()

    def _reset(self, sid: int, code: int) -> None:
        self.out.append(frame(RST_STREAM, 0, sid, code.to_bytes(4, "big")))
        self._forget(sid)

    def _forget(self, sid: int) -> None:
        """The stream ends without an answer (reset by either side)."""
        stream = self.streams.pop(sid, None)
        if stream is not None:
            self._drop(stream)
            if not self.streams:
                self._idle()

    def _drop(self, stream: _Stream) -> None:
        """The stream ends without an answer from us (reset, or the connection is gone)."""
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        if stream in self.blocked:
            self.blocked.remove(stream)
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
        elif not stream.answered:
            stream.answered = True
