"""The platform's OAuth scopes: one per permission, ``admin`` implies all."""

from __future__ import annotations

ADMIN = "admin"

#: Every scope a platform token can carry (DESIGN.md, "Zero trust").
PLATFORM_SCOPES: tuple[str, ...] = (
    "features:read",
    "features:write",
    "training:run",
    "registry:read",
    "registry:write",
    "registry:approve",
    "predict",
    "experiments:write",
    "monitoring:read",
    ADMIN,
)

#: The ``projects`` claim value that grants every project (service clients).
ALL_PROJECTS = "*"
