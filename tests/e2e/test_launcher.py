"""The local launcher: `mlp up` brings every part up healthy, the smoke checks and the demo scenario pass
through the gateway, calls without a valid token are refused everywhere, and `mlp down` leaves no
process behind."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from mlp_cli.demo import run_smoke
from mlp_cli.launcher import Launcher
from mlp_cli.scenario import Scenario
from mlp_cli.topology import GATEWAY, ISSUER_PORT, KAFKA_PORT, SERVICES


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.timeout(400)
def test_up_smoke_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MLP_KAFKA_BOOTSTRAP_SERVERS", "MLP_OIDC_ISSUER", "MLP_REDIS_URL", "MLP_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    ports = [KAFKA_PORT, ISSUER_PORT, GATEWAY.http_port, *[s.http_port for s in SERVICES]]
    busy = [p for p in ports if _port_open(p)]
    assert not busy, f"ports {busy} are taken; stop the running platform (make down) first"

    launcher = Launcher(tmp_path / "state")
    pids: list[int] = []
    try:
        platform = launcher.up()
        rows = launcher.status_rows()
        assert {r[0] for r in rows} >= {"kafka", "issuer", "gateway", *[s.name for s in SERVICES]}
        not_ready = [r for r in rows if not r[3].startswith("ready")]
        assert not not_ready, not_ready
        pids = [int(r[1]) for r in rows if r[1] != "-"]
        assert len(pids) >= 2 + len(SERVICES)
        assert (tmp_path / "state" / "logs" / "gateway.log").exists()
        assert run_smoke(launcher.state_dir, platform.issuer)
        # the demo scenario, on less data: features, model release and audit, all through the gateway
        assert Scenario(launcher.state_dir, platform.issuer, customers=300).run()
    finally:
        stopped = launcher.down()
    assert "gateway" in stopped and "kafka" in stopped
    assert [p for p in pids if _alive(p)] == []
    assert [p for p in ports if _port_open(p)] == []
    assert launcher.procs.names() == []
