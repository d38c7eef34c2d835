"""JSON patch, merge patch and strategic merge patch as the API server applies them."""

import copy

import pytest

from aifixer_sandbox.kube.patch import (
    REJECTED,
    PatchError,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)


def deployment(**spec_overrides) -> dict:
    containers = [
        {
            "name": "app",
            "image": "nginx:1",
            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        },
        {"name": "sidecar", "image": "busybox"},
    ]
    spec = {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "web"}},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": containers}},
    }
    spec.update(spec_overrides)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "annotations": {"keep": "yes"}, "finalizers": ["a", "b"]},
        "spec": spec,
    }


def smp(obj: dict, patch: dict) -> dict:
    return strategic_merge_patch(obj, patch, "apps/v1", "Deployment")


def containers(obj: dict) -> list[dict]:
    return obj["spec"]["template"]["spec"]["containers"]


def test_kubectl_apply_patch_with_set_element_order():
    live = deployment()
    patch = {
        "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
        "spec": {
            "replicas": 2,
            "template": {
                "spec": {
                    "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "app"}],
                    "containers": [{"image": "nginx:2", "name": "app"}],
                }
            },
        },
    }
    result = smp(live, patch)
    assert result["spec"]["replicas"] == 2
    assert [c["name"] for c in containers(result)] == ["sidecar", "app"]
    app = containers(result)[1]
    assert app["image"] == "nginx:2"
    assert app["env"] == live["spec"]["template"]["spec"]["containers"][0]["env"]
    assert result["metadata"]["annotations"]["keep"] == "yes"
    assert "$setElementOrder/containers" not in result["spec"]["template"]["spec"]


def test_env_merges_by_name_and_keeps_server_order():
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}],
                        }
                    ]
                }
            }
        }
    }
    env = containers(smp(deployment(), patch))[0]["env"]
    assert env == [
        {"name": "A", "value": "1"},
        {"name": "B", "value": "3"},
        {"name": "C", "value": "4"},
    ]


def test_patch_delete_directive_removes_list_item():
    patch = {
        "spec": {"template": {"spec": {"containers": [{"name": "sidecar", "$patch": "delete"}]}}}
    }
    assert [c["name"] for c in containers(smp(deployment(), patch))] == ["app"]


def test_patch_replace_directive_replaces_whole_list():
    patch = {
        "spec": {
            "template": {
                "spec": {"containers": [{"$patch": "replace"}, {"name": "only", "image": "x"}]}
            }
        }
    }
    assert containers(smp(deployment(), patch)) == [{"name": "only", "image": "x"}]


def test_null_deletes_fields():
    result = smp(
        deployment(), {"metadata": {"annotations": {"keep": None}}, "spec": {"replicas": None}}
    )
    assert "replicas" not in result["spec"]
    assert result["metadata"]["annotations"] == {}


def test_retain_keys_clears_other_strategy_fields():
    patch = {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}
    assert smp(deployment(), patch)["spec"]["strategy"] == {"type": "Recreate"}


def test_retain_keys_must_list_patched_fields():
    patch = {"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {"maxSurge": 2}}}}
    with pytest.raises(PatchError) as err:
        smp(deployment(), patch)
    assert err.value.code == 400


def test_delete_from_primitive_list():
    patch = {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"], "finalizers": ["c"]}}
    assert sorted(smp(deployment(), patch)["metadata"]["finalizers"]) == ["b", "c"]


def test_list_without_merge_strategy_is_replaced():
    live = deployment()
    live["spec"]["template"]["spec"]["containers"][0]["args"] = ["a", "b"]
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "app", "args": ["c"]}]}}}}
    assert containers(smp(live, patch))[0]["args"] == ["c"]


def test_volume_mounts_merge_by_mount_path():
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "app", "volumeMounts": [{"name": "other", "mountPath": "/data"}]}
                    ]
                }
            }
        }
    }
    assert containers(smp(deployment(), patch))[0]["volumeMounts"] == [
        {"name": "other", "mountPath": "/data"}
    ]


def test_new_list_item_is_added_without_directives():
    patch = {
        "spec": {
            "template": {
                "spec": {"containers": [{"name": "new", "image": "x", "env": [{"name": "Z"}]}]}
            }
        }
    }
    result = containers(smp(deployment(), patch))
    assert {c["name"] for c in result} == {"app", "sidecar", "new"}
    assert next(c for c in result if c["name"] == "new") == {
        "name": "new",
        "image": "x",
        "env": [{"name": "Z"}],
    }


def test_missing_merge_key_is_rejected():
    with pytest.raises(PatchError):
        smp(deployment(), {"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}})


def test_inputs_are_not_mutated():
    live, patch = (
        deployment(),
        {"spec": {"replicas": None, "strategy": {"$retainKeys": ["type"], "type": "Recreate"}}},
    )
    live_copy, patch_copy = copy.deepcopy(live), copy.deepcopy(patch)
    smp(live, patch)
    json_patch(live, [{"op": "remove", "path": "/spec/replicas"}])
    merge_patch(live, {"spec": None})
    assert live == live_copy and patch == patch_copy


def test_json_patch_operations():
    ops = [
        {"op": "replace", "path": "/spec/replicas", "value": 3},
        {"op": "add", "path": "/metadata/annotations/example.com~1owner", "value": "me"},
        {"op": "add", "path": "/metadata/finalizers/-", "value": "c"},
        {"op": "remove", "path": "/metadata/finalizers/0"},
        {"op": "copy", "from": "/spec/replicas", "path": "/metadata/annotations/replicas"},
        {"op": "move", "from": "/metadata/annotations/keep", "path": "/metadata/annotations/kept"},
        {"op": "test", "path": "/spec/replicas", "value": 3},
    ]
    result = json_patch(deployment(), ops)
    assert result["spec"]["replicas"] == 3
    assert result["metadata"]["annotations"] == {
        "example.com/owner": "me",
        "replicas": 3,
        "kept": "yes",
    }
    assert result["metadata"]["finalizers"] == ["b", "c"]


def test_json_patch_test_failure_is_rejected_like_the_server():
    with pytest.raises(PatchError) as err:
        json_patch(deployment(), [{"op": "test", "path": "/spec/replicas", "value": 5}])
    status = err.value.status()
    assert status["code"] == 422 and status["message"] == REJECTED
    assert (
        status["details"]["causes"][0]["message"]
        == "testing value /spec/replicas failed: test failed"
    )


def test_json_patch_replace_of_missing_path_fails():
    with pytest.raises(PatchError, match="missing"):
        json_patch(deployment(), [{"op": "replace", "path": "/spec/nope/deeper", "value": 1}])


def test_merge_patch():
    result = merge_patch(
        deployment(),
        {
            "metadata": {"annotations": None},
            "spec": {"replicas": 4, "strategy": {"type": "Recreate", "rollingUpdate": None}},
        },
    )
    assert "annotations" not in result["metadata"]
    assert result["spec"]["replicas"] == 4
    assert result["spec"]["strategy"] == {"type": "Recreate"}
    assert (
        merge_patch(deployment(), {"spec": {"template": {"spec": {"containers": []}}}})["spec"][
            "template"
        ]["spec"]["containers"]
        == []
    )
