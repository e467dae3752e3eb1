"""OAuth clients the dev issuer knows: from a YAML/JSON file, or defaults written on first run."""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlp_core.auth.scopes import ALL_PROJECTS, PLATFORM_SCOPES
from mlp_core.devissuer.keys import write_private

CLIENTS_FILE = "clients.json"
DEFAULT_AUDIENCE = "mlp"

_DEMO_SCOPES = ("features:read", "features:write", "training:run", "registry:read", "registry:write",
                "predict", "experiments:write", "monitoring:read")
#: Scopes each service's own client needs for the calls it makes to other services.
SERVICE_SCOPES: dict[str, tuple[str, ...]] = {
    "svc-gateway": ("features:read", "registry:read", "predict", "monitoring:read"),
    "svc-feature-store": ("registry:read",),
    "svc-training": ("features:read", "registry:read", "registry:write"),
    "svc-registry": ("registry:read",),
    "svc-serving": ("features:read", "registry:read", "experiments:write"),
    "svc-experiments": ("registry:read", "registry:write", "predict", "monitoring:read"),
    "svc-monitoring": ("registry:read", "training:run", "features:read", "monitoring:read"),
}


@dataclass(frozen=True)
class ClientConfig:
    """One confidential client: its secret and what its tokens may carry."""

    client_id: str
    client_secret: str = field(repr=False)
    scopes: tuple[str, ...]
    projects: tuple[str, ...] = ()
    audience: str = DEFAULT_AUDIENCE

    @classmethod
    def from_mapping(cls, client_id: str, raw: Mapping[str, Any]) -> ClientConfig:
        """Parse one entry; ``scopes`` may be a list or a space-separated string."""
        secret = raw.get("client_secret")
        if not isinstance(secret, str) or not secret:
            raise ValueError(f"client '{client_id}' needs a client_secret")
        scopes = raw.get("scopes", ())
        if isinstance(scopes, str):
            scopes = scopes.split()
        return cls(client_id=client_id, client_secret=secret, scopes=tuple(str(s) for s in scopes),
                   projects=tuple(str(p) for p in raw.get("projects", ())),
                   audience=str(raw.get("audience", DEFAULT_AUDIENCE)))

    def to_mapping(self) -> dict[str, Any]:
        """The file form of this client (without its id)."""
        out = asdict(self)
        out.pop("client_id")
        out["scopes"], out["projects"] = list(self.scopes), list(self.projects)
        return out


def default_clients() -> dict[str, ClientConfig]:
    """The local clients: admin, demo, approver, a second tenant and one client per service."""
    def make(cid: str, scopes: tuple[str, ...], projects: tuple[str, ...]) -> ClientConfig:
        return ClientConfig(cid, secrets.token_urlsafe(24), scopes, projects)

    clients = [
        make("mlp-admin", PLATFORM_SCOPES, ("default",)),
        make("mlp-demo", _DEMO_SCOPES, ("default",)),
        make("mlp-approver", ("registry:read", "registry:approve"), ("default",)),
        make("mlp-other-tenant", _DEMO_SCOPES, ("other",)),
        *(make(cid, scopes, (ALL_PROJECTS,)) for cid, scopes in SERVICE_SCOPES.items()),
    ]
    return {c.client_id: c for c in clients}


def parse_clients(doc: Mapping[str, Any]) -> dict[str, ClientConfig]:
    """Parse ``{"clients": {"<id>": {client_secret, scopes, projects, audience}}}``."""
    raw = doc.get("clients")
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError("clients config needs a non-empty 'clients' mapping")
    return {str(cid): ClientConfig.from_mapping(str(cid), entry) for cid, entry in raw.items()}


def load_clients(issuer_dir: Path, config: Path | Mapping[str, Any] | None = None) -> dict[str, ClientConfig]:
    """Clients from ``config`` (a YAML/JSON file or a mapping), else from ``issuer_dir/clients.json``.

    With neither, default clients with random secrets are generated and written there (0600).
    """
    if isinstance(config, Mapping):
        return parse_clients(config)
    if config is not None:
        doc = yaml.safe_load(Path(config).read_text())  # YAML is a superset of JSON
        if not isinstance(doc, Mapping):
            raise ValueError(f"{config}: not a mapping")
        return parse_clients(doc)
    path = issuer_dir / CLIENTS_FILE
    if path.exists():
        return parse_clients(json.loads(path.read_text()))
    clients = default_clients()
    write_private(path, json.dumps({"clients": {c.client_id: c.to_mapping() for c in clients.values()}},
                                   indent=2))
    return clients
