"""Deterministic fixes for the failure classes aifixer knows.

A playbook reads the evidence and, when its failure pattern is there, writes the
whole corrected Deployment: the live one with the fewest allow-listed fields changed
that undo the breakage. They are candidates beside the model's answer and the fallback
when the model fails, so they are conservative on purpose:

- what they restore comes from the workload's own past (the last healthy revision's
  pod template, the images of revisions that ran) or, for a workload born broken,
  from facts established outside it: the registry (the existing tag of the same
  repository clearly meant), the container runtime (an override naming an executable
  the image does not have is removed, so the image's own entrypoint runs), the
  container's declared ports and the probes of healthy Deployments of the same image
  in its own namespace. They never invent a value a person would have to know
  (node capacity, a Secret, a tag nobody pushed), and never take one from a log line;
- they change nothing outside the guardrails' allow-list, so a playbook's proposal
  passes `guardrails.check` by construction; placement (nodeSelector, tolerations)
  and missing Secrets are left to a person: no playbook exists for them.

The last healthy template is compared with the live template here rather than read
from `evidence.template_diff`, so each playbook picks the exact fields it restores.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from . import imageref, manifests
from .guardrails import (
    MEBIBYTE,
    PROBES,
    SAFE_PROBE_PATH,
    QuantityError,
    containers_by_name,
    image_repository,
    parse_quantity,
    pod_spec,
    runtime_cannot_exec,
)
from .models import Evidence, FailureClass, FixProposal, Manifest, ObjectRef, PeerProbe
from .settings import Settings

CONTAINERS = "spec.template.spec.containers"
# Doubling a limit lands on these steps, so a proposal reads like one a person writes.
MEMORY_STEP = 64 * MEBIBYTE
# A line that says the process stopped for want of configuration.
_FATAL_LINE = re.compile(r"fatal|missing|not set|required|undefined|invalid value", re.IGNORECASE)
_ENV_NAME = re.compile(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]*[A-Z0-9]\b|\b[A-Z]{3,}\b")
_INSUFFICIENT = re.compile(r"Insufficient (cpu|memory)")


@dataclass(frozen=True)
class _Case:
    """What every playbook reads: the evidence, the live Deployment and its healthy past."""

    evidence: Evidence
    settings: Settings
    live: Manifest  # the live Deployment, cleaned
    healthy: dict[str, dict[str, Any]]  # container name -> its spec in the last healthy template

    def proposal(self, strategy: str, rationale: str, manifest: Manifest) -> FixProposal | None:
        changes = manifests.diff(self.live, manifest)
        if not changes:
            return None
        return FixProposal(
            source="playbook",
            strategy=strategy,
            rationale=rationale,
            manifest=manifest,
            changes=changes,
        )

    def containers(self) -> list[tuple[int, dict[str, Any]]]:
        return list(enumerate(manifests.get_path(self.live, CONTAINERS) or []))

    def healthy_of(self, container: dict[str, Any]) -> dict[str, Any] | None:
        """The container's spec in the last healthy template; None when it had none."""
        name = container.get("name")
        return self.healthy.get(name) if isinstance(name, str) else None


Playbook = Callable[[_Case], FixProposal | None]


def candidates(
    evidence: Evidence, diagnosis_class: FailureClass, settings: Settings
) -> list[FixProposal]:
    """The playbooks' fixes for this incident, best first; [] when none applies.

    Args:
        evidence: what was gathered about the failing workload.
        diagnosis_class: the failure class the diagnosis settled on; it picks which
            playbooks are tried and in which order.
        settings: the bounds the proposals must respect (memory cap).
    """
    live = manifests.clean(evidence.deployment)
    case = _Case(
        evidence=evidence,
        settings=settings,
        live=live,
        healthy=containers_by_name(pod_spec(evidence.last_healthy_template)),
    )
    found: list[FixProposal] = []
    for playbook in PLAYBOOKS[diagnosis_class]:
        proposal = playbook(case)
        if proposal is not None and all(p.manifest != proposal.manifest for p in found):
            found.append(proposal)
    return found


# -- revert-to-last-healthy ---------------------------------------------------------------

# What a revert restores; probes, ports and resources as a whole, env variable by variable.
_REVERTED_FIELDS = ("image", "command", "args", "envFrom", "resources", "ports", *PROBES)


