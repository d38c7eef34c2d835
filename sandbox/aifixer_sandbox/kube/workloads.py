"""The StatefulSet and DaemonSet controllers of kube-controller-manager, in-process.

Like the Deployment controller beside them (controllers.py), they follow the real
ones (pkg/controller/statefulset, pkg/controller/daemon) decision by decision, because
`kubectl rollout status|history` and the product read only what they write:

- both keep their history as ControllerRevisions (pkg/controller/history): one per
  pod template the workload ran, named `<workload>-<hash>`, holding the template as
  a strategic merge patch (`{"spec": {"template": {..., "$patch": "replace"}}}`) and
  a revision number; going back to an earlier template reuses its revision object
  with the next number, and at most revisionHistoryLimit unused ones are kept;
- a StatefulSet names its pods `<set>-<ordinal>`, labels each with the name of the
  revision it runs (`controller-revision-hash`), and with the default OrderedReady
  policy creates them one at a time in ordinal order, each only once the previous one
  is Running and Ready. A RollingUpdate replaces pods from the highest ordinal down to
  `partition`, one at a time, waiting for each to be healthy again; OnDelete replaces
  a pod only when someone deletes it. status.currentRevision moves to updateRevision
  only once every pod runs it and is ready. As on a real cluster, a rollout to a
  broken template stalls at the broken pod, and reverting the template does not
  replace that pod (OrderedReady waits for it to become ready first): it has to be
  deleted (the documented "forced rollback");
- a DaemonSet runs one pod on every node its pod would be allowed on (nodeSelector,
  required node affinity, taints against its tolerations plus the ones the controller
  adds), pinned with a `metadata.name` node affinity and placed by the scheduler. A
  RollingUpdate replaces old pods that are not available at once and available ones
  while fewer than maxUnavailable pods are unavailable (maxSurge 0, the default).

Not simulated: volumeClaimTemplates (no PersistentVolumeClaims are created),
StatefulSet maxUnavailable (an alpha feature) and DaemonSet maxSurge above 0.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from . import defaults
from .controllers import (
    PODS,
    _Controller,
    _controller_ref,
    _key,
    _labels,
    _new_controller_ref,
    _omit_empty,
    _owned_by,
    _pod_active,
    _ready_time_key,
    _replicas,
    _semantic,
    _split,
    pod_ready,
    pod_template_hash,
    scaled_value,
)
from .errors import ApiError
from .resources import Resource, core
from .scheduler import matches_node_affinity, tolerates
from .selectors import match_label_selector
from .store import Store

log = logging.getLogger(__name__)

Obj = dict[str, Any]

STATEFULSETS = core("statefulsets")
DAEMONSETS = core("daemonsets")
REVISIONS = core("controllerrevisions")
NODES = core("nodes")

REVISION_LABEL = "controller-revision-hash"  # on pods: which revision they run
HISTORY_HASH_LABEL = "controller.kubernetes.io/hash"  # on a StatefulSet's revisions
POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
TEMPLATE_GENERATION_LABEL = "pod-template-generation"

STATEFULSET_COMPONENT = "statefulset-controller"
DAEMONSET_COMPONENT = "daemonset-controller"

# The tolerations the DaemonSet controller adds to every pod it makes (util.AddOrUpdate
# DaemonPodTolerations), so a node that is not ready or under pressure keeps its pod.
_DAEMON_TOLERATIONS = (
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
)


# -- ControllerRevisions (pkg/controller/history) ------------------------------------


def revision_data(template: Obj) -> Obj:
    """The patch a revision stores: the whole pod template, replacing the live one."""
    return {"spec": {"template": {**Store.copy(template or {}), "$patch": "replace"}}}


def revision_template(revision: Obj) -> Obj:
    """The pod template a ControllerRevision holds."""
    template = Store.copy(((revision.get("data") or {}).get("spec") or {}).get("template") or {})
    template.pop("$patch", None)
    return template


def _revision_number(revision: Obj) -> int:
    return int(revision.get("revision") or 0)


def _equal_data(a: Obj, b: Obj) -> bool:
    return _semantic(a.get("data")) == _semantic(b.get("data"))


def _pod_revision(pod: Obj) -> str:
    return _labels(pod).get(REVISION_LABEL, "")


class _History(_Controller):
    """Revision bookkeeping both workload controllers share."""

    primary: Resource
    kind = ""

    def _revisions(self, owner: Obj) -> list[Obj]:
        """The owner's ControllerRevisions, oldest revision first."""
        selector = owner.get("spec", {}).get("selector")
        found = [
            r
            for r in self.store.list(REVISIONS, owner["metadata"].get("namespace"))
            if _owned_by(r, owner) and match_label_selector(selector, _labels(r))
        ]
        return sorted(found, key=lambda r: (_revision_number(r), r["metadata"]["name"]))

    def _new_revision(self, owner: Obj, number: int) -> tuple[Obj, str]:
        template = owner["spec"].get("template") or {}
        collisions = (owner.get("status") or {}).get("collisionCount")
        hash_ = pod_template_hash(template, collisions)
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        labels[self._revision_hash_label()] = hash_
        meta: Obj = {
            "name": f"{owner['metadata']['name'][:223]}-{hash_}",
            "namespace": owner["metadata"].get("namespace"),
            "labels": labels,
            "ownerReferences": [_new_controller_ref(owner)],
        }
        if owner["metadata"].get("annotations"):
            meta["annotations"] = dict(owner["metadata"]["annotations"])
        revision = {
            "apiVersion": "apps/v1",
            "kind": "ControllerRevision",
            "metadata": meta,
            "data": revision_data(template),
            "revision": number,
        }
        return revision, hash_

    def _revision_hash_label(self) -> str:
        raise NotImplementedError

    def _update_revision(self, owner: Obj, revisions: list[Obj]) -> Obj:
        """The revision for the owner's current template: found again, or created.

        An equal revision that is not the newest (a rollback) gets the next number,
        as history.UpdateControllerRevision does.
        """
        number = max((_revision_number(r) for r in revisions), default=0) + 1
        wanted, _ = self._new_revision(owner, number)
        equal = [r for r in revisions if _equal_data(r, wanted)]
        if equal:
            found = equal[-1]
            if revisions and found["metadata"]["uid"] == revisions[-1]["metadata"]["uid"]:
                return found
            bumped = Store.copy(found)
            bumped["revision"] = number
            return self.store.update(REVISIONS, bumped)
        try:
            return self.store.create(REVISIONS, wanted)
        except ApiError as exc:
            if exc.code != 409:
                raise
        # The name is taken: ours (the same data) or a hash collision.
        existing = self.store.get(
            REVISIONS, wanted["metadata"]["namespace"], wanted["metadata"]["name"]
        )
        if _owned_by(existing, owner) and _equal_data(existing, wanted):
            return existing
        status = Store.copy(owner.get("status") or {})
        status["collisionCount"] = int(status.get("collisionCount") or 0) + 1
        current = Store.copy(self.store.get(self.primary, owner["metadata"].get("namespace"),
                                            owner["metadata"]["name"]))  # fmt: skip
        current["status"] = status
        self.store.update(self.primary, current, subresource="status")
        raise ApiError(409, "AlreadyExists", "controllerrevision name collision; retried")

    def _truncate_history(self, owner: Obj, revisions: list[Obj], live_names: set[str]) -> None:
        """Delete the oldest revisions no pod runs beyond revisionHistoryLimit."""
        limit = int(owner["spec"].get("revisionHistoryLimit", 10) or 0)
        idle = [r for r in revisions if r["metadata"]["name"] not in live_names]
        for r in idle[: max(0, len(idle) - limit)]:
            try:
                self.store.delete(REVISIONS, r["metadata"].get("namespace"), r["metadata"]["name"])
            except ApiError as exc:
                if exc.code != 404:
                    raise

    def _owned_pods(self, owner: Obj) -> list[Obj]:
        selector = owner.get("spec", {}).get("selector")
        return [
            p
            for p in self.store.list(PODS, owner["metadata"].get("namespace"))
            if _owned_by(p, owner) and match_label_selector(selector, _labels(p))
        ]

    def _on_change(self, ev_type: str, res: Resource, new: Obj, old: Obj | None) -> None:
        if res.key == self.primary.key:
            if ev_type == "DELETED":
                self.stamps.forget(new["metadata"]["uid"])
            self.queue.add(_key(new))
        elif res.key == PODS.key:
            if ev_type == "DELETED":
                self.stamps.forget(new["metadata"]["uid"])
            elif pod_ready(new) and (
                old is None or not pod_ready(old) or _ready_time_key(old) != _ready_time_key(new)
            ):
                self.stamps.mark(new["metadata"]["uid"], "ready", _ready_time_key(new))
            for pod in (new, old):
                ref = _controller_ref(pod) if pod is not None else None
                if ref is not None and ref.get("kind") == self.kind:
                    self.queue.add(f"{pod['metadata'].get('namespace', '')}/{ref['name']}")
        elif res.key == NODES.key and self.kind == "DaemonSet":
            for ds in self.store.list(self.primary):
                self.queue.add(_key(ds))

    def _write_status(self, owner: Obj, status: Obj) -> None:
        status = _omit_empty(status, keep=self._kept_zero_fields())
        if status == _omit_empty(owner.get("status") or {}, keep=self._kept_zero_fields()):
            return
        current = Store.copy(
            self.store.get(
                self.primary, owner["metadata"].get("namespace"), owner["metadata"]["name"]
            )
        )
        current["status"] = status
        self.store.update(self.primary, current, subresource="status")

    def _kept_zero_fields(self) -> tuple[str, ...]:
        return ()

    def _delete_pod(self, owner: Obj, pod: Obj, message: str) -> bool:
        try:
            self.store.delete(PODS, pod["metadata"].get("namespace"), pod["metadata"]["name"])
        except ApiError as exc:
            if exc.code == 404:
                return False
            self._event(owner, "FailedDelete", message.format(pod=pod["metadata"]["name"],
                                                              outcome=f"failed error: {exc.message}"),
                        "Warning")  # fmt: skip
            raise
        self._event(owner, "SuccessfulDelete",
                    message.format(pod=pod["metadata"]["name"], outcome="successful"))  # fmt: skip
        return True


