"""Property test of mlp_core.grpc_edge at the byte level: whatever HTTP/2 arrives, the server answers or closes.

After a valid preface and SETTINGS, hypothesis sends frames built from hostile parts: requests whose header
blocks are split across CONTINUATION frames, messages right and wrong (cut, doubled, compressed, over the
limit), random SETTINGS, WINDOW_UPDATE, RST_STREAM, PING, GOAWAY and PRIORITY frames, frames of any type
with random flags, stream ids and payloads; or simply random bytes, some announcing frames that never
arrive. All of it is sent in random pieces. For each:

- nothing escapes ``data_received`` or a timer (no ERROR record from the edge, no loop exception);
- what comes back are whole HTTP/2 frames, only on streams the client opened;
- the server answers a final PING or closes the connection, in bounded time;
- a fresh connection still completes a real grpc.aio call.

``MLP_GRPC_EDGE_FUZZ_EXAMPLES`` sets the number of examples (default 150).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import hpack
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from mlp_core.edge import Edge, EdgeConfig
from mlp_core.errors import InvalidArgument
from mlp_core.grpc_edge import (
    ACK,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    GrpcCall,
    GrpcHandler,
    GrpcRoutes,
    frame,
)

EXAMPLES = int(os.environ.get("MLP_GRPC_EDGE_FUZZ_EXAMPLES", "150"))
ANSWER_TIMEOUT_S = 3.0
PROBE = b"fuzzping"


async def _echo(call: GrpcCall) -> bytes:
    return call.message


async def _slow(call: GrpcCall) -> bytes:
    await asyncio.sleep(0.01)  # still running when the frames behind the request arrive
    return call.message


async def _refuse(call: GrpcCall) -> bytes:
    raise InvalidArgument("refused: 100% é")


async def _big(call: GrpcCall) -> bytes:
    return b"b" * 70_000  # over the client's default windows: the answer waits for WINDOW_UPDATEs


ROUTES: dict[str, GrpcHandler] = {"/f.E/Echo": _echo, "/f.E/Slow": _slow, "/f.E/Refuse": _refuse, "/f.E/Big": _big}


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(f"{record.name}: {record.getMessage()} {record.exc_info or ''}")


@dataclass
class Server:
    port: int
    loop: asyncio.AbstractEventLoop
    edge: Edge
    errors: _Errors
    loop_errors: list[dict[str, Any]] = field(default_factory=list)

    def check_quiet(self) -> None:
        assert not self.errors.seen, self.errors.seen
        assert not self.loop_errors, self.loop_errors


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    errors = _Errors()
    loggers = [logging.getLogger(name) for name in ("mlp_core.grpc_edge", "mlp_core.edge", "asyncio")]
    disabled = [logger.disabled for logger in loggers]
    for logger in loggers:
        logger.disabled = False
        logger.addHandler(errors)
    loop = asyncio.new_event_loop()
    edge = Edge(EdgeConfig(lambda method, path: None, grpc=GrpcRoutes(ROUTES, max_message_bytes=4096)))
    port = loop.run_until_complete(edge.start("127.0.0.1", 0))
    srv = Server(port, loop, edge, errors)
    loop.set_exception_handler(lambda _loop, context: srv.loop_errors.append(context))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield srv
    asyncio.run_coroutine_threadsafe(edge.close(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    for logger, was in zip(loggers, disabled, strict=True):
        logger.removeHandler(errors)
        logger.disabled = was


# -- what the client sends -------------------------------------------------------------------------------

def _mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``common`` seven times in eight: enough well-formed traffic to reach the states behind it."""
    return st.integers(0, 7).flatmap(lambda k: rare if k == 0 else common)


_sids = _mostly(st.sampled_from([1, 1, 3, 3, 5, 7, 9, 11]),
                st.one_of(st.sampled_from([0, 2, 4, 0x7FFFFFFF, 0xFFFFFFFF]), st.integers(0, 0xFFFFFFFF)))
_flags = _mostly(st.sampled_from([0, 0, END_STREAM, END_HEADERS, END_HEADERS | END_STREAM, PADDED, PRIORITY_FLAG,
                                  END_HEADERS | PADDED | PRIORITY_FLAG]), st.integers(0, 255))
_headers_flags = _mostly(st.sampled_from([END_HEADERS, END_HEADERS | END_STREAM, END_HEADERS | PADDED,
                                          END_HEADERS | PRIORITY_FLAG, END_HEADERS | PADDED | PRIORITY_FLAG]), _flags)
