"""Custom resources in the Kubernetes stand-in, through kubectl and the `kubernetes` client.

A CustomResourceDefinition stored over HTTP makes its resource discoverable, routable
and printable, exactly as GitOps controllers' CRDs (Argo CD's Application, Flux's
Kustomization) need to be for `kubectl get applications.argoproj.io -A` and for the
Python client's CustomObjectsApi.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.integration.test_kube_api import Cluster, start_cluster

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.timeout(120)

GROUP, VERSION, PLURAL = "example.com", "v1", "widgets"


def widget_crd(status_subresource: bool = True) -> dict:
    version: dict = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {
            "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        },
        "additionalPrinterColumns": [
            {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
            {
                "name": "Ready",
                "type": "string",
                "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
            },
            {"name": "Colour", "type": "string", "jsonPath": ".spec.colour", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    }
    if status_subresource:
        version["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": "Widget",
                "listKind": "WidgetList",
                "plural": PLURAL,
                "singular": "widget",
                "shortNames": ["wdg"],
            },
            "versions": [version],
        },
    }


def widget(name: str, size: int = 1) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"size": size, "colour": "blue"},
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    c, stop = start_cluster(tmp_path_factory.mktemp("crds"))
    client.ApiextensionsV1Api(c.api).create_custom_resource_definition(widget_crd())
    _wait_established(c, f"{PLURAL}.{GROUP}")
    yield c
    stop()


def _wait_established(c: Cluster, name: str) -> None:
    ext = client.ApiextensionsV1Api(c.api)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        conditions = ext.read_custom_resource_definition(name).status.conditions or []
        if any(x.type == "Established" and x.status == "True" for x in conditions):
            return
        time.sleep(0.05)
    raise AssertionError(f"{name} never established")


@pytest.fixture
def objects(cluster) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(cluster.api)


def test_crd_is_established_with_accepted_names(cluster):
    crd = client.ApiextensionsV1Api(cluster.api).read_custom_resource_definition(
        f"{PLURAL}.{GROUP}"
    )
    assert crd.status.accepted_names.kind == "Widget"
    assert crd.status.stored_versions == [VERSION]


def test_custom_objects_crud_with_resource_versions(objects):
    created = objects.create_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, widget("crud")
    )
    meta = created["metadata"]
    assert meta["uid"] and meta["resourceVersion"] and meta["generation"] == 1
    got = objects.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "crud")
    assert got["spec"] == {"size": 1, "colour": "blue"}

    merged = objects.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "crud", {"spec": {"size": 3, "colour": None}}
    )
    assert merged["spec"] == {"size": 3}  # JSON merge patch: null deletes
    assert merged["metadata"]["generation"] == 2
    assert int(merged["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])

    # A stale resourceVersion is a conflict, as on any resource.
    stale = {**got, "spec": {"size": 9}}
    with pytest.raises(ApiException) as exc:
        objects.replace_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "crud", stale)
    assert exc.value.status == 409

    listed = objects.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)
    assert listed["kind"] == "WidgetList"
    assert "crud" in [i["metadata"]["name"] for i in listed["items"]]
    everywhere = objects.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    assert "crud" in [i["metadata"]["name"] for i in everywhere["items"]]

    objects.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "crud")
    with pytest.raises(ApiException) as exc:
        objects.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "crud")
    assert exc.value.status == 404


def test_json_patch_and_strategic_merge_refused(objects):
    objects.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, widget("jp"))
    patched = objects.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        "default",
        PLURAL,
        "jp",
        [{"op": "replace", "path": "/spec/size", "value": 5}],
        _content_type="application/json-patch+json",
    )
    assert patched["spec"]["size"] == 5
    with pytest.raises(ApiException) as exc:
        objects.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            "default",
            PLURAL,
            "jp",
            {"spec": {"size": 6}},
            _content_type="application/strategic-merge-patch+json",
        )
    assert exc.value.status == 415


def test_status_subresource_is_separate(objects):
    objects.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, widget("st"))
    ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    # Through the main resource, status is ignored ...
    main = objects.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "st", ready)
    assert "status" not in main
    # ... and through the status subresource only status changes, without a new generation.
    after = objects.patch_namespaced_custom_object_status(
        GROUP, VERSION, "default", PLURAL, "st", {**ready, "spec": {"size": 99}}
    )
    assert after["status"]["conditions"][0]["status"] == "True"
    assert after["spec"]["size"] == 1
    assert after["metadata"]["generation"] == 1


def test_watch_custom_objects(objects):
    start = objects.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)
    rv = start["metadata"]["resourceVersion"]
    seen: list[tuple[str, str, int]] = []

    def follow() -> None:
        w = watch.Watch()
        for ev in w.stream(
            objects.list_namespaced_custom_object,
            GROUP,
            VERSION,
            "default",
            PLURAL,
            resource_version=rv,
            timeout_seconds=10,
        ):
            obj = ev["object"]
            seen.append((ev["type"], obj["metadata"]["name"], obj["spec"]["size"]))
            if ev["type"] == "DELETED":
                w.stop()

    t = threading.Thread(target=follow)
    t.start()
    objects.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, widget("w", 1))
    objects.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "w", {"spec": {"size": 2}}
    )
    objects.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "w")
    t.join(15)
    assert seen == [("ADDED", "w", 1), ("MODIFIED", "w", 2), ("DELETED", "w", 2)]


def test_deleting_the_crd_removes_its_resource_and_objects(tmp_path):
    c, stop = start_cluster(tmp_path)
    try:
        ext = client.ApiextensionsV1Api(c.api)
        objects = client.CustomObjectsApi(c.api)
        ext.create_custom_resource_definition(widget_crd())
        _wait_established(c, f"{PLURAL}.{GROUP}")
        objects.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, widget("gone"))
        ext.delete_custom_resource_definition(f"{PLURAL}.{GROUP}")
        with pytest.raises(ApiException) as exc:
            objects.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)
        assert exc.value.status == 404
        groups = [g.name for g in client.ApisApi(c.api).get_api_versions().groups]
        assert GROUP not in groups
        # Defined again, the resource is empty: the objects went with the definition.
        ext.create_custom_resource_definition(widget_crd())
        _wait_established(c, f"{PLURAL}.{GROUP}")
        listed = objects.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)
        assert listed["items"] == []
    finally:
        stop()


def test_discovery_lists_the_custom_group(cluster):
    groups = {g.name: g for g in client.ApisApi(cluster.api).get_api_versions().groups}
    assert groups[GROUP].preferred_version.group_version == f"{GROUP}/{VERSION}"
    resources = client.CustomObjectsApi(cluster.api).get_api_resources(GROUP, VERSION)
    names = {r.name: r for r in resources.resources}
    assert names[PLURAL].kind == "Widget" and names[PLURAL].namespaced
    assert names[PLURAL].short_names == ["wdg"]
    assert f"{PLURAL}/status" in names


# -- kubectl --------------------------------------------------------------------------------


@pytest.fixture
def kubectl(cluster, tmp_path):
    if KUBECTL is None:
        pytest.skip("kubectl is not installed")
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "KUBECACHEDIR": str(home / "cache"),
        "KUBECONFIG": str(cluster.kubeconfig),
    }

    def run(*args: str, ok: bool = True, stdin: str | None = None):
        proc = subprocess.run(
            [KUBECTL, *args], env=env, capture_output=True, text=True, timeout=60, input=stdin
        )
        if ok:
            assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
        return proc

    return run


WIDGET_YAML = """\
apiVersion: example.com/v1
kind: Widget
metadata:
  name: {name}
  namespace: {namespace}
