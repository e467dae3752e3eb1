"""Per-client rate limits: a token bucket per client in Redis, updated atomically by one Lua script.

Each gateway process takes tokens from the shared bucket in small leases (``lease_size`` at a time,
kept for at most ``lease_s``), so most calls are decided in memory and only about one call in
``lease_size`` goes to Redis. The limit stays global and exact in one direction: every call let through
spent a token taken from the shared bucket, so the replicas together never exceed rate x time + burst.
Tokens leased but not used before the lease expires are lost, so a client spread over many replicas
can be limited slightly early (by at most ``lease_size - 1`` tokens per replica per ``lease_s``).
With ``burst < 10`` leases hold one token: every call goes to Redis and the bucket is exact.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# KEYS[1] bucket; ARGV: rate (tokens/s), burst, wanted tokens. Uses the server clock so replicas agree.
# Returns {granted tokens (0..wanted), retry_after_ms (when none was granted)}.
_BUCKET_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local granted = math.min(want, math.floor(tokens))
local retry = 0
if granted >= 1 then
  tokens = tokens - granted
else
  granted = 0
  retry = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {granted, retry}
"""


@dataclass(frozen=True)
class Decision:
    """Outcome of one rate-limit check."""

    allowed: bool
    retry_after_s: int = 0


_ALLOWED = Decision(True)


@dataclass
class _Lease:
    """Tokens this process holds for one client, until ``expires`` (monotonic seconds)."""

    tokens: int = 0
    expires: float = 0.0
    pending: asyncio.Future[Decision | None] | None = None  # a lease request in flight


class RateLimiter:
    """Token bucket per client (``rate_per_s`` refill, ``burst`` capacity), shared by all replicas.

    If Redis does not answer, calls are let through and the failure is logged: limits protect
    capacity, while authentication and authorization never depend on Redis being up.
    """

    def __init__(self, redis: Any, *, rate_per_s: float, burst: int, prefix: str = "mlp:gw:rl:",
                 lease_size: int | None = None, lease_s: float = 1.0) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self.redis = redis
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.prefix = prefix
        # A lease is a tenth of the burst, and no more than the refill of one lease period.
        self.lease_size = max(1, lease_size if lease_size is not None
                              else min(burst // 10, int(rate_per_s * lease_s)))
        self.lease_s = lease_s
        self._leases: dict[str, _Lease] = {}
        self._script = redis.register_script(_BUCKET_SCRIPT)

    async def check(self, client: str) -> Decision:
        """Take one token for ``client``: from this process's lease, else a new lease from Redis.

        Calls that find a lease request of the same client in flight wait for it and share its
        outcome (tokens, or the refusal), so a burst of concurrent first calls costs one Redis call.
        """
        while True:
            lease = self._leases.get(client)
            if lease is not None:
                if lease.tokens >= 1 and time.monotonic() < lease.expires:
                    lease.tokens -= 1
                    return _ALLOWED
                if lease.pending is not None:
                    refused = await asyncio.shield(lease.pending)
                    if refused is not None:
                        return refused
                    continue
            return await self._lease(client)

    async def _lease(self, client: str) -> Decision:
        lease = self._leases.get(client)
        if lease is None:
            if len(self._leases) > 10_000:
                now = time.monotonic()
                self._leases = {c: v for c, v in self._leases.items()
                                if v.pending is not None or (v.expires > now and v.tokens >= 1)}
            lease = self._leases[client] = _Lease()
        pending: asyncio.Future[Decision | None] = asyncio.get_running_loop().create_future()
        lease.pending = pending
        outcome: Decision | None = None
        try:
            key = self.prefix + hashlib.sha256(client.encode()).hexdigest()[:32]
            try:
                granted, retry_ms = await self._script(keys=[key], args=[self.rate_per_s, self.burst,
                                                                        self.lease_size])
            except Exception as exc:  # the redis client raises many types; limits fail open by design
                log.warning("rate limiter unavailable (%s); letting the call through", type(exc).__name__)
                return _ALLOWED
            if int(granted) < 1:
                outcome = Decision(False, max(1, -(-int(retry_ms) // 1000)))
                return outcome
            lease.tokens = int(granted) - 1
            lease.expires = time.monotonic() + self.lease_s
            return _ALLOWED
        finally:
            lease.pending = None
            pending.set_result(outcome)
