"""Settings of the serving service (env ``MLP_*``)."""

from __future__ import annotations

from mlp_core.settings import CoreSettings


class ServingSettings(CoreSettings):
    """The serving service's settings: the shared ones plus ``serving_*`` fields."""

    service_name: str = "serving"
    http_port: int = 8140
    grpc_port: int = 8141
