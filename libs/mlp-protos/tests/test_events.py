"""Event payloads: one message per event type, each naming its topic; JSON is lowerCamelCase."""

from __future__ import annotations

import json
import re

from google.protobuf import json_format

from mlp_protos.mlp.events.v1 import events_pb2, options_pb2

EXPECTED_TOPICS = {
    "mlp.feature-store.materialization-completed",
    "mlp.feature-store.quality-checked",
    "mlp.feature-store.entity-erased",
    "mlp.feature-store.features-pushed",
    "mlp.registry.model-created",
    "mlp.registry.version-registered",
    "mlp.registry.alias-changed",
    "mlp.registry.change-request-created",
    "mlp.registry.change-request-approved",
    "mlp.registry.change-request-rejected",
    "mlp.registry.change-request-applied",
    "mlp.registry.version-archived",
    "mlp.training.run-started",
    "mlp.training.run-completed",
    "mlp.training.run-failed",
    "mlp.serving.prediction-logged",
    "mlp.serving.model-loaded",
    "mlp.experiments.experiment-started",
    "mlp.experiments.decision-made",
    "mlp.experiments.outcome-recorded",
    "mlp.monitoring.drift-detected",
    "mlp.monitoring.alert-raised",
    "mlp.monitoring.retrain-requested",
    "mlp.gateway.audit-recorded",
}


def topics() -> dict[str, str]:
    out = {}
    for name, desc in events_pb2.DESCRIPTOR.message_types_by_name.items():
        topic = desc.GetOptions().Extensions[options_pb2.topic]
        if topic:
            out[topic] = name
    return out


def test_every_expected_event_has_one_message() -> None:
    found = topics()
    assert set(found) == EXPECTED_TOPICS
    assert len(set(found.values())) == len(found)


def test_topic_names_follow_convention_and_match_message_names() -> None:
    for topic, name in topics().items():
        assert re.fullmatch(r"mlp\.[a-z]+(-[a-z]+)*\.[a-z]+(-[a-z]+)*", topic)
        kebab = re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()
        assert topic.endswith("." + kebab), (topic, name)


def test_every_event_carries_project() -> None:
    for name in topics().values():
        desc = events_pb2.DESCRIPTOR.message_types_by_name[name]
        assert desc.fields_by_name["project"].type == desc.fields_by_name["project"].TYPE_STRING, name


def test_json_shape_is_lower_camel_case() -> None:
    event = events_pb2.AliasChanged(
        project="acme",
        model="churn",
        alias="champion",
        version=4,
        previous_version=3,
        change_request_id="cr-1",
        manifest_digest="sha256:" + "0" * 64,
    )
    event.changed_by.subject = "alice"
    data = json.loads(json_format.MessageToJson(event))
    assert data["previousVersion"] == "3"
    assert data["changeRequestId"] == "cr-1"
    assert data["changedBy"] == {"subject": "alice"}
    back = json_format.ParseDict(data, events_pb2.AliasChanged())
    assert back == event


def test_prediction_logged_uses_plain_json_for_tensors() -> None:
    event = events_pb2.PredictionLogged(project="acme", request_id="r1", model="churn", version=2)
    event.inputs.update({"age": [34, 51], "country": ["DE", "FR"]})
    event.outputs.update({"probability": [0.2, 0.7]})
    data = json_format.MessageToDict(event)
    assert data["inputs"] == {"age": [34.0, 51.0], "country": ["DE", "FR"]}
    assert data["requestId"] == "r1"