def revert_to_last_healthy(case: _Case) -> FixProposal | None:
    """Every allow-listed container field that changed since the last healthy revision."""
    manifest = copy.deepcopy(case.live)
    reverted = []
    for index, container in case.containers():
        healthy = case.healthy_of(container)
        if healthy is None:
            continue
        path = f"{CONTAINERS}[{index}]"
        for field in _REVERTED_FIELDS:
            if container.get(field) != healthy.get(field):
                manifests.set_path(manifest, f"{path}.{field}", copy.deepcopy(healthy.get(field)))
                reverted.append(f"{field} of container {container['name']}")
        env = _reverted_env(container.get("env") or [], healthy.get("env") or [])
        if env != (container.get("env") or []):
            manifests.set_path(manifest, f"{path}.env", env or None)
            reverted.append(f"env of container {container['name']}")
    return case.proposal(
        "revert-to-last-healthy",
        f"Reverts {', '.join(reverted)} to the values of the last revision that ran healthy; "
        "the failure started with this change.",
        manifest,
    )


def _reverted_env(live: list[dict], healthy: list[dict]) -> list[dict]:
    """The healthy variables restored; added literals kept, added references dropped.

    An added literal is harmless to keep (the new release may read it); an added
    Secret or ConfigMap reference may be what stops the container from starting.
    """
    healthy_names = {v.get("name") for v in healthy}
    changed = {v.get("name") for v in healthy if v not in live}
    restored = _restore_env(live, healthy, changed)
    return [v for v in restored if v.get("name") in healthy_names or "valueFrom" not in v]


def _restore_env(live: list[dict], healthy: list[dict], names: set[str | None]) -> list[dict]:
    """`live` with the healthy version of each variable in `names`, in the healthy order.

    A restored variable replaces the live one of that name in place, or is inserted
    after the nearest variable that preceded it in the healthy list.
    """
    out = copy.deepcopy(live)
    for position, var in enumerate(healthy):
        if var.get("name") not in names:
            continue
        at = _index(out, var.get("name"))
        if at is not None:
            out[at] = copy.deepcopy(var)
            continue
        insert = 0
        for previous in reversed(healthy[:position]):
            found = _index(out, previous.get("name"))
            if found is not None:
                insert = found + 1
                break
        out.insert(insert, copy.deepcopy(var))
    return out


def _index(env: list[dict], name: Any) -> int | None:
    return next((i for i, v in enumerate(env) if v.get("name") == name), None)


# -- restore-env ------------------------------------------------------------------------------


def restore_env(case: _Case) -> FixProposal | None:
    """The variables a fatal log line names, as the last healthy revision set them."""
    named = _names_in_fatal_lines(case.evidence)
    manifest = copy.deepcopy(case.live)
    restored = []
    for index, container in case.containers():
        live_env = container.get("env") or []
        healthy_env = (case.healthy_of(container) or {}).get("env") or []
        names = {v.get("name") for v in healthy_env if v.get("name") in named and v not in live_env}
        if names:
            manifests.set_path(
                manifest, f"{CONTAINERS}[{index}].env", _restore_env(live_env, healthy_env, names)
            )
            restored.extend(sorted(names))
    return case.proposal(
        "restore-env",
        f"The container exits at start for want of {', '.join(restored)}; restores "
        "each as the last healthy revision set it, keeping the other variables.",
        manifest,
    )


def _names_in_fatal_lines(evidence: Evidence) -> set[str]:
    lines = [log.line for log in evidence.logs]
    lines += [line for text in evidence.pod_logs.values() for line in text.splitlines()]
    lines += [event.message for event in evidence.events]
    return {name for line in lines if _FATAL_LINE.search(line) for name in _ENV_NAME.findall(line)}


# -- restore-known-good-image -----------------------------------------------------------------


def restore_known_good_image(case: _Case) -> FixProposal | None:
    """The newest image of the same repository from a revision that ran healthy."""
    manifest = copy.deepcopy(case.live)
    restored = []
    for index, container in case.containers():
        image = _known_good_image(case, container)
        if image is not None and image != container.get("image"):
            manifests.set_path(manifest, f"{CONTAINERS}[{index}].image", image)
            restored.append(f"{container['name']}: {container.get('image')} -> {image}")
    return case.proposal(
        "restore-known-good-image",
        f"Restores the image the workload last ran healthy ({'; '.join(restored)}).",
        manifest,
    )


