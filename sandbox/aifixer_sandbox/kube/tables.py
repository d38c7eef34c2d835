"""Server-side printing: `meta.k8s.io/v1` Table responses.

kubectl 1.32 has no client-side printers for built-in kinds: `kubectl get` asks the
server for a Table (Accept `application/json;as=Table;v=v1;g=meta.k8s.io`) and prints
its cells verbatim. READY, STATUS, RESTARTS and friends therefore exist only if the
server computes them, exactly as `pkg/printers/internalversion/printers.go` does;
a STATUS column that said "Running" for a crash-looping pod would hide the very
failure the product is looking for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]
NONE = "<none>"


@dataclass(frozen=True)
class Column:
    name: str
    type: str = "string"
    priority: int = 0  # 1: only with `-o wide`
    format: str = ""
    description: str = ""

    def definition(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        }


NAME = Column("Name", format="name", description="Name must be unique within a namespace.")
AGE = Column(
    "Age",
    description="CreationTimestamp is a timestamp representing the server time "
    "when this object was created.",
)


def wants_table(accept: str) -> bool:
    """True when the Accept header asks for a meta.k8s.io Table."""
    return "as=Table" in accept.replace(" ", "")


def table(
    kind: str,
    items: list[Obj],
    list_meta: dict[str, Any],
    now: datetime | None = None,
    include_object: str = "Metadata",
    headers: bool = True,
) -> dict[str, Any]:
    """A Table for `items` of `kind`; rows carry PartialObjectMetadata (includeObject=Metadata).

    Without `headers` the column definitions are null, as the real server sends every watch
    event's Table after the first (the generator's NoHeaders option).
    """
    at = now or datetime.now(UTC)
    columns, printer = _PRINTERS.get(kind, ((NAME, AGE), _default_row))
    return assemble(
        items, lambda obj: printer(obj, at), [c.definition() for c in columns], list_meta,
        include_object, headers,
    )  # fmt: skip


def assemble(
    items: list[Obj],
    cells: Callable[[Obj], list[Any]],
    definitions: list[dict[str, Any]],
    list_meta: dict[str, Any],
    include_object: str,
    headers: bool,
) -> dict[str, Any]:
    """The Table itself, for built-in kinds and custom resources alike: a row of
    `cells(obj)` each, with the object as `include_object` asks (Object, Metadata as
    PartialObjectMetadata, or None)."""
    rows = []
    for obj in items:
        row: dict[str, Any] = {"cells": cells(obj)}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj.get("metadata") or {},
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": definitions if headers else None,
        "rows": rows,
    }


# -- time ----------------------------------------------------------------------------


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """apimachinery's duration.HumanDuration, the AGE format kubectl users know."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def since(value: str | None, now: datetime) -> str:
    t = parse_time(value)
    return "<unknown>" if t is None else human_duration((now - t).total_seconds())


def _age(obj: Obj, now: datetime) -> str:
    return since((obj.get("metadata") or {}).get("creationTimestamp"), now)


def _name(obj: Obj) -> str:
    return (obj.get("metadata") or {}).get("name", "")


# -- printers ------------------------------------------------------------------------


def _default_row(obj: Obj, now: datetime) -> list[Any]:
    return [_name(obj), _age(obj, now)]


def _containers_images(template_spec: dict) -> list[str]:
    containers = template_spec.get("containers") or []
    return [
        ",".join(c.get("name", "") for c in containers),
        ",".join(c.get("image", "") for c in containers),
    ]


def _selector_string(selector: dict | None) -> str:
    """metav1.FormatLabelSelector: matchLabels then matchExpressions; <none> when empty."""
    if not selector:
        return NONE
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for e in selector.get("matchExpressions") or []:
        op, key, values = e.get("operator"), e.get("key"), ",".join(e.get("values") or [])
        parts.append(
            {
                "In": f"{key} in ({values})",
                "NotIn": f"{key} notin ({values})",
                "Exists": key,
                "DoesNotExist": f"!{key}",
            }.get(op, key)
        )
    return ",".join(parts) or NONE


def _deployment_row(obj: Obj, now: datetime) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    tspec = (spec.get("template") or {}).get("spec") or {}
    return [
        _name(obj),
        f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 0)}",
        status.get("updatedReplicas", 0),
        status.get("availableReplicas", 0),
        _age(obj, now),
        *_containers_images(tspec),
        _selector_string(spec.get("selector")),
    ]


