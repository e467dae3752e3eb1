"""Registry-specific errors; each is a ``mlp_core.errors`` class so the edges map it to HTTP and gRPC."""

from __future__ import annotations

from mlp_core.errors import FailedPrecondition


class IdempotencyKeyTaken(Exception):
    """Raised by the store when another transaction recorded the same idempotency key first.

    Internal: the transaction that raised it is rolled back and the caller replays the winner's result.
    """


class IntegrityCheckFailed(FailedPrecondition):
    """Stored bytes, a manifest or a signature do not match what was registered: refuse to serve them."""

    title = "Artifact integrity check failed"
    slug = "integrity-check-failed"


class PolicyCheckFailed(FailedPrecondition):
    """A change request does not pass the blocking policy checks of its alias."""

    title = "Policy check failed"
    slug = "policy-check-failed"