def _known_good_image(case: _Case, container: dict[str, Any]) -> str | None:
    repository = image_repository(container.get("image"))
    healthy = case.healthy_of(container)
    if healthy is not None:
        image = healthy.get("image")
        return image if image_repository(image) == repository else None
    # Without a healthy template, an older revision that still has ready pods ran it.
    serving = sorted(
        (r for r in case.evidence.revisions if not r.current and r.ready_replicas > 0),
        key=lambda r: r.revision,
        reverse=True,
    )
    return next(
        (image for r in serving for image in r.images if image_repository(image) == repository),
        None,
    )


# -- closest-existing-tag --------------------------------------------------------------------


def closest_existing_tag(case: _Case) -> FixProposal | None:
    """For an image whose tag was never published and no healthy revision to return to:
    the tag of the same repository that exists and was clearly meant, as the evidence
    read it from the registry (`Evidence.existing_tags`, resolved to a digest)."""
    if case.healthy:
        return None
    found = {t.container: t for t in case.evidence.existing_tags}
    manifest = copy.deepcopy(case.live)
    chosen = []
    for index, container in case.containers():
        existing = found.get(container.get("name"))  # type: ignore[arg-type]
        if existing is None or existing.image != container.get("image"):
            continue
        try:
            ref = imageref.parse(existing.image)
        except imageref.ImageRefError:
            continue
        if not imageref.TAG.fullmatch(existing.tag) or not imageref.DIGEST.fullmatch(
            existing.digest
        ):
            continue
        image = ref.with_tag(existing.tag)
        if image_repository(image) != image_repository(existing.image):
            continue  # never another repository or registry
        manifests.set_path(manifest, f"{CONTAINERS}[{index}].image", image)
        chosen.append(
            f"{container['name']}: tag {ref.tag or 'latest'} -> {existing.tag} "
            f"({existing.digest}): {existing.why}"
        )
    return case.proposal(
        "closest-existing-tag",
        "The image names a tag that was never published and the workload never ran "
        f"healthy; uses the existing tag of the same repository ({'; '.join(chosen)}).",
        manifest,
    )


# -- drop-command-override ------------------------------------------------------------------


def drop_command_override(case: _Case) -> FixProposal | None:
    """For a container whose `command` names an executable its image does not have, and
    no healthy revision to return to: the command and args removed, so the image's own
    entrypoint (and its default arguments) runs.

    Only when the container runtime said so in the pod's status (a StartError naming
    exactly the command's executable, `guardrails.runtime_cannot_exec`, the rule the
    guardrails hold the removal to): what is removed is the container's own override,
    never anything a log line names, and nothing is added.
    """
    manifest = copy.deepcopy(case.live)
    dropped = []
    for index, container in case.containers():
        command = container.get("command")
        if case.healthy_of(container) is not None or not isinstance(command, list) or not command:
            continue
        if not runtime_cannot_exec(container, case.evidence.pods):
            continue
        path = f"{CONTAINERS}[{index}]"
        manifests.set_path(manifest, f"{path}.command", None)
        manifests.set_path(manifest, f"{path}.args", None)
        dropped.append(f"{container['name']}: {command[0]}")
    return case.proposal(
        "drop-command-override",
        "The command override names an executable the image does not have, as the "
        f"container runtime reports ({'; '.join(dropped)}), and the workload never ran "
        "healthy; removes the override so the image's own entrypoint runs.",
        manifest,
    )


# -- raise-memory-limit ------------------------------------------------------------------------


def raise_memory_limit(case: _Case) -> FixProposal | None:
    """A memory limit the container fits in, for a container the kernel OOM-killed."""
    if not _oom_killed(case.evidence):
        return None
    cap = parse_quantity(case.settings.max_memory_limit)
    manifest = copy.deepcopy(case.live)
    raised = []
    for index, container in _oom_candidates(case):
        current = _memory(container, "limits")
        if current is None:
            continue  # no limit: the node ran out of memory, not the container
        target, text = _memory_target(case, container, current, cap)
        if target <= current:
            continue
        path = f"{CONTAINERS}[{index}].resources"
        manifests.set_path(manifest, f"{path}.limits.memory", text)
        request = _memory(container, "requests")
        if request is not None and request > target:
            manifests.set_path(manifest, f"{path}.requests.memory", text)
        raised.append(
            f"{container['name']}: {container['resources']['limits']['memory']} -> {text}"
        )
    return case.proposal(
        "raise-memory-limit",
        f"The container is OOMKilled: its working set does not fit its memory limit. Raises "
        f"the limit ({'; '.join(raised)}).",
        manifest,
    )


