"""The API server's defaulting for the kinds the sandbox serves.

A real cluster fills in every optional field it has a default for before it validates
and stores an object, so what a client reads back (and what `kubectl apply` and
server-side apply diff against) is the defaulted object, not the submitted one. A
manifest fixer that compares "before" and "after" must see the same defaults here as
on a real cluster, hence this module mirrors `pkg/apis/*/v1/defaults.go` plus the
admission plugins that always run (ServiceAccount, DefaultTolerationSeconds).

Every function works in place on a private copy and is idempotent, because defaults
are applied again on every update and patch.
"""

from __future__ import annotations

import base64
import zlib
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]

_TOLERATION_SECONDS = 300


def apply_defaults(obj: Obj) -> Obj:
    """Default `obj` (a private copy, modified in place) by its kind; returns it."""
    fn = _BY_KIND.get(obj.get("kind", ""))
    if fn is not None:
        fn(obj)
    normalize_times(obj)
    return obj


# Time fields are Go metav1.Time (RFC 3339, whole seconds, "Z") or metav1.MicroTime; the
# real server decodes and re-encodes them, so `2024-01-01T00:00:00.5+00:00` written by a
# Python client reads back as `2024-01-01T00:00:00Z`.
_MICRO_TIME_KEYS = frozenset({"eventTime", "lastObservedTime", "renewTime", "acquireTime"})
_TIME_KEYS = (
    frozenset(
        {
            "creationTimestamp",
            "deletionTimestamp",
            "firstTimestamp",
            "lastTimestamp",
            "startTime",
            "startedAt",
            "finishedAt",
            "lastTransitionTime",
            "lastUpdateTime",
            "lastProbeTime",
            "lastHeartbeatTime",
            "time",
        }
    )
    | _MICRO_TIME_KEYS
)
# Free-form maps whose keys are user data, never time fields.
_OPAQUE_KEYS = frozenset({"data", "binaryData", "stringData", "labels", "annotations", "fieldsV1"})


def normalize_times(node: Any) -> None:
    """Re-encode every known time field in place as the Go API server would."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _OPAQUE_KEYS:
                continue
            if key in _TIME_KEYS and isinstance(value, str):
                node[key] = _go_time(value, micro=key in _MICRO_TIME_KEYS)
            else:
                normalize_times(value)
    elif isinstance(node, list):
        for value in node:
            normalize_times(value)


def _go_time(value: str, micro: bool) -> str:
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value  # not a time: validation reports it
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    t = t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def _set(d: dict, key: str, value: Any) -> None:
    if d.get(key) is None:
        d[key] = value


# -- workloads -------------------------------------------------------------------


def _deployment(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    _set(spec, "replicas", 1)
    strategy = spec.setdefault("strategy", {})
    _set(strategy, "type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        _set(rolling, "maxUnavailable", "25%")
        _set(rolling, "maxSurge", "25%")
    _set(spec, "revisionHistoryLimit", 10)
    _set(spec, "progressDeadlineSeconds", 600)
    _pod_template(spec)


def _statefulset(obj: Obj) -> None:
    """apps/v1 SetDefaults_StatefulSet (StatefulSetAutoDeletePVC and PodIndexLabel on)."""
    spec = obj.setdefault("spec", {})
    _set(spec, "replicas", 1)
    _set(spec, "podManagementPolicy", "OrderedReady")
    strategy = spec.setdefault("updateStrategy", {})
    _set(strategy, "type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        _set(strategy.setdefault("rollingUpdate", {}), "partition", 0)
    _set(spec, "revisionHistoryLimit", 10)
    retention = spec.setdefault("persistentVolumeClaimRetentionPolicy", {})
    _set(retention, "whenDeleted", "Retain")
    _set(retention, "whenScaled", "Retain")
    _pod_template(spec)


def _daemonset(obj: Obj) -> None:
    """apps/v1 SetDefaults_DaemonSet."""
    spec = obj.setdefault("spec", {})
    strategy = spec.setdefault("updateStrategy", {})
    _set(strategy, "type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        _set(rolling, "maxUnavailable", 1)
        _set(rolling, "maxSurge", 0)
    _set(spec, "revisionHistoryLimit", 10)
    _pod_template(spec)


def _replicaset(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    _set(spec, "replicas", 1)
    _pod_template(spec)


def _pod_template(spec: dict) -> None:
    template = spec.get("template")
    if isinstance(template, dict):
        template.setdefault("metadata", {}).setdefault("creationTimestamp", None)
        _pod_spec(template.setdefault("spec", {}))


def _pod(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    _pod_spec(spec)
    _set(spec, "enableServiceLinks", True)
    # Admission: ServiceAccount, Priority and DefaultTolerationSeconds run on every pod.
    _set(spec, "serviceAccountName", spec.get("serviceAccount") or "default")
    _set(spec, "serviceAccount", spec["serviceAccountName"])
    _set(spec, "priority", 0)
    _set(spec, "preemptionPolicy", "PreemptLowerPriority")
    tolerations = spec.setdefault("tolerations", [])
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
        if not any(t.get("key") == key for t in tolerations if isinstance(t, dict)):
            tolerations.append(
                {
                    "key": key,
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": _TOLERATION_SECONDS,
                }
            )
    for c in _containers(spec):
        _requests_from_limits(c)
    status = obj.setdefault("status", {})
    _set(status, "phase", "Pending")
    _set(status, "qosClass", qos_class(spec))


def _pod_spec(spec: dict) -> None:
    _set(spec, "restartPolicy", "Always")
    _set(spec, "dnsPolicy", "ClusterFirst")
    _set(spec, "schedulerName", "default-scheduler")
    _set(spec, "terminationGracePeriodSeconds", 30)
    _set(spec, "securityContext", {})
    for c in _containers(spec):
        _container(c)
    for v in spec.get("volumes") or []:
        if isinstance(v, dict):
            _volume(v)


def _containers(spec: dict) -> list[dict]:
    return [
        c
        for key in ("initContainers", "containers")
        for c in (spec.get(key) or [])
        if isinstance(c, dict)
    ]


def _container(c: dict) -> None:
    _set(c, "terminationMessagePath", "/dev/termination-log")
    _set(c, "terminationMessagePolicy", "File")
    _set(c, "imagePullPolicy", image_pull_policy(c.get("image") or ""))
    _set(c, "resources", {})
    for p in c.get("ports") or []:
        if isinstance(p, dict):
            _set(p, "protocol", "TCP")
    for key in ("livenessProbe", "readinessProbe", "startupProbe"):
        if isinstance(c.get(key), dict):
            _probe(c[key])
    for env in c.get("env") or []:
        ref = (
            ((env or {}).get("valueFrom") or {}).get("fieldRef") if isinstance(env, dict) else None
        )
        if isinstance(ref, dict):
            _set(ref, "apiVersion", "v1")


def image_pull_policy(image: str) -> str:
    """Always for `:latest` or an untagged image, IfNotPresent otherwise (digests included)."""
    if "@" in image:
        return "IfNotPresent"
    last = image.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else ""
    return "Always" if tag in ("", "latest") else "IfNotPresent"


def _probe(probe: dict) -> None:
    _set(probe, "timeoutSeconds", 1)
    _set(probe, "periodSeconds", 10)
    _set(probe, "successThreshold", 1)
    _set(probe, "failureThreshold", 3)
    if isinstance(probe.get("httpGet"), dict):
        _set(probe["httpGet"], "path", "/")
        _set(probe["httpGet"], "scheme", "HTTP")


def _volume(v: dict) -> None:
    sources = [k for k in v if k != "name"]
    if not sources:
        v["emptyDir"] = {}
    for key in ("configMap", "secret"):
        if isinstance(v.get(key), dict):
            _set(v[key], "defaultMode", 420)
    if isinstance(v.get("hostPath"), dict):
        _set(v["hostPath"], "type", "")


def _requests_from_limits(c: dict) -> None:
    res = c.get("resources") or {}
    limits = res.get("limits") or {}
    if limits:
        requests = res.setdefault("requests", {})
        for name, qty in limits.items():
            requests.setdefault(name, qty)


def qos_class(spec: dict) -> str:
    """The pod's QoS class, as the API server computes it on create."""
    containers = [c for c in (spec.get("containers") or []) if isinstance(c, dict)]
    any_set = False
    guaranteed = True
    for c in containers:
        res = c.get("resources") or {}
        requests, limits = res.get("requests") or {}, res.get("limits") or {}
        if requests or limits:
            any_set = True
        for name in ("cpu", "memory"):
            if name not in limits or requests.get(name, limits[name]) != limits[name]:
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