_data_flags = _mostly(st.sampled_from([0, END_STREAM, PADDED, PADDED | END_STREAM]), _flags)
_paths = st.sampled_from([b"/f.E/Echo"] * 3 + [b"/f.E/Slow", b"/f.E/Refuse", b"/f.E/Big", b"/f.E/Nope", b"",
                                                b"/f.E/Echo\x00", b"\xff"])
_header_extra = st.lists(st.tuples(st.sampled_from([b"grpc-timeout", b"authorization", b"x-a", b"content-type",
                                                    b":method", b":path", b"te", b"x-b-bin"]),
                                   st.one_of(st.sampled_from([b"1m", b"100S", b"x", b"", b"application/grpc"]),
                                             st.binary(max_size=40))), max_size=3)
_messages = st.one_of(
    st.binary(max_size=200).map(lambda m: b"\0" + len(m).to_bytes(4, "big") + m),  # one good message
    st.binary(max_size=40).map(lambda m: b"\1" + len(m).to_bytes(4, "big") + m),  # compressed
    st.integers(4097, (1 << 32) - 1).map(lambda n: b"\0" + n.to_bytes(4, "big")),  # over the limit
    st.binary(max_size=60),  # anything
    st.just(b""),
)


def _op(draw: st.DrawFn, opened: list[int]) -> tuple[str, Any]:
    """One thing the client does; ``opened``: its streams so far. Header blocks are encoded when the example is
    built (in order). Stream ids are mostly right (a new odd one for a request, an opened one otherwise), so
    that most examples get past the first frame."""
    kind = draw(st.sampled_from(["call"] * 8 + ["headers"] * 3 + ["data"] * 3 + ["settings", "window"] * 2
                                + ["rst", "ping", "goaway", "priority", "raw"]))
    if kind in ("data", "window", "rst", "priority") and not opened and draw(_mostly(st.just(True), st.just(False))):
        kind = "call"  # a stream to act on, first
    fresh = max(opened, default=-1) + 2
    if kind in ("call", "headers"):
        sid = draw(_mostly(st.just(fresh), _sids))
        opened.append(sid & 0x7FFFFFFF)
    else:
        sid = draw(_mostly(st.sampled_from(opened), _sids)) if opened else draw(_sids)
    if kind == "call":  # a whole request: HEADERS (maybe in pieces) and its message
        return kind, (sid, draw(_paths), draw(_header_extra), draw(st.booleans()), draw(st.integers(0, 3)),
                      draw(_messages))
    if kind == "headers":
        return kind, (sid, draw(_headers_flags), draw(_paths), draw(_header_extra), draw(st.booleans()),
                      draw(st.integers(0, 3)))
    if kind == "data":
        return kind, (sid, draw(_data_flags), draw(_messages))
    if kind == "settings":
        pairs = draw(st.lists(st.tuples(st.integers(0, 8), _mostly(
            st.sampled_from([0, 1, 10, 100, 16_384, 32_768, 65_535, 1 << 20, 16_777_215, (1 << 31) - 1]),
            st.one_of(st.sampled_from([2, 16_383, 16_777_216, 1 << 31]), st.integers(0, 0xFFFFFFFF)))),
            max_size=4))
        return kind, (draw(st.sampled_from([0] * 7 + [ACK])), draw(st.sampled_from([0] * 7 + [1])),
                      b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in pairs))
    if kind == "window":
        return kind, (sid, draw(_mostly(st.integers(1, 1 << 20), st.one_of(
            st.sampled_from([0, 1, 65_535, (1 << 31) - 1, 0xFFFFFFFF]), st.integers(0, 0xFFFFFFFF)))))
    if kind == "rst":
        return kind, (sid, draw(st.integers(0, 14)))
    if kind == "ping":
        return kind, (draw(st.sampled_from([0, 0, 0, ACK])), draw(_mostly(st.binary(min_size=8, max_size=8),
                                                                           st.binary(max_size=9))))
    if kind == "goaway":
        return kind, (draw(st.sampled_from([0] * 7 + [1])), draw(st.binary(min_size=8, max_size=20)))
    if kind == "priority":
        return kind, (sid, draw(_mostly(st.binary(min_size=5, max_size=5), st.binary(max_size=6))))
    return kind, (draw(st.integers(0, 10)), draw(_flags), sid, draw(st.one_of(st.just(b""), st.binary(max_size=80))))


