"""The dev issuer's signing keys: generated once, kept in ``<state_dir>/issuer/`` (0600)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from joserfc import jwk

SIGNING_ALG = "ES256"
_KEYS_FILE = "signing-keys.json"


def write_private(path: Path, data: str) -> None:
    """Write ``data`` to ``path`` readable by the owner only (created 0600, never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


class SigningKeys:
    """The issuer's EC P-256 keys; the last one signs, all are published (rotation-ready).

    Each key's ``kid`` is its RFC 7638 thumbprint.
    """

    def __init__(self, keys: list[jwk.ECKey]) -> None:
        if not keys:
            raise ValueError("at least one signing key is needed")
        self.keys = keys

    @classmethod
    def load_or_create(cls, issuer_dir: Path) -> SigningKeys:
        """Load the keys from ``issuer_dir``, generating and saving the first one if none exists."""
        path = issuer_dir / _KEYS_FILE
        if path.exists():
            raw = json.loads(path.read_text())
            return cls([jwk.ECKey.import_key(k) for k in raw["keys"]])
        keys = cls([_new_key()])
        keys.save(issuer_dir)
        return keys

    def rotate(self, issuer_dir: Path) -> str:
        """Add a new signing key (old ones stay published for verification); returns its kid."""
        self.keys.append(_new_key())
        self.save(issuer_dir)
        return self.active.kid or ""

    def save(self, issuer_dir: Path) -> None:
        """Persist every private key to ``issuer_dir`` with owner-only permissions."""
        body = {"keys": [k.as_dict(private=True) for k in self.keys]}
        write_private(issuer_dir / _KEYS_FILE, json.dumps(body))

    @property
    def active(self) -> jwk.ECKey:
        """The key that signs new tokens."""
        return self.keys[-1]

    def jwks(self) -> dict[str, Any]:
        """The public JWKS document."""
        return {"keys": [{**k.as_dict(private=False), "kid": k.kid, "alg": SIGNING_ALG, "use": "sig"}
                         for k in self.keys]}


def _new_key() -> jwk.ECKey:
    key = jwk.ECKey.generate_key("P-256", private=True)
    key.ensure_kid()  # RFC 7638 thumbprint
    return key
