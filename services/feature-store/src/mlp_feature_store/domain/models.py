"""Definitions held by the registry: entities, sources, feature views, transformations, feature services.

Every definition belongs to one project (the tenant). Names are lower-case identifiers so that they can
name SQL columns and Redis keys safely.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def check_name(value: str, what: str = "name") -> str:
    """Return ``value`` if it is a valid identifier, else raise ``ValueError`` saying what is allowed."""
    if not NAME_RE.match(value):
        raise ValueError(f"{what} {value!r} must match {NAME_RE.pattern} (lower-case letters, digits, _)")
    return value


class ValueType(StrEnum):
    """Types a join key or a feature can have."""

    INT64 = "int64"
    FLOAT64 = "float64"
    STRING = "string"
    BOOL = "bool"
    TIMESTAMP = "timestamp"


class _Definition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    owner: str = ""
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        return check_name(v)


class JoinKey(BaseModel):
    """One column that identifies an entity."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    dtype: ValueType = ValueType.STRING

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        return check_name(v, "join key")

    @field_validator("dtype")
    @classmethod
    def _key_type(cls, v: ValueType) -> ValueType:
        if v not in (ValueType.INT64, ValueType.STRING):
            raise ValueError("join keys must be int64 or string")
        return v


class Entity(_Definition):
    """A thing features describe (a customer, a driver), identified by one or more join keys."""

    join_keys: list[JoinKey] = Field(min_length=1)

    @field_validator("join_keys")
    @classmethod
    def _unique_keys(cls, v: list[JoinKey]) -> list[JoinKey]:
        names = [k.name for k in v]
        if len(set(names)) != len(names):
            raise ValueError("join key names must be unique")
        return v


class SourceKind(StrEnum):
    """Where a feature view's rows come from."""

    BATCH = "batch"
    PUSH = "push"
    KAFKA = "kafka"


class DataSource(_Definition):
    """A source of rows: a batch file location, a push endpoint or a Kafka topic."""

    kind: SourceKind = SourceKind.BATCH
    timestamp_field: str = "event_timestamp"
    options: dict[str, str] = Field(default_factory=dict)


class Feature(BaseModel):
    """One typed column of a feature view."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    dtype: ValueType
    description: str = ""
    pii: bool = False
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        return check_name(v, "feature name")


class ExpectationKind(StrEnum):
    """Data-quality checks run on every ingest."""

    NOT_NULL = "not_null"
    RANGE = "range"
    ALLOWED_VALUES = "allowed_values"
    UNIQUE = "unique"
    FRESHNESS = "freshness"
    SQL = "sql"


class Expectation(BaseModel):
    """One data-quality rule on a feature (or, for ``unique``/``freshness``, on the row)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: ExpectationKind
    feature: str | None = None
    min: float | None = None
    max: float | None = None
    values: list[Any] | None = None
    max_age_seconds: int | None = None
    query: str | None = Field(default=None, description="sql: one SELECT returning row_idx of failing rows "
                                                        "from the table 'batch'")

    @model_validator(mode="after")
    def _complete(self) -> Expectation:
        needs_feature = {ExpectationKind.NOT_NULL, ExpectationKind.RANGE, ExpectationKind.ALLOWED_VALUES}
        if self.kind in needs_feature and not self.feature:
            raise ValueError(f"expectation {self.kind} needs 'feature'")
        if self.kind == ExpectationKind.RANGE and self.min is None and self.max is None:
            raise ValueError("range expectation needs 'min' or 'max'")
        if self.kind == ExpectationKind.ALLOWED_VALUES and not self.values:
            raise ValueError("allowed_values expectation needs a non-empty 'values'")
        if self.kind == ExpectationKind.FRESHNESS and not self.max_age_seconds:
            raise ValueError("freshness expectation needs 'max_age_seconds'")
        if self.kind == ExpectationKind.SQL:
            from mlp_feature_store.domain.quality import validate_select

            validate_select(self.query or "")
        elif self.query is not None:
            raise ValueError("'query' belongs to sql expectations only")
        return self


class FeatureView(_Definition):
    """A versioned group of features about some entities, stored offline and online.

    ``ttl_seconds``: a value older than this (relative to the read or row timestamp) counts as missing.
    ``residency_region``: the data is stored only in that region's stores.
    """

    version: int = Field(default=1, ge=1)
    entities: list[str] = Field(min_length=1)
    features: list[Feature] = Field(min_length=1)
    source: str | None = None
    ttl_seconds: int | None = Field(default=None, gt=0)
    residency_region: str = "default"
    online: bool = True
    expectations: list[Expectation] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> FeatureView:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError("feature names must be unique within a feature view")
        for exp in self.expectations:
            if exp.feature and exp.feature not in names:
                raise ValueError(f"expectation refers to unknown feature {exp.feature!r}")
        return self

    def feature(self, name: str) -> Feature:
        """The feature called ``name``; ``KeyError`` if absent."""
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)


class OnDemandTransformation(_Definition):
    """A Python function, registered in code under ``function``, run at read time on feature values."""

    function: str
    inputs: list[str] = Field(min_length=1, description="feature references 'view:feature'")
    outputs: list[Feature] = Field(min_length=1)


class FeatureService(_Definition):
    """A named set of features one model reads: references 'view:feature', 'view' (all) or 'odt:<name>'."""

    features: list[str] = Field(min_length=1)


class Stored(BaseModel):
    """Bookkeeping the registry adds to a definition."""

    model_config = ConfigDict(frozen=True)
    project: str
    kind: str
    name: str
    version: int
    spec: dict[str, Any]
    created_at: datetime
    updated_at: datetime


def utcnow() -> datetime:
    """Now, as an aware UTC datetime."""
    return datetime.now(UTC)
