"""Domain errors and their two wire forms: RFC 9457 problem+json and gRPC status codes."""

from __future__ import annotations

from typing import Any, ClassVar

import grpc

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_BASE = "https://mlp.dev/problems/"


class DomainError(Exception):
    """Base of every error a caller should see; carries its HTTP status and gRPC code."""

    status: ClassVar[int] = 500
    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    title: ClassVar[str] = "Internal error"
    slug: ClassVar[str] = "internal"

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}

    def problem(self, *, instance: str | None = None, trace_id: str | None = None) -> dict[str, Any]:
        """The RFC 9457 body for this error."""
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        if trace_id:
            body["trace_id"] = trace_id
        if self.errors:
            body["errors"] = self.errors
        return body


class InvalidArgument(DomainError):
    """The request is malformed or violates a rule of the domain."""

    status, grpc_code, title, slug = 422, grpc.StatusCode.INVALID_ARGUMENT, "Invalid argument", "invalid-argument"


class NotFound(DomainError):
    """The object does not exist (or the caller may not know that it does)."""

    status, grpc_code, title, slug = 404, grpc.StatusCode.NOT_FOUND, "Not found", "not-found"


class AlreadyExists(DomainError):
    """An object with this identity exists already."""

    status, grpc_code, title, slug = 409, grpc.StatusCode.ALREADY_EXISTS, "Already exists", "already-exists"


class Conflict(DomainError):
    """A concurrent change won; retry with fresh state."""

    status, grpc_code, title, slug = 409, grpc.StatusCode.ABORTED, "Conflict", "conflict"


class FailedPrecondition(DomainError):
    """The object is not in a state that allows this operation."""

    status, grpc_code, title, slug = (
        409, grpc.StatusCode.FAILED_PRECONDITION, "Failed precondition", "failed-precondition")


class Unauthenticated(DomainError):
    """No valid credentials were presented."""

    status, grpc_code, title, slug = 401, grpc.StatusCode.UNAUTHENTICATED, "Unauthenticated", "unauthenticated"


class PermissionDenied(DomainError):
    """The caller is known but lacks the permission."""

    status, grpc_code, title, slug = 403, grpc.StatusCode.PERMISSION_DENIED, "Permission denied", "permission-denied"


class TooManyRequests(DomainError):
    """A rate limit was hit; see Retry-After."""

    status, grpc_code, title, slug = 429, grpc.StatusCode.RESOURCE_EXHAUSTED, "Too many requests", "rate-limited"


class PayloadTooLarge(DomainError):
    """The request body is over the configured limit."""

    status, grpc_code, title, slug = 413, grpc.StatusCode.RESOURCE_EXHAUSTED, "Payload too large", "payload-too-large"


class Unavailable(DomainError):
    """A dependency is down; retry later."""

    status, grpc_code, title, slug = 503, grpc.StatusCode.UNAVAILABLE, "Service unavailable", "unavailable"


class BadGateway(DomainError):
    """An upstream answered with something unusable."""

    status, grpc_code, title, slug = 502, grpc.StatusCode.UNAVAILABLE, "Bad gateway", "bad-gateway"


class DeadlineExceeded(DomainError):
    """The operation did not finish in time."""

    status, grpc_code, title, slug = 504, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline exceeded", "deadline-exceeded"


_BY_STATUS: dict[int, type[DomainError]] = {
    cls.status: cls
    for cls in (InvalidArgument, NotFound, Conflict, Unauthenticated, PermissionDenied, TooManyRequests,
                PayloadTooLarge, Unavailable, BadGateway, DeadlineExceeded)
}


def error_for_status(status: int, detail: str) -> DomainError:
    """The domain error class that matches an HTTP status (for relaying upstream errors)."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = InvalidArgument if 400 <= status < 500 else DomainError
    return cls(detail)