spec:
  size: {size}
  colour: red
"""


def test_kubectl_apply_get_and_patch_custom_objects(cluster, kubectl, objects):
    kubectl("apply", "-f", "-", stdin=WIDGET_YAML.format(name="k1", namespace="default", size=2))
    kubectl("apply", "-f", "-", stdin=WIDGET_YAML.format(name="k2", namespace="other", size=4))
    objects.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        "default",
        PLURAL,
        "k1",
        {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
    )
    rows = [
        line.split()
        for line in kubectl("get", f"{PLURAL}.{GROUP}", "-A").stdout.strip().splitlines()
    ]
    assert rows[0] == ["NAMESPACE", "NAME", "SIZE", "READY", "AGE"]
    by_name = {r[1]: r for r in rows[1:]}
    assert by_name["k1"][:4] == ["default", "k1", "2", "True"]
    assert by_name["k2"][:3] == ["other", "k2", "4"]
    wide = kubectl("get", "wdg", "k1", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "SIZE", "READY", "COLOUR", "AGE"]

    kubectl("patch", "widget", "k1", "--type", "merge", "-p", '{"spec":{"size":7}}')
    kubectl(
        "patch",
        "widget",
        "k1",
        "--type",
        "json",
        "-p",
        '[{"op":"replace","path":"/spec/colour","value":"green"}]',
    )
    got = objects.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "k1")
    assert got["spec"] == {"size": 7, "colour": "green"}
    refused = kubectl("patch", "widget", "k1", "-p", '{"spec":{"size":8}}', ok=False)
    assert refused.returncode != 0 and "strategic-merge-patch" in refused.stderr

    # A second apply computes a JSON merge patch against the last applied configuration.
    kubectl("apply", "-f", "-", stdin=WIDGET_YAML.format(name="k2", namespace="other", size=5))
    got = objects.get_namespaced_custom_object(GROUP, VERSION, "other", PLURAL, "k2")
    assert got["spec"]["size"] == 5
    jsonpath = kubectl("get", "widget", "k2", "-n", "other", "-o", "jsonpath={.spec.size}")
    assert jsonpath.stdout == "5"
    kubectl("delete", "widget", "k2", "-n", "other")
    assert kubectl("get", "widget", "k2", "-n", "other", ok=False).returncode != 0
