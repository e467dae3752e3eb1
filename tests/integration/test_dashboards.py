"""Every Grafana panel and Prometheus rule queries a metric that the services really export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import yaml

from mlp_core.bootstrap import build_host
from mlp_core.host import ServiceHost
from mlp_core.testing.tokens import TestIssuer
from mlp_feature_store.main import build_host as build_feature_store
from mlp_feature_store.settings import FeatureStoreSettings
from mlp_gateway.main import build_gateway
from mlp_gateway.settings import GatewaySettings
from mlp_training.main import MIGRATIONS_DIR, build
from mlp_training.settings import TrainingSettings

ROOT = Path(__file__).resolve().parents[2]
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",), "summary": ("_sum", "_count")}


def _queries() -> list[tuple[str, str]]:
    found = []
    for path in sorted((ROOT / "deploy/grafana/dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                found.append((f"{path.name}: {panel['title']}", target["expr"]))
    rules = yaml.safe_load((ROOT / "deploy/prometheus/rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            found.append((f"rules.yml: {rule['alert']}", rule["expr"]))
    return found


async def _scrape(host: ServiceHost) -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=host.app), base_url="http://t") as client:
        await client.get("/healthz")
        text = (await client.get("/metrics")).text
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + s for s in SUFFIXES.get(family.type, ("",)))
    return names


async def _exported_names(tmp_path: Path, issuer: TestIssuer, redis_url: str) -> set[str]:
    """What a plain service (training), the feature store and the gateway really export on /metrics."""
    common = {"oidc_issuer": issuer.issuer, "grpc_port": 0, "kafka_bootstrap_servers": "127.0.0.1:1"}
    training = build_host(TrainingSettings(state_dir=tmp_path / "t", **common), MIGRATIONS_DIR, build)
    features = build_feature_store(FeatureStoreSettings(state_dir=tmp_path / "f", redis_url=redis_url, **common),
                                   verifier=issuer.verifier())
    gateway = build_gateway(GatewaySettings(state_dir=tmp_path / "g", redis_url=redis_url, **common),
                            verifier=issuer.verifier()).host
    return await _scrape(training) | await _scrape(features) | await _scrape(gateway)


async def test_dashboard_and_rule_queries_use_exported_metrics(tmp_path: Path, test_issuer: TestIssuer,
                                                               redis_url: str) -> None:
    exported = await _exported_names(tmp_path, test_issuer, redis_url)
    queries = _queries()
    assert len(queries) >= 21
    missing = []
    for where, expr in queries:
        for name in re.findall(r"\b(mlp_[a-z0-9_]+)", expr):
            if name not in exported:
                missing.append(f"{where}: {name}")
    assert missing == [], f"queries name metrics nobody exports: {missing}"