def _statefulset_row(obj: Obj, now: datetime) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    tspec = (spec.get("template") or {}).get("spec") or {}
    return [
        _name(obj),
        f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 0)}",
        _age(obj, now),
        *_containers_images(tspec),
    ]


def _daemonset_row(obj: Obj, now: datetime) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    tspec = (spec.get("template") or {}).get("spec") or {}
    node_selector = tspec.get("nodeSelector") or {}
    return [
        _name(obj),
        status.get("desiredNumberScheduled", 0),
        status.get("currentNumberScheduled", 0),
        status.get("numberReady", 0),
        status.get("updatedNumberScheduled", 0),
        status.get("numberAvailable", 0),
        ",".join(f"{k}={v}" for k, v in sorted(node_selector.items())) or NONE,
        _age(obj, now),
        *_containers_images(tspec),
        _selector_string(spec.get("selector")),
    ]


def _controllerrevision_row(obj: Obj, now: datetime) -> list[Any]:
    ref = next(
        (
            r
            for r in (obj.get("metadata") or {}).get("ownerReferences") or []
            if r.get("controller")
        ),
        None,
    )
    group = (ref or {}).get("apiVersion", "").partition("/")[0]
    controller = f"{ref['kind'].lower()}.{group}/{ref['name']}" if ref else NONE
    return [_name(obj), controller, obj.get("revision", 0), _age(obj, now)]


def _replicaset_row(obj: Obj, now: datetime) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    tspec = (spec.get("template") or {}).get("spec") or {}
    return [
        _name(obj),
        spec.get("replicas", 0),
        status.get("replicas", 0),
        status.get("readyReplicas", 0),
        _age(obj, now),
        *_containers_images(tspec),
        _selector_string(spec.get("selector")),
    ]


