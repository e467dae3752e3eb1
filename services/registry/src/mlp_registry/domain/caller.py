"""Who is calling, as the domain sees it: anything shaped like ``mlp_core.auth.Principal``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from mlp_core.errors import PermissionDenied

READ = "registry:read"
WRITE = "registry:write"
APPROVE = "registry:approve"


class Caller(Protocol):
    """The identity, scopes and projects of a caller."""

    @property
    def subject(self) -> str:
        """Stable id of the user or service."""
        ...

    @property
    def projects(self) -> frozenset[str]:
        """Projects named in the token."""
        ...

    def has_scope(self, scope: str) -> bool:
        """Whether the caller holds ``scope``."""
        ...

    def can_access(self, project: str) -> bool:
        """Whether the caller may see objects of ``project``."""
        ...


def require(caller: Caller, scope: str) -> None:
    """Raise ``PermissionDenied`` unless ``caller`` holds ``scope``."""
    if not caller.has_scope(scope):
        raise PermissionDenied(f"this operation needs the scope '{scope}'; ask for a token that has it")


@dataclass(frozen=True)
class Actor:
    """A caller built in-process (tests, background jobs, CLIs): same shape as a Principal."""

    subject: str
    scopes: frozenset[str] = frozenset()
    projects: frozenset[str] = frozenset()
    admin: bool = False
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    def has_scope(self, scope: str) -> bool:
        """Whether the actor holds ``scope`` (admin holds all)."""
        return self.admin or scope in self.scopes

    def can_access(self, project: str) -> bool:
        """Whether the actor may see ``project``."""
        return self.admin or "*" in self.projects or project in self.projects

ADMIN_SCOPE = "admin"
