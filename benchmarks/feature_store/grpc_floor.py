"""The floor of Python gRPC on this machine: a bare server (no interceptors, no auth) answering empty calls.

Starts a ``grpc.aio`` server (plain asyncio and uvloop) and a sync ``grpc.server`` (thread pool) that
serve only ``grpc.health.v1.Health/Check``, drives each with h2load (1 connection x 16 streams) for a few
seconds, and prints calls/s and server CPU per call. Set against the raw redis-py limit of the online
benchmark, this shows how much of a ``GetOnlineFeatures`` budget the gRPC runtime alone takes.

    .venv/bin/python benchmarks/feature_store/grpc_floor.py [--seconds 4]

Needs h2load (``make bench-tools``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mlp_core.broker import free_port


def serve(mode: str, port: int) -> None:
    """Child process: a bare health server in ``mode`` until killed."""
    import grpc
    from grpc_health.v1 import health, health_pb2_grpc

    if mode == "sync":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        server.wait_for_termination()
        return

    async def main() -> None:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    if mode == "aio-uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(mode: str, seconds: float) -> tuple[float, float]:
    """(calls/s, server CPU µs per call) of h2load against a bare server in ``mode``."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", mode, str(port)])
    try:
        time.sleep(1.5)
        with tempfile.NamedTemporaryFile(suffix=".bin") as body:
            body.write(b"\x00\x00\x00\x00\x00")  # an empty HealthCheckRequest, gRPC-framed
            body.flush()
            cpu = _cpu_s(proc.pid)
            out = subprocess.run(["h2load", "-c", "1", "-m", "16", "-t", "1", "-D", f"{int(seconds)}",
                                  "-d", body.name, "-H", "content-type: application/grpc", "-H", "te: trailers",
                                  f"http://127.0.0.1:{port}/grpc.health.v1.Health/Check"],
                                 capture_output=True, text=True, check=True).stdout
            cpu = _cpu_s(proc.pid) - cpu
        found = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored", out)
        if found is None or int(found[2]) or int(found[3]):
            raise SystemExit(f"h2load: failed calls\n{out[-2000:]}")
        succeeded = int(found[1])
        return succeeded / seconds, cpu / max(1, succeeded) * 1e6
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return
    if shutil.which("h2load") is None:
        raise SystemExit("h2load is missing: run `make bench-tools` (Debian's nghttp2-client)")
    print("Bare gRPC server, empty Health/Check calls, h2load 1 connection x 16 streams\n")
    print("| server | calls/s | server CPU µs/call |\n|---|---|---|")
    for mode in ("aio", "aio-uvloop", "sync"):
        rate, cpu = measure(mode, args.seconds)
        print(f"| {mode} | {rate:,.0f} | {cpu:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
