"""More processes on the fast port: online reads on every core (``MLP_FEATURE_STORE_ONLINE_WORKERS``).

One Python process answers about 3,000-4,000 single-entity reads a second (250-340 µs of CPU each, GIL
bound). With ``N`` workers the service process and ``N - 1`` worker processes all listen on the fast port
with ``SO_REUSEPORT`` and the kernel spreads new connections over them. A worker serves only the fast
port's routes (online reads over REST and gRPC) with its own database and Redis connections and its own
token verifier; everything else stays in the service process.

The service process (``OnlineWorkers``, one of its background tasks) starts each worker with
``python -m mlp_feature_store.online_workers``, writes the worker's settings as one JSON line on its stdin
and keeps stdin open: end of file (the service stopped, or died) stops the worker. Workers send their
request metrics back as one JSON line on stdout every 0.2 s, and the service adds them to its own, so
``/metrics`` counts every call once. A worker that exits is started again. Readiness (``/readyz``)
waits for every worker to listen.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

from mlp_core.auth import build_verifier
from mlp_core.edge import Edge, EdgeConfig
from mlp_core.grpc_edge import GrpcRoutes
from mlp_core.host import run_loop, setup_process
from mlp_core.telemetry import GrpcMetrics, HttpMetrics
from mlp_feature_store.api.fast_online import OnlineGrpc, OnlineRoutes
from mlp_feature_store.settings import FeatureStoreSettings

log = logging.getLogger(__name__)

FLUSH_S = 0.2
RESTART_DELAY_S = 1.0
STOP_GRACE_S = 3.0
READY = b"ready\n"

Key = tuple[str, tuple[str, ...]]


class _Sink:
    """Metrics a worker has not reported yet: counts and observed durations per (series, labels)."""

    def __init__(self) -> None:
        self.counts: dict[Key, float] = {}
        self.observed: dict[Key, list[float]] = {}

    def drain(self) -> dict[str, Any] | None:
        if not self.counts and not self.observed:
            return None
        out = {"c": [[k[0], k[1], n] for k, n in self.counts.items()],
               "o": [[k[0], k[1], v] for k, v in self.observed.items()]}
        self.counts, self.observed = {}, {}
        return out


class _Child:
    __slots__ = ("key", "sink")

    def __init__(self, sink: _Sink, key: Key) -> None:
        self.sink, self.key = sink, key

    def inc(self, amount: float = 1.0) -> None:
        counts = self.sink.counts
        counts[self.key] = counts.get(self.key, 0.0) + amount

    def observe(self, value: float) -> None:
        self.sink.observed.setdefault(self.key, []).append(value)


class _Family:
    def __init__(self, sink: _Sink, name: str) -> None:
        self.sink, self.name = sink, name

    def labels(self, *values: str) -> _Child:
        return _Child(self.sink, (self.name, tuple(values)))


class _Recorder:
    """Stands in for ``HttpMetrics``/``GrpcMetrics`` in a worker: ``requests`` and ``latency`` families."""

    def __init__(self, sink: _Sink, kind: str) -> None:
        self.requests = _Family(sink, f"{kind}.requests")
        self.latency = _Family(sink, f"{kind}.latency")


# -- the worker process --------------------------------------------------------------------------------


class _EndOfInput(asyncio.Protocol):
    def __init__(self, stop: asyncio.Event) -> None:
        self.stop = stop

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop.set()


async def _serve(settings: FeatureStoreSettings) -> None:
    from mlp_feature_store.main import tune_gc, wire

    wiring = wire(settings, migrate=False)  # the service migrated before it started its workers
    verifier = build_verifier(settings)
    sink = _Sink()
    service = wiring.service
    grpc_routes = GrpcRoutes(OnlineGrpc(service, verifier).routes(), service=settings.service_name,
                             metrics=_Recorder(sink, "grpc"),  # type: ignore[arg-type]
                             max_message_bytes=EdgeConfig.max_body_bytes)
    edge = Edge(EdgeConfig(OnlineRoutes(service, verifier), service=settings.service_name,
                           metrics=_Recorder(sink, "http"), grpc=grpc_routes))  # type: ignore[arg-type]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await loop.connect_read_pipe(lambda: _EndOfInput(stop), sys.stdin)
    await edge.start(settings.http_host, settings.feature_store_online_port, reuse_port=True)
    tune_gc()
    out = sys.stdout.buffer
    out.write(READY)
    out.flush()
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), FLUSH_S)
            except TimeoutError:
                pass
            _report(sink, out)
    finally:
        await edge.close()
        _report(sink, out)
        for db in wiring.databases.values():
            db.dispose()


def _report(sink: _Sink, out: Any) -> None:
    batch = sink.drain()
    if batch is not None:
        out.write(json.dumps(batch, separators=(",", ":")).encode() + b"\n")
        out.flush()


def main() -> None:
    """A worker: settings from the first line of stdin, then serve until stdin ends or SIGTERM."""
    settings = FeatureStoreSettings.model_validate_json(sys.stdin.buffer.readline())
    setup_process(settings)
    run_loop(_serve(settings))


# -- the service process -------------------------------------------------------------------------------


class OnlineWorkers:
    """Starts, watches and stops the worker processes; adds their metrics to the service's."""

    def __init__(self, settings: FeatureStoreSettings, count: int, http: HttpMetrics, grpc: GrpcMetrics,
                 command: list[str] | None = None) -> None:
        self.settings_line = settings.model_dump_json().encode() + b"\n"
        self.count = count
        self.command = command or [sys.executable, "-m", "mlp_feature_store.online_workers"]
        self.families: dict[str, Callable[..., Any]] = {
            "http.requests": http.requests.labels, "http.latency": http.latency.labels,
            "grpc.requests": grpc.requests.labels, "grpc.latency": grpc.latency.labels}
        self.listening: dict[int, int] = {}  # worker slot → pid, once it listens
        self.started = 0  # processes started, restarts included

    def probe(self) -> None:
        """Readiness: every worker listens."""
        if len(self.listening) < self.count:
            raise RuntimeError(f"{len(self.listening)} of {self.count} online workers listen")

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(*(self._keep(slot, stop) for slot in range(self.count)))

    async def _keep(self, slot: int, stop: asyncio.Event) -> None:
        while not stop.is_set():
            proc = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=64 << 20)
            self.started += 1
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(self.settings_line)
            reader = asyncio.create_task(self._read(slot, proc.pid, proc.stdout))
            exited = asyncio.create_task(proc.wait())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():  # the service stops: end the worker's stdin, then wait for it
                stopping.cancel()
                proc.stdin.close()
                try:
                    await asyncio.wait_for(asyncio.shield(exited), STOP_GRACE_S)
                except TimeoutError:
                    proc.kill()
                    await exited
                await reader
                return
            stopping.cancel()
            await reader
            self.listening.pop(slot, None)
            log.error("online worker %d (pid %d) exited with status %s; starting it again",
                      slot, proc.pid, proc.returncode)
            try:
                await asyncio.wait_for(stop.wait(), RESTART_DELAY_S)
            except TimeoutError:
                pass

    async def _read(self, slot: int, pid: int, stdout: asyncio.StreamReader) -> None:
        async for line in stdout:
            if line == READY:
                self.listening[slot] = pid
                log.info("online worker %d (pid %d) listens", slot, pid)
                continue
            try:
                self._apply(json.loads(line))
            except (ValueError, KeyError, TypeError):
                log.warning("online worker %d sent a line that is not a metrics report", slot)

    def _apply(self, batch: dict[str, Any]) -> None:
        for name, labels, amount in batch["c"]:
            self.families[name](*labels).inc(amount)
        for name, labels, values in batch["o"]:
            child = self.families[name](*labels)
            for value in values:
                child.observe(value)


if __name__ == "__main__":
    main()