def pod_status_reason(pod: Obj) -> tuple[str, int, int, datetime | None]:
    """(STATUS, ready containers, restarts, last restart) exactly as kubectl's printPod computes."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    reason = status.get("reason") or status.get("phase") or ""
    ready = restarts = 0
    last_restart: datetime | None = None
    initializing = False
    init_specs = spec.get("initContainers") or []
    for i, cs in enumerate(status.get("initContainerStatuses") or []):
        restarts += cs.get("restartCount", 0)
        state = cs.get("state") or {}
        term, waiting = state.get("terminated"), state.get("waiting")
        if term is not None and term.get("exitCode", 0) == 0:
            continue
        initializing = True
        if term is not None:
            if term.get("reason"):
                reason = "Init:" + term["reason"]
            elif term.get("signal"):
                reason = f"Init:Signal:{term['signal']}"
            else:
                reason = f"Init:ExitCode:{term.get('exitCode', 0)}"
        elif waiting and waiting.get("reason") and waiting["reason"] != "PodInitializing":
            reason = "Init:" + waiting["reason"]
        else:
            reason = f"Init:{i}/{len(init_specs)}"
        break
    initialized = any(
        c.get("type") == "Initialized" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    if not initializing or initialized:
        restarts = 0
        has_running = False
        for cs in reversed(status.get("containerStatuses") or []):
            restarts += cs.get("restartCount", 0)
            last_term = (cs.get("lastState") or {}).get("terminated")
            if last_term is not None:
                finished = parse_time(last_term.get("finishedAt"))
                if finished is not None and (last_restart is None or finished > last_restart):
                    last_restart = finished
            state = cs.get("state") or {}
            waiting, term = state.get("waiting"), state.get("terminated")
            if waiting and waiting.get("reason"):
                reason = waiting["reason"]
            elif term is not None and term.get("reason"):
                reason = term["reason"]
            elif term is not None:
                reason = (
                    f"Signal:{term['signal']}"
                    if term.get("signal")
                    else f"ExitCode:{term.get('exitCode', 0)}"
                )
            elif cs.get("ready") and state.get("running") is not None:
                has_running = True
                ready += 1
        if reason == "Completed" and has_running:
            pod_ready = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or []
            )
            reason = "Running" if pod_ready else "NotReady"
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        if status.get("reason") == "NodeLost":
            reason = "Unknown"
        elif status.get("phase") not in ("Succeeded", "Failed"):
            reason = "Terminating"
    return reason, ready, restarts, last_restart


def _pod_row(obj: Obj, now: datetime) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    reason, ready, restarts, last_restart = pod_status_reason(obj)
    restarts_cell = str(restarts)
    if restarts and last_restart is not None:
        restarts_cell = f"{restarts} ({human_duration((now - last_restart).total_seconds())} ago)"
    gates = spec.get("readinessGates") or []
    if gates:
        true_types = {
            c.get("type") for c in status.get("conditions") or [] if c.get("status") == "True"
        }
        gates_cell = f"{sum(1 for g in gates if g.get('conditionType') in true_types)}/{len(gates)}"
    else:
        gates_cell = NONE
    return [
        _name(obj),
        f"{ready}/{len(spec.get('containers') or [])}",
        reason,
        restarts_cell,
        _age(obj, now),
        status.get("podIP") or NONE,
        spec.get("nodeName") or NONE,
        status.get("nominatedNodeName") or NONE,
        gates_cell,
    ]


def _event_row(obj: Obj, now: datetime) -> list[Any]:
    involved = obj.get("involvedObject") or {}
    first = obj.get("firstTimestamp") or obj.get("eventTime")
    last = obj.get("lastTimestamp") or obj.get("eventTime") or first
    count = obj.get("count") or 1
    series = obj.get("series")
    if series:
        last_seen = since(series.get("lastObservedTime"), now)
        count = series.get("count", count)
    elif count > 1:
        last_seen = f"{since(last, now)} (x{count} over {since(first, now)})"
    else:
        last_seen = since(last, now)
    source = obj.get("source") or {}
    source_cell = obj.get("reportingComponent") or source.get("component") or ""
    if source.get("host"):
        source_cell = f"{source_cell}, {source['host']}"
    return [
        last_seen,
        obj.get("type", ""),
        obj.get("reason", ""),
        f"{(involved.get('kind') or '').lower()}/{involved.get('name', '')}",
        obj.get("message", ""),
        involved.get("fieldPath", ""),
        source_cell,
        since(first, now),
        count,
        _name(obj),
    ]


def _configmap_row(obj: Obj, now: datetime) -> list[Any]:
    return [
        _name(obj),
        len(obj.get("data") or {}) + len(obj.get("binaryData") or {}),
        _age(obj, now),
    ]


def _secret_row(obj: Obj, now: datetime) -> list[Any]:
    return [_name(obj), obj.get("type", ""), len(obj.get("data") or {}), _age(obj, now)]


def _service_row(obj: Obj, now: datetime) -> list[Any]:
    spec = obj.get("spec") or {}
    ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    external = ",".join(i.get("ip") or i.get("hostname", "") for i in ingress)
    external = external or ",".join(spec.get("externalIPs") or [])
    if not external:
        external = {"LoadBalancer": "<pending>", "ExternalName": spec.get("externalName", "")}.get(
            spec.get("type", ""), NONE
        )
    ports = []
    for p in spec.get("ports") or []:
        text = f"{p.get('port')}/{p.get('protocol', 'TCP')}"
        if p.get("nodePort"):
            text = f"{p['port']}:{p['nodePort']}/{p.get('protocol', 'TCP')}"
        ports.append(text)
    selector = spec.get("selector") or {}
    return [
        _name(obj),
        spec.get("type", ""),
        spec.get("clusterIP") or NONE,
        external,
        ",".join(ports) or NONE,
        _age(obj, now),
        ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or NONE,
    ]


def _node_row(obj: Obj, now: datetime) -> list[Any]:
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    state = (
        "Unknown" if ready is None else ("Ready" if ready.get("status") == "True" else "NotReady")
    )
    if (obj.get("spec") or {}).get("unschedulable"):
        state += ",SchedulingDisabled"
    prefix = "node-role.kubernetes.io/"
    roles = sorted(k[len(prefix) :] for k in meta.get("labels") or {} if k.startswith(prefix))
    info = status.get("nodeInfo") or {}
    addresses = {a.get("type"): a.get("address") for a in status.get("addresses") or []}
    return [
        _name(obj),
        state,
        ",".join(roles) or NONE,
        _age(obj, now),
        info.get("kubeletVersion", ""),
        addresses.get("InternalIP") or NONE,
        addresses.get("ExternalIP") or NONE,
        info.get("osImage", ""),
        info.get("kernelVersion", ""),
        info.get("containerRuntimeVersion", ""),
    ]


def _namespace_row(obj: Obj, now: datetime) -> list[Any]:
    return [_name(obj), (obj.get("status") or {}).get("phase", ""), _age(obj, now)]


def _serviceaccount_row(obj: Obj, now: datetime) -> list[Any]:
    return [_name(obj), len(obj.get("secrets") or []), _age(obj, now)]


def _hpa_targets(spec: dict, status: dict) -> str:
    """kubectl's TARGETS: `cpu: 42%/60%` per Resource metric, `<unknown>` before a reading."""
    current = {
        (m.get("resource") or {}).get("name"): (m.get("resource") or {}).get("current") or {}
        for m in status.get("currentMetrics") or []
        if m.get("type") == "Resource"
    }
    out = []
    for metric in spec.get("metrics") or []:
        resource = metric.get("resource") or {}
        target = resource.get("target") or {}
        if metric.get("type") != "Resource" or "averageUtilization" not in target:
            out.append("<unknown>")
            continue
        now = current.get(resource.get("name"), {}).get("averageUtilization")
        shown = "<unknown>" if now is None else f"{now}%"
        out.append(f"{resource.get('name')}: {shown}/{target['averageUtilization']}%")
    return ", ".join(out) or "<none>"


