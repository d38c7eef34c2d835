"""Persistent volumes: StorageClasses, the volume binder and a dynamic provisioner.

What a claim shows is decided by kube-controller-manager's persistentvolume-controller
(pkg/controller/volume/persistentvolume) and the class's external provisioner, so the
binder follows them event by event:

- a claim whose class exists is provisioned: the controller says it waits for the
  external provisioner (Normal ExternalProvisioning), the provisioner reports
  Provisioning and ProvisioningSucceeded, a PersistentVolume `pvc-<claim uid>` is
  created for the claim (its capacity, access modes, the class's reclaim policy) and
  both are Bound, with the annotations the controller writes;
- a claim whose class does not exist stays Pending, and on every resync (15 s) the
  controller records Warning ProvisioningFailed
  `storageclass.storage.k8s.io "<class>" not found`;
- a claim without a class (`storageClassName: ""`) binds only to an Available volume
  of no class, else Normal FailedBinding
  `no persistent volumes available for this claim and no storage class is set`.

A class with `volumeBindingMode: WaitForFirstConsumer` waits (Normal
WaitForFirstConsumer) until a pod uses the claim, then provisions; the real scheduler
would pick the node first (the selected-node annotation), which a single-zone sandbox
does not need. When a claim is deleted its volume follows the reclaim policy: Delete
removes it, Retain leaves it Released.

The scheduler reads the same rules (`unbound_claims`): a pod whose claim is missing,
or unbound under an immediate (or missing) class, is not schedulable.
"""

from __future__ import annotations

import logging
from typing import Any

from .controllers import _Controller, _key, _split
from .resources import Resource, by_path, core
from .store import Obj, Store

log = logging.getLogger(__name__)

PVCS = core("persistentvolumeclaims")
PVS = core("persistentvolumes")
PODS = core("pods")
STORAGECLASSES: Resource = by_path("storage.k8s.io", "v1", "storageclasses")  # type: ignore[assignment]

COMPONENT = "persistentvolume-controller"
RESYNC_SECONDS = 15.0  # the controller's periodic resync of unbound claims
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
BETA_CLASS_ANNOTATION = "volume.beta.kubernetes.io/storage-class"
BIND_COMPLETED = "pv.kubernetes.io/bind-completed"
BOUND_BY_CONTROLLER = "pv.kubernetes.io/bound-by-controller"
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
STORAGE_PROVISIONER = "volume.kubernetes.io/storage-provisioner"
BETA_STORAGE_PROVISIONER = "volume.beta.kubernetes.io/storage-provisioner"
WAIT_FOR_FIRST_CONSUMER = "WaitForFirstConsumer"

# The scheduler's VolumeBinding PreFilter messages (volume_binding.go).
UNBOUND_IMMEDIATE = "pod has unbound immediate PersistentVolumeClaims"


def claim_class(claim: Obj) -> str | None:
    """The class a claim asks for (the beta annotation wins, as in the controller);
    None when the claim names none at all, "" for the explicit no-class."""
    annotations = (claim.get("metadata") or {}).get("annotations") or {}
    if BETA_CLASS_ANNOTATION in annotations:
        return annotations[BETA_CLASS_ANNOTATION]
    return (claim.get("spec") or {}).get("storageClassName")


def default_class(store: Store) -> Obj | None:
    """The cluster's default StorageClass: the newest one annotated as default."""
    defaults = [
        sc
        for sc in store.list(STORAGECLASSES)
        if ((sc["metadata"].get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION)) == "true"
    ]
    if not defaults:
        return None
    return max(
        defaults,
        key=lambda sc: (sc["metadata"].get("creationTimestamp") or "", sc["metadata"]["name"]),
    )


def admit_claim(store: Store, claim: Obj) -> Obj:
    """The DefaultStorageClass admission plugin: a new claim that names no class at all
    gets the default class's name (an explicit "" stays, meaning no class)."""
    spec = claim.get("spec")
    if not isinstance(spec, dict) or claim_class(claim) is not None:
        return claim
    default = default_class(store)
    if default is not None:
        spec["storageClassName"] = default["metadata"]["name"]
    return claim


def claim_immutable_problem(old: Obj, new: Obj) -> str | None:
    """ValidatePersistentVolumeClaimUpdate: after creation only the storage request
    (and the volume attributes class) may change, and only for a bound claim; the
    controller's own bind (spec.volumeName set once) is allowed."""
    before = dict(old.get("spec") or {})
    after = dict(new.get("spec") or {})
    if not before.get("volumeName") and after.get("volumeName"):
        before["volumeName"] = after["volumeName"]
    for spec in (before, after):
        spec.pop("volumeAttributesClassName", None)
        resources = dict(spec.get("resources") or {})
        resources.pop("requests", None)
        spec["resources"] = resources
    if before == after:
        return None
    return (
        "spec is immutable after creation except resources.requests and "
        "volumeAttributesClassName for bound claims"
    )


