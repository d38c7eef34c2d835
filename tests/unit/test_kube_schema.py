"""Schemas: lookup, patch metadata, validation messages and OpenAPI v3 documents."""

import copy
import json
from decimal import Decimal

import pytest

from aifixer_sandbox.kube import schema
from aifixer_sandbox.kube.quantity import (
    QuantityError,
    cpu_millicores,
    format_binary,
    memory_bytes,
    parse_quantity,
)


def deployment() -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]},
            },
        },
    }


def messages(obj: dict, strict: bool = True) -> list[str]:
    return [str(e) for e in schema.validate(obj, strict)]


def test_definition_lookup_and_patch_metadata():
    assert (
        schema.definition_for("apps/v1", "Deployment")["x-kubernetes-group-version-kind"][0]["kind"]
        == "Deployment"
    )
    assert schema.definition_for("apps/v1", "NoSuchKind") is None
    containers = schema.field_info(
        "apps/v1", "Deployment", ["spec", "template", "spec", "containers"]
    )
    assert (containers.merge_key, containers.patch_strategies, containers.list_map_keys) == (
        "name",
        ("merge",),
        ("name",),
    )
    mounts = schema.field_info("v1", "Pod", ["spec", "containers", 0, "volumeMounts"])
    assert mounts.merge_key == "mountPath"
    strategy = schema.field_info("apps/v1", "Deployment", ["spec", "strategy"])
    assert strategy.patch_strategies == ("retainKeys",) and strategy.kind == "object"
    assert schema.field_info("apps/v1", "Deployment", ["spec", "nope"]) is None


def test_valid_deployment_has_no_errors():
    assert schema.validate(deployment()) == []


def test_missing_image():
    obj = deployment()
    del obj["spec"]["template"]["spec"]["containers"][0]["image"]
    errors = schema.validate(obj)
    assert [(e.type, e.field, e.message) for e in errors] == [
        ("FieldValueRequired", "spec.template.spec.containers[0].image", "Required value")
    ]
    assert schema.status_reason_message("Deployment", "web", errors) == (
        'Deployment.apps "web" is invalid: spec.template.spec.containers[0].image: Required value'
    )


def test_bad_name_and_selector_mismatch_are_aggregated():
    obj = deployment()
    obj["metadata"]["name"] = "Web_App"
    obj["spec"]["template"]["metadata"]["labels"] = {"app": "other"}
    errors = schema.validate(obj)
    status = schema.error_status("apps/v1", "Deployment", "Web_App", errors)
    assert status["code"] == 422 and status["reason"] == "Invalid"
    assert status["message"].startswith(
        'Deployment.apps "Web_App" is invalid: [metadata.name: Invalid value: "Web_App": '
    )
    assert status["message"].endswith(
        'spec.template.metadata.labels: Invalid value: map[string]string{"app":"other"}: '
        "`selector` does not match template `labels`]"
    )
    assert {c["field"] for c in status["details"]["causes"]} == {
        "metadata.name",
        "spec.template.metadata.labels",
    }


def test_unknown_field_only_rejected_when_strict():
    obj = deployment()
    obj["spec"]["foo"] = 1
    assert messages(obj) == ['unknown field "spec.foo"']
    assert messages(obj, strict=False) == []
    status = schema.error_status("apps/v1", "Deployment", "web", schema.validate(obj))
    assert status["code"] == 400
    assert status["message"] == (
        'Deployment in version "v1" cannot be handled as a Deployment: strict decoding error: unknown field "spec.foo"'
    )
    assert schema.unknown_fields(obj) == ["spec.foo"]
    assert "foo" not in schema.prune_unknown(obj)["spec"]