def _oom_killed(evidence: Evidence) -> bool:
    return any(
        "OOMKilled" in pod.reasons or (pod.last_termination or {}).get("reason") == "OOMKilled"
        for pod in evidence.pods
    )


def _oom_candidates(case: _Case) -> list[tuple[int, dict[str, Any]]]:
    """The containers to raise: the one named by a termination, else those whose limit
    went down since the healthy revision, else the only container."""
    containers = case.containers()
    named = {(p.last_termination or {}).get("container") for p in case.evidence.pods} - {None}
    if named:
        return [(i, c) for i, c in containers if c.get("name") in named]
    lowered = [
        (i, c)
        for i, c in containers
        if (_memory(c, "limits") or 0) < (_memory(case.healthy_of(c) or {}, "limits") or 0)
    ]
    if lowered:
        return lowered
    return containers if len(containers) == 1 else []


def _memory_target(
    case: _Case, container: dict[str, Any], current: Decimal, cap: Decimal
) -> tuple[Decimal, str]:
    """The new limit and its text: the healthy revision's when it was higher, else double
    the current one rounded up to a step; never above the cap."""
    healthy = case.healthy_of(container) or {}
    previous = _memory(healthy, "limits")
    if previous is not None and previous > current:
        target, text = previous, healthy["resources"]["limits"]["memory"]
    else:
        target = Decimal(math.ceil(current * 2 / MEMORY_STEP) * MEMORY_STEP)
        text = f"{int(target // MEBIBYTE)}Mi"
    if target > cap:
        return cap, case.settings.max_memory_limit
    return target, text


def _memory(container: dict[str, Any], section: str) -> Decimal | None:
    raw = ((container.get("resources") or {}).get(section) or {}).get("memory")
    try:
        return None if raw is None else parse_quantity(raw)
    except QuantityError:
        return None


# -- fit-requests-to-nodes --------------------------------------------------------------------


def fit_requests_to_nodes(case: _Case) -> FixProposal | None:
    """The requests (and limits) of the last healthy revision, for the resources the
    scheduler found insufficient; node capacity itself is never assumed."""
    messages = [e.message for e in case.evidence.events if e.reason == "FailedScheduling"]
    short = set(_INSUFFICIENT.findall(" ".join(messages)))
    manifest = copy.deepcopy(case.live)
    restored = []
    for index, container in case.containers():
        healthy = case.healthy_of(container)
        if healthy is None:
            continue
        for resource in sorted(short):
            if not _asks_more(container, healthy, resource):
                continue
            for section in ("requests", "limits"):
                before = ((healthy.get("resources") or {}).get(section) or {}).get(resource)
                path = f"{CONTAINERS}[{index}].resources.{section}.{resource}"
                manifests.set_path(manifest, path, before)
            restored.append(f"{resource} of {container['name']}")
    return case.proposal(
        "fit-requests-to-nodes",
        f"No node has room for the pod (insufficient {', '.join(sorted(short))}); restores "
        f"requests and limits of the last healthy revision ({', '.join(restored)}).",
        manifest,
    )


def _asks_more(container: dict[str, Any], healthy: dict[str, Any], resource: str) -> bool:
    def request(c: dict[str, Any]) -> Decimal:
        res = c.get("resources") or {}
        raw = (res.get("requests") or {}).get(resource, (res.get("limits") or {}).get(resource))
        try:
            return parse_quantity(raw) if raw is not None else Decimal(0)
        except QuantityError:
            return Decimal(0)

    return request(container) > request(healthy)


# -- fix-probe-port / fix-probe-path ----------------------------------------------------------

_PROBE_LABELS = {
    "Readiness": "readinessProbe",
    "Liveness": "livenessProbe",
    "Startup": "startupProbe",
}
_UNHEALTHY = re.compile(r"^(Readiness|Liveness|Startup) probe failed: (.*)", re.DOTALL)
MAX_PEER_PROBES = 32


