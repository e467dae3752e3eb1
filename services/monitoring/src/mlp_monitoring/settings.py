"""Settings of the monitoring service (env ``MLP_*``)."""

from __future__ import annotations

from mlp_core.settings import CoreSettings


class MonitoringSettings(CoreSettings):
    """The monitoring service's settings: the shared ones plus ``monitoring_*`` fields."""

    service_name: str = "monitoring"
    http_port: int = 8160
    grpc_port: int = 8161
