"""Gateway settings: the shared ones plus upstreams, limits, DPoP, token exchange and audit."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field

from mlp_core.settings import CoreSettings

SERVICE_NAMES = ("feature-store", "training", "registry", "serving", "experiments", "monitoring")


def _env_key(service: str) -> str:
    return service.replace("-", "_")


class GatewaySettings(CoreSettings):
    """``MLP_GATEWAY_UPSTREAM_<SERVICE>`` (REST base URL) and ``MLP_GATEWAY_GRPC_UPSTREAM_<SERVICE>``
    (gRPC ``host:port``) say where each service lives; the other ``MLP_GATEWAY_*`` fields tune limits."""

    service_name: str = "gateway"
    http_port: int = 8000
    grpc_port: int = 8001
    gateway_upstream_feature_store: str = "http://127.0.0.1:8110"
    gateway_upstream_training: str = "http://127.0.0.1:8120"
    gateway_upstream_registry: str = "http://127.0.0.1:8130"
    gateway_upstream_serving: str = "http://127.0.0.1:8140"
    gateway_upstream_experiments: str = "http://127.0.0.1:8150"
    gateway_upstream_monitoring: str = "http://127.0.0.1:8160"
    gateway_grpc_upstream_feature_store: str = "127.0.0.1:8111"
    gateway_grpc_upstream_training: str = "127.0.0.1:8121"
    gateway_grpc_upstream_registry: str = "127.0.0.1:8131"
    gateway_grpc_upstream_serving: str = "127.0.0.1:8141"
    gateway_grpc_upstream_experiments: str = "127.0.0.1:8151"
    gateway_grpc_upstream_monitoring: str = "127.0.0.1:8161"
    gateway_upstream_timeout_s: float = 30.0
    gateway_route_timeouts_s: dict[str, float] = Field(
        default_factory=lambda: {"/v2/": 10.0, "/api/v1/training/": 60.0},
        description="path prefix → upstream timeout in seconds (longest prefix wins)")
    gateway_max_body_bytes: int = 10 * 1024 * 1024
    gateway_max_header_token_bytes: int = 8192
    gateway_rate_limit_per_s: float = 100.0
    gateway_rate_limit_burst: int = 200
    gateway_rate_limit_lease: int = Field(
        default=0, ge=0, description="tokens a process takes from Redis at a time; 0: a tenth of the burst, "
        "at most one second of refill (1 = every call asks Redis)")
    gateway_dpop_max_age_s: int = 60
    gateway_public_url: str = Field(default="", description="external base URL for DPoP htu checks")
    gateway_token_exchange: bool = False
    gateway_token_exchange_endpoint: str = ""
    gateway_audit_checkpoint_every: int = 100
    gateway_audit_checkpoint_interval_s: float = 60.0
    gateway_audit_queue_size: int = 10_000
    gateway_openapi_refresh_s: float = 300.0

    gateway_upstream_feature_store_online: str = Field(
        default="", description="base URL of the feature store's fast online-read port (its "
        "MLP_FEATURE_STORE_ONLINE_PORT): REST online reads and gRPC GetOnlineFeatures go there; empty: to "
        "MLP_GATEWAY_UPSTREAM_FEATURE_STORE and MLP_GATEWAY_GRPC_UPSTREAM_FEATURE_STORE")

    def route_upstreams(self) -> dict[str, str]:
        """Path pattern → base URL, for routes a service serves on another port (first match wins)."""
        return {r"^/api/v1/feature-store/projects/[^/]+/online-features$": self.gateway_upstream_feature_store_online}

    def grpc_method_upstreams(self) -> dict[str, str]:
        """Full gRPC method → ``host:port``, for methods a service also serves on another port: the feature
        store's fast port answers ``GetOnlineFeatures`` over h2c."""
        if not self.gateway_upstream_feature_store_online:
            return {}
        online = urlsplit(self.gateway_upstream_feature_store_online)
        return {"/mlp.featurestore.v1.FeatureStoreService/GetOnlineFeatures": online.netloc}

    def upstreams(self) -> dict[str, str]:
        """Service name → REST base URL."""
        return {name: getattr(self, f"gateway_upstream_{_env_key(name)}") for name in SERVICE_NAMES}

    def grpc_upstreams(self) -> dict[str, str]:
        """Service name → gRPC ``host:port``."""
        return {name: getattr(self, f"gateway_grpc_upstream_{_env_key(name)}") for name in SERVICE_NAMES}
