"""Settings of the training service (env ``MLP_*``)."""

from __future__ import annotations

from mlp_core.settings import CoreSettings


class TrainingSettings(CoreSettings):
    """The training service's settings: the shared ones plus ``training_*`` fields."""

    service_name: str = "training"
    http_port: int = 8120
    grpc_port: int = 8121
