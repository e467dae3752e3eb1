"""Idempotency keys shared by the operations that create objects (RegisterVersion, CreateChangeRequest).

A key is recorded (``registry_idempotency_keys``) under the operation's name, the model and the
caller, with a fingerprint of the first request and the id of what it created.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

#: Operation names keys are recorded under (at most 32 characters, the column's width).
REGISTER_VERSION = "register-version"
CREATE_CHANGE_REQUEST = "create-change-request"


def fingerprint(body: Any) -> str:
    """SHA-256 (hex) of ``body`` as canonical JSON: sorted keys, no spaces, UTF-8."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()
