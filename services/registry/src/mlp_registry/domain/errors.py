"""Registry-specific errors; each is a ``mlp_core.errors`` class so the edges map it to HTTP and gRPC."""

from __future__ import annotations

from mlp_core.errors import FailedPrecondition


class IntegrityCheckFailed(FailedPrecondition):
    """Stored bytes, a manifest or a signature do not match what was registered: refuse to serve them."""

    title = "Artifact integrity check failed"
    slug = "integrity-check-failed"


class PolicyCheckFailed(FailedPrecondition):
    """A change request does not pass the blocking policy checks of its alias."""

    title = "Policy check failed"
    slug = "policy-check-failed"
