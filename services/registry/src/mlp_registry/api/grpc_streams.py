"""Bridges a grpc.aio request stream (event loop) to a blocking domain call (worker thread)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator


class ChunkBridge:
    """A bounded hand-over of byte chunks from the event loop to one consuming worker thread.

    The loop side ``put``s chunks and ``close``s the stream (always, also on cancellation, so the
    worker sees a clean end and keeps what it has made durable). The thread side iterates
    ``chunks()``. At most ``depth`` chunks wait in between, so memory stays bounded however fast
    the client sends. ``abandon`` releases a producer blocked on a consumer that stopped early.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, depth: int = 8) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._credits = asyncio.Semaphore(depth)
        self._depth = depth
        self._closed = False
        self.abandoned = False

    async def put(self, data: bytes) -> None:
        """Hand one chunk over (loop side); waits while ``depth`` chunks are pending."""
        await self._credits.acquire()
        if not self.abandoned and not self._closed:
            self._queue.put_nowait(data)

    def close(self) -> None:
        """End the stream (loop side); idempotent."""
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(None)

    def abandon(self) -> None:
        """The consumer is gone (loop side): wake a blocked ``put`` and drop what is still queued."""
        self.abandoned = True
        for _ in range(self._depth + 1):
            self._credits.release()

    def chunks(self) -> Iterator[bytes]:
        """The chunks in order (worker-thread side); ends at ``close``."""
        while True:
            item = asyncio.run_coroutine_threadsafe(self._queue.get(), self._loop).result()
            if item is None:
                return
            self._loop.call_soon_threadsafe(self._credits.release)
            yield item
