"""What the local platform consists of: components, their ports and how to start them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceSpec:
    """One platform process the launcher runs."""

    name: str
    module: str
    http_port: int
    grpc_port: int = 0
    client_id: str = ""

    @property
    def base_url(self) -> str:
        """Its REST address on this machine."""
        return f"http://127.0.0.1:{self.http_port}"


ISSUER_PORT = 8080
#: The feature store's fast port for online reads (``MLP_FEATURE_STORE_ONLINE_PORT``).
FEATURE_STORE_ONLINE_PORT = 8112
KAFKA_PORT = 9092
FALLBACK_REDIS_PORT = 6380

SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("feature-store", "mlp_feature_store.main", 8110, 8111, "svc-feature-store"),
    ServiceSpec("training", "mlp_training.main", 8120, 8121, "svc-training"),
    ServiceSpec("registry", "mlp_registry.main", 8130, 8131, "svc-registry"),
    ServiceSpec("serving", "mlp_serving.main", 8140, 8141, "svc-serving"),
    ServiceSpec("experiments", "mlp_experiments.main", 8150, 8151, "svc-experiments"),
    ServiceSpec("monitoring", "mlp_monitoring.main", 8160, 8161, "svc-monitoring"),
)
GATEWAY = ServiceSpec("gateway", "mlp_gateway.main", 8000, 8001, "svc-gateway")


def upstream_env() -> dict[str, str]:
    """Where the gateway finds each service (``MLP_GATEWAY_UPSTREAM_<NAME>``)."""
    env: dict[str, str] = {}
    for spec in SERVICES:
        key = spec.name.upper().replace("-", "_")
        env[f"MLP_GATEWAY_UPSTREAM_{key}"] = spec.base_url
        env[f"MLP_GATEWAY_GRPC_UPSTREAM_{key}"] = f"127.0.0.1:{spec.grpc_port}"
    env["MLP_GATEWAY_UPSTREAM_FEATURE_STORE_ONLINE"] = f"http://127.0.0.1:{FEATURE_STORE_ONLINE_PORT}"
    return env
