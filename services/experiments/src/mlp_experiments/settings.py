"""Settings of the experiments service (env ``MLP_*``)."""

from __future__ import annotations

from mlp_core.settings import CoreSettings


class ExperimentsSettings(CoreSettings):
    """The experiments service's settings: the shared ones plus ``experiments_*`` fields."""

    service_name: str = "experiments"
    http_port: int = 8150
    grpc_port: int = 8151
