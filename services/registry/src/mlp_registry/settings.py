"""Registry settings: the shared ``MLP_*`` ones plus ``MLP_REGISTRY_*``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from mlp_core.settings import CoreSettings


class RegistrySettings(CoreSettings):
    """Where artifacts and keys live and how releases are governed."""

    service_name: str = "registry"
    registry_artifact_backend: Literal["local", "s3"] = "local"
    registry_artifact_dir: Path | None = Field(default=None, description="default <state_dir>/registry/artifacts")
    registry_s3_bucket: str = ""
    registry_s3_prefix: str = "registry/"
    registry_s3_endpoint_url: str | None = None
    registry_s3_region: str | None = None
    registry_key_file: Path | None = Field(default=None, description="local KEK file; default <state_dir>/registry/kek.json")
    registry_signing_key_path: Path | None = Field(
        default=None, description="Ed25519 PEM; default <state_dir>/registry/signing-key.pem")
    registry_protected_aliases: list[str] = Field(default_factory=lambda: ["production"])
    registry_change_request_ttl_s: int = Field(default=7 * 24 * 3600, gt=0)
    registry_upload_ttl_s: int = Field(default=2 * 24 * 3600, gt=0)
    registry_upload_idle_timeout_s: float = Field(
        default=20.0, gt=0, lt=60, description="end an upload stream that sends nothing this long (resume later)")
    registry_segment_size: int = Field(default=1 << 20, ge=4096, le=64 << 20)
    registry_housekeeping_interval_s: float = Field(default=300.0, gt=0)

    @model_validator(mode="after")
    def _production_keys_must_exist(self) -> RegistrySettings:
        if self.mode != "local":
            for path in (self.key_file, self.signing_key_path):
                if not path.exists():
                    raise ValueError(f"{path} does not exist; outside local mode keys are provisioned, "
                                     "never generated at start-up")
        if self.registry_artifact_backend == "s3" and not self.registry_s3_bucket:
            raise ValueError("MLP_REGISTRY_S3_BUCKET is required with the s3 artifact backend")
        return self

    @property
    def artifact_dir(self) -> Path:
        """Folder of the local artifact store."""
        return self.registry_artifact_dir or self.state_dir / "registry" / "artifacts"

    @property
    def key_file(self) -> Path:
        """The local key-encryption-key file."""
        return self.registry_key_file or self.state_dir / "registry" / "kek.json"

    @property
    def signing_key_path(self) -> Path:
        """The Ed25519 signing key."""
        return self.registry_signing_key_path or self.state_dir / "registry" / "signing-key.pem"
