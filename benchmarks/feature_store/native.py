"""Native load generators: ``h2load`` (nghttp2) for gRPC cells, ``wrk`` for REST cells.

A Python client in the benchmark's process costs about as much CPU per call as the server it measures,
and on a 2-core machine it competes with the server for the cores. ghz/h2load-style native clients
spend a few microseconds per request instead.

gRPC over h2load: a unary call is an HTTP/2 POST to ``/<service>/<method>`` with ``content-type:
application/grpc`` and ``te: trailers``; the body is one length-prefixed message (1 byte 0 = not
compressed, 4 bytes big-endian length, the serialized request). h2load only sees the HTTP status (200
even for a failed gRPC call: the gRPC status comes in the trailers), so every cell is verified on the
server side: the server's ``mlp_grpc_requests`` counter (the host's error interceptor counts every
call by method and gRPC code) must grow by at least the number of requests h2load completed, all of
them ``OK``, with no other code for that method (except CANCELLED for at most the calls h2load left
in flight when it stopped). Each payload is also checked once with the Python
client before the run (see ``run.py``).

REST over wrk: a Lua script cycles through a list of JSON bodies; ``done()`` prints the latency
percentiles, the request count and the non-2xx count, and a cell with any non-2xx or socket error
fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from load import Stats, summarize

INSTALL_HINT = "apt-get install -y nghttp2-client wrk"


def available() -> dict[str, bool]:
    """Which native generators are installed."""
    return {"h2load": shutil.which("h2load") is not None, "wrk": shutil.which("wrk") is not None}


def grpc_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message (not compressed)."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


_COUNTER = re.compile(r'^mlp_grpc_requests_total\{(?P<labels>[^}]*)\}\s+(?P<value>[0-9.e+]+)$', re.M)


def grpc_counts(http_port: int, method: str) -> dict[str, float]:
    """The server's ``mlp_grpc_requests_total`` for ``method``, by gRPC code (from ``/metrics``)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for m in _COUNTER.finditer(text):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"]))
        if labels.get("method") == method:
            out[labels["code"]] = out.get(labels["code"], 0.0) + float(m["value"])
    return out


def h2load_grpc(port: int, http_port: int, method: str, message: bytes, token: str, *, clients: int,
                streams: int, seconds: float, warmup: float = 0.5) -> Stats:
    """Closed-loop unary gRPC calls: ``clients`` connections x ``streams`` outstanding calls each.

    Latency per call from h2load's ``--log-file``; raises if any call failed (HTTP or gRPC status).
    """
    before = grpc_counts(http_port, method)
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp, "body")
        body.write_bytes(grpc_frame(message))
        log = Path(tmp, "log.tsv")
        cmd = ["h2load", "-c", str(clients), "-m", str(streams), "-t", "1", "-D", f"{int(seconds * 1000)}ms",
               "--warm-up-time", f"{int(warmup * 1000)}ms", "-d", str(body), "--log-file", str(log),
               "-H", "content-type: application/grpc", "-H", "te: trailers",
               "-H", f"authorization: Bearer {token}", f"http://127.0.0.1:{port}{method}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + warmup + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"h2load failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        rows = [line.split("\t") for line in log.read_text().splitlines() if line]
    m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored",
                  proc.stdout)
    if not m or int(m[3]) or int(m[4]) or any(r[1] != "200" for r in rows):
        raise RuntimeError(f"h2load: HTTP failures\n{proc.stdout[-2000:]}")
    time.sleep(0.5)  # online workers report their counts every 0.2 s
    after = grpc_counts(http_port, method)
    delta = {code: after.get(code, 0.0) - before.get(code, 0.0) for code in after}
    # h2load stops with up to clients x streams calls in flight; a server that counts those as CANCELLED
    # (the fast port does, grpc.aio's interceptors never see them) is not failing them.
    in_flight = clients * streams
    bad = {code: n for code, n in delta.items() if code != "OK" and n and not (code == "CANCELLED" and n <= in_flight)}
    if bad or delta.get("OK", 0.0) < len(rows):
        raise RuntimeError(f"gRPC status check failed for {method}: {delta} for {len(rows)} logged calls")
    return summarize([int(r[2]) / 1e6 for r in rows], seconds)


_WRK_LUA = """
local bodies = %(bodies)s
local i = 0
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.headers["authorization"] = "Bearer %(token)s"
request = function()
  i = i %% #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %%d %%d %%d %%d %%d %%f %%f\\n", summary.requests, summary.duration,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write,
    summary.errors.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def _lua_string(s: str) -> str:
    return json.dumps(s)  # a JSON string of ASCII text is a valid Lua string literal


def wrk_post(url: str, bodies: list[str], token: str, *, connections: int, seconds: float,
             warmup: float = 0.5) -> Stats:
    """Closed-loop POSTs with ``connections`` HTTP/1.1 keep-alive connections (one request each)."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp, "post.lua")
        script.write_text(_WRK_LUA % {"bodies": "{" + ",".join(_lua_string(b) for b in bodies) + "}",
                                      "token": token})
        base = ["wrk", "-t", "1", "-c", str(connections), "-s", str(script), "--timeout", "10s"]
        if warmup > 0:
            subprocess.run([*base, "-d", f"{max(1, round(warmup))}s", url], capture_output=True, timeout=60,
                           check=True)
        proc = subprocess.run([*base, "-d", f"{max(1, round(seconds))}s", url], capture_output=True, text=True,
                              timeout=seconds + 60, env={**os.environ})
    m = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+) (\d+) ([0-9.]+) ([0-9.]+)", proc.stdout)
    if proc.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    requests, duration_us, non2xx, sock, timeouts = (int(m[i]) for i in range(1, 6))
    if non2xx or sock or timeouts:
        raise RuntimeError(f"wrk: {non2xx} non-2xx, {sock} socket errors, {timeouts} timeouts")
    return Stats(float(m[6]) / 1000, float(m[7]) / 1000, requests / (duration_us / 1e6), requests)
