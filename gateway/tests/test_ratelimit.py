"""The rate limiter's leases against a real Redis: the shared bucket is never overdrawn."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from mlp_gateway.ratelimit import RateLimiter


@pytest.fixture
async def client(redis_url: str):  # type: ignore[no-untyped-def]
    redis = aioredis.Redis.from_url(redis_url)
    yield redis
    await redis.aclose()


def _prefix() -> str:
    return f"test:rl:{uuid.uuid4().hex}:"


async def test_replicas_together_never_exceed_the_bucket(client: aioredis.Redis) -> None:
    prefix = _prefix()
    # two gateway replicas, one bucket of 50 refilled at 5/s; leases of 5 tokens
    replicas = [RateLimiter(client, rate_per_s=5, burst=50, prefix=prefix) for _ in range(2)]
    assert replicas[0].lease_size == 5
    decisions = await asyncio.gather(*(replicas[i % 2].check("client-a") for i in range(120)))
    allowed = sum(d.allowed for d in decisions)
    # never more than the bucket (+1 refilled during the test); at most a lease per replica left unused
    assert 40 <= allowed <= 51
    refused = [d for d in decisions if not d.allowed]
    assert refused and all(d.retry_after_s >= 1 for d in refused)
    # another client has its own bucket
    assert (await replicas[1].check("client-b")).allowed


async def test_concurrent_first_calls_share_one_lease_request(client: aioredis.Redis) -> None:
    limiter = RateLimiter(client, rate_per_s=100, burst=200, prefix=_prefix())
    calls = 0
    script = limiter._script

    async def counting(*args, **kwargs):
        nonlocal calls
        calls += 1
        return await script(*args, **kwargs)

    limiter._script = counting
    decisions = await asyncio.gather(*(limiter.check("c") for _ in range(16)))
    assert all(d.allowed for d in decisions)
    assert calls == 1  # one lease of 20 covers all 16


async def test_small_bursts_are_exact(client: aioredis.Redis) -> None:
    limiter = RateLimiter(client, rate_per_s=0.5, burst=3, prefix=_prefix())
    assert limiter.lease_size == 1
    assert [(await limiter.check("c")).allowed for _ in range(4)] == [True, True, True, False]


async def test_redis_down_lets_calls_through() -> None:
    client = aioredis.Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.2)
    try:
        limiter = RateLimiter(client, rate_per_s=1, burst=1)
        assert (await limiter.check("c")).allowed
    finally:
        await client.aclose()
