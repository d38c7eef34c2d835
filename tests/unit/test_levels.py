"""CPU levels: what the record makes of Alertmanager's notices, and what the task does
with a pod, against a real Redis and a cluster double that records every patch."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from aifixer.scaling import levels
from aifixer.settings import Settings
from aifixer.web import parse_alerts

LABEL = "aifixer.io/cpu-level"


class Pods:
    """The two calls the task makes on the cluster, over a dict of pods."""

    def __init__(self, pods: dict[str, dict]) -> None:
        self.pods = pods
        self.patches: list[tuple[str, str, str | None]] = []

    def get_pod(self, namespace: str, name: str):
        return self.pods.get(f"{namespace}/{name}")

    def set_pod_label(self, namespace, name, key, value, resource_version=None):
        pod = self.pods.get(f"{namespace}/{name}")
        if pod is None:
            return None
        if resource_version is not None and resource_version != pod["metadata"].get(
            "resourceVersion"
        ):
            from aifixer.adapters.errors import Conflict

            raise Conflict("kubernetes", "the object has been modified")
        self.patches.append((f"{namespace}/{name}", key, value))
        labels = pod["metadata"].setdefault("labels", {})
        if value is None:
            labels.pop(key, None)
        else:
            labels[key] = value
        return pod


@pytest.fixture
def r(clean_redis):
    return clean_redis


@pytest.fixture
def settings():
    return Settings(_env_file=None, namespaces=["shop"])


def notice(name: str, status: str, at: int, ns: str = "shop", pod: str = "api-1"):
    return levels.LevelAlert(ns, pod, name, status == "firing", float(at))


def test_the_latest_started_firing_alert_is_the_level(r, settings):
    levels.record(r, [notice("PodCpuNormal", "firing", 100)])
    assert levels.desired(r, "shop/api-1", settings) == "low"
    # The load rose: the high alert fires before the low one's resolved notice arrives.
    levels.record(r, [notice("PodCpuFailure", "firing", 200)])
    assert levels.desired(r, "shop/api-1", settings) == "high"
    levels.record(r, [notice("PodCpuNormal", "resolved", 100)])
    assert levels.desired(r, "shop/api-1", settings) == "high"
    levels.record(r, [notice("PodCpuFailure", "resolved", 200)])
    assert levels.desired(r, "shop/api-1", settings) is None


def test_late_and_repeated_notices_change_nothing(r, settings):
    levels.record(r, [notice("PodCpuFailure", "firing", 300)])
    # A resolved notice of an older firing of the same alert arrives after the new one.
    levels.record(r, [notice("PodCpuFailure", "resolved", 250)])
    assert levels.desired(r, "shop/api-1", settings) == "high"
    # Alertmanager repeats the firing notice every repeat_interval: nothing moves.
    for _ in range(3):
        levels.record(r, [notice("PodCpuFailure", "firing", 300)])
    assert r.hgetall("aifixer:cpulevel:shop/api-1") == {b"PodCpuFailure": b"300.0"}
    # Resolved, then a late (or an HA peer's duplicate) firing of that same alert.
    levels.record(r, [notice("PodCpuFailure", "resolved", 300)])
    levels.record(r, [notice("PodCpuFailure", "firing", 300)])
    assert levels.desired(r, "shop/api-1", settings) is None
    # A new firing of it (it started again later) counts.
    levels.record(r, [notice("PodCpuFailure", "firing", 400)])
    assert levels.desired(r, "shop/api-1", settings) == "high"
    assert 0 < r.ttl("aifixer:cpulevel:shop/api-1") <= levels.KEEP_S


def test_the_seed_label_by_configuration(r):
    seed = Settings(_env_file=None, cpu_level_label="status", cpu_levels="PodCpuFailure=panne")
    levels.record(r, [notice("PodCpuFailure", "firing", 1)])
    pods = Pods({"shop/api-1": {"metadata": {"labels": {"app": "api"}}}})
    assert levels.label_pod(pods, r, seed, "shop/api-1") == "set"
    assert pods.pods["shop/api-1"]["metadata"]["labels"] == {"app": "api", "status": "panne"}


def test_label_pod_patches_only_when_the_value_differs(r, settings):
    pods = Pods({"shop/api-1": {"metadata": {"labels": {"app": "api"}}}})
    levels.record(r, [notice("PodHighCpuUsage", "firing", 10)])
    assert levels.label_pod(pods, r, settings, "shop/api-1") == "set"
    assert levels.label_pod(pods, r, settings, "shop/api-1") == "unchanged"
    assert pods.patches == [("shop/api-1", LABEL, "moderate")]
    levels.record(r, [notice("PodHighCpuUsage", "resolved", 10)])
    assert levels.label_pod(pods, r, settings, "shop/api-1") == "removed"
    assert pods.pods["shop/api-1"]["metadata"]["labels"] == {"app": "api"}


def test_a_pod_that_is_gone_is_not_an_error(r, settings):
    levels.record(r, [notice("PodCpuFailure", "firing", 1, pod="gone-1")])
    assert levels.label_pod(Pods({}), r, settings, "shop/gone-1") == "gone"


@pytest.mark.parametrize("ns", ["kube-system", "aifixer", "other"])
def test_namespaces_aifixer_does_not_change_are_refused(r, settings, ns):
    pods = Pods({f"{ns}/api-1": {"metadata": {"labels": {}}}})
    levels.record(r, [notice("PodCpuFailure", "firing", 1, ns=ns)])
    assert levels.label_pod(pods, r, settings, f"{ns}/api-1") == "refused"
    assert pods.patches == []


@pytest.mark.parametrize(
    "pod_id", ["shop", "shop/api/x", "Shop/api", "shop/-api", "../etc/x", {"ns": "shop"}, ""]
)
def test_messages_that_name_no_pod_are_refused(r, settings, pod_id):
    with pytest.raises(ValueError, match="not a pod id"):
        levels.label_pod(Pods({}), r, settings, pod_id)


def test_split_separates_levels_from_other_alerts(settings):
    def alert(name: str, **labels: str) -> dict:
        return {
            "status": "firing",
            "labels": {"alertname": name, **labels},
            "startsAt": datetime(2026, 12, 1, tzinfo=UTC).isoformat(),
        }

    parsed = parse_alerts(
        {
            "version": "4",
            "status": "firing",
            "alerts": [
                alert("PodCpuFailure", namespace="shop", pod="api-1"),
                alert("PodCpuNormal", namespace="shop"),  # no pod: ignored, counted
                alert("PodCpuNormal", namespace="shop", pod="Bad_Name"),
                alert("KubePodCrashLooping", namespace="shop", pod="api-2"),
            ],
        }
    )
    found, rest, ignored = levels.split(parsed, settings)
    assert [(a.pod_id, a.alertname, a.firing) for a in found] == [
        ("shop/api-1", "PodCpuFailure", True)
    ]
    assert found[0].starts_at == datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    assert [a.labels["alertname"] for a in rest] == ["KubePodCrashLooping"]
    assert ignored == 2


def test_label_settings_are_validated():
    with pytest.raises(ValueError, match="label key"):
        Settings(_env_file=None, cpu_level_label="-bad/key")
    with pytest.raises(ValueError, match="label value"):
        Settings(_env_file=None, cpu_levels="PodCpuFailure=en panne")
    with pytest.raises(ValueError, match="AlertName=label-value"):
        Settings(_env_file=None, cpu_levels="PodCpuFailure")


def test_a_pod_that_changes_under_the_write_is_read_again(r, settings):
    class Moving(Pods):
        def set_pod_label(self, namespace, name, key, value, resource_version=None):
            pod = self.pods[f"{namespace}/{name}"]
            if pod["metadata"]["resourceVersion"] == "1":  # another writer got there first
                pod["metadata"]["resourceVersion"] = "2"
            return super().set_pod_label(namespace, name, key, value, resource_version)

    pods = Moving({"shop/api-1": {"metadata": {"labels": {}, "resourceVersion": "1"}}})
    levels.record(r, [notice("PodCpuFailure", "firing", 1)])
    assert levels.label_pod(pods, r, settings, "shop/api-1") == "set"
    assert pods.patches == [("shop/api-1", LABEL, "high")]
