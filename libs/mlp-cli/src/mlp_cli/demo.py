"""The ``make demo`` scenario. Today: an authenticated round through the gateway to every service.

The scenario grows with each capability (ROADMAP.md, "The closed loop").
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from mlp_cli.topology import GATEWAY, SERVICES

console = Console()


def client_secret(state_dir: Path, client_id: str) -> str:
    """The dev issuer's secret for ``client_id`` (kept in the state folder)."""
    data = json.loads((state_dir / "issuer" / "clients.json").read_text())
    clients = data.get("clients", data)
    if isinstance(clients, dict):
        entry = clients[client_id]
        return str(entry.get("secret", entry.get("client_secret")))
    for c in clients:
        if c["client_id"] == client_id:
            return str(c.get("client_secret", c.get("secret")))
    raise KeyError(client_id)


def fetch_token(issuer: str, client_id: str, secret: str, scope: str | None = None) -> str:
    """A client-credentials access token from the issuer's token endpoint."""
    discovery = httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=5).json()
    form = {"grant_type": "client_credentials"}
    if scope:
        form["scope"] = scope
    resp = httpx.post(discovery["token_endpoint"], data=form, auth=(client_id, secret), timeout=5)
    resp.raise_for_status()
    return str(resp.json()["access_token"])


def run_smoke(state_dir: Path, issuer: str) -> bool:
    """Authenticated calls through the gateway, and refused calls without a token."""
    token = fetch_token(issuer, "mlp-demo", client_secret(state_dir, "mlp-demo"))
    console.print(f"[bold]1.[/] token for client [cyan]mlp-demo[/] from {issuer} ({len(token)} bytes)")
    table = Table(title="through the gateway :8000 and directly")
    for col in ("call", "expected", "got", ""):
        table.add_column(col)
    ok = True

    def check(label: str, url: str, expected: int, headers: dict[str, str] | None = None) -> None:
        nonlocal ok
        try:
            got = httpx.get(url, headers=headers or {}, timeout=10).status_code
        except httpx.HTTPError as exc:
            got = -1
            label += f" ({type(exc).__name__})"
        good = got == expected
        ok &= good
        table.add_row(label, str(expected), str(got), "[green]✔[/]" if good else "[red]✘[/]")

    auth = {"Authorization": f"Bearer {token}"}
    for spec in SERVICES:
        check(f"gateway → {spec.name} whoami (token)", f"{GATEWAY.base_url}/api/v1/{spec.name}/whoami", 200, auth)
    check("gateway, no token", f"{GATEWAY.base_url}/api/v1/registry/whoami", 401)
    check("gateway, forged token", f"{GATEWAY.base_url}/api/v1/registry/whoami", 401,
          {"Authorization": "Bearer " + token[:-4] + "AAAA"})
    for spec in SERVICES:
        check(f"{spec.name} directly, no token", f"{spec.base_url}/api/v1/{spec.name}/whoami", 401)
    console.print(table)
    return ok
