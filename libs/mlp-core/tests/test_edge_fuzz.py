"""Property test of mlp_core.edge at the byte level: whatever arrives, the edge answers HTTP or closes.

Hypothesis builds requests from hostile parts (odd methods and targets, bad versions, conflicting or
malformed framing headers, chunked bodies right and wrong, upgrades, bytes that are not HTTP) and sends
them in random pieces. For each: the bytes that come back are HTTP/1.1 responses, never a 500, and the
edge still answers a plain request on a new connection afterwards.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlp_core.edge import Connection, Edge, EdgeConfig, Handler, Request, response_head


async def _echo(request: Request, conn: Connection) -> int:
    body = json.dumps({"n": len(request.body_bytes())}).encode()
    conn.send(response_head(200, [(b"content-type", b"application/json")], length=len(body),
                            close=not request.keep) + body)
    return 200


def _router(method: str, path: str) -> tuple[Handler, str] | None:
    return (_echo, "/echo") if path == "/echo" else None


@pytest.fixture(scope="module")
def edge_port() -> Iterator[int]:
    loop = asyncio.new_event_loop()
    edge = Edge(EdgeConfig(_router, max_body_bytes=4096))
    port = loop.run_until_complete(edge.start("127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield port
    asyncio.run_coroutine_threadsafe(edge.close(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def _exchange(port: int, pieces: list[bytes]) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        try:
            for piece in pieces:
                sock.sendall(piece)
            sock.shutdown(socket.SHUT_WR)  # nothing more comes: the edge answers what it has, or closes
        except OSError:
            pass  # the edge may already have answered and closed
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except OSError:
            pass
        return out


def _responses(data: bytes) -> list[int]:
    """Status codes of the HTTP/1.1 responses in ``data`` (a cut last one counts too)."""
    statuses = []
    while data:
        assert data.startswith(b"HTTP/1.1 "), data[:200]
        head, sep, rest = data.partition(b"\r\n\r\n")
        statuses.append(int(head[9:12]))
        if not sep:
            break
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        data = rest[length:]
    return statuses


# Plain values are repeated so that about half the requests are well formed and reach a handler.
methods = st.sampled_from([b"GET"] * 4 + [b"POST"] * 4 + [b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH",
                                                          b"BREW", b"", b"G\x00T", b"CONNECT"])
targets = st.sampled_from([b"/echo"] * 3 + [b"/echo?x=1"] * 3 + [b"/%2e%2e/echo", b"*", b"http://x/echo",
                                                                  b"/nowhere", b"/echo#frag", b"//echo", b"/ec ho",
                                                                  b"/\xff"])
versions = st.sampled_from([b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1x", b"", b"HTTP/0.9"])
header_values = st.sampled_from([b"5", b"-1", b"abc", b"99999999999999999999", b"0", b"4097", b"chunked",
                                 b"gzip, chunked", b"identity", b"close", b"keep-alive", b"Upgrade",
                                 b"websocket", b"100-continue", b"\x00\x01", b" 5 ", b""])
header_names = st.sampled_from([b"Host"] * 3 + [b"X-A"] * 3 + [b"Content-Length", b"Transfer-Encoding",
                                                                b"Connection", b"Expect", b"Upgrade",
                                                                b"Content Length", b":authority", b""])
bodies = st.one_of(st.binary(max_size=300),
                   st.sampled_from([b"5\r\nhello\r\n0\r\n\r\n", b"zz\r\nhello\r\n0\r\n\r\n",
                                    b"5\r\nhello", b"1000\r\n" + b"a" * 10, b"0\r\n\r\n"]))


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(min_size=1, max_size=400))  # not HTTP at all
    line = draw(methods) + b" " + draw(targets) + b" " + draw(versions) + b"\r\n"
    headers = b"".join(draw(header_names) + b": " + draw(header_values) + b"\r\n"
                       for _ in range(draw(st.integers(0, 3))))
    request = line + headers + b"\r\n" + draw(bodies)
    if draw(st.booleans()):  # a second request behind it (pipelining)
        request += b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"
    return request


@settings(max_examples=int(__import__("os").environ.get("MLP_EDGE_FUZZ_EXAMPLES", "150")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=requests(), cuts=st.lists(st.integers(1, 400), max_size=3))
def test_any_bytes_get_http_answers_or_a_close(edge_port: int, data: bytes, cuts: list[int]) -> None:
    points = sorted({c for c in cuts if c < len(data)})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    statuses = _responses(_exchange(edge_port, pieces))
    assert all(status != 500 and 100 <= status < 600 for status in statuses), statuses
    # and the edge still serves a plain request
    assert _responses(_exchange(edge_port, [b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"])) \
        == [200]
