"""Server-side apply and managedFields bookkeeping."""

import copy

import pytest

from aifixer_sandbox.kube.apply import (
    ApplyConflict,
    fieldset_of,
    from_fields_v1,
    record_update,
    server_side_apply,
)

T1, T2 = "2025-01-01T00:00:00Z", "2025-01-01T00:01:00Z"


def manifest(replicas: int = 2, image: str = "nginx:1") -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {"name": "app", "image": image, "env": [{"name": "A", "value": "1"}]}
                    ]
                },
            },
        },
    }


def managers(obj: dict) -> dict[str, dict]:
    return {m["manager"]: m for m in obj["metadata"]["managedFields"]}


def test_fieldset_uses_fields_v1_format():
    fields = fieldset_of(manifest(), "apps/v1", "Deployment")
    container = fields["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"app"}']
    assert container["."] == {} and container["f:image"] == {}
    assert container["f:env"]['k:{"name":"A"}'] == {".": {}, "f:name": {}, "f:value": {}}
    assert fields["f:spec"]["f:selector"] == {}, "LabelSelector is an atomic map"
    assert "f:name" not in fields["f:metadata"], "object identity is not tracked"


def test_apply_creates_object_with_apply_entry():
    obj = server_side_apply(None, manifest(), "kubectl", force=False, now=T1)
    assert obj["spec"]["replicas"] == 2
    entry = managers(obj)["kubectl"]
    assert (entry["operation"], entry["apiVersion"], entry["fieldsType"], entry["time"]) == (
        "Apply",
        "apps/v1",
        "FieldsV1",
        T1,
    )
    assert entry["fieldsV1"] == fieldset_of(manifest(), "apps/v1", "Deployment")


def test_reapply_converges():
    once = server_side_apply(None, manifest(), "kubectl", force=False, now=T1)
    twice = server_side_apply(once, manifest(), "kubectl", force=False, now=T1)
    assert twice == once


def test_conflict_with_update_manager_has_the_real_message():
    live = record_update(None, manifest(), "kubectl-client-side-apply", T1)
    with pytest.raises(ApplyConflict) as err:
        server_side_apply(live, manifest(replicas=3), "kubectl", force=False, now=T2)
    assert str(err.value) == (
        'Apply failed with 1 conflict: conflict with "kubectl-client-side-apply" using apps/v1: .spec.replicas'
    )
    assert err.value.status()["code"] == 409
    assert [(c.manager, c.field_path) for c in err.value.conflicts] == [
        ("kubectl-client-side-apply", ".spec.replicas")
    ]


def test_same_value_is_shared_without_conflict():
    live = record_update(None, manifest(), "kubectl-client-side-apply", T1)
    obj = server_side_apply(live, manifest(), "kubectl", force=False, now=T2)
    both = managers(obj)
    assert "f:replicas" in both["kubectl"]["fieldsV1"]["f:spec"]
    assert "f:replicas" in both["kubectl-client-side-apply"]["fieldsV1"]["f:spec"]


def test_force_takes_ownership():
    live = record_update(None, manifest(), "kubectl-client-side-apply", T1)
    obj = server_side_apply(
        live, manifest(replicas=3, image="nginx:2"), "kubectl", force=True, now=T2
    )
    assert obj["spec"]["replicas"] == 3
    old_owner = from_fields_v1(managers(obj)["kubectl-client-side-apply"]["fieldsV1"])
    assert ("f:spec", "f:replicas") not in old_owner
    assert ("f:spec", "f:replicas") in from_fields_v1(managers(obj)["kubectl"]["fieldsV1"])


def test_several_conflicts_are_listed_per_manager():
    live = record_update(None, manifest(), "controller", T1)
    with pytest.raises(ApplyConflict) as err:
        server_side_apply(
            live, manifest(replicas=5, image="nginx:9"), "kubectl", force=False, now=T2
        )
    assert str(err.value) == (
        'Apply failed with 2 conflicts: conflicts with "controller" using apps/v1:\n'
        "- .spec.replicas\n"
        '- .spec.template.spec.containers[name="app"].image'
    )


def test_dropping_a_field_removes_it():
    first = server_side_apply(None, manifest(), "kubectl", force=False, now=T1)
    smaller = manifest()
    del smaller["spec"]["replicas"]
    del smaller["spec"]["template"]["spec"]["containers"][0]["env"]
    obj = server_side_apply(first, smaller, "kubectl", force=False, now=T2)
    assert "replicas" not in obj["spec"]
    assert "env" not in obj["spec"]["template"]["spec"]["containers"][0]


def test_dropped_field_owned_by_another_manager_stays():
    first = server_side_apply(None, manifest(), "kubectl", force=False, now=T1)
    scaled = copy.deepcopy(first)
    scaled["spec"]["replicas"] = 7
    scaled = record_update(first, scaled, "hpa", T2, subresource="scale")
    smaller = manifest()
    del smaller["spec"]["replicas"]
    obj = server_side_apply(scaled, smaller, "kubectl", force=False, now=T2)
    assert obj["spec"]["replicas"] == 7
    assert managers(obj)["hpa"]["subresource"] == "scale"


def test_record_update_moves_changed_fields_to_the_writer():
    created = record_update(None, manifest(), "kubectl-client-side-apply", T1)
    edited = copy.deepcopy(created)
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:2"
    edited = record_update(created, edited, "aifixer", T2)
    mine = from_fields_v1(managers(edited)["aifixer"]["fieldsV1"])
    image = ("f:spec", "f:template", "f:spec", "f:containers", 'k:{"name":"app"}', "f:image")
    assert mine == {image}
    assert image not in from_fields_v1(managers(edited)["kubectl-client-side-apply"]["fieldsV1"])
    assert managers(edited)["aifixer"]["time"] == T2


def test_record_update_without_changes_adds_no_entry():
    created = record_update(None, manifest(), "creator", T1)
    same = record_update(created, copy.deepcopy(created), "someone-else", T2)
    assert set(managers(same)) == {"creator"}
