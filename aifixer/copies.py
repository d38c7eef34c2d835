"""The temporary copy of a Deployment that a fix is verified on, when the GitOps
controller's self-heal may not be paused.

Argo CD with self-heal, or Flux, puts a live Deployment back to what Git says within
seconds, so a fix written to it would be reverted while it is verified. Where a team
does not let aifixer pause that (AIFIXER_GITOPS_PAUSE_SELF_HEAL=false), the fix is
verified on a copy instead: a Deployment of its own in the same namespace, one replica
of the fixed pod template, under labels and a selector that are aifixer's alone.

- No Service selects its pods, so it takes no traffic: its pods carry none of the
  workload's labels (the pipeline also checks the namespace's Services before creating
  it, since a Service selecting `app.kubernetes.io/managed-by: aifixer` would).
- No controller tracks it, so none reverts or prunes it: the marks Argo CD and Flux
  track their objects by are not copied.
- It names its incident (an annotation, and a label derived from the id), so it is
  only ever found, reused or deleted by the incident that created it.

What may not be copied is refused here, from the fixed manifest alone: a kind other
than a Deployment (a StatefulSet's members own their identities and volumes), and a
pod template that mounts a PersistentVolumeClaim or a node's directory (a second pod
could not attach a ReadWriteOnce volume, or would write to the data the workload
serves).

Pure functions: the pipeline creates, verifies and deletes the copy.
"""

from __future__ import annotations

import copy
import hashlib
import re
from typing import Any

from .models import Manifest

COPY_LABEL = "aifixer.io/verify-copy"  # the copy's pods and selector: the incident's short id
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "aifixer"
INCIDENT_ANNOTATION = "aifixer.io/incident"  # the incident that owns the copy
COPY_OF_ANNOTATION = "aifixer.io/verify-copy-of"  # the Deployment it is a copy of
# The marks GitOps controllers find their objects by: never carried by a copy (a
# controller would otherwise prune it as not in Git, or count it as its own).
CONTROLLER_MARKS = ("app.kubernetes.io/instance",)
CONTROLLER_PREFIXES = ("argocd.argoproj.io/", "kustomize.toolkit.fluxcd.io/")
# What of the Deployment's spec the copy keeps besides its template: the settings the
# health rules read (kubectl's rollout status and availability).
KEPT_SPEC = ("minReadySeconds", "progressDeadlineSeconds")
MAX_NAME = 63  # a DNS-1123 label, as the pods' hostnames are
_SHORT = 10  # hex digits of the incident id's hash
_NOT_LABEL = re.compile(r"[^a-z0-9-]+")


def short_id(incident_id: str) -> str:
    """The incident's mark on its copy: a label value (an incident id is longer)."""
    return hashlib.sha256(incident_id.encode()).hexdigest()[:_SHORT]


def name(workload: str, incident_id: str) -> str:
    """The copy's name: `<workload>-verify-<short id>`, at most 63 characters, a
    DNS-1123 label (the workload's name cut and its dots made dashes if need be).

    The same for every try of the same incident, so a redelivered stage finds the copy
    an earlier one created.
    """
    suffix = f"-verify-{short_id(incident_id)}"
    base = _NOT_LABEL.sub("-", workload.lower())[: MAX_NAME - len(suffix)].strip("-")
    return (base or "workload") + suffix


def labels(incident_id: str) -> dict[str, str]:
    """The labels of the copy, its pods and its selector: aifixer's own, nothing else."""
    return {COPY_LABEL: short_id(incident_id), MANAGED_BY_LABEL: MANAGED_BY}


def refusal(fixed: Manifest) -> str | None:
    """Why the fixed workload may not be verified on a copy; None when it may."""
    kind = fixed.get("kind") or "Deployment"
    if kind != "Deployment":
        return (
            f"a fix is verified on a temporary copy for Deployments only, and this is a "
            f"{kind} (its members own their identities and volumes)"
        )
    pod = ((fixed.get("spec") or {}).get("template") or {}).get("spec") or {}
    for volume in pod.get("volumes") or []:
        if not isinstance(volume, dict):
            continue
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if claim is not None:
            return (
                f"its pod template mounts the PersistentVolumeClaim {claim!s:.100}: a "
                f"temporary copy could not attach a ReadWriteOnce volume, or would write to "
                f"the data the workload serves"
            )
        if volume.get("hostPath") is not None:
            path = (volume.get("hostPath") or {}).get("path")
            return (
                f"its pod template mounts the node's directory {path!s:.100}: a temporary "
                f"copy would write to the files the workload uses"
            )
    return None


def manifest(fixed: Manifest, incident_id: str) -> Manifest:
    """The copy of `fixed` (the whole corrected Deployment) to create.

    The fixed pod template with aifixer's labels in place of its own and the
    controllers' marks dropped from its annotations; one replica; a selector of those
    labels; and only the spec settings the health rules read. The Deployment's own
    labels and annotations are not copied: it carries aifixer's labels, the incident
    that owns it and the name of the Deployment it copies.
    """
    meta, spec = fixed.get("metadata") or {}, fixed.get("spec") or {}
    ours = labels(incident_id)
    template = copy.deepcopy(spec.get("template") or {})
    annotations = _unmarked((template.get("metadata") or {}).get("annotations") or {})
    template["metadata"] = {"labels": dict(ours)}
    if annotations:
        template["metadata"]["annotations"] = annotations
    out_spec: dict[str, Any] = {
        "replicas": 1,
        "selector": {"matchLabels": dict(ours)},
        "template": template,
        **{k: spec[k] for k in KEPT_SPEC if k in spec},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name(str(meta.get("name") or ""), incident_id),
            "namespace": meta.get("namespace"),
            "labels": dict(ours),
            "annotations": {
                INCIDENT_ANNOTATION: incident_id,
                COPY_OF_ANNOTATION: str(meta.get("name") or ""),
            },
        },
        "spec": out_spec,
    }


def _unmarked(annotations: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in annotations.items()
        if k not in CONTROLLER_MARKS and not k.startswith(CONTROLLER_PREFIXES)
    }


def is_copy(deployment: Manifest) -> bool:
    """Whether a Deployment carries the marks of a verification copy (of any incident).

    A copy's pods failing open no incident of their own: the copy is not a workload
    to fix, and its incident is verifying it.
    """
    found = (deployment.get("metadata") or {}).get("labels") or {}
    return found.get(MANAGED_BY_LABEL) == MANAGED_BY and COPY_LABEL in found


def owned(deployment: Manifest, incident_id: str) -> bool:
    """Whether a live Deployment is this incident's copy: its name, its labels and its
    owner annotation all say so. Nothing else is reused or deleted as a copy."""
    meta = deployment.get("metadata") or {}
    found = meta.get("labels") or {}
    short = short_id(incident_id)
    return (
        str(meta.get("name") or "").endswith(f"-verify-{short}")
        and found.get(COPY_LABEL) == short
        and found.get(MANAGED_BY_LABEL) == MANAGED_BY
        and (meta.get("annotations") or {}).get(INCIDENT_ANNOTATION) == incident_id
    )
