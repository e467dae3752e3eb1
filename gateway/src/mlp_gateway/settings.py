"""Gateway settings: the shared ones plus where each upstream service lives."""

from __future__ import annotations

from mlp_core.settings import CoreSettings

SERVICE_NAMES = ("feature-store", "training", "registry", "serving", "experiments", "monitoring")


class GatewaySettings(CoreSettings):
    """``MLP_GATEWAY_UPSTREAM_<SERVICE>`` gives each service's REST base URL."""

    service_name: str = "gateway"
    http_port: int = 8000
    grpc_port: int = 8001
    gateway_upstream_feature_store: str = "http://127.0.0.1:8110"
    gateway_upstream_training: str = "http://127.0.0.1:8120"
    gateway_upstream_registry: str = "http://127.0.0.1:8130"
    gateway_upstream_serving: str = "http://127.0.0.1:8140"
    gateway_upstream_experiments: str = "http://127.0.0.1:8150"
    gateway_upstream_monitoring: str = "http://127.0.0.1:8160"
    gateway_upstream_timeout_s: float = 30.0

    def upstreams(self) -> dict[str, str]:
        """Service name → REST base URL."""
        return {name: getattr(self, f"gateway_upstream_{name.replace('-', '_')}") for name in SERVICE_NAMES}
