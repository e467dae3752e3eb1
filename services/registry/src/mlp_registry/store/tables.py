"""SQLAlchemy tables of the registry database (the Alembic migration creates the same shape)."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from mlp_core.events.tables import event_tables

metadata = MetaData()
_Id = BigInteger().with_variant(Integer(), "sqlite")
TS = DateTime(timezone=True)

models = Table(
    "registry_models", metadata,
    Column("id", String(36), primary_key=True),
    Column("project", String(128), nullable=False),
    Column("name", String(256), nullable=False),
    Column("description", Text, nullable=False),
    Column("tags", JSON, nullable=False),
    Column("thresholds", JSON, nullable=False),
    Column("metadata_revision", Integer, nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("created_at", TS, nullable=False),
    UniqueConstraint("project", "name", name="uq_registry_models_project_name"),
)

revisions = Table(
    "registry_metadata_revisions", metadata,
    Column("object_id", String(36), primary_key=True),
    Column("revision", Integer, primary_key=True),
    Column("description", Text, nullable=False),
    Column("tags", JSON, nullable=False),
    Column("author", String(256), nullable=False),
    Column("at", TS, nullable=False),
)

versions = Table(
    "registry_versions", metadata,
    Column("id", String(36), primary_key=True),
    Column("model_id", String(36), ForeignKey("registry_models.id"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("framework", String(64), nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("params", JSON, nullable=False),
    Column("input_schema", JSON, nullable=False),
    Column("output_schema", JSON, nullable=False),
    Column("model_card", Text, nullable=False),
    Column("attributes", JSON, nullable=False),
    Column("description", Text, nullable=False),
    Column("tags", JSON, nullable=False),
    Column("metadata_revision", Integer, nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("created_at", TS, nullable=False),
    Column("manifest_digest", String(80), nullable=True),
    Column("signature", JSON, nullable=True),
    Column("registered_at", TS, nullable=True),
    UniqueConstraint("model_id", "number", name="uq_registry_versions_model_number"),
)

files = Table(
    "registry_files", metadata,
    Column("version_id", String(36), ForeignKey("registry_versions.id"), primary_key=True),
    Column("path", String(1024), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("object_key", String(512), nullable=False),
    Column("key_id", String(256), nullable=False),
    Column("key_version", Integer, nullable=False),
    Column("wrapped_key", LargeBinary, nullable=False),
    Column("nonce_prefix", LargeBinary, nullable=False),
    Column("segment_size", Integer, nullable=False),
)

uploads = Table(
    "registry_uploads", metadata,
    Column("id", String(36), primary_key=True),
    Column("version_id", String(36), ForeignKey("registry_versions.id"), nullable=False, index=True),
    Column("path", String(1024), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("lease_id", String(32), nullable=True),
    Column("lease_until", TS, nullable=True),
)

#: Idempotency keys of requests that create objects (RegisterVersion, CreateChangeRequest: the
#: ``operation`` column tells them apart, ``object_id`` is the version or change request id); the
#: primary key is the scope (operation, model, caller, key), so concurrent first uses of one key
#: cannot both insert.
idempotency_keys = Table(
    "registry_idempotency_keys", metadata,
    Column("operation", String(32), primary_key=True),
    Column("model_id", String(36), ForeignKey("registry_models.id"), primary_key=True),
    Column("caller", String(256), primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("request_digest", String(64), nullable=False),
    Column("object_id", String(36), nullable=False),
    Column("created_at", TS, nullable=False),
)

lineage = Table(
    "registry_lineage", metadata,
    Column("version_id", String(36), ForeignKey("registry_versions.id"), primary_key=True),
    Column("training_run", String(256), nullable=True),
    Column("training_set_digest", String(80), nullable=True, index=True),
    Column("data_quality_passed", Boolean, nullable=True),
    Column("feature_service", String(256), nullable=True),
    Column("code_version", String(256), nullable=True),
)

lineage_feature_views = Table(
    "registry_lineage_feature_views", metadata,
    Column("version_id", String(36), ForeignKey("registry_versions.id"), primary_key=True),
    Column("feature_view", String(256), primary_key=True),
    Index("ix_registry_lineage_fv", "feature_view"),
)

aliases = Table(
    "registry_aliases", metadata,
    Column("model_id", String(36), ForeignKey("registry_models.id"), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("version_id", String(36), ForeignKey("registry_versions.id"), nullable=False, index=True),
    Column("updated_by", String(256), nullable=False),
    Column("updated_at", TS, nullable=False),
)

alias_history = Table(
    "registry_alias_history", metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("model_id", String(36), nullable=False),
    Column("alias", String(64), nullable=False),
    Column("version_id", String(36), nullable=True),
    Column("previous_version_id", String(36), nullable=True),
    Column("actor", String(256), nullable=False),
    Column("at", TS, nullable=False),
    Column("change_request_id", String(36), nullable=True),
    Index("ix_registry_alias_history_model_alias", "model_id", "alias"),
)

change_requests = Table(
    "registry_change_requests", metadata,
    Column("id", String(36), primary_key=True),
    Column("model_id", String(36), ForeignKey("registry_models.id"), nullable=False, index=True),
    Column("alias", String(64), nullable=False),
    Column("target_version_id", String(36), nullable=False),
    Column("previous_version_id", String(36), nullable=True),
    Column("kind", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("requested_by", String(256), nullable=False),
    Column("created_at", TS, nullable=False),
    Column("expires_at", TS, nullable=False),
    Column("checks", JSON, nullable=False),
    Column("approvals", JSON, nullable=False),
    Column("decided_at", TS, nullable=True),
    Column("applied_at", TS, nullable=True),
    Column("applied_by", String(256), nullable=True),
)

audit = Table(
    "registry_audit", metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("at", TS, nullable=False),
    Column("actor", String(256), nullable=False),
    Column("action", String(64), nullable=False),
    Column("project", String(128), nullable=False),
    Column("subject", String(512), nullable=False),
    Column("detail", JSON, nullable=False),
    Index("ix_registry_audit_project", "project", "id"),
)

signing_keys = Table(
    "registry_signing_keys", metadata,
    Column("key_id", String(64), primary_key=True),
    Column("public_pem", Text, nullable=False),
    Column("created_at", TS, nullable=False),
)

events = event_tables(metadata)