def fix_probe_port(case: _Case) -> FixProposal | None:
    """A probe aimed at a port the container does not serve, aimed back at one it declares.

    With a healthy revision: its port if still declared, else the only declared port.
    Born broken: the only declared port, or, where the probe's failures show connection
    refused, the port healthy Deployments of the same image probe, if this container
    declares it.
    """
    manifest = copy.deepcopy(case.live)
    refused = _probe_failures(case.evidence, "refused")
    fixed = []
    for index, container in case.containers():
        numbers = {p.get("containerPort") for p in container.get("ports") or []}
        names = {p.get("name") for p in container.get("ports") or []} - {None}
        for probe, handler, port in _probe_ports(container):
            if port in numbers or port in names:
                target = _served_probe_port(case, container, probe, port, refused)
            else:
                target = _declared_probe_port(case, container, probe, handler, numbers | names)
                if target is None and case.healthy_of(container) is None and probe in refused:
                    target = _peer_port(case, container, probe, port)
            if target is None:
                continue
            manifests.set_path(manifest, f"{CONTAINERS}[{index}].{probe}.{handler}.port", target)
            fixed.append(
                f"{probe} of {container['name']}: {port} -> {target}"
                + _as_peers(case, container, "port", _port_number(container, target))
            )
    return case.proposal(
        "fix-probe-port",
        f"The probe checks a port the container does not listen on; points it at the declared "
        f"port ({'; '.join(fixed)}).",
        manifest,
    )


def _probe_ports(container: dict[str, Any]) -> list[tuple[str, str, Any]]:
    found = []
    for probe in PROBES:
        for handler in ("httpGet", "tcpSocket"):
            spec = (container.get(probe) or {}).get(handler)
            if isinstance(spec, dict) and "port" in spec:
                found.append((probe, handler, spec["port"]))
    return found


def _declared_probe_port(
    case: _Case, container: dict[str, Any], probe: str, handler: str, declared: set[Any]
) -> Any:
    """The healthy revision's port for this probe if still declared, else the only port."""
    healthy = case.healthy_of(container) or {}
    before = ((healthy.get(probe) or {}).get(handler) or {}).get("port")
    if before is not None and before in declared:
        return before
    ports = container.get("ports") or []
    if len(ports) == 1:
        return ports[0].get("containerPort")
    return None


def _served_probe_port(
    case: _Case, container: dict[str, Any], probe: str, port: Any, refused: set[str]
) -> Any:
    """Born broken, a probe aimed at a declared port that refuses connections: the
    declared port healthy Deployments of the same image probe instead, if any."""
    if case.healthy_of(container) is not None or probe not in refused:
        return None
    target = _peer_port(case, container, probe, port)
    return None if _port_number(container, target) == _port_number(container, port) else target


def _peer_port(case: _Case, container: dict[str, Any], probe: str, current: Any) -> Any:
    """The port healthy Deployments of the same image probe, if this container declares
    it: by its name when the probe names its port, else by its number."""
    number = _peer_value(case, container, probe, "port")
    for declared in container.get("ports") or []:
        if declared.get("containerPort") == number and isinstance(number, int):
            name = declared.get("name")
            return name if isinstance(current, str) and isinstance(name, str) else number
    return None


def _port_number(container: dict[str, Any], port: Any) -> int | None:
    """A probe's port as a number: itself, or the containerPort of that name."""
    if isinstance(port, int) and not isinstance(port, bool):
        return port
    for declared in container.get("ports") or []:
        if declared.get("name") == port and isinstance(declared.get("containerPort"), int):
            return int(declared["containerPort"])
    return None


def fix_probe_path(case: _Case) -> FixProposal | None:
    """An HTTP probe's path, as the last healthy revision had it; born broken, where the
    probe's failures show the path is not served (404), the path healthy Deployments of
    the same image probe."""
    manifest = copy.deepcopy(case.live)
    not_served = _probe_failures(case.evidence, "not-found")
    fixed = []
    for index, container in case.containers():
        healthy = case.healthy_of(container)
        for probe in PROBES:
            get = (container.get(probe) or {}).get("httpGet")
            if not isinstance(get, dict):
                continue
            path = get.get("path")
            if healthy is not None:
                before = ((healthy.get(probe) or {}).get("httpGet") or {}).get("path")
                if path is None or before is None or path == before:
                    continue
            elif probe in not_served:
                before = _peer_value(case, container, probe, "path")
                if not isinstance(before, str) or before == (path or "/"):
                    continue
            else:
                continue
            manifests.set_path(manifest, f"{CONTAINERS}[{index}].{probe}.httpGet.path", before)
            fixed.append(
                f"{probe} of {container['name']}: {path} -> {before}"
                + ("" if healthy is not None else _as_peers(case, container, "path", before))
            )
    source = (
        "the last healthy revision"
        if case.healthy
        else "the healthy Deployments that run the same image"
    )
    return case.proposal(
        "fix-probe-path",
        f"The probe asks for a path the application does not serve; restores the path of "
        f"{source} ({'; '.join(fixed)}).",
        manifest,
    )