def _hpa_row(obj: Obj, now: datetime) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    ref = spec.get("scaleTargetRef") or {}
    return [
        _name(obj),
        f"{ref.get('kind', '')}/{ref.get('name', '')}",
        _hpa_targets(spec, status),
        spec.get("minReplicas", "<unset>"),
        spec.get("maxReplicas", 0),
        status.get("currentReplicas", 0),
        _age(obj, now),
    ]


_ACCESS_MODES = {
    "ReadWriteOnce": "RWO",
    "ReadOnlyMany": "ROX",
    "ReadWriteMany": "RWX",
    "ReadWriteOncePod": "RWOP",
}
UNSET = "<unset>"


def _access_modes(modes: list[str] | None) -> str:
    return ",".join(_ACCESS_MODES.get(m, m) for m in modes or [])


def _claim_row(obj: Obj, now: datetime) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    phase = status.get("phase", "")
    if obj["metadata"].get("deletionTimestamp"):
        phase = "Terminating"
    return [
        _name(obj),
        phase,
        spec.get("volumeName", ""),
        (status.get("capacity") or {}).get("storage", ""),
        _access_modes(status.get("accessModes")),
        spec.get("storageClassName", ""),
        spec.get("volumeAttributesClassName") or UNSET,
        _age(obj, now),
        spec.get("volumeMode", ""),
    ]


def _volume_row(obj: Obj, now: datetime) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    ref = spec.get("claimRef") or {}
    claim = f"{ref.get('namespace')}/{ref.get('name')}" if ref.get("name") else ""
    return [
        _name(obj),
        (spec.get("capacity") or {}).get("storage", ""),
        _access_modes(spec.get("accessModes")),
        spec.get("persistentVolumeReclaimPolicy", ""),
        status.get("phase", ""),
        claim,
        spec.get("storageClassName", ""),
        spec.get("volumeAttributesClassName") or UNSET,
        status.get("reason", ""),
        _age(obj, now),
        spec.get("volumeMode", ""),
    ]


def _storage_class_row(obj: Obj, now: datetime) -> list[Any]:
    name = _name(obj)
    annotations = obj["metadata"].get("annotations") or {}
    if annotations.get("storageclass.kubernetes.io/is-default-class") == "true":
        name += " (default)"
    return [
        name,
        obj.get("provisioner", ""),
        obj.get("reclaimPolicy", "Delete"),
        obj.get("volumeBindingMode", "Immediate"),
        bool(obj.get("allowVolumeExpansion", False)),
        _age(obj, now),
    ]


def _listed(items: list[str], limit: int = 3) -> str:
    if len(items) > limit:
        return ",".join(items[:limit]) + f" + {len(items) - limit} more..."
    return ",".join(items)


def _endpoint_slice_row(obj: Obj, now: datetime) -> list[Any]:
    ports = [str(p.get("port")) for p in obj.get("ports") or [] if p.get("port") is not None]
    addresses = [a for e in obj.get("endpoints") or [] for a in e.get("addresses") or []]
    return [
        _name(obj),
        obj.get("addressType", ""),
        _listed(ports) or UNSET,
        _listed(addresses) or UNSET,
        _age(obj, now),
    ]


def _endpoints_row(obj: Obj, now: datetime) -> list[Any]:
    out = []
    for subset in obj.get("subsets") or []:
        for address in subset.get("addresses") or []:
            for port in subset.get("ports") or [{}]:
                out.append(f"{address.get('ip')}:{port.get('port')}" if port else address.get("ip"))
    return [_name(obj), _listed(out) or NONE, _age(obj, now)]