def _pod_from_template(owner: Obj, template: Obj) -> Obj:
    """controller.GetPodFromTemplate: the template's labels, annotations and spec."""
    tmeta = template.get("metadata") or {}
    meta: Obj = {
        "namespace": owner["metadata"].get("namespace"),
        "labels": dict(tmeta.get("labels") or {}),
        "ownerReferences": [_new_controller_ref(owner)],
    }
    for field in ("annotations", "finalizers"):
        if tmeta.get(field):
            meta[field] = Store.copy(tmeta[field])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": Store.copy(template.get("spec") or {}),
    }


# -- StatefulSet controller ------------------------------------------------------------


def _ordinal(set_name: str, pod: Obj) -> int | None:
    """The ordinal in `<set>-<ordinal>`; None for a pod not named so."""
    match = re.fullmatch(re.escape(set_name) + r"-(0|[1-9][0-9]*)", pod["metadata"]["name"])
    return int(match.group(1)) if match else None


def _running_and_ready(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running" and pod_ready(pod)


def _failed(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Failed", "Succeeded")


def _partition(sts: Obj) -> int:
    strategy = sts["spec"].get("updateStrategy") or {}
    if strategy.get("type", "RollingUpdate") != "RollingUpdate":
        return 0
    return int((strategy.get("rollingUpdate") or {}).get("partition") or 0)


class StatefulSetController(_History):
    """Stable, ordered pods and partitioned rolling updates (updateStatefulSet)."""

    component = STATEFULSET_COMPONENT
    primary = STATEFULSETS
    kind = "StatefulSet"

    def _revision_hash_label(self) -> str:
        return HISTORY_HASH_LABEL

    def _kept_zero_fields(self) -> tuple[str, ...]:
        return ("replicas", "collisionCount", "observedGeneration")

    def sync(self, key: str) -> None:
        namespace, name = _split(key)
        stored = self.store.try_get(STATEFULSETS, namespace, name)
        if stored is None or stored["metadata"].get("deletionTimestamp"):
            return
        sts = Store.copy(stored)
        sts.setdefault("status", {})
        revisions = self._revisions(sts)
        update = self._update_revision(sts, revisions)
        revisions = self._revisions(sts)
        current = next(
            (r for r in revisions if r["metadata"]["name"] == sts["status"].get("currentRevision")),
            update,
        )
        pods = self._owned_pods(sts)
        try:
            self._reconcile(sts, pods, current, update)
        finally:
            pods = self._owned_pods(sts)
            self._sync_status(sts, pods, current, update)
            live = {current["metadata"]["name"], update["metadata"]["name"]}
            live |= {_pod_revision(p) for p in pods}
            self._truncate_history(sts, self._revisions(sts), live)
            self._requeue_for_availability(sts, pods)

    def _reconcile(self, sts: Obj, pods: list[Obj], current: Obj, update: Obj) -> None:
        name = sts["metadata"]["name"]
        replicas = _replicas(sts)
        monotonic = sts["spec"].get("podManagementPolicy", "OrderedReady") != "Parallel"
        min_ready = int(sts["spec"].get("minReadySeconds") or 0)
        slots: dict[int, Obj] = {}
        condemned: list[tuple[int, Obj]] = []
        for pod in pods:
            ordinal = _ordinal(name, pod)
            if ordinal is None:
                continue
            if ordinal < replicas:
                slots[ordinal] = pod
            else:
                condemned.append((ordinal, pod))
        message = "delete Pod {pod} in StatefulSet " + name + " {outcome}"
        for ordinal in range(replicas):
            pod = slots.get(ordinal)
            if pod is not None and _failed(pod):
                # A failed pod is deleted and made again under the same name.
                self._delete_pod(sts, pod, message)
                pod = None
            if pod is None:
                slots[ordinal] = self._create(sts, ordinal, current, update)
                if monotonic:
                    return
                continue
            if monotonic and (
                pod["metadata"].get("deletionTimestamp")
                or not _running_and_ready(pod)
                or not self._available(pod, min_ready)
            ):
                return  # "StatefulSet is waiting for Pod to be Running and Ready"
        for ordinal, pod in sorted(condemned, key=lambda c: -c[0]):
            if (
                monotonic
                and not _running_and_ready(pod)
                and ordinal != max(c[0] for c in condemned)
            ):
                return
            self._delete_pod(sts, pod, message)
            if monotonic:
                return
        strategy = (sts["spec"].get("updateStrategy") or {}).get("type", "RollingUpdate")
        if strategy == "OnDelete":
            return
        update_name = update["metadata"]["name"]
        for ordinal in range(replicas - 1, _partition(sts) - 1, -1):
            pod = slots[ordinal]
            if _pod_revision(pod) != update_name and not pod["metadata"].get("deletionTimestamp"):
                self._delete_pod(sts, pod, message)
                return
            if not _running_and_ready(pod) or not self._available(pod, min_ready):
                return  # wait for the updated pod to be healthy before the next one

    def _create(self, sts: Obj, ordinal: int, current: Obj, update: Obj) -> Obj:
        """newVersionedStatefulSetPod: below the partition, the current revision."""
        strategy = sts["spec"].get("updateStrategy") or {}
        rolling = strategy.get("type", "RollingUpdate") == "RollingUpdate"
        use_current = rolling and (
            ordinal < _partition(sts)
            if strategy.get("rollingUpdate") is not None
            else ordinal < int(sts["status"].get("currentReplicas") or 0)
        )
        revision = current if use_current else update
        name = f"{sts['metadata']['name']}-{ordinal}"
        pod = _pod_from_template(sts, revision_template(revision))
        pod["metadata"]["name"] = name
        pod["metadata"]["labels"].update(
            {
                REVISION_LABEL: revision["metadata"]["name"],
                POD_NAME_LABEL: name,
                POD_INDEX_LABEL: str(ordinal),
            }
        )
        pod["spec"]["hostname"] = name
        if sts["spec"].get("serviceName"):
            pod["spec"]["subdomain"] = sts["spec"]["serviceName"]
        try:
            created = self.store.create(PODS, defaults.apply_defaults(pod))
        except ApiError as exc:
            self._event(sts, "FailedCreate",
                        f"create Pod {name} in StatefulSet {sts['metadata']['name']} failed "
                        f"error: {exc.message}", "Warning")  # fmt: skip
            raise
        self._event(
            sts, "SuccessfulCreate",
            f"create Pod {name} in StatefulSet {sts['metadata']['name']} successful",
        )  # fmt: skip
        return created

    def _sync_status(self, sts: Obj, pods: list[Obj], current: Obj, update: Obj) -> None:
        min_ready = int(sts["spec"].get("minReadySeconds") or 0)
        counted = [p for p in pods if _ordinal(sts["metadata"]["name"], p) is not None]
        current_name, update_name = current["metadata"]["name"], update["metadata"]["name"]
        status: Obj = {
            "observedGeneration": sts["metadata"].get("generation", 0),
            "replicas": len(counted),
            "readyReplicas": sum(1 for p in counted if _running_and_ready(p)),
            "availableReplicas": sum(
                1 for p in counted if _running_and_ready(p) and self._available(p, min_ready)
            ),
            "currentReplicas": sum(1 for p in counted if _pod_revision(p) == current_name),
            "updatedReplicas": sum(1 for p in counted if _pod_revision(p) == update_name),
            "currentRevision": current_name,
            "updateRevision": update_name,
            "collisionCount": int(sts["status"].get("collisionCount") or 0),
        }
        rolling = (sts["spec"].get("updateStrategy") or {}).get("type", "RollingUpdate")
        if (
            rolling == "RollingUpdate"
            and status["updatedReplicas"] == status["replicas"]
            and status["readyReplicas"] == status["replicas"]
        ):
            # completeRollingUpdate: every pod runs the update revision and is ready.
            status["currentReplicas"] = status["updatedReplicas"]
            status["currentRevision"] = update_name
        if sts["status"].get("conditions"):
            status["conditions"] = sts["status"]["conditions"]
        self._write_status(sts, status)


# -- DaemonSet controller --------------------------------------------------------------


def _daemon_pod_spec(template: Obj, node_name: str) -> Obj:
    """The pod spec pinned to one node (ReplaceDaemonSetPodNodeNameNodeAffinity), with
    the controller's default tolerations added."""
    spec = Store.copy(template.get("spec") or {})
    affinity = spec.setdefault("affinity", {})
    node_affinity = affinity.setdefault("nodeAffinity", {})
    required = node_affinity.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    field_term = {"key": "metadata.name", "operator": "In", "values": [node_name]}
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        terms = [{"matchFields": [field_term]}]
    else:
        for term in terms:
            term["matchFields"] = [
                f for f in term.get("matchFields") or [] if f.get("key") != "metadata.name"
            ] + [field_term]
    required["nodeSelectorTerms"] = terms
    tolerations = list(spec.get("tolerations") or [])
    for toleration in _DAEMON_TOLERATIONS:
        if not any(
            t.get("key") == toleration["key"] and t.get("effect") == toleration["effect"]
            for t in tolerations
        ):
            tolerations.append(dict(toleration))
    spec["tolerations"] = tolerations
    return spec


def should_run_on(template: Obj, node: Obj) -> bool:
    """nodeShouldRunDaemonPod: the node's labels, required affinity and taints allow it."""
    spec = template.get("spec") or {}
    labels = node["metadata"].get("labels") or {}
    if spec.get("nodeName") and spec["nodeName"] != node["metadata"]["name"]:
        return False
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    probe = {"metadata": {}, "spec": {"affinity": spec.get("affinity") or {}}}
    if not matches_node_affinity(probe, node):
        return False
    tolerations = [*(spec.get("tolerations") or []), *_DAEMON_TOLERATIONS]
    return all(
        tolerates(tolerations, taint)
        for taint in (node.get("spec") or {}).get("taints") or []
        if taint.get("effect") in ("NoSchedule", "NoExecute")
    )


def _node_of(pod: Obj) -> str:
    """The node a daemon pod is for: where it runs, else the node its affinity names."""
    if pod.get("spec", {}).get("nodeName"):
        return pod["spec"]["nodeName"]
    required = (((pod.get("spec") or {}).get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    for term in required.get("nodeSelectorTerms") or []:
        for field in term.get("matchFields") or []:
            if field.get("key") == "metadata.name" and field.get("values"):
                return field["values"][0]
    return ""


class DaemonSetController(_History):
    """One pod per eligible node, rolled by maxUnavailable (syncDaemonSet)."""

    component = DAEMONSET_COMPONENT
    primary = DAEMONSETS
    kind = "DaemonSet"

    def _revision_hash_label(self) -> str:
        return REVISION_LABEL

    def _kept_zero_fields(self) -> tuple[str, ...]:
        return ("currentNumberScheduled", "desiredNumberScheduled", "numberMisscheduled",
                "numberReady", "observedGeneration")  # fmt: skip

    def sync(self, key: str) -> None:
        namespace, name = _split(key)
        stored = self.store.try_get(DAEMONSETS, namespace, name)
        if stored is None or stored["metadata"].get("deletionTimestamp"):
            return
        ds = Store.copy(stored)
        ds.setdefault("status", {})
        update = self._update_revision(ds, self._revisions(ds))
        hash_ = _labels(update).get(REVISION_LABEL, "")
        nodes = self.store.list(NODES)
        template = ds["spec"].get("template") or {}
        eligible = {n["metadata"]["name"] for n in nodes if should_run_on(template, n)}
        try:
            self._manage(ds, self._by_node(ds), eligible, hash_)
            strategy = (ds["spec"].get("updateStrategy") or {}).get("type", "RollingUpdate")
            if strategy == "RollingUpdate":
                self._rolling_update(ds, self._by_node(ds), eligible, hash_)
        finally:
            by_node = self._by_node(ds)
            self._sync_status(ds, by_node, eligible, hash_)
            live = {hash_} | {_pod_revision(p) for pods in by_node.values() for p in pods}
            revisions = self._revisions(ds)
            self._truncate_history(
                ds, revisions, {r["metadata"]["name"] for r in revisions
                                if _labels(r).get(REVISION_LABEL) in live},
            )  # fmt: skip
            self._requeue_for_availability(ds, [p for ps in by_node.values() for p in ps])

    def _by_node(self, ds: Obj) -> dict[str, list[Obj]]:
        out: dict[str, list[Obj]] = {}
        for pod in self._owned_pods(ds):
            out.setdefault(_node_of(pod), []).append(pod)
        return out

    def _manage(self, ds: Obj, by_node: dict[str, list[Obj]], eligible: set[str], hash_: str):
        message = "Deleted pod: {pod}"
        for node in sorted(eligible):
            pods = [p for p in by_node.get(node, []) if not p["metadata"].get("deletionTimestamp")]
            for pod in [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]:
                self._delete_pod(ds, pod, message)
                pods.remove(pod)
            if not pods:
                self._create(ds, node, hash_)
            elif len(pods) > 1:
                # Keep the oldest pod, as podsShouldBeOnNode does.
                keep = min(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""))
                for pod in pods:
                    if pod is not keep:
                        self._delete_pod(ds, pod, message)
        for node, pods in by_node.items():
            if node not in eligible:
                for pod in pods:
                    self._delete_pod(ds, pod, message)

    def _create(self, ds: Obj, node: str, hash_: str) -> None:
        template = ds["spec"].get("template") or {}
        pod = _pod_from_template(ds, template)
        pod["metadata"]["generateName"] = f"{ds['metadata']['name']}-"
        pod["metadata"]["labels"].update(
            {
                REVISION_LABEL: hash_,
                TEMPLATE_GENERATION_LABEL: str(ds["metadata"].get("generation", 1)),
            }
        )
        pod["spec"] = _daemon_pod_spec(template, node)
        try:
            created = self.store.create(PODS, defaults.apply_defaults(pod))
        except ApiError as exc:
            self._event(ds, "FailedCreate", f"Error creating: {exc.message}", "Warning")
            raise
        self._event(ds, "SuccessfulCreate", f"Created pod: {created['metadata']['name']}")

    def _rolling_update(
        self, ds: Obj, by_node: dict[str, list[Obj]], eligible: set[str], hash_: str
    ) -> None:
        """rollingUpdate with maxSurge 0: unavailable old pods go at once, available ones
        while fewer than maxUnavailable of the daemon's pods are unavailable."""
        rolling = (ds["spec"].get("updateStrategy") or {}).get("rollingUpdate") or {}
        desired = len(eligible)
        max_unavailable = scaled_value(rolling.get("maxUnavailable", 1), desired, True)
        if max_unavailable == 0 and not scaled_value(rolling.get("maxSurge"), desired, True):
            max_unavailable = 1
        min_ready = int(ds["spec"].get("minReadySeconds") or 0)
        unavailable = 0
        replace: list[Obj] = []
        candidates: list[Obj] = []
        for node in sorted(eligible):
            pods = [p for p in by_node.get(node, []) if not p["metadata"].get("deletionTimestamp")]
            new = [p for p in pods if _pod_revision(p) == hash_]
            old = [p for p in pods if _pod_revision(p) != hash_]
            if len(pods) != 1:
                unavailable += 1  # the manage loop handles this node
            elif new:
                if not self._available(new[0], min_ready):
                    unavailable += 1
            elif not self._available(old[0], min_ready):
                replace.append(old[0])
            elif unavailable < max_unavailable:
                candidates.append(old[0])
        remaining = max(0, min(max_unavailable - unavailable, len(candidates)))
        for pod in [*replace, *candidates[:remaining]]:
            self._delete_pod(ds, pod, "Deleted pod: {pod}")

    def _sync_status(
        self, ds: Obj, by_node: dict[str, list[Obj]], eligible: set[str], hash_: str
    ) -> None:
        min_ready = int(ds["spec"].get("minReadySeconds") or 0)
        scheduled = {n: [p for p in ps if _pod_active(p)] for n, ps in by_node.items() if n}
        on_eligible = [p for n in eligible for p in scheduled.get(n, [])[:1]]
        available = sum(1 for p in on_eligible if self._available(p, min_ready))
        status: Obj = {
            "currentNumberScheduled": sum(1 for n in eligible if scheduled.get(n)),
            "numberMisscheduled": sum(1 for n, ps in scheduled.items() if ps and n not in eligible),
            "desiredNumberScheduled": len(eligible),
            "numberReady": sum(1 for p in on_eligible if pod_ready(p)),
            "observedGeneration": ds["metadata"].get("generation", 0),
            "updatedNumberScheduled": sum(1 for p in on_eligible if _pod_revision(p) == hash_),
            "numberAvailable": available,
            "numberUnavailable": len(eligible) - available,
        }
        if ds["status"].get("collisionCount") is not None:
            status["collisionCount"] = ds["status"]["collisionCount"]
        self._write_status(ds, status)


__all__ = [
    "DaemonSetController",
    "StatefulSetController",
    "revision_data",
    "revision_template",
    "should_run_on",
]
