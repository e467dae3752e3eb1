"""The authenticated caller, and the context variable that carries it to handlers."""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlp_core.auth.scopes import ADMIN, ALL_PROJECTS
from mlp_core.errors import PermissionDenied, Unauthenticated


@dataclass(frozen=True)
class Principal:
    """Who is calling: built from a verified access token, never from plain headers."""

    subject: str
    client_id: str
    scopes: frozenset[str]
    projects: frozenset[str]
    token: str = field(repr=False)
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_admin(self) -> bool:
        """Whether the token carries the ``admin`` scope."""
        return ADMIN in self.scopes

    def has_scope(self, scope: str) -> bool:
        """Whether the caller holds ``scope`` (``admin`` holds every scope)."""
        return scope in self.scopes or self.is_admin

    def require(self, scope: str) -> None:
        """Raise ``PermissionDenied`` unless the caller holds ``scope``."""
        if not self.has_scope(scope):
            raise PermissionDenied(f"this operation needs the scope '{scope}'; ask for a token that has it")

    def can_access(self, project: str) -> bool:
        """Tenancy check: whether the caller may see objects of ``project``."""
        return self.is_admin or ALL_PROJECTS in self.projects or project in self.projects

    def require_project(self, project: str) -> None:
        """Raise ``PermissionDenied`` unless the caller may see ``project``."""
        if not self.can_access(project):
            raise PermissionDenied(f"the token does not grant access to project '{project}'")


_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("mlp_principal", default=None)


def current_principal() -> Principal:
    """The caller of the request or RPC being handled; ``Unauthenticated`` outside one.

    Set by ``AuthMiddleware`` (REST) and ``AuthInterceptor`` (gRPC).
    """
    principal = _current.get()
    if principal is None:
        raise Unauthenticated("no authenticated caller in this context")
    return principal


def set_current_principal(principal: Principal | None) -> contextvars.Token[Principal | None]:
    """Bind ``principal`` to the running context (for tests and custom transports)."""
    return _current.set(principal)


def reset_current_principal(token: contextvars.Token[Principal | None]) -> None:
    """Undo ``set_current_principal``."""
    _current.reset(token)