def test_wrong_type_is_a_decode_error():
    obj = deployment()
    obj["spec"]["replicas"] = "two"
    (error,) = schema.validate(obj)
    assert error.decode
    assert (
        error.message
        == "json: cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32"
    )


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda s: s.update(replicas=-1),
            "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
        ),
        (
            lambda s: s["template"]["spec"].update(containers=[]),
            "spec.template.spec.containers: Required value",
        ),
        (
            lambda s: s["template"]["spec"]["containers"].append({"name": "app", "image": "x"}),
            'spec.template.spec.containers[1].name: Duplicate value: "app"',
        ),
        (
            lambda s: s["template"]["spec"]["containers"][0].update(
                livenessProbe={"httpGet": {"path": "/", "port": 0}}
            ),
            "spec.template.spec.containers[0].livenessProbe.httpGet.port: Invalid value: 0: "
            "must be between 1 and 65535, inclusive",
        ),
        (
            lambda s: s["template"]["spec"]["containers"][0].update(
                resources={"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}
            ),
            'spec.template.spec.containers[0].resources.requests: Invalid value: "2Gi": '
            "must be less than or equal to memory limit of 1Gi",
        ),
        (
            lambda s: s["template"]["spec"]["containers"][0].update(
                env=[{"name": "A=B", "value": "x"}]
            ),
            'spec.template.spec.containers[0].env[0].name: Invalid value: "A=B": '
            + schema.ENV_NAME_MSG,
        ),
        (
            lambda s: s["template"]["spec"].update(restartPolicy="Never"),
            'spec.template.spec.restartPolicy: Unsupported value: "Never": supported values: "Always"',
        ),
    ],
)
def test_semantic_checks(mutate, expected):
    obj = deployment()
    mutate(obj["spec"])
    assert expected in messages(obj)


def test_bad_quantity_is_a_decode_error():
    obj = deployment()
    obj["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"memory": "12x"}}
    (error,) = schema.validate(obj)
    assert error.decode and error.message.startswith("quantities must match the regular expression")


def test_quantities():
    assert parse_quantity("128Mi") == 128 * 1024 * 1024
    assert parse_quantity("250m") == Decimal("0.25")
    assert parse_quantity("1.5G") == 1_500_000_000
    assert parse_quantity("2e3") == 2000
    assert cpu_millicores("0.1") == 100 and memory_bytes("1Ki") == 1024
    assert format_binary(128 * 1024 * 1024) == "128Mi"
    for bad in ("", "abc", "1x", "Mi"):
        with pytest.raises(QuantityError):
            parse_quantity(bad)


def test_openapi_group_version_document():
    doc = schema.openapi_v3_group_version("apps/v1")
    schemas = doc["components"]["schemas"]
    deployment_schema = schemas["io.k8s.api.apps.v1.Deployment"]
    assert deployment_schema["x-kubernetes-group-version-kind"] == [
        {"group": "apps", "kind": "Deployment", "version": "v1"}
    ]
    assert (
        deployment_schema["properties"]["spec"]["$ref"]
        == "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"
    )
    assert "enum" not in deployment_schema["properties"]["kind"]
    replicas = schemas["io.k8s.api.apps.v1.DeploymentSpec"]["properties"]["replicas"]
    assert replicas["type"] == "integer" and replicas["nullable"] is True
    assert "io.k8s.api.core.v1.PodSpec" in schemas
    assert schemas["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]["format"] == "int-or-string"
    patch_op = doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"]
    assert patch_op["x-kubernetes-group-version-kind"]["kind"] == "Deployment"
    assert "fieldValidation" in {p["name"] for p in patch_op["parameters"]}
    assert "$defs" not in json.dumps(doc)


def test_openapi_keeps_json_schema_props_named_ref():
    doc = schema.openapi_v3_group_version("apiextensions.k8s.io/v1")
    props = doc["components"]["schemas"][
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps"
    ]
    assert props["properties"]["$ref"]["type"] == "string"


def test_openapi_root_points_at_hashed_documents():
    root = schema.openapi_v3_root(["api/v1", "apis/apps/v1"])
    url = root["paths"]["apis/apps/v1"]["serverRelativeURL"]
    assert url == f"/openapi/v3/apis/apps/v1?hash={schema.openapi_v3_hash('apps/v1')}"
    assert root["paths"]["api/v1"]["serverRelativeURL"].startswith("/openapi/v3/api/v1?hash=")
    assert schema.openapi_v3_group_version_bytes(
        "apps/v1"
    ) is schema.openapi_v3_group_version_bytes("apis/apps/v1")


def test_validation_does_not_mutate():
    obj = deployment()
    obj["spec"]["foo"] = 1
    before = copy.deepcopy(obj)
    schema.validate(obj)
    schema.prune_unknown(obj)
    assert obj == before