@st.composite
def _ops(draw: st.DrawFn) -> list[tuple[str, Any]]:
    opened: list[int] = []
    return [_op(draw, opened) for _ in range(draw(st.integers(1, 16)))]


def _headers_frames(encoder: hpack.Encoder, sid: int, flags: int, path: bytes, extra: list[tuple[bytes, bytes]],
                    huffman: bool, pieces: int) -> bytes:
    block = encoder.encode([(b":method", b"POST"), (b":scheme", b"http"), (b":path", path),
                            (b":authority", b"fuzz"), (b"content-type", b"application/grpc"), *extra],
                           huffman=huffman)
    if flags & PADDED:
        block = b"\x02" + block + b"\0\0"
    if flags & PRIORITY_FLAG:
        block = block[:1] + b"\0\0\0\0\x0f" + block[1:] if flags & PADDED else b"\0\0\0\0\x0f" + block
    if not pieces:
        return frame(HEADERS, flags, sid, block)
    cuts = [len(block) * i // (pieces + 1) for i in range(pieces + 2)]
    parts = [block[a:b] for a, b in itertools.pairwise(cuts)]
    return frame(HEADERS, flags & ~END_HEADERS, sid, parts[0]) + b"".join(
        frame(CONTINUATION, END_HEADERS if i == len(parts) - 1 else 0, sid, part)
        for i, part in enumerate(parts) if i)


def _build(ops: list[tuple[str, Any]]) -> bytes:
    """The bytes after the preface and SETTINGS."""
    encoder = hpack.Encoder()
    out = []
    for kind, args in ops:
        if kind == "call":
            sid, path, extra, huffman, pieces, message = args
            out.append(_headers_frames(encoder, sid, END_HEADERS, path, extra, huffman, pieces))
            out.append(frame(DATA, END_STREAM, sid, message))
        elif kind == "headers":
            out.append(_headers_frames(encoder, *args))
        elif kind == "data":
            sid, flags, message = args
            out.append(frame(DATA, flags, sid, message))
        elif kind == "settings":
            flags, sid, payload = args
            out.append(frame(SETTINGS, flags, sid, payload))
        elif kind == "window":
            sid, increment = args
            out.append(frame(WINDOW_UPDATE, 0, sid, increment.to_bytes(4, "big")))
        elif kind == "rst":
            sid, code = args
            out.append(frame(RST_STREAM, 0, sid, code.to_bytes(4, "big")))
        elif kind == "ping":
            flags, payload = args
            out.append(frame(PING, flags, 0, payload))
        elif kind == "goaway":
            sid, payload = args
            out.append(frame(GOAWAY, 0, sid, payload))
        elif kind == "priority":
            sid, payload = args
            out.append(frame(PRIORITY, 0, sid, payload))
        else:
            kind_, flags, sid, payload = args
            out.append(frame(kind_, flags, sid, payload))
    return b"".join(out)


_structured = st.tuples(st.just("frames"), _ops().map(_build))
_raw = st.tuples(st.just("bytes"), st.tuples(
    st.sampled_from([PREFACE + frame(SETTINGS, 0, 0)] * 4 + [PREFACE, PREFACE[:16], b"PRI ", b"PRI * HTTP/2.0\r\n\r\nXX"]),
    st.one_of(st.binary(max_size=400),
              # a frame header that announces more than follows
              st.tuples(st.integers(0, (1 << 24) - 1), st.integers(0, 10), st.binary(max_size=60)).map(
                  lambda t: t[0].to_bytes(3, "big") + bytes((t[1], 0)) + b"\0\0\0\1" + t[2]))))


# -- what comes back ---------------------------------------------------------------------------------------


def _frames(data: bytes) -> tuple[list[tuple[int, int, int, bytes]], bytes]:
    """The whole frames at the start of ``data``, and what is left (a frame still coming)."""
    frames, pos = [], 0
    while len(data) - pos >= 9:
        length = int.from_bytes(data[pos:pos + 3], "big")
        if len(data) - pos - 9 < length:
            break
        frames.append((data[pos + 3], data[pos + 4], int.from_bytes(data[pos + 5:pos + 9], "big") & 0x7FFFFFFF,
                       data[pos + 9:pos + 9 + length]))
        pos += 9 + length
    return frames, data[pos:]


def _exchange(port: int, pieces: list[bytes], probe: bool) -> tuple[list[tuple[int, int, int, bytes]], bool]:
    """Send ``pieces``; then a PING (``probe``) or the end of our side. Returns the frames that came back and
    whether the PING was answered; fails when neither the answer nor the close comes in time."""
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT_S) as sock:
        try:
            for piece in pieces:
                sock.sendall(piece)
            if probe:
                sock.sendall(frame(PING, 0, 0, PROBE))
            else:
                sock.shutdown(socket.SHUT_WR)  # nothing more comes: the server must close
        except OSError:
            pass  # it may have closed already (after a GOAWAY, which is still to be read)
        data = b""
        while True:
            if probe:
                frames, _ = _frames(data)
                if any(f[0] == PING and f[1] & ACK and f[3] == PROBE for f in frames):
                    return frames, True
            left = deadline - time.monotonic()
            assert left > 0, f"neither an answer nor a close in {ANSWER_TIMEOUT_S} s; got {data[:300]!r}"
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue  # the assertion above reports it
            except ConnectionResetError:  # closed with our bytes unread: a reset instead of a FIN, and what
                return _frames(data)[0], False  # was still in our receive buffer may be lost
            if not chunk:
                frames, rest = _frames(data)
                assert not rest, f"the server closed in the middle of a frame: {rest[:100]!r}"
                return frames, False
            data += chunk


