"""Initial registry schema: models, versions, files, uploads, lineage, aliases, change requests, audit, keys, outbox.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from mlp_core.events.tables import create_event_tables, drop_event_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_event_tables(op)
    op.create_table('registry_alias_history',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('model_id', sa.String(length=36), nullable=False),
    sa.Column('alias', sa.String(length=64), nullable=False),
    sa.Column('version_id', sa.String(length=36), nullable=True),
    sa.Column('previous_version_id', sa.String(length=36), nullable=True),
    sa.Column('actor', sa.String(length=256), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('change_request_id', sa.String(length=36), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_registry_alias_history_model_alias', 'registry_alias_history', ['model_id', 'alias'], unique=False)
    op.create_table('registry_audit',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=256), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('project', sa.String(length=128), nullable=False),
    sa.Column('subject', sa.String(length=512), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_registry_audit_project', 'registry_audit', ['project', 'id'], unique=False)
    op.create_table('registry_metadata_revisions',
    sa.Column('object_id', sa.String(length=36), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('author', sa.String(length=256), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('object_id', 'revision')
    )
    op.create_table('registry_models',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('project', sa.String(length=128), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('thresholds', sa.JSON(), nullable=False),
    sa.Column('metadata_revision', sa.Integer(), nullable=False),
    sa.Column('created_by', sa.String(length=256), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('project', 'name', name='uq_registry_models_project_name')
    )
    op.create_table('registry_signing_keys',
    sa.Column('key_id', sa.String(length=64), nullable=False),
    sa.Column('public_pem', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key_id')
    )
    op.create_table('registry_change_requests',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('model_id', sa.String(length=36), nullable=False),
    sa.Column('alias', sa.String(length=64), nullable=False),
    sa.Column('target_version_id', sa.String(length=36), nullable=False),
    sa.Column('previous_version_id', sa.String(length=36), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('requested_by', sa.String(length=256), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('checks', sa.JSON(), nullable=False),
    sa.Column('approvals', sa.JSON(), nullable=False),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('applied_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('applied_by', sa.String(length=256), nullable=True),
    sa.ForeignKeyConstraint(['model_id'], ['registry_models.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_registry_change_requests_model_id'), 'registry_change_requests', ['model_id'], unique=False)
    op.create_table('registry_versions',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('model_id', sa.String(length=36), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('framework', sa.String(length=64), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('input_schema', sa.JSON(), nullable=False),
    sa.Column('output_schema', sa.JSON(), nullable=False),
    sa.Column('model_card', sa.Text(), nullable=False),
    sa.Column('attributes', sa.JSON(), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('metadata_revision', sa.Integer(), nullable=False),
    sa.Column('created_by', sa.String(length=256), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('manifest_digest', sa.String(length=80), nullable=True),
    sa.Column('signature', sa.JSON(), nullable=True),
    sa.Column('registered_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['model_id'], ['registry_models.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('model_id', 'number', name='uq_registry_versions_model_number')
    )
    op.create_table('registry_aliases',
    sa.Column('model_id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('version_id', sa.String(length=36), nullable=False),
    sa.Column('updated_by', sa.String(length=256), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['registry_models.id'], ),
    sa.ForeignKeyConstraint(['version_id'], ['registry_versions.id'], ),
    sa.PrimaryKeyConstraint('model_id', 'name')
    )
    op.create_index(op.f('ix_registry_aliases_version_id'), 'registry_aliases', ['version_id'], unique=False)
    op.create_table('registry_files',
    sa.Column('version_id', sa.String(length=36), nullable=False),
    sa.Column('path', sa.String(length=1024), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('object_key', sa.String(length=512), nullable=False),
    sa.Column('key_id', sa.String(length=256), nullable=False),
    sa.Column('key_version', sa.Integer(), nullable=False),
    sa.Column('wrapped_key', sa.LargeBinary(), nullable=False),
    sa.Column('nonce_prefix', sa.LargeBinary(), nullable=False),
    sa.Column('segment_size', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['version_id'], ['registry_versions.id'], ),
    sa.PrimaryKeyConstraint('version_id', 'path')
    )
    op.create_table('registry_lineage',
    sa.Column('version_id', sa.String(length=36), nullable=False),
    sa.Column('training_run', sa.String(length=256), nullable=True),
    sa.Column('training_set_digest', sa.String(length=80), nullable=True),
    sa.Column('data_quality_passed', sa.Boolean(), nullable=True),
    sa.Column('feature_service', sa.String(length=256), nullable=True),
    sa.Column('code_version', sa.String(length=256), nullable=True),
    sa.ForeignKeyConstraint(['version_id'], ['registry_versions.id'], ),
    sa.PrimaryKeyConstraint('version_id')
    )
    op.create_index(op.f('ix_registry_lineage_training_set_digest'), 'registry_lineage', ['training_set_digest'], unique=False)
    op.create_table('registry_lineage_feature_views',
    sa.Column('version_id', sa.String(length=36), nullable=False),
    sa.Column('feature_view', sa.String(length=256), nullable=False),
    sa.ForeignKeyConstraint(['version_id'], ['registry_versions.id'], ),
    sa.PrimaryKeyConstraint('version_id', 'feature_view')
    )
    op.create_index('ix_registry_lineage_fv', 'registry_lineage_feature_views', ['feature_view'], unique=False)
    op.create_table('registry_uploads',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('version_id', sa.String(length=36), nullable=False),
    sa.Column('path', sa.String(length=1024), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('offset', sa.BigInteger(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['version_id'], ['registry_versions.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_registry_uploads_version_id'), 'registry_uploads', ['version_id'], unique=False)


def downgrade() -> None:

    op.drop_index(op.f('ix_registry_uploads_version_id'), table_name='registry_uploads')
    op.drop_table('registry_uploads')
    op.drop_index('ix_registry_lineage_fv', table_name='registry_lineage_feature_views')
    op.drop_table('registry_lineage_feature_views')
    op.drop_index(op.f('ix_registry_lineage_training_set_digest'), table_name='registry_lineage')
    op.drop_table('registry_lineage')
    op.drop_table('registry_files')
    op.drop_index(op.f('ix_registry_aliases_version_id'), table_name='registry_aliases')
    op.drop_table('registry_aliases')
    op.drop_table('registry_versions')
    op.drop_index(op.f('ix_registry_change_requests_model_id'), table_name='registry_change_requests')
    op.drop_table('registry_change_requests')
    op.drop_table('registry_signing_keys')
    op.drop_table('registry_models')
    op.drop_table('registry_metadata_revisions')
    op.drop_index('ix_registry_audit_project', table_name='registry_audit')
    op.drop_table('registry_audit')
    op.drop_index('ix_registry_alias_history_model_alias', table_name='registry_alias_history')
    op.drop_table('registry_alias_history')
    drop_event_tables(op)
