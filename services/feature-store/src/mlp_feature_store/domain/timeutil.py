"""Explicit-time-zone conversions between datetimes and the integer microseconds the stores keep."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mlp_core.errors import InvalidArgument

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(value: datetime, what: str = "timestamp") -> int:
    """Microseconds since the epoch; a naive datetime is refused (time zones must be explicit)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgument(f"{what} {value.isoformat()} has no time zone; send it with an offset or 'Z'")
    return (value - _EPOCH) // timedelta(microseconds=1)


def from_us(value: int) -> datetime:
    """The aware UTC datetime for ``value`` microseconds since the epoch."""
    return _EPOCH + timedelta(microseconds=value)


def parse_ts(value: str | datetime, what: str = "timestamp") -> int:
    """Microseconds since the epoch from an ISO 8601 string (with offset) or an aware datetime."""
    if isinstance(value, datetime):
        return to_us(value, what)
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{what} {value!r} is not an ISO 8601 timestamp") from exc
    return to_us(parsed, what)


def now_us() -> int:
    """Now, in microseconds since the epoch."""
    return to_us(datetime.now(UTC))