def _probe_failures(evidence: Evidence, kind: str) -> set[str]:
    """The probes (readinessProbe...) whose Unhealthy events show this kind of failure:
    "refused" (nothing listens on the port) or "not-found" (HTTP 404: the path)."""
    found = set()
    for event in evidence.events:
        match = _UNHEALTHY.match(event.message) if event.reason == "Unhealthy" else None
        if match is None:
            continue
        output = match.group(2)
        if (kind == "refused" and "connect: connection refused" in output) or (
            kind == "not-found" and output.strip() == "HTTP probe failed with statuscode: 404"
        ):
            found.add(_PROBE_LABELS[match.group(1)])
    return found


def _peer_value(case: _Case, container: dict[str, Any], probe: str, field: str) -> Any:
    """The one value (path or port) healthy Deployments of this container's image give
    this probe: those of the same image if any, else of the same repository; the same
    probe first, else any of their probes. None when they disagree or there are none."""
    image = container.get("image")
    repository = image_repository(image)
    peers = [p for p in case.evidence.peer_probes if image_repository(p.image) == repository]
    pool = [p for p in peers if p.image == image] or peers
    for chosen in ([p for p in pool if p.probe == probe], pool):
        values = {getattr(p, field) for p in chosen} - {None}
        if values:
            return values.pop() if len(values) == 1 else None
    return None


def _as_peers(case: _Case, container: dict[str, Any], field: str, value: Any) -> str:
    """ ", as <the healthy Deployments of the same repository giving it> probe it", or ""."""
    repository = image_repository(container.get("image"))
    names = sorted(
        {
            p.workload
            for p in case.evidence.peer_probes
            if image_repository(p.image) == repository and getattr(p, field) == value
        }
    )
    verb = "probes" if len(names) == 1 else "probe"
    return f", as {', '.join(names[:3])} {verb} it" if names else ""


def peer_probes(deployment: Manifest, healthy: list[Manifest]) -> list[PeerProbe]:
    """How healthy Deployments of `deployment`'s own namespace running an image
    repository of it probe it.

    Args:
        deployment: the failing Deployment.
        healthy: other Deployments, each already known to run healthy (rolled out, with
            available replicas); the failing one, and any of another namespace (another
            team's or tenant's, whose probes may not pick what this one's kubelet asks
            for), are skipped.

    Paths that are not plain absolute URL paths are left out, named ports resolved to
    their number; at most MAX_PEER_PROBES, in a stable order.
    """
    meta = deployment.get("metadata") or {}
    me = (meta.get("namespace"), meta.get("name"))
    repositories = {
        image_repository(c.get("image")) for c in pod_spec(deployment).get("containers") or []
    } - {None}
    found: list[PeerProbe] = []
    for other in healthy:
        other_meta = other.get("metadata") or {}
        where = (other_meta.get("namespace"), other_meta.get("name"))
        if where == me or where[0] != me[0] or not all(isinstance(x, str) for x in where):
            continue
        for container in pod_spec(other).get("containers") or []:
            image = container.get("image")
            if not isinstance(image, str) or image_repository(image) not in repositories:
                continue
            for probe in PROBES:
                spec = container.get(probe) or {}
                get, tcp = spec.get("httpGet"), spec.get("tcpSocket")
                handler: dict[str, Any]
                if isinstance(get, dict):
                    handler, path = get, get.get("path", "/")
                elif isinstance(tcp, dict):
                    handler, path = tcp, None
                else:
                    continue
                if path is not None and not (
                    isinstance(path, str) and SAFE_PROBE_PATH.fullmatch(path)
                ):
                    continue
                found.append(
                    PeerProbe(
                        workload=f"{where[0]}/{where[1]}",
                        image=image,
                        probe=probe,
                        path=path,
                        port=_port_number(container, handler.get("port")),
                    )
                )
    found.sort(key=lambda p: (p.workload, p.image, p.probe))
    return found[:MAX_PEER_PROBES]


# -- the object beside the workload: a claim, a Service ------------------------------------


