"""Who may do what: tenancy (another project's objects are 'not found'), scopes, and the PII rule."""

from __future__ import annotations

from typing import Protocol

from mlp_core.errors import NotFound, PermissionDenied

READ = "features:read"
WRITE = "features:write"
READ_PII = "features:read-pii"


class Caller(Protocol):
    """The authenticated caller; ``mlp_core.auth.Principal`` satisfies it."""

    @property
    def subject(self) -> str:
        """Who is calling (for audit records)."""

    def has_scope(self, scope: str) -> bool:
        """Whether the caller holds ``scope`` (admin holds every scope)."""

    def can_access(self, project: str) -> bool:
        """Whether the caller may see objects of ``project``."""


def authorize(caller: Caller, project: str, scope: str) -> None:
    """Tenancy first (NotFound, so that other projects' names don't leak), then the scope (403)."""
    if not caller.can_access(project):
        raise NotFound(f"project '{project}' not found")
    if not caller.has_scope(scope):
        raise PermissionDenied(f"this operation needs the scope '{scope}'; ask for a token that has it")


def can_read_pii(caller: Caller) -> bool:
    """PII feature values need the explicit ``features:read-pii`` scope (or admin)."""
    return caller.has_scope(READ_PII)


def require_pii(caller: Caller, pii_refs: list[str]) -> None:
    """Refuse a read that includes PII features unless the caller may read PII."""
    if pii_refs and not can_read_pii(caller):
        raise PermissionDenied(f"feature(s) {sorted(pii_refs)} are PII; reading them needs the scope "
                               f"'{READ_PII}'")