# -- core kinds --------------------------------------------------------------------


def _service(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    _set(spec, "type", "ClusterIP")
    _set(spec, "sessionAffinity", "None")
    for p in spec.get("ports") or []:
        if isinstance(p, dict):
            _set(p, "protocol", "TCP")
            _set(p, "targetPort", p.get("port"))
    if spec["type"] != "ExternalName":
        _set(spec, "clusterIP", _cluster_ip(obj))
        _set(spec, "clusterIPs", [spec["clusterIP"]])
        _set(spec, "ipFamilies", ["IPv4"])
        _set(spec, "ipFamilyPolicy", "SingleStack")
        _set(spec, "internalTrafficPolicy", "Cluster")
    obj.setdefault("status", {}).setdefault("loadBalancer", {})


def _cluster_ip(obj: Obj) -> str:
    """A stable address in 10.96.0.0/12 for the service (no allocator needed in a sandbox)."""
    meta = obj.get("metadata") or {}
    h = zlib.crc32(f"{meta.get('namespace')}/{meta.get('name')}".encode())
    return f"10.{96 + (h >> 16) % 16}.{(h >> 8) % 256}.{max(1, h % 255)}"


def _namespace(obj: Obj) -> None:
    meta = obj.setdefault("metadata", {})
    if meta.get("name"):
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    obj.setdefault("status", {}).setdefault("phase", "Active")


def _secret(obj: Obj) -> None:
    _set(obj, "type", "Opaque")
    string_data = obj.pop("stringData", None)
    if isinstance(string_data, dict):
        data = obj.get("data") or {}
        for k, v in string_data.items():
            data[k] = base64.b64encode(str(v).encode()).decode()
        obj["data"] = data


def _claim(obj: Obj) -> None:
    _set(obj.setdefault("spec", {}), "volumeMode", "Filesystem")
    obj.setdefault("status", {}).setdefault("phase", "Pending")


def _persistent_volume(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    _set(spec, "volumeMode", "Filesystem")
    _set(spec, "persistentVolumeReclaimPolicy", "Retain")
    # The controller's volume loop makes a new, unclaimed volume Available at once.
    obj.setdefault("status", {}).setdefault(
        "phase", "Pending" if spec.get("claimRef") else "Available"
    )


def _storage_class(obj: Obj) -> None:
    _set(obj, "reclaimPolicy", "Delete")
    _set(obj, "volumeBindingMode", "Immediate")


_BY_KIND = {
    "PersistentVolumeClaim": _claim,
    "PersistentVolume": _persistent_volume,
    "StorageClass": _storage_class,
    "Deployment": _deployment,
    "ReplicaSet": _replicaset,
    "StatefulSet": _statefulset,
    "DaemonSet": _daemonset,
    "Pod": _pod,
    "Service": _service,
    "Namespace": _namespace,
    "Secret": _secret,
}