def claim_existing_class(case: _Case) -> FixProposal | None:
    """A claim that never bound because its storage class does not exist, re-created
    with a class the cluster has.

    The class is one a fact gives, never a guess: the class the workload's other claims
    bound with (one class among them), else the cluster's default class. A claim that
    bound, has a volume, or whose class exists is left alone; so is a cluster with no
    such class (a person picks one).
    """
    ev = case.evidence
    classes = set(ev.storage_classes)
    siblings = {
        c.storage_class
        for c in ev.claims
        if c.phase == "Bound" and c.storage_class and c.storage_class in classes
    }
    for claim in ev.claims:
        if claim.phase == "Bound" or claim.volume_name or claim.class_exists is not False:
            continue
        if not claim.storage_class or claim.storage_class in classes:
            continue
        if len(siblings) == 1:
            target, why = next(iter(siblings)), "the class the workload's other claims bound with"
        elif ev.default_storage_class in classes:
            target, why = ev.default_storage_class, "the cluster's default class"
        else:
            continue
        manifest = copy.deepcopy(claim.manifest)
        manifest.setdefault("spec", {})["storageClassName"] = target
        changes = manifests.diff(claim.manifest, manifest)
        meta = claim.manifest.get("metadata") or {}
        return FixProposal(
            source="playbook",
            strategy="claim-existing-class",
            rationale=(
                f"PersistentVolumeClaim {claim.name} never bound: its storage class "
                f"{claim.storage_class} does not exist. It holds no data, and a claim's class "
                f"cannot change in place, so it is re-created with {target}, {why}."
            ),
            manifest=manifest,
            changes=changes,
            target=ObjectRef(
                kind="PersistentVolumeClaim", namespace=meta.get("namespace", ""), name=claim.name
            ),
        )
    return None


def restore_service_selector(case: _Case) -> FixProposal | None:
    """A Service selecting none of the workload's pods gets a selector that matches them.

    Its own last applied selector when that matches the workload's pod template labels;
    else its selector's keys with the values the pod template carries (all keys must be
    there); else the workload's own selector. Every value comes from the Service's or
    the workload's manifest, never from a log line.
    """
    template = manifests.get_path(case.live, "spec.template.metadata.labels") or {}
    own = manifests.get_path(case.live, "spec.selector.matchLabels") or {}
    for svc in case.evidence.services:
        last = svc.last_applied_selector
        if last and all(template.get(k) == v for k, v in last.items()):
            selector, why = dict(last), "its last applied selector"
        elif svc.selector and all(k in template for k in svc.selector):
            selector = {k: template[k] for k in svc.selector}
            why = "its own keys with the values the workload's pods carry"
        elif own and all(template.get(k) == v for k, v in own.items()):
            selector, why = dict(own), "the workload's own selector"
        else:
            continue
        if selector == svc.selector:
            continue
        manifest = copy.deepcopy(svc.manifest)
        manifest.setdefault("spec", {})["selector"] = selector
        meta = svc.manifest.get("metadata") or {}
        return FixProposal(
            source="playbook",
            strategy="restore-service-selector",
            rationale=(
                f"Service {svc.name} selects none of the workload's pods, so it has no "
                f"endpoints; its selector is set to {why}."
            ),
            manifest=manifest,
            changes=manifests.diff(svc.manifest, manifest),
            target=ObjectRef(kind="Service", namespace=meta.get("namespace", ""), name=svc.name),
        )
    return None


# -- which playbooks for which failure --------------------------------------------------------

# Best first: the narrowest fix for the class, then the general revert. Unschedulable
# has no revert: when the cause is placement, restoring the rest would fix nothing.
PLAYBOOKS: dict[str, tuple[Playbook, ...]] = {
    "ImagePull": (restore_known_good_image, revert_to_last_healthy, closest_existing_tag),
    "CrashLoop": (
        raise_memory_limit,
        restore_env,
        restore_known_good_image,
        revert_to_last_healthy,
        drop_command_override,
        # A liveness probe that kills the container shows as a crash loop first.
        fix_probe_port,
        fix_probe_path,
    ),
    "OOMKilled": (raise_memory_limit, revert_to_last_healthy),
    "ProbeFailure": (fix_probe_port, fix_probe_path, revert_to_last_healthy),
    "Unschedulable": (fit_requests_to_nodes,),
    "ConfigError": (revert_to_last_healthy,),
    "AppError": (restore_env, revert_to_last_healthy),
    # The fix is to the object that is wrong, never to the Deployment.
    "VolumePending": (claim_existing_class,),
    "NoEndpoints": (restore_service_selector,),
}