def _cols(
    *names: str, wide: tuple[str, ...] = (), types: dict[str, str] | None = None
) -> tuple[Column, ...]:
    types = types or {}
    out = [
        NAME if n == "Name" else AGE if n == "Age" else Column(n, types.get(n, "string"))
        for n in names
    ]
    out += [Column(n, types.get(n, "string"), priority=1) for n in wide]
    return tuple(out)


_INT = "integer"
_PRINTERS: dict[str, tuple[tuple[Column, ...], Callable[[Obj, datetime], list[Any]]]] = {
    "Deployment": (
        _cols(
            "Name",
            "Ready",
            "Up-to-date",
            "Available",
            "Age",
            wide=("Containers", "Images", "Selector"),
            types={"Up-to-date": _INT, "Available": _INT},
        ),
        _deployment_row,
    ),
    "ReplicaSet": (
        _cols(
            "Name",
            "Desired",
            "Current",
            "Ready",
            "Age",
            wide=("Containers", "Images", "Selector"),
            types={"Desired": _INT, "Current": _INT, "Ready": _INT},
        ),
        _replicaset_row,
    ),
    "StatefulSet": (
        _cols("Name", "Ready", "Age", wide=("Containers", "Images")),
        _statefulset_row,
    ),
    "DaemonSet": (
        _cols(
            "Name",
            "Desired",
            "Current",
            "Ready",
            "Up-to-date",
            "Available",
            "Node Selector",
            "Age",
            wide=("Containers", "Images", "Selector"),
            types={k: _INT for k in ("Desired", "Current", "Ready", "Up-to-date", "Available")},
        ),
        _daemonset_row,
    ),
    "ControllerRevision": (
        _cols("Name", "Controller", "Revision", "Age", types={"Revision": _INT}),
        _controllerrevision_row,
    ),
    "Pod": (
        _cols(
            "Name",
            "Ready",
            "Status",
            "Restarts",
            "Age",
            wide=("IP", "Node", "Nominated Node", "Readiness Gates"),
        ),
        _pod_row,
    ),
    "Event": (
        _cols(
            "Last Seen",
            "Type",
            "Reason",
            "Object",
            "Message",
            wide=("Subobject", "Source", "First Seen", "Count", "Name"),
            types={"Count": _INT},
        ),
        _event_row,
    ),
    "ConfigMap": (_cols("Name", "Data", "Age", types={"Data": _INT}), _configmap_row),
    "Secret": (_cols("Name", "Type", "Data", "Age", types={"Data": _INT}), _secret_row),
    "Service": (
        _cols("Name", "Type", "Cluster-IP", "External-IP", "Port(s)", "Age", wide=("Selector",)),
        _service_row,
    ),
    "Node": (
        _cols(
            "Name",
            "Status",
            "Roles",
            "Age",
            "Version",
            wide=("Internal-IP", "External-IP", "OS-Image", "Kernel-Version", "Container-Runtime"),
        ),
        _node_row,
    ),
    "Namespace": (_cols("Name", "Status", "Age"), _namespace_row),
    "PersistentVolumeClaim": (
        _cols(
            "Name",
            "Status",
            "Volume",
            "Capacity",
            "Access Modes",
            "StorageClass",
            "VolumeAttributesClass",
            "Age",
            wide=("VolumeMode",),
        ),
        _claim_row,
    ),
    "PersistentVolume": (
        _cols(
            "Name",
            "Capacity",
            "Access Modes",
            "Reclaim Policy",
            "Status",
            "Claim",
            "StorageClass",
            "VolumeAttributesClass",
            "Reason",
            "Age",
            wide=("VolumeMode",),
        ),
        _volume_row,
    ),
    "StorageClass": (
        _cols(
            "Name",
            "Provisioner",
            "ReclaimPolicy",
            "VolumeBindingMode",
            "AllowVolumeExpansion",
            "Age",
            types={"AllowVolumeExpansion": "boolean"},
        ),
        _storage_class_row,
    ),
    "EndpointSlice": (
        _cols("Name", "AddressType", "Ports", "Endpoints", "Age"),
        _endpoint_slice_row,
    ),
    "Endpoints": (_cols("Name", "Endpoints", "Age"), _endpoints_row),
    "ServiceAccount": (
        _cols("Name", "Secrets", "Age", types={"Secrets": _INT}),
        _serviceaccount_row,
    ),
    "HorizontalPodAutoscaler": (
        _cols(
            "Name",
            "Reference",
            "Targets",
            "MinPods",
            "MaxPods",
            "Replicas",
            "Age",
            types={"MaxPods": _INT, "Replicas": _INT},
        ),  # fmt: skip
        _hpa_row,
    ),
}