async def _grpc_echo(port: int) -> bytes:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer: bytes = await channel.unary_unary("/f.E/Echo")(b"still alive", timeout=5)
        return answer


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(case=st.one_of(_structured, _structured, _raw), cuts=st.lists(st.integers(1, 2000), max_size=4))
def test_any_frames_get_answers_or_a_close(server: Server, case: tuple[str, Any], cuts: list[int]) -> None:
    server.errors.seen.clear()  # each example answers for its own errors
    server.loop_errors.clear()
    mode, spec = case
    note(f"mode={mode} cuts={cuts} sent={spec!r}")  # (this hypothesis prints the arguments themselves blank)
    data = PREFACE + frame(SETTINGS, 0, 0) + spec if mode == "frames" else spec[0] + spec[1]
    sent, _ = _frames(data.removeprefix(PREFACE)) if data.startswith(PREFACE) else ([], b"")
    # the client's streams: those it sent HEADERS on, and the lower ones that closed by that (RFC 9113 §5.1.1)
    highest = max([sid for kind, _, sid, _ in sent if kind == HEADERS and sid & 1], default=0)
    points = sorted({c for c in cuts if c < len(data)})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    # whole frames end in a PING that must be answered unless the connection is closed; random bytes may
    # announce a frame that never comes, so our side ends instead and the server must close
    frames, answered = _exchange(server.port, pieces, probe=mode == "frames")
    note(f"received={frames!r}")
    event("PING answered" if answered else "closed")
    for kind, _flags, _sid, payload in frames:
        if kind == GOAWAY:
            event(f"GOAWAY {int.from_bytes(payload[4:8], 'big')} {payload[8:40]!r}")
        elif kind == HEADERS and _flags & END_STREAM:
            event("a stream answered")
    if data.startswith(PREFACE) and frames:
        assert frames[0][0] == SETTINGS and not frames[0][1] & ACK, frames[0]  # the server's SETTINGS first
    for kind, _flags, sid, payload in frames:
        assert not sid or (sid & 1 and sid <= highest), f"a frame of type {kind} on stream {sid}: not the client's"
        if kind == GOAWAY:
            assert int.from_bytes(payload[4:8], "big") <= 0xD, payload  # an error code RFC 9113 defines
        if kind == RST_STREAM:
            assert int.from_bytes(payload, "big") <= 0xD, payload
    goaways = [i for i, f in enumerate(frames) if f[0] == GOAWAY and int.from_bytes(f[3][4:8], "big")]
    assert not goaways or goaways == [len(frames) - 1], "nothing after a GOAWAY with an error"
    server.check_quiet()
    assert asyncio.run(_grpc_echo(server.port)) == b"still alive"  # a fresh connection is served
    server.check_quiet()


def test_nothing_is_left_behind(server: Server) -> None:
    """After the fuzzing (all its connections closed), no connection, stream or handler task is left."""

    async def left() -> tuple[int, list[str]]:
        for _ in range(100):
            if not server.edge.connections:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)  # handler tasks cancelled by the last close finish their cancellation
        me = asyncio.current_task()
        return len(server.edge.connections), [repr(t) for t in asyncio.all_tasks() if t is not me]

    connections, tasks = asyncio.run_coroutine_threadsafe(left(), server.loop).result(10)
    assert connections == 0 and tasks == []
    server.check_quiet()