def unbound_claims(store: Store, pod: Obj) -> str | None:
    """Why the scheduler's VolumeBinding PreFilter rejects `pod`, or None.

    A claim that does not exist: `persistentvolumeclaim "<name>" not found`. A claim
    not bound yet whose class is immediate, or that the cluster does not have (the
    binding mode of a missing class cannot be delayed): the unbound-immediate message.
    """
    namespace = pod["metadata"].get("namespace")
    unbound = False
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        ref = volume.get("persistentVolumeClaim") if isinstance(volume, dict) else None
        if not isinstance(ref, dict):
            continue
        name = ref.get("claimName")
        claim = store.try_get(PVCS, namespace, name)
        if claim is None:
            return f'persistentvolumeclaim "{name}" not found'
        if (claim.get("status") or {}).get("phase") == "Bound":
            continue
        cls_name = claim_class(claim)
        cls = store.try_get(STORAGECLASSES, None, cls_name) if cls_name else None
        if cls is None or cls.get("volumeBindingMode") != WAIT_FOR_FIRST_CONSUMER:
            unbound = True
    return UNBOUND_IMMEDIATE if unbound else None


def _claims_of(pod: Obj) -> list[str]:
    return [
        v["persistentVolumeClaim"].get("claimName")
        for v in (pod.get("spec") or {}).get("volumes") or []
        if isinstance(v, dict) and isinstance(v.get("persistentVolumeClaim"), dict)
    ]


