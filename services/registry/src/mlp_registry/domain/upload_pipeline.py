"""The upload hot path: cut plaintext into segments with few copies, hash on a helper thread, encrypt.

hashlib releases the GIL on large buffers, so SHA-256 of segment ``i`` runs on a second core while
the calling thread seals segment ``i`` (and the artifact store's writer thread writes ``i - 1``).
Segments are handed around as memoryviews: an incoming chunk that already holds whole segments is
sliced, not copied; only bytes that straddle chunk boundaries are copied once into a fresh buffer.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

Buffer = bytes | bytearray | memoryview


def segments(chunks: Iterable[Buffer], size: int) -> Iterator[memoryview]:
    """Regroup a byte stream into views of exactly ``size`` bytes (the last may be shorter).

    A yielded view stays valid after the generator moves on (buffers are never reused).
    """
    buf: bytearray | None = None
    fill = 0
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        while view:
            if buf is None and len(view) >= size:
                yield view[:size]  # whole segment inside the chunk: no copy
                view = view[size:]
                continue
            if buf is None:
                buf, fill = bytearray(size), 0
            take = min(size - fill, len(view))
            buf[fill:fill + take] = view[:take]
            fill += take
            view = view[take:]
            if fill == size:
                yield memoryview(buf)
                buf = None
    if buf is not None and fill:
        yield memoryview(buf)[:fill]


class BackgroundHasher:
    """A SHA-256 state fed from a helper thread, in order, with at most ``depth`` pieces in flight."""

    def __init__(self, state: Any | None = None, depth: int = 4) -> None:
        self.state = state if state is not None else hashlib.sha256()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="upload-sha256")
        self._pending: deque[Future[None]] = deque()
        self._depth = depth

    def update(self, piece: Buffer) -> None:
        """Queue ``piece``; blocks while ``depth`` pieces are still being hashed."""
        self._pending.append(self._pool.submit(self.state.update, piece))
        while len(self._pending) > self._depth:
            self._pending.popleft().result()

    def finish(self) -> Any:
        """Wait for every queued piece and return the hash state (usable again for resumes)."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
        return self.state

    def hexdigest(self) -> str:
        """Hex digest of everything queued so far."""
        return str(self.finish().hexdigest())
