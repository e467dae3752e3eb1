"""Per-client rate limits: a token bucket per client in Redis, updated atomically by one Lua script."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# KEYS[1] bucket; ARGV: rate (tokens/s), burst. Uses the server clock so replicas agree.
# Returns {allowed (0/1), retry_after_ms}.
_BUCKET_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
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
local allowed = 0
local retry = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  retry = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, retry}
"""


@dataclass(frozen=True)
class Decision:
    """Outcome of one rate-limit check."""

    allowed: bool
    retry_after_s: int = 0


class RateLimiter:
    """Token bucket per client (``rate_per_s`` refill, ``burst`` capacity), shared by all replicas.

    If Redis does not answer, calls are let through and the failure is logged: limits protect
    capacity, while authentication and authorization never depend on Redis being up.
    """

    def __init__(self, redis: Any, *, rate_per_s: float, burst: int, prefix: str = "mlp:gw:rl:") -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self.redis = redis
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.prefix = prefix
        self._script = redis.register_script(_BUCKET_SCRIPT)

    async def check(self, client: str) -> Decision:
        """Take one token from ``client``'s bucket."""
        key = self.prefix + hashlib.sha256(client.encode()).hexdigest()[:32]
        try:
            allowed, retry_ms = await self._script(keys=[key], args=[self.rate_per_s, self.burst])
        except Exception as exc:  # the redis client raises many types; limits fail open by design
            log.warning("rate limiter unavailable (%s); letting the call through", type(exc).__name__)
            return Decision(True)
        if int(allowed):
            return Decision(True)
        return Decision(False, max(1, -(-int(retry_ms) // 1000)))
