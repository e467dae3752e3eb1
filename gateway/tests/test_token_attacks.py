"""The attack list, each token on four doors: gateway REST, gateway gRPC, service REST, service gRPC.

The service is a ServiceHost built by mlp_core (standard AuthMiddleware and AuthInterceptor) and is
called directly, as an attacker inside the network would.
"""

from __future__ import annotations

import secrets

import grpc
import httpx
import pytest
from gateway_support import RunningGateway, Service, bearer, gateway_settings, md, running_gateway

from mlp_core.testing.tokens import TestIssuer, bad_tokens

FS_GET = "/mlp.featurestore.v1.FeatureStoreService/ListThings"
REST_PATH = "/api/v1/feature-store/whoami"
#: gRPC refusals: UNAUTHENTICATED, or RESOURCE_EXHAUSTED when grpc-core drops oversized metadata
#: (the 10 kB token) before any handler runs.
REFUSED = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED})


async def rest_status(client: httpx.AsyncClient, token: str | None, **kw) -> int:
    headers = bearer(token) if token is not None else {}
    return (await client.get(REST_PATH, headers=headers, **kw)).status_code


async def grpc_code(channel: grpc.aio.Channel, token: str | None) -> grpc.StatusCode:
    try:
        metadata = md(token) if token is not None else ()
        _ = [r async for r in channel.unary_stream(FS_GET)(b"x", metadata=metadata, timeout=5)]
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


class Doors:
    """The four ways in."""

    def __init__(self, gateway: RunningGateway, service: Service, direct: httpx.AsyncClient,
                 direct_channel: grpc.aio.Channel) -> None:
        self.gateway, self.service, self.direct, self.direct_channel = gateway, service, direct, direct_channel

    async def accepted(self, token: str | None) -> list[str]:
        """Names of the doors that let ``token`` in."""
        opened = []
        if await rest_status(self.gateway.client, token) != 401:
            opened.append("gateway-rest")
        if await grpc_code(self.gateway.channel, token) not in REFUSED:
            opened.append("gateway-grpc")
        if await rest_status(self.direct, token) != 401:
            opened.append("service-rest")
        if await grpc_code(self.direct_channel, token) not in REFUSED:
            opened.append("service-grpc")
        return opened


@pytest.fixture
async def doors(gateway: RunningGateway, service: Service):
    async with httpx.AsyncClient(base_url=service.url) as direct, \
            grpc.aio.insecure_channel(service.grpc_address) as channel:
        yield Doors(gateway, service, direct, channel)


async def test_good_token_opens_every_door(doors: Doors, test_issuer: TestIssuer) -> None:
    assert await doors.accepted(test_issuer.mint(scope="features:read")) == [
        "gateway-rest", "gateway-grpc", "service-rest", "service-grpc"]


async def test_every_bad_token_is_refused_everywhere(doors: Doors, test_issuer: TestIssuer) -> None:
    await doors.accepted(test_issuer.mint())  # warm the key caches
    catalogue = bad_tokens(test_issuer)
    assert len(catalogue) >= 40
    leaks = {name: opened for name, token in catalogue.items() if (opened := await doors.accepted(token))}
    assert leaks == {}
    assert not [p for p in test_issuer.requests if "/evil" in p], "a header URL (jku/x5u) was fetched"


async def test_missing_and_malformed_authorization_is_refused(doors: Doors, test_issuer: TestIssuer) -> None:
    assert await doors.accepted(None) == []
    good = test_issuer.mint()
    for header in (f"Basic {good}", f"Bearer {good} extra", "Bearer", f"bearer  {good}x"):
        assert (await doors.gateway.client.get(REST_PATH, headers={"Authorization": header})).status_code == 401
        assert (await doors.direct.get(REST_PATH, headers={"Authorization": header})).status_code == 401


async def test_tokens_in_query_string_are_refused(doors: Doors, test_issuer: TestIssuer) -> None:
    good = test_issuer.mint()
    for client in (doors.gateway.client, doors.direct):
        reply = await client.get(REST_PATH, params={"access_token": good}, headers=bearer(good))
        assert reply.status_code == 401
        assert good not in reply.text


async def test_refusals_never_echo_the_token(doors: Doors, test_issuer: TestIssuer, caplog) -> None:
    token = test_issuer.mint(aud="someone-else")
    reply = await doors.gateway.client.get(REST_PATH, headers=bearer(token))
    assert reply.status_code == 401
    assert reply.headers["content-type"] == "application/problem+json"
    assert token not in reply.text
    assert token.split(".")[2] not in caplog.text


async def test_thousand_random_kids_cost_at_most_one_fetch_per_door(doors: Doors, test_issuer: TestIssuer) -> None:
    await doors.accepted(test_issuer.mint())
    before = test_issuer.jwks_requests
    for _ in range(250):
        kid = secrets.token_hex(8)
        token = test_issuer.mint(header_overrides={"kid": kid})
        assert await doors.accepted(token) == []
    # 250 tokens x 4 doors = 1,000 random kids; each door's cache may refetch once per cooldown.
    assert test_issuer.jwks_requests - before <= 4
    # ops see the flood on the gateway's /metrics as throttled lookups, not as fetches
    metrics = (await doors.gateway.client.get("/metrics")).text
    throttled = [line for line in metrics.splitlines()
                 if line.startswith('mlp_auth_jwks_events_total{kind="throttled_lookup"}')]
    assert throttled and float(throttled[0].split()[-1]) >= 200, throttled


async def test_idp_down_known_keys_keep_working(doors: Doors, test_issuer: TestIssuer) -> None:
    await doors.accepted(test_issuer.mint())
    test_issuer.stop()
    assert len(await doors.accepted(test_issuer.mint(scope="features:read"))) == 4
    assert await doors.accepted(test_issuer.mint(header_overrides={"kid": "rotated-away"})) == []


async def test_oversized_token_is_refused_early_on_grpc(doors: Doors, test_issuer: TestIssuer) -> None:
    token = test_issuer.mint(padding="x" * 10_000)
    assert await grpc_code(doors.gateway.channel, token) in REFUSED
    assert await rest_status(doors.gateway.client, token) == 401


async def test_fail_closed_when_no_key_was_ever_known(tmp_path, pg_url, redis_url, test_issuer: TestIssuer,
                                                      service: Service) -> None:
    settings = gateway_settings(tmp_path, pg_url, redis_url, test_issuer.issuer, service)
    token = test_issuer.mint()
    test_issuer.stop()
    async with running_gateway(settings, test_issuer) as gw:
        assert await rest_status(gw.client, token) == 401
        assert await grpc_code(gw.channel, token) == grpc.StatusCode.UNAUTHENTICATED


async def test_concurrent_first_calls_wait_for_the_first_key_fetch(gateway: RunningGateway,
                                                                   test_issuer: TestIssuer) -> None:
    """Calls that arrive while the first JWKS fetch is in flight are not refused (mlp_core JwksCache fix)."""
    import asyncio

    token = test_issuer.mint()
    statuses = await asyncio.gather(*(rest_status(gateway.client, token) for _ in range(16)))
    assert statuses == [200] * 16
