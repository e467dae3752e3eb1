"""Checks on caller input: names, file paths, digests, sizes, metadata shapes."""

from __future__ import annotations

import math
import re
from typing import Any

from mlp_core.errors import InvalidArgument
from mlp_registry.domain.models import FileSpec

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
_ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PATH_PART = re.compile(r"^[A-Za-z0-9._+-]+$")
_IDEMPOTENCY_KEY = re.compile(r"^[\x20-\x7e]{1,128}$")
MAX_FILES = 10_000
MAX_FILE_SIZE = 1 << 40


def name(kind: str, value: str) -> str:
    """A project or model name: lowercase letters, digits, '.', '_', '-'; starts with a letter or digit."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidArgument(f"{kind} name {value!r} is invalid: use 1-128 lowercase letters, digits, "
                              "'.', '_' or '-', starting with a letter or digit")
    return value


def alias(value: str) -> str:
    """An alias name such as 'champion' or 'production'."""
    if not isinstance(value, str) or not _ALIAS.match(value):
        raise InvalidArgument(f"alias {value!r} is invalid: use 1-64 lowercase letters, digits, '_' or '-', "
                              "starting with a letter")
    return value


def idempotency_key(value: str | None) -> str | None:
    """A client's idempotency key: 1-128 printable ASCII characters; empty or None means no key."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _IDEMPOTENCY_KEY.match(value) or value != value.strip():
        raise InvalidArgument("idempotency key is invalid: use 1-128 printable ASCII characters without "
                              "leading or trailing spaces (a UUID is a good choice)")
    return value


def file_path(value: str) -> str:
    """A relative POSIX path inside the artifact, without '..', '.' or empty parts."""
    parts = value.split("/") if isinstance(value, str) else []
    if (not parts or len(value) > 1024 or any(p in ("", ".", "..") or not _PATH_PART.match(p) for p in parts)):
        raise InvalidArgument(f"file path {value!r} is invalid: use a relative path like 'model/weights.onnx' "
                              "made of letters, digits, '.', '_', '+', '-' without '..' or empty parts")
    return value


def files(specs: list[FileSpec]) -> list[FileSpec]:
    """A manifest declaration: 1..MAX_FILES files, unique paths, hex SHA-256 digests, sane sizes."""
    if not specs:
        raise InvalidArgument("a version needs at least one file")
    if len(specs) > MAX_FILES:
        raise InvalidArgument(f"a version may have at most {MAX_FILES} files")
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        try:
            file_path(spec.path)
        except InvalidArgument as exc:
            errors.append({"loc": ["files", i, "path"], "msg": exc.detail})
        if spec.path in seen:
            errors.append({"loc": ["files", i, "path"], "msg": f"duplicate path {spec.path!r}"})
        seen.add(spec.path)
        if not isinstance(spec.sha256, str) or not _SHA256.match(spec.sha256):
            errors.append({"loc": ["files", i, "sha256"], "msg": "must be 64 lowercase hex characters"})
        if not isinstance(spec.size, int) or isinstance(spec.size, bool) or not 0 <= spec.size <= MAX_FILE_SIZE:
            errors.append({"loc": ["files", i, "size"], "msg": f"must be an integer from 0 to {MAX_FILE_SIZE}"})
    lowered = {p.lower() for p in seen}
    if len(lowered) != len(seen):
        errors.append({"loc": ["files"], "msg": "paths must be unique ignoring case"})
    prefixes = {p.rsplit("/", i)[0] for p in seen for i in range(1, p.count("/") + 1)}
    clash = sorted(seen & prefixes)
    if clash:
        errors.append({"loc": ["files"], "msg": f"paths are used both as file and folder: {clash}"})
    if errors:
        raise InvalidArgument("the file manifest is malformed: " + "; ".join(e["msg"] for e in errors),
                              errors=errors)
    return specs


def metrics(values: dict[str, Any]) -> dict[str, float]:
    """Evaluation metrics: names to finite numbers."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidArgument(f"metric {key!r} must be a finite number")
        out[str(key)] = float(value)
    return out


def thresholds(values: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Promotion thresholds: ``{"auc": {"min": 0.8}, "latency_ms": {"max": 20}}``."""
    out: dict[str, dict[str, float]] = {}
    for key, bounds in values.items():
        if not isinstance(bounds, dict) or not bounds or set(bounds) - {"min", "max"}:
            raise InvalidArgument(f"threshold {key!r} must be an object with 'min' and/or 'max'")
        out[str(key)] = metrics({k: v for k, v in bounds.items()})
    return out


def tags(values: dict[str, Any]) -> dict[str, str]:
    """Tags: up to 64 string pairs."""
    if len(values) > 64 or not all(isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= 128
                                   and len(v) <= 512 for k, v in values.items()):
        raise InvalidArgument("tags must be at most 64 string pairs (keys 1-128, values up to 512 characters)")
    return dict(values)


def page(page_size: int, page_token: str | None) -> tuple[int, int]:
    """Offset and limit from a page token (an opaque decimal offset) and size (1-500)."""
    if not 1 <= page_size <= 500:
        raise InvalidArgument("page_size must be from 1 to 500")
    if not page_token:
        return 0, page_size
    if not page_token.isdigit() or len(page_token) > 12:
        raise InvalidArgument("page_token is invalid; pass the next_page_token of the previous page")
    return int(page_token), page_size
