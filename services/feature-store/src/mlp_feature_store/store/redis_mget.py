"""A lean asyncio ``MGET`` client for the online read path: one pipelined connection, hiredis parsing.

redis-py's asyncio client spends more CPU per command (connection pool checkout, retry wrapper,
argument encoding one key at a time, response callbacks) than the feature store spends decoding the
reply. This client packs the command in one ``bytes.join``, writes it on one connection shared by
every concurrent read (Redis answers in order, so replies match a FIFO of futures) and parses replies
with hiredis in C. Only plain ``redis://`` URLs (host, port, db, optional user/password) are
handled; ``from_url`` returns None for anything else and the caller keeps redis-py.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlparse

import hiredis
import redis


def _pack(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None
        self.outgoing: list[bytes] = []

    def send(self, command: bytes) -> None:
        """Queue a command; every command queued in this turn of the event loop goes out in one write.

        Concurrent reads woken by the same event (16 gRPC calls arriving in one TCP read) then cost Redis
        and this process one ``send`` and one reply read instead of one each.
        """
        if not self.outgoing:
            asyncio.get_running_loop().call_soon(self._write)
        self.outgoing.append(command)

    def _write(self) -> None:
        data = self.outgoing[0] if len(self.outgoing) == 1 else b"".join(self.outgoing)
        self.outgoing.clear()
        if self.transport is not None and self.lost is None:
            self.transport.write(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while self.waiters:
            reply = self.reader.gets()
            if reply is False:
                return
            fut = self.waiters.popleft()
            if fut.done():  # its caller was cancelled; the reply is still consumed in order
                continue
            if isinstance(reply, hiredis.ReplyError):
                fut.set_exception(redis.ResponseError(str(reply)))
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("connection closed by Redis")
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(redis.ConnectionError(f"Redis connection lost: {self.lost}"))


class AsyncMget:
    """``await mget(keys)`` over one pipelined connection of the running loop, reconnecting when lost."""

    def __init__(self, host: str, port: int, db: int = 0, username: str | None = None,
                 password: str | None = None) -> None:
        self.host, self.port, self.db = host, port, db
        self.username, self.password = username, password
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    @classmethod
    def from_url(cls, url: str) -> AsyncMget | None:
        """A client for a plain ``redis://`` URL; None for TLS, Unix sockets or query options."""
        u = urlparse(url)
        if u.scheme != "redis" or u.query or not u.hostname:
            return None
        path = u.path.strip("/")
        if path and not path.isdigit():
            return None
        return cls(u.hostname, u.port or 6379, int(path or 0), unquote(u.username) if u.username else None,
                   unquote(u.password) if u.password else None)

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        _transport, proto = await loop.create_connection(_Protocol, self.host, self.port)
        setup: list[bytes] = []
        if self.password is not None:
            auth = [b"AUTH", self.password.encode()]
            if self.username:
                auth.insert(1, self.username.encode())
            setup.append(_pack(*auth))
        if self.db:
            setup.append(_pack(b"SELECT", str(self.db).encode()))
        for command in setup:
            await self._call(proto, command)
        return proto

    async def _protocol(self) -> _Protocol:
        proto = self._proto
        if proto is not None and proto.lost is None:
            return proto
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
            try:
                self._proto = await self._connecting
            finally:
                self._connecting = None
            return self._proto
        return await asyncio.shield(self._connecting)

    @staticmethod
    async def _call(proto: _Protocol, command: bytes) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        proto.waiters.append(fut)
        proto.send(command)
        return await fut

    async def mget(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """The values of ``keys`` (None where absent), in order."""
        command = b"*%d\r\n$4\r\nMGET\r\n" % (len(keys) + 1) + b"".join(
            [b"$%d\r\n%b\r\n" % (len(k), k) for k in keys])
        for attempt in (1, 2):  # MGET is idempotent: one retry on a fresh connection if this one died
            proto = await self._protocol()
            try:
                result: list[bytes | None] = await self._call(proto, command)
                return result
            except (redis.ConnectionError, OSError):
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Close the connection (a later call opens a new one)."""
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None
