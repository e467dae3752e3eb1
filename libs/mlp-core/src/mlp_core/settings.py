"""Settings shared by every service: one URL per backing component, read from ``MLP_*`` variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Values that are fine on a laptop and never in production.
DEV_SECRETS = frozenset({"", "changeme", "dev-secret", "local-dev-secret"})


class CoreSettings(BaseSettings):
    """Settings every service has. Subclasses add ``<service>_<thing>`` fields."""

    model_config = SettingsConfigDict(env_prefix="MLP_", env_file=".env", extra="ignore")

    mode: Literal["local", "production"] = "local"
    service_name: str = "mlp"
    state_dir: Path = Path(".mlp")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty means SQLite under state_dir")
    redis_url: str = "redis://127.0.0.1:6379/0"
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_max_poll_interval_ms: int = Field(
        default=300_000, description="kafka-python max_poll_interval_ms; small (5000) for Tansu"
    )
    oidc_issuer: str = "http://127.0.0.1:8080"
    oidc_audience: str = "mlp"
    oidc_client_id: str = ""
    oidc_client_secret: str = "local-dev-secret"  # noqa: S105 - refused outside local mode
    oidc_max_token_lifetime_s: int = 3600
    oidc_leeway_s: int = 30
    triton_url: str = ""
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 0
    otlp_endpoint: str = ""
    log_level: str = "INFO"
    log_dir: Path | None = None

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> CoreSettings:
        if self.mode != "local":
            if self.oidc_client_id and self.oidc_client_secret in DEV_SECRETS:
                raise ValueError(
                    "MLP_OIDC_CLIENT_SECRET has a development default; set a real secret outside local mode"
                )
            if self.oidc_issuer.startswith("http://") and not self.oidc_issuer.startswith(
                ("http://127.0.0.1", "http://localhost")
            ):
                raise ValueError("MLP_OIDC_ISSUER must use https outside local mode")
        return self

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in the state folder."""
        if self.database_url:
            return self.database_url
        path = (self.state_dir / f"{self.service_name}.db").resolve()
        return f"sqlite:///{path}"

    @property
    def kafka_servers(self) -> list[str]:
        """Bootstrap servers as a list."""
        return [s.strip() for s in self.kafka_bootstrap_servers.split(",") if s.strip()]
