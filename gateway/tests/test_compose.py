"""Structural checks of docker-compose.yml and the Keycloak realm (no Docker engine on these machines)."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest
import yaml

from mlp_core.auth import PLATFORM_SCOPES
from mlp_core.settings import CoreSettings
from mlp_gateway.settings import GatewaySettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
REALM = json.loads((ROOT / "deploy/keycloak/mlp-realm.json").read_text())
SETTINGS = {"gateway": "mlp_gateway.settings:GatewaySettings",
            "feature-store": "mlp_feature_store.settings:FeatureStoreSettings",
            "training": "mlp_training.settings:TrainingSettings", "registry": "mlp_registry.settings:RegistrySettings",
            "serving": "mlp_serving.settings:ServingSettings",
            "experiments": "mlp_experiments.settings:ExperimentsSettings",
            "monitoring": "mlp_monitoring.settings:MonitoringSettings"}


def settings_class(name: str) -> type[CoreSettings]:
    module, _, cls = SETTINGS[name].partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError):
        return CoreSettings


def test_compose_has_the_whole_stack() -> None:
    assert {"postgres", "redis", "kafka", "keycloak", "gateway", *[n for n in SETTINGS if n != "gateway"]} <= set(
        COMPOSE["services"])
    kafka = COMPOSE["services"]["kafka"]["environment"]
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"], "Kafka runs in KRaft mode (no ZooKeeper)"
    assert "zookeeper" not in COMPOSE["services"]


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_builds_reference_existing_paths(name: str) -> None:
    build = COMPOSE["services"][name]["build"]
    context = ROOT / build["context"]
    assert (context / build["dockerfile"]).is_file()
    package = build["args"]["PACKAGE"]
    assert (context / package / "pyproject.toml").is_file()
    module = build["args"]["MODULE"]
    assert (context / package / "src" / module).is_dir()


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_env_names_match_settings(name: str) -> None:
    fields = {f"MLP_{f.upper()}" for f in settings_class(name).model_fields}
    env = COMPOSE["services"][name]["environment"]
    unknown = sorted(k for k in env if k.startswith("MLP_") and k not in fields)
    assert unknown == []


def test_gateway_points_at_every_service_and_keycloak() -> None:
    env = COMPOSE["services"]["gateway"]["environment"]
    # The settings validators (https issuer outside local mode, no default secrets) accept this env.
    settings = GatewaySettings(**{k.removeprefix("MLP_").lower(): v for k, v in env.items()})
    for service, url in settings.upstreams().items():
        assert url.startswith(f"http://{service}:")
        assert COMPOSE["services"][service]["environment"]["MLP_HTTP_PORT"] == url.rsplit(":", 1)[1]
    for service, address in settings.grpc_upstreams().items():
        assert COMPOSE["services"][service]["environment"]["MLP_GRPC_PORT"] == address.rsplit(":", 1)[1]
    assert env["MLP_OIDC_ISSUER"] == f"{COMPOSE['services']['keycloak']['environment']['KC_HOSTNAME']}/realms/mlp"


def test_realm_defines_clients_scopes_and_mappers() -> None:
    clients = {c["clientId"]: c for c in REALM["clients"]}
    assert {"mlp-demo", "mlp-admin", "mlp-approver", "svc-gateway", "svc-registry"} <= set(clients)
    assert {s["name"] for s in REALM["clientScopes"]} >= set(PLATFORM_SCOPES)
    for client in clients.values():
        assert client["serviceAccountsEnabled"] and not client["standardFlowEnabled"]
        assert client["attributes"]["access.token.header.type.rfc9068"] == "true", "typ: at+jwt"
        assert int(client["attributes"]["access.token.lifespan"]) <= 3600
        mappers = {m["protocolMapper"]: m["config"] for m in client["protocolMappers"]}
        assert mappers["oidc-audience-mapper"]["included.custom.audience"] == "mlp"
        assert mappers["oidc-hardcoded-claim-mapper"]["claim.name"] == "projects"
        assert isinstance(json.loads(mappers["oidc-hardcoded-claim-mapper"]["claim.value"]), list)
    assert "registry:approve" in clients["mlp-approver"]["optionalClientScopes"]
    assert "registry:approve" not in clients["mlp-demo"]["optionalClientScopes"]
    assert all(re.match(r"^[a-z-]+$", c.removeprefix("svc-")) for c in clients)