class VolumeBinder(_Controller):
    """The persistentvolume-controller's claim loop, with a dynamic provisioner."""

    component = COMPONENT
    primary = PVCS

    def _on_change(self, ev_type: str, res: Resource, new: Obj, old: Obj | None) -> None:
        if res.key == PVCS.key:
            self.queue.add(_key(new))
        elif res.key == STORAGECLASSES.key:
            for claim in self.store.list(PVCS):
                if (claim.get("status") or {}).get("phase") != "Bound":
                    self.queue.add(_key(claim))
        elif res.key == PODS.key and ev_type == "ADDED":
            namespace = new["metadata"].get("namespace", "")
            for name in _claims_of(new):
                self.queue.add(f"{namespace}/{name}")

    def sync(self, key: str) -> None:
        namespace, name = _split(key)
        claim = self.store.try_get(PVCS, namespace, name)
        self._reclaim(namespace, name, claim)
        if claim is None or claim["metadata"].get("deletionTimestamp"):
            return
        if (claim.get("status") or {}).get("phase") == "Bound":
            return
        cls_name = claim_class(claim)
        if not cls_name:
            volume = self._available_volume(claim)
            if volume is None:
                self._event(
                    claim,
                    "FailedBinding",
                    "no persistent volumes available for this claim and no storage class is set",
                )
                self._pending(claim)
                self.queue.add_after(key, RESYNC_SECONDS)
                return
            self._bind(claim, volume)
            return
        cls = self.store.try_get(STORAGECLASSES, None, cls_name)
        if cls is None:
            self._event(
                claim,
                "ProvisioningFailed",
                f'storageclass.storage.k8s.io "{cls_name}" not found',
                "Warning",
            )
            self._pending(claim)
            self.queue.add_after(key, RESYNC_SECONDS)
            return
        if cls.get("volumeBindingMode") == WAIT_FOR_FIRST_CONSUMER and not self._consumed(claim):
            self._event(
                claim,
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding",
            )
            self._pending(claim)
            return
        self._provision(claim, cls)

    # -- provisioning and binding --------------------------------------------------

    def _provision(self, claim: Obj, cls: Obj) -> None:
        meta = claim["metadata"]
        provisioner = cls.get("provisioner") or ""
        annotations = dict(meta.get("annotations") or {})
        if annotations.get(STORAGE_PROVISIONER) != provisioner:
            annotations[STORAGE_PROVISIONER] = provisioner
            annotations[BETA_STORAGE_PROVISIONER] = provisioner
            claim = self._write_claim(claim, annotations=annotations)
            self._event(
                claim,
                "ExternalProvisioning",
                "Waiting for a volume to be created either by the external provisioner "
                f"'{provisioner}' or manually by the system administrator. If volume creation "
                "is delayed, please verify that the external provisioner is running and "
                "correctly registered.",
            )
        pv_name = f"pvc-{meta['uid']}"
        ns, name = meta.get("namespace"), meta["name"]
        self.recorder.record(
            claim,
            "Normal",
            "Provisioning",
            f'External provisioner is provisioning volume for claim "{ns}/{name}"',
            provisioner,
        )
        spec = claim.get("spec") or {}
        volume = self.store.try_get(PVS, None, pv_name)
        if volume is None:
            volume = self.store.create(
                PVS,
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolume",
                    "metadata": {"name": pv_name, "annotations": {PROVISIONED_BY: provisioner}},
                    "spec": {
                        "capacity": {
                            "storage": ((spec.get("resources") or {}).get("requests") or {}).get(
                                "storage", "1Gi"
                            )
                        },
                        "accessModes": list(spec.get("accessModes") or ["ReadWriteOnce"]),
                        "persistentVolumeReclaimPolicy": cls.get("reclaimPolicy") or "Delete",
                        "storageClassName": cls["metadata"]["name"],
                        "volumeMode": spec.get("volumeMode") or "Filesystem",
                        "hostPath": {
                            "path": f"/var/local-path-provisioner/{pv_name}_{ns}_{name}",
                            "type": "DirectoryOrCreate",
                        },
                    },
                    "status": {"phase": "Pending"},
                },
            )
        self.recorder.record(
            claim,
            "Normal",
            "ProvisioningSucceeded",
            f"Successfully provisioned volume {pv_name}",
            provisioner,
        )
        self._bind(claim, volume)

    def _bind(self, claim: Obj, volume: Obj) -> None:
        meta = claim["metadata"]
        pv = self.store.copy(volume)
        pv["spec"]["claimRef"] = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "namespace": meta.get("namespace"),
            "name": meta["name"],
            "uid": meta["uid"],
            "resourceVersion": meta.get("resourceVersion"),
        }
        pv["metadata"].pop("resourceVersion", None)
        pv = self.store.update(PVS, pv)
        self._status(PVS, pv, {"phase": "Bound"})
        annotations = dict(meta.get("annotations") or {})
        annotations[BIND_COMPLETED] = "yes"
        annotations[BOUND_BY_CONTROLLER] = "yes"
        claim = self._write_claim(
            claim, annotations=annotations, volume_name=pv["metadata"]["name"]
        )
        self._status(
            PVCS,
            claim,
            {
                "phase": "Bound",
                "accessModes": list(pv["spec"].get("accessModes") or []),
                "capacity": dict(pv["spec"].get("capacity") or {}),
            },
        )

    def _available_volume(self, claim: Obj) -> Obj | None:
        wanted = ((claim.get("spec") or {}).get("accessModes")) or []
        for pv in self.store.list(PVS):
            spec = pv.get("spec") or {}
            if (pv.get("status") or {}).get("phase") != "Available" or spec.get("claimRef"):
                continue
            if spec.get("storageClassName") or not set(wanted) <= set(
                spec.get("accessModes") or []
            ):
                continue
            return pv
        return None

    def _consumed(self, claim: Obj) -> bool:
        ns, name = claim["metadata"].get("namespace"), claim["metadata"]["name"]
        return any(name in _claims_of(pod) for pod in self.store.list(PODS, ns))

    def _reclaim(self, namespace: str, name: str, claim: Obj | None) -> None:
        """Volumes bound to an earlier claim of this name (deleted, maybe re-created since)
        follow their reclaim policy."""
        uid = claim["metadata"]["uid"] if claim is not None else None
        for pv in self.store.list(PVS):
            ref = (pv.get("spec") or {}).get("claimRef") or {}
            if (ref.get("namespace"), ref.get("name")) != (namespace, name) or ref.get(
                "uid"
            ) == uid:
                continue
            if (pv["spec"].get("persistentVolumeReclaimPolicy") or "Retain") == "Delete":
                self.store.delete(PVS, None, pv["metadata"]["name"])
            elif (pv.get("status") or {}).get("phase") != "Released":
                self._status(PVS, pv, {"phase": "Released"})

    # -- writes ----------------------------------------------------------------------

    def _pending(self, claim: Obj) -> None:
        if (claim.get("status") or {}).get("phase") != "Pending":
            self._status(PVCS, claim, {"phase": "Pending"})

    def _write_claim(
        self, claim: Obj, *, annotations: dict[str, str], volume_name: str | None = None
    ) -> Obj:
        new = self.store.copy(claim)
        new["metadata"]["annotations"] = annotations
        if volume_name is not None:
            new["spec"]["volumeName"] = volume_name
        new["metadata"].pop("resourceVersion", None)
        return self.store.update(PVCS, new)

    def _status(self, res: Resource, obj: Obj, status: dict[str, Any]) -> Obj:
        meta = obj["metadata"]
        return self.store.update(
            res,
            {
                "metadata": {
                    "namespace": meta.get("namespace"),
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
                "status": status,
            },
            subresource="status",
        )
