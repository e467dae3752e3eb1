"""Which scope each public route and gRPC method needs (the table in gateway/README.md).

The gateway enforces this table before forwarding (403 problem / PERMISSION_DENIED); each service
checks again in its own domain, together with the tenancy (project) rules.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

#: ``AUTHENTICATED`` means "any valid token"; no scope beyond that.
AUTHENTICATED = ""

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class Rule:
    """Requests whose method is in ``methods`` and path matches ``pattern`` need ``scope``."""

    methods: frozenset[str]
    pattern: re.Pattern[str]
    scope: str


def _rule(methods: str, pattern: str, scope: str) -> Rule:
    wanted = READ_METHODS if methods == "read" else MUTATING_METHODS if methods == "write" else (
        READ_METHODS | MUTATING_METHODS)
    return Rule(frozenset(wanted), re.compile(pattern), scope)


#: First match wins. Paths are the public paths, already normalised by the ASGI server.
REST_RULES: tuple[Rule, ...] = (
    _rule("read", r"^/api/v1/[a-z-]+/whoami$", AUTHENTICATED),
    _rule("read", r"^/api/v1/feature-store(/.*)?$", "features:read"),
    # reads that carry their entities in a POST body
    _rule("any", r"^/api/v1/feature-store/projects/[^/]+/(online|historical)-features$", "features:read"),
    _rule("write", r"^/api/v1/feature-store(/.*)?$", "features:write"),
    _rule("any", r"^/api/v1/training(/.*)?$", "training:run"),
    _rule("write", r"^/api/v1/registry/(.*/)?change-requests/[^/]+/(approve|reject)$", "registry:approve"),
    _rule("read", r"^/api/v1/registry(/.*)?$", "registry:read"),
    _rule("write", r"^/api/v1/registry(/.*)?$", "registry:write"),
    _rule("any", r"^/api/v1/serving(/.*)?$", "predict"),
    _rule("any", r"^/api/v1/experiments(/.*)?$", "experiments:write"),
    _rule("read", r"^/api/v1/monitoring(/.*)?$", "monitoring:read"),
    _rule("write", r"^/api/v1/monitoring(/.*)?$", "admin"),
    _rule("read", r"^/v2(/health/(live|ready))?/?$", AUTHENTICATED),
    _rule("any", r"^/v2/repository(/.*)?$", "admin"),
    _rule("any", r"^/v2/models(/.*)?$", "predict"),
)

#: gRPC package prefix → (service, read scope, write scope).
GRPC_SERVICES: dict[str, tuple[str, str, str]] = {
    "/inference.GRPCInferenceService/": ("serving", "predict", "predict"),
    "/mlp.featurestore.v1.": ("feature-store", "features:read", "features:write"),
    "/mlp.training.v1.": ("training", "training:run", "training:run"),
    "/mlp.registry.v1.": ("registry", "registry:read", "registry:write"),
    "/mlp.experiments.v1.": ("experiments", "experiments:write", "experiments:write"),
    "/mlp.monitoring.v1.": ("monitoring", "monitoring:read", "admin"),
}
_GRPC_READ_VERBS = ("Get", "List", "Resolve", "Download", "Check", "Describe", "Watch")
_GRPC_SPECIAL: dict[str, str] = {
    "/inference.GRPCInferenceService/ServerLive": AUTHENTICATED,
    "/inference.GRPCInferenceService/ServerReady": AUTHENTICATED,
    "/inference.GRPCInferenceService/RepositoryModelLoad": "admin",
    "/inference.GRPCInferenceService/RepositoryModelUnload": "admin",
    "/inference.GRPCInferenceService/RepositoryIndex": "admin",
}
_APPROVAL_METHODS = re.compile(r"^/mlp\.registry\.v1\.[A-Za-z]+/(Approve|Reject)ChangeRequest$")


@functools.lru_cache(maxsize=8192)
def required_scope(method: str, path: str) -> str | None:
    """The scope a REST call needs, ``AUTHENTICATED`` for any valid token, ``None`` if no route matches."""
    verb = method.upper()
    for rule in REST_RULES:
        if verb in rule.methods and rule.pattern.match(path):
            return rule.scope
    return None


def grpc_route(full_method: str) -> tuple[str, str] | None:
    """(owning service, needed scope) for ``/package.Service/Method``; ``None`` for unknown methods."""
    for prefix, (service, read_scope, write_scope) in GRPC_SERVICES.items():
        if full_method.startswith(prefix):
            if full_method in _GRPC_SPECIAL:
                return service, _GRPC_SPECIAL[full_method]
            if _APPROVAL_METHODS.match(full_method):
                return service, "registry:approve"
            name = full_method.rsplit("/", 1)[-1]
            return service, read_scope if name.startswith(_GRPC_READ_VERBS) else write_scope
    return None
