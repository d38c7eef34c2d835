"""Facts established without the model, and whether a text about them stays true.

A reviewer reads the diagnosis first; the engineer on call hears it. A small model
writes fluent sentences that are sometimes false: for a container killed for its
memory, one wrote "the current limits for memory are set too high (512Mi)" above a fix
that raised the limit. So the explanation is written from facts aifixer established
itself — read off the live Deployment, its pods, the events' reasons, the revision
history, the registry and, once applied, the change and its verification — and a text
may only name what those facts state:

- every number (a quantity, an exit code, a restart count, a port, a version) must be
  one the facts state, a memory amount in any of the units people write it in;
- every image, file path or field path must be one the facts name;
- every field it names (the memory limit, the image, a probe, the command...) must be
  one the facts name;
- it may not say an amount is too high where the facts show it needed raising (the
  fix raised it, or the release had lowered it), nor too low the other way round;
- "exit code N" must be an exit code the pods reported;
- once a fix is known, it names a field the fix changed.

`problems` says what in a text breaks those rules; a text with any is replaced by the
diagnosis written from the facts alone (`aifixer.fixer.playbook_diagnosis`), which
holds to them by construction. `establish` builds the facts; `Facts.lines` is what the
model reads and what the pull request leads with.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from . import untrusted
from .manifests import get_path, split_path
from .models import Diagnosis, Evidence, FieldChange, Incident, IncidentState
from .redact import redact

__all__ = [
    "CLASS_FIELDS",
    "CLASS_PHRASES",
    "EXIT_CODES",
    "Facts",
    "exit_meaning",
    "object_facts",
    "establish",
    "field_words",
    "names_a_change",
    "of_state",
    "problems",
    "shown",
    "written",
]

EXIT_CODES = {
    1: "the application exited with an error",
    2: "the shell or program was misused (bad arguments)",
    126: "the command was found but is not executable",
    127: "the command was not found in the image",
    # The reason tells which: OOMKilled (the kernel, for memory) or Error (the kubelet
    # after failed liveness probes, or a person); see `exit_meaning`.
    137: "killed by SIGKILL: for memory if the reason is OOMKilled, else by the kubelet or a person",
    139: "segmentation fault",
    143: "stopped by SIGTERM",
}

CONTAINERS = "spec.template.spec.containers"
PROBES = ("readinessProbe", "livenessProbe", "startupProbe")
MAX_CONTAINERS = 3
MAX_CHANGES = 6
MAX_VALUE = 120
_REASON_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")
_SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|KEY|CREDENTIAL", re.IGNORECASE)


@dataclass
class Facts:
    """What is known about one incident without the model's word for it."""

    workload: str  # "Deployment shop/report-api"
    failure_class: str
    lines: list[str] = field(default_factory=list)  # one fact each, plain text
    changes: list[FieldChange] = field(default_factory=list)  # the fix, once known
    verified: bool = False  # the fix was applied and verified
    diff: list[FieldChange] = field(default_factory=list)  # since the last healthy revision
    paths: set[str] = field(default_factory=set)  # Deployment fields the facts name
    kinds: set[str] = field(default_factory=set)  # kinds of field (see `field_words`)
    literals: set[str] = field(default_factory=set)  # images, tags, paths, quantities...
    numbers: set[str] = field(default_factory=set)  # every number the facts state
    amounts: dict[str, set[float]] = field(default_factory=dict)  # "memory limit" -> bytes
    exit_codes: set[int] = field(default_factory=set)
    exit_meanings: dict[int, str] = field(default_factory=dict)  # as the reason reads them
    names: list[str] = field(default_factory=list)  # the workload's own names, ignored
    hidden: set[str] = field(default_factory=set)  # env values whose names say credential
    seen: list[str] = field(default_factory=list)  # the symptoms, in words
    warning: str | None = None  # the newest Warning event's reason
    history: bool = True  # some revision ran healthy
    class_fields: list[str] = field(default_factory=list)  # where the class usually lies
    registry: list[str] = field(default_factory=list)  # what the registry said, in sentences
    objects: list[str] = field(default_factory=list)  # claims and Services beside it

    def text(self) -> str:
        return "\n".join(f"- {line}" for line in self.lines)

    @property
    def fields(self) -> list[str]:
        """The fields the diagnosis is about: the fix's, else those changed since healthy."""
        return [c.path for c in (self.changes or self.diff)]


# -- establishing the facts ---------------------------------------------------------------


def of_state(state: IncidentState) -> Facts:
    """The facts of a record: its evidence and the change applied (else proposed)."""
    changes: list[FieldChange] = []
    if state.apply is not None:
        changes = state.apply.changes
    elif state.proposal is not None:
        changes = state.proposal.changes
    verified = bool(state.verification and state.verification.ok and state.apply is not None)
    return establish(state.incident, state.evidence, changes, verified=verified)


def establish(
    incident: Incident,
    evidence: Evidence | None,
    changes: Sequence[FieldChange] = (),
    *,
    verified: bool = False,
) -> Facts:
    """The facts about `incident`, from the evidence and the fix's changes (if any).

    Args:
        changes: the fix, live -> fixed (the applied change, or the one proposed).
        verified: whether that change was applied and verified.
    """
    w = incident.workload
    facts = Facts(
        workload=f"{w.kind} {w.key}",
        failure_class=incident.failure_class,
        changes=list(changes)[:MAX_CHANGES],
        verified=verified,
        names=[w.name, w.namespace, w.key, w.cluster],
    )
    facts.lines.append(f"Workload: {facts.workload} on cluster {w.cluster}")
    facts.lines.append(
        f"Detected failure class: {incident.failure_class} "
        f"({CLASS_PHRASES[incident.failure_class]})"
    )
    if evidence is not None:
        _pods(facts, evidence)
        _containers(facts, evidence.deployment)
        _history(facts, evidence)
        _registry(facts, evidence)
        facts.objects = object_facts(evidence)
        facts.lines += facts.objects
    for change in facts.changes:
        verb = "verified" if verified else "proposed"
        facts.lines.append(f"Fix {verb}: {_change_line(change, facts.hidden)}")
        _note_change(facts, change, fix=True)
    if evidence is not None:
        containers = get_path(evidence.deployment, CONTAINERS, []) or []
        facts.class_fields = [
            f"{CONTAINERS}[{i}].{suffix}"
            for i in range(len(containers))
            for suffix in CLASS_FIELDS[incident.failure_class]
        ][:5]
    for line in facts.lines[1:]:
        plain = _strip_names(line, facts.names)
        facts.numbers.update(_NUMBER.findall(plain))
        facts.kinds.update(k for k, pattern in _KIND_WORDS.items() if pattern.search(plain))
        # Every word a fact states may be repeated as it stands.
        facts.literals.update(t.rstrip(".:!?").strip("[]") for t in _TOKEN.findall(plain))
    return facts


def _pods(facts: Facts, evidence: Evidence) -> None:
    pods = evidence.pods
    if pods:
        ready = sum(p.ready for p in pods)
        reasons = sorted({r for p in pods for r in p.reasons if _REASON_WORD.fullmatch(r)})
        restarts = max(p.restart_count for p in pods)
        line = f"Pods: {ready}/{len(pods)} ready"
        if reasons:
            line += f"; reasons {', '.join(reasons)}"
            facts.seen.append(f"pod reasons {', '.join(reasons)}")
        line += f"; restarts up to {restarts}"
        if restarts:
            facts.seen.append(f"up to {restarts} restarts")
        facts.lines.append(line)
    seen: set[tuple[Any, Any]] = set()
    for pod in pods:
        last = pod.last_termination or {}
        reason, code = last.get("reason"), last.get("exitCode")
        if (reason, code) in seen or not (isinstance(code, int) or reason):
            continue
        seen.add((reason, code))
        words = []
        if isinstance(reason, str) and _REASON_WORD.fullmatch(reason):
            words.append(reason)
        if isinstance(code, int):
            meaning = exit_meaning(code, reason)
            said = f"exit code {code}" + (f" ({meaning})" if meaning else "")
            if code not in facts.exit_codes and len(facts.exit_codes) < 2:
                facts.seen.append(said)
            facts.exit_codes.add(code)
            if meaning:
                facts.exit_meanings.setdefault(code, meaning)
            words.append(said)
        if words:
            facts.lines.append(f"Last termination: {', '.join(words)}")
        if len(seen) >= 3:
            break
    counts: dict[str, int] = {}
    for e in evidence.events:
        if e.type == "Warning" and _REASON_WORD.fullmatch(e.reason or ""):
            counts[e.reason] = counts.get(e.reason, 0) + e.count
            facts.warning = e.reason
    if facts.warning:
        facts.seen.append(f"event {facts.warning}")
    if counts:
        # Reasons only: an event's message is free text anyone who can create events wrote.
        listed = ", ".join(f"{r} x{n}" for r, n in list(counts.items())[-5:])
        facts.lines.append(f"Warning events: {listed}")


def _containers(facts: Facts, deployment: dict[str, Any]) -> None:
    containers = get_path(deployment, CONTAINERS, []) or []
    facts.names += [str(c["name"]) for c in containers if isinstance(c, dict) and c.get("name")]
    for i, c in enumerate(containers[:MAX_CONTAINERS]):
        if not isinstance(c, dict):
            continue
        base = f"{CONTAINERS}[{i}]"
        parts = []
        image = c.get("image")
        if isinstance(image, str):
            parts.append(f"image {image}")
            _note(facts, f"{base}.image", image)
        for scope in ("limits", "requests"):
            for resource in ("memory", "cpu"):
                value = get_path(c, f"resources.{scope}.{resource}")
                if value is not None:
                    role = f"{resource} {scope[:-1]}"
                    parts.append(f"{role} {value}")
                    _note(facts, f"{base}.resources.{scope}.{resource}", value)
        ports = [p.get("containerPort") for p in c.get("ports") or [] if isinstance(p, dict)]
        if ports:
            parts.append("ports " + ", ".join(str(p) for p in ports))
            for j, port in enumerate(ports):
                _note(facts, f"{base}.ports[{j}].containerPort", port)
        for probe in PROBES:
            if isinstance(c.get(probe), dict):
                parts.append(f"{probe} {_probe_words(c[probe])}")
                _note_probe(facts, f"{base}.{probe}", c[probe])
        for key in ("command", "args"):
            if isinstance(c.get(key), list):
                parts.append(f"{key} {_value(c[key])}")
                _note(facts, f"{base}.{key}", c[key])
        env = [v.get("name") for v in c.get("env") or [] if isinstance(v, dict)]
        if env:
            parts.append("env " + ", ".join(str(n) for n in env[:10]))
            _note(facts, f"{base}.env", None)
            for j, var in enumerate(c.get("env") or []):
                if isinstance(var, dict) and _SECRET_NAME.search(str(var.get("name"))):
                    facts.hidden.add(f"{base}.env[{j}].value")
                for ref in ("configMapKeyRef", "secretKeyRef"):
                    target = get_path(var, f"valueFrom.{ref}")
                    if isinstance(target, dict):
                        _note(facts, f"{base}.env[{j}].valueFrom.{ref}.name", target.get("name"))
                        _note(facts, f"{base}.env[{j}].valueFrom.{ref}.key", target.get("key"))
        for j, ref in enumerate(c.get("envFrom") or []):
            for kind in ("configMapRef", "secretRef"):
                if isinstance(ref, dict) and isinstance(ref.get(kind), dict):
                    _note(facts, f"{base}.envFrom[{j}].{kind}.name", ref[kind].get("name"))
        for j, mount in enumerate(c.get("volumeMounts") or []):
            if isinstance(mount, dict):
                _note(facts, f"{base}.volumeMounts[{j}].mountPath", mount.get("mountPath"))
        facts.lines.append(f"Container {c.get('name')}: {'; '.join(parts) or 'no settings'}")
    pod = get_path(deployment, "spec.template.spec", {}) or {}
    parts = []
    for key in ("nodeSelector", "affinity", "tolerations"):
        if pod.get(key):
            parts.append(f"{key} {_value(pod[key])}")
            _note(facts, f"spec.template.spec.{key}", None)
    for j, volume in enumerate(pod.get("volumes") or []):
        if isinstance(volume, dict):
            for kind in ("configMap", "secret", "persistentVolumeClaim"):
                if isinstance(volume.get(kind), dict):
                    name = volume[kind].get("name") or volume[kind].get("secretName")
                    name = name or volume[kind].get("claimName")
                    parts.append(f"volume {volume.get('name')} from {kind} {name}")
                    _note(facts, f"spec.template.spec.volumes[{j}].{kind}", name)
    replicas = get_path(deployment, "spec.replicas")
    if isinstance(replicas, int):
        parts.append(f"replicas {replicas}")
        _note(facts, "spec.replicas", replicas)
    if parts:
        facts.lines.append(f"Pod template: {'; '.join(parts[:8])}")


def _history(facts: Facts, evidence: Evidence) -> None:
    if evidence.last_healthy_template is None:
        facts.history = False
        facts.lines.append("Revision history: no revision ever ran healthy")
        return
    if not evidence.template_diff:
        facts.lines.append("Revision history: no field changed since the last healthy revision")
    for change in evidence.template_diff[:MAX_CHANGES]:
        path = (
            change.path
            if change.path.startswith("spec.template")
            else f"spec.template.{change.path}"
        )
        moved = FieldChange(path=path, before=change.before, after=change.after)
        facts.diff.append(moved)
        line = _change_line(moved, facts.hidden)
        facts.lines.append(f"Changed since the last healthy revision: {line}")
        _note_change(facts, moved, fix=False)
    for rev in evidence.revisions:
        for image in rev.images:
            facts.literals.add(image)


def _registry(facts: Facts, evidence: Evidence) -> None:
    for t in evidence.existing_tags[:3]:
        repo = t.image.rsplit(":", 1)[0] if ":" in t.image.rsplit("/", 1)[-1] else t.image
        missing = t.image.rsplit(":", 1)[1] if repo != t.image else "(none)"
        said = (
            f"tag {missing} of {repo} is not published; the existing tag {t.tag} is the one meant"
        )
        facts.registry.append(said)
        facts.lines.append(f"Registry: {said} ({t.rule})")
        facts.literals.update({t.image, t.tag, missing, f"{repo}:{t.tag}"})
        facts.kinds.add("image")


def object_facts(evidence: Evidence) -> list[str]:
    """What the claims and Services beside the workload show, in plain sentences.

    Names, classes and selectors are Kubernetes names and label values (the API server
    validated their characters), and short.
    """
    facts = []
    for claim in evidence.claims:
        if claim.phase == "Bound":
            continue
        sc = claim.storage_class
        if sc and claim.class_exists is False:
            facts.append(
                f"PersistentVolumeClaim {claim.name} is {claim.phase}: its storage class "
                f"{sc} does not exist in the cluster"
            )
        else:
            facts.append(f"PersistentVolumeClaim {claim.name} is {claim.phase}")
    if evidence.claims and evidence.storage_classes:
        default = evidence.default_storage_class
        facts.append(
            "storage classes of the cluster: "
            + ", ".join(
                c + (" (default)" if c == default else "") for c in evidence.storage_classes
            )
        )
    for svc in evidence.services:
        labels = ",".join(f"{k}={v}" for k, v in sorted(svc.selector.items())) or "nothing"
        facts.append(
            f"Service {svc.name} selects {labels}, which matches none of the workload's "
            f"pods: it has {svc.endpoints} endpoints"
        )
    return facts[:6]


def exit_meaning(code: int, reason: Any = None) -> str | None:
    """What an exit code means, read with its termination reason when that decides it."""
    if code == 137:
        if reason == "OOMKilled":
            return "killed by the kernel for exceeding the memory limit"
        return "killed by SIGKILL: by the kubelet, after failed liveness probes, or by a person"
    return EXIT_CODES.get(code)


# -- the diagnosis written from the facts alone -------------------------------------------

CLASS_PHRASES = {
    "ImagePull": "its pods cannot pull their container image",
    "CrashLoop": "its container exits soon after starting and is restarted again and again",
    "OOMKilled": "its container is killed for using more memory than its limit",
    "ProbeFailure": "its health probes fail",
    "Unschedulable": "its pods cannot be scheduled on any node",
    "ConfigError": "its pods cannot start: a ConfigMap, Secret or key they reference is missing",
    "AppError": "its application logs errors while the pods look healthy",
    "VolumePending": "its pods wait for a PersistentVolumeClaim that is never bound",
    "NoEndpoints": "its Service selects none of its pods, so it has no endpoints",
}
# Where each class usually lies, when the revision history names no changed field.
CLASS_FIELDS = {
    "ImagePull": ["image"],
    "CrashLoop": ["command", "args", "env"],
    "OOMKilled": ["resources.limits.memory"],
    "ProbeFailure": ["readinessProbe", "livenessProbe"],
    "Unschedulable": ["resources.requests"],
    "ConfigError": ["env"],
    "AppError": [],
    # Not the workload's: the claim or the Service is wrong (`object_facts`).
    "VolumePending": [],
    "NoEndpoints": [],
}


def written(facts: Facts) -> tuple[str, str, list[str]]:
    """(summary, root cause, fields): a diagnosis that says only what the facts state."""
    summary = f"{facts.workload} is failing: {CLASS_PHRASES[facts.failure_class]}."
    if facts.seen:
        summary += f" Seen: {'; '.join(facts.seen)}."
    if facts.diff:
        described = "; ".join(
            f"{c.path} changed from {_value(c.before, 60)} to {_value(c.after, 60)}"
            if c.path not in facts.hidden
            else f"{c.path} changed (a credential's value, not shown)"
            for c in facts.diff[:3]
        )
        cause = f"Since the last healthy revision, {described}: the likeliest cause."
    elif facts.objects and facts.failure_class in ("VolumePending", "NoEndpoints"):
        cause = facts.objects[0][0].upper() + facts.objects[0][1:] + "."
    elif facts.registry:
        cause = f"In the registry, {facts.registry[0]}."
    elif codes := [c for c in sorted(facts.exit_codes) if c in facts.exit_meanings]:
        cause = f"The container's exit code {codes[0]} means {facts.exit_meanings[codes[0]]}."
    elif facts.warning:
        cause = f"The cluster reports {facts.warning}."
    elif facts.history:
        cause = (
            f"No field changed since the last healthy revision; the failure "
            f"({facts.failure_class}) needs a person to look at the application."
        )
    else:
        cause = f"No revision of it ever ran healthy ({facts.failure_class})."
    if facts.changes:
        done = "The fix that verified" if facts.verified else "The fix proposed"
        change = "; ".join(_change_line(c, facts.hidden) for c in facts.changes[:3])
        cause += f" {done}: {change}."
    fields = facts.fields or facts.class_fields
    return redact(summary), redact(cause), fields[:5]


def shown(state: IncidentState) -> tuple[Diagnosis, list[str]]:
    """The diagnosis to show for a record, checked at the point it is shown.

    The recorded diagnosis if it holds to the record's facts (its evidence, and the fix
    applied and verified, when it was); else one written from those facts, with why the
    recorded one was not shown.
    """
    facts = of_state(state)
    d = state.diagnosis
    if d is not None:
        text = f"{d.summary}\n{d.root_cause}"
        found = problems(text, facts) + untrusted.findings(
            text, facts.names + sorted(facts.literals)
        )
        if not found:
            return d, []
    else:
        found = ["no diagnosis recorded"]
    summary, cause, fields = written(facts)
    fc = d.failure_class if d is not None else state.incident.failure_class
    return (
        Diagnosis(
            summary=summary, root_cause=cause, failure_class=fc, fields=fields, source="playbook"
        ),
        found,
    )


# -- recording what a fact names ----------------------------------------------------------


def _note(facts: Facts, path: str, value: Any) -> None:
    facts.paths.add(path)
    facts.kinds.update(_kinds(path))
    if value is None:
        return
    for literal in _literals(value):
        facts.literals.add(literal)
    role = _role(path)
    amount = _amount(value)
    if role and amount is not None:
        facts.amounts.setdefault(role, set()).add(amount)
        facts.amounts.setdefault(role.split()[0], set()).add(amount)


def _note_probe(facts: Facts, base: str, probe: dict[str, Any]) -> None:
    facts.paths.add(base)
    facts.kinds.update(_kinds(base))
    for handler in ("httpGet", "tcpSocket", "grpc"):
        spec = probe.get(handler)
        if isinstance(spec, dict):
            for key in ("path", "port"):
                if spec.get(key) is not None:
                    _note(facts, f"{base}.{handler}.{key}", spec[key])
    if isinstance(get_path(probe, "exec.command"), list):
        _note(facts, f"{base}.exec.command", probe["exec"]["command"])
    for key in ("initialDelaySeconds", "periodSeconds", "timeoutSeconds", "failureThreshold"):
        if isinstance(probe.get(key), int):
            facts.literals.add(str(probe[key]))


def _note_change(facts: Facts, change: FieldChange, *, fix: bool) -> None:
    _note(facts, change.path, change.before)
    _note(facts, change.path, change.after)
    for value in (change.before, change.after):
        if isinstance(value, dict) and any(k in value for k in ("httpGet", "tcpSocket", "exec")):
            _note_probe(facts, change.path, value)


def _literals(value: Any) -> list[str]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (str, int, float)):
        text = str(value)
        out = [text]
        if isinstance(value, str) and ":" in value.rsplit("/", 1)[-1] and "@" not in value:
            out.append(value.rsplit(":", 1)[1])  # an image's tag alone
        return out
    if isinstance(value, list):
        return [lit for v in value for lit in _literals(v)]
    if isinstance(value, dict):
        # Names and plain values inside (env names, ports, paths); never a credential's value.
        out = []
        for k, v in value.items():
            if k == "value" and _SECRET_NAME.search(str(value.get("name", ""))):
                continue
            out += _literals(v)
        return out
    return []


# -- how facts are worded -------------------------------------------------------------------


def _value(value: Any, limit: int = MAX_VALUE) -> str:
    if value is None:
        return "(absent)"
    if isinstance(value, str):
        text = value
    elif isinstance(value, list) and all(isinstance(v, dict) and "name" in v for v in value):
        text = "[" + ", ".join(_named(v) for v in value) + "]"
    else:
        text = json.dumps(value, separators=(",", ":"))
    text = redact(" ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _named(item: dict[str, Any]) -> str:
    """An env var (or any named item) in words; a credential's value never."""
    name = str(item["name"])
    for ref, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
        target = get_path(item, f"valueFrom.{ref}")
        if isinstance(target, dict):
            return f"{name} from {kind} {target.get('name')} key {target.get('key')}"
    if isinstance(item.get("value"), str) and not _SECRET_NAME.search(name):
        return f"{name}={item['value']}"
    return name


def _probe_words(probe: dict[str, Any]) -> str:
    if isinstance(probe.get("httpGet"), dict):
        spec = probe["httpGet"]
        return f"httpGet path {spec.get('path', '/')} port {spec.get('port')}"
    if isinstance(probe.get("tcpSocket"), dict):
        return f"tcpSocket port {probe['tcpSocket'].get('port')}"
    if isinstance(get_path(probe, "exec.command"), list):
        return f"exec {_value(probe['exec']['command'])}"
    return "set"


def _change_line(change: FieldChange, hidden: AbstractSet[str] = frozenset()) -> str:
    words = field_words(change.path)
    if change.path in hidden:
        return f"{words} ({change.path}): changed (a credential's value, not shown)"
    before, after = _amount(change.before), _amount(change.after)
    if before is not None and after is not None and before != after and _role(change.path):
        way = "raised" if after > before else "lowered"
        return f"{words} ({change.path}) {way} from {change.before} to {change.after}"
    return f"{words} ({change.path}): {_value(change.before)} -> {_value(change.after)}"


def field_words(path: str) -> str:
    """A field in words: "memory limit", "image", "readinessProbe port", "command"..."""
    role = _role(path)
    if role:
        return role
    parts = [p for p in split_path(path) if isinstance(p, str)]
    named = [
        p for p in parts if p not in ("spec", "template", "containers", "valueFrom", "httpGet")
    ]
    if not named:
        return path
    if len(named) > 1 and named[-1] in ("port", "path", "key", "name", "value", "containerPort"):
        return f"{named[-2]} {named[-1]}"
    return named[-1]


# -- kinds of field ---------------------------------------------------------------------------

# How a text names each kind of field, and which paths are of that kind.
_KIND_WORDS: dict[str, re.Pattern[str]] = {
    "memory": re.compile(r"(?i)\bmemory\b|\bmem\b|\bRAM\b|\blimits\.memory\b|\brequests\.memory\b"),
    "cpu": re.compile(r"(?i)\bcpu\b|\bprocessor\b|\bmillicores?\b|\bcores?\b"),
    "image": re.compile(r"(?i)\bimages?\b|\btags?\b"),
    "command": re.compile(r"(?i)\bcommands?\b|\bargs\b|\barguments?\b|\bentry\s*point\b"),
    "env": re.compile(r"(?i)\benv\b|\benvFrom\b|\benvironment\b|\bvariables?\b"),
    "probe": re.compile(r"(?i)\bprobes?\b|\bhealth\s*checks?\b"),
    "readinessProbe": re.compile(r"(?i)\breadiness\w*"),
    "livenessProbe": re.compile(r"(?i)\bliveness\w*"),
    "startupProbe": re.compile(r"(?i)\bstartup\s*probes?\b|\bstartupProbe\b"),
    "port": re.compile(r"(?i)\bports?\b|\bcontainerPort\b"),
    "replicas": re.compile(r"(?i)\breplicas?\b"),
    "scheduling": re.compile(
        r"(?i)\bnodeSelector\b|\bnode\s+selectors?\b|\btolerations?\b|\baffinity\b|\btaints?\b"
    ),
    "volume": re.compile(r"(?i)\bvolumes?\b|\bvolumeMounts?\b|\bmount\s*paths?\b|\bmountPath\b"),
    "configmap": re.compile(r"(?i)\bconfig\s*maps?\b|\bconfigMap\w*"),
    "secret": re.compile(r"(?i)\bsecrets?\b|\bsecretKeyRef\b|\bsecretRef\b"),
    "claim": re.compile(
        r"(?i)\bpersistent\s*volume\s*claims?\b|\bPersistentVolumeClaim\b|\bPVCs?\b"
        r"|\bclaims?\b|\bstorage\s*class(?:es)?\b|\bstorageClassName\b"
    ),
    "service": re.compile(r"(?i)\bservices?\b|\bselectors?\b|\bendpoints?\b"),
}


def _kinds(path: str) -> set[str]:
    kinds = set()
    if re.search(r"\.resources(\.|$)", path):
        kinds |= {k for k in ("memory", "cpu") if k in path} or {"memory", "cpu"}
    if re.search(r"\.image$", path):
        kinds.add("image")
    if re.search(r"\.(command|args)$", path) and not any(p in path for p in PROBES):
        kinds.add("command")
    if re.search(r"\.(env|envFrom)(\[|\.|$)", path):
        kinds.add("env")
    for probe in PROBES:
        if probe in path:
            kinds |= {"probe", probe}
    if re.search(r"(\.ports\b|[pP]ort$)", path):
        kinds.add("port")
    if path == "spec.replicas":
        kinds.add("replicas")
    if re.search(r"\.(nodeSelector|affinity|tolerations)(\[|\.|$)", path):
        kinds.add("scheduling")
    if re.search(r"\.(volumes|volumeMounts)(\[|\.|$)", path):
        kinds.add("volume")
    if re.search(r"configMap", path):
        kinds.add("configmap")
    if re.search(r"secret", path, re.IGNORECASE):
        kinds.add("secret")
    if re.search(r"storageClassName|\.resources\.requests\.storage", path):
        kinds.add("claim")
    if path.startswith("spec.selector") or path == "spec.ports":
        kinds.add("service")
    return kinds


def _role(path: str) -> str | None:
    """ "memory limit", "cpu request"... for a resource path; None for any other."""
    m = re.search(r"\.resources\.(limits|requests)\.(memory|cpu)$", path)
    return f"{m.group(2)} {m.group(1)[:-1]}" if m else None


def names_a_change(text: str, facts: Facts) -> bool:
    """Whether `text` names a field the fix changed (else one changed since healthy)."""
    paths = facts.fields
    if not paths:
        return True
    if any(p in text or p.removeprefix(f"{CONTAINERS}") in text for p in paths):
        return True
    wanted = set().union(*(_kinds(p) for p in paths))
    return any(_KIND_WORDS[k].search(text) for k in wanted if k in _KIND_WORDS)


# -- checking a text --------------------------------------------------------------------------

_NUMBER = re.compile(r"(?<![\w])\d+(?:\.\d+)*")
_TOKEN = re.compile(r"[^\s,;(){}\"'`<>]+")
_MEMORY_UNITS = {
    "ki": 2**10, "kib": 2**10, "kb": 1e3, "k": 1e3, "kilobytes": 1e3,
    "mi": 2**20, "mib": 2**20, "mb": 1e6, "m": 1e6, "megabytes": 2**20, "megs": 2**20,
    "gi": 2**30, "gib": 2**30, "gb": 1e9, "g": 1e9, "gigabytes": 2**30,
    "ti": 2**40, "tib": 2**40, "tb": 1e12, "bytes": 1, "b": 1,
}  # fmt: skip
_DECIMAL_TWIN = {"mb": 2**20, "gb": 2**30, "kb": 2**10, "m": 2**20, "g": 2**30}
_CPU_UNITS = {"millicores": 1.0, "millicore": 1.0, "cores": 1000.0, "core": 1000.0, "cpus": 1000.0}
_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)([A-Za-z]+)?$")
_IMAGE = re.compile(
    r"^[a-z0-9][\w.-]*(?::\d+)?/[\w./-]+(?::[\w.-]+|@sha256:[0-9a-f]+)?$|^[a-z0-9][\w.-]*:[\w.-]*[0-9][\w.-]*$"
)
_FILE_PATH = re.compile(r"^/[\w./-]*$")
_FIELD_PATH = re.compile(r"^[A-Za-z_]\w*(?:\[\d+\])?(?:\.[A-Za-z_]\w*(?:\[\d+\])?)+$")
_ABBREVIATIONS = {"e.g", "i.e", "etc", "vs", "a.k.a"}
_COMMON = {
    "k8s",
    "ipv4",
    "ipv6",
    "http2",
    "sha256",
    "utf-8",
    "utf8",
    "x86",
    "amd64",
    "arm64",
    "64-bit",
}
_EXIT_CODE = re.compile(r"(?i)\bexit(?:ed)?\s+(?:with\s+)?(?:code|status)?\s*(\d+)")
_CLAUSE = re.compile(r"[.;!?]\s+|,\s*|\s+(?:and|but|while|whereas|so)\s+")
_HIGH = re.compile(
    r"(?i)\btoo\s+(?:high|large|big|much|generous)\b|\bexcessive\w*|\bover-?provision\w*"
    r"|\bhigher\s+than\s+(?:needed|necessary|required)|\bmore\s+than\s+(?:needed|necessary|required)"
    r"|\b(?:should|must|needs?\s+to)\s+be\s+(?:lowered|reduced|decreased)\b"
)
_LOW = re.compile(
    r"(?i)\btoo\s+(?:low|small|little|tight)\b|\binsufficient\b|\bnot\s+enough\b"
    r"|\blower\s+than\s+(?:needed|necessary|required)|\bless\s+than\s+(?:needed|necessary|required)"
    r"|\b(?:should|must|needs?\s+to)\s+be\s+(?:raised|increased)\b"
)
_LIMIT = re.compile(r"(?i)\blimits?\b")
_REQUEST = re.compile(r"(?i)\brequests?\b|\breservation\b")


def problems(text: str, facts: Facts, *, require_field: bool = True) -> list[str]:
    """Why `text` may not be said about the incident `facts` describe; empty when it may.

    Args:
        text: a diagnosis (summary and root cause), or any sentence about the incident.
        facts: what aifixer established (`establish`).
        require_field: also require that the text names a field the fix changed (or,
            before a fix, one changed since the last healthy revision).
    """
    found: list[str] = []
    plain = _strip_names(text, facts.names)
    found += _token_problems(plain, facts)
    found += _field_problems(plain, facts)
    found += _direction_problems(plain, facts)
    for m in _EXIT_CODE.finditer(plain):
        if int(m.group(1)) not in facts.exit_codes:
            found.append(f"exit code {m.group(1)}, which no pod reported")
    if require_field and not names_a_change(text, facts):
        fields = ", ".join(sorted({field_words(p) for p in facts.fields}))
        found.append(f"names none of the changed fields ({fields})")
    return list(dict.fromkeys(found))


def _strip_names(text: str, names: Iterable[str]) -> str:
    for name in sorted({n for n in names if n}, key=len, reverse=True):
        # Not inside an image reference, a path or a host: "web" in "web/storefront:3.1".
        text = re.sub(rf"(?<![\w./:@-]){re.escape(name)}(?![\w/:@-]|\.\w)", " ", text)
    return text


def _token_problems(text: str, facts: Facts) -> list[str]:
    found = []
    tokens = [m.group(0) for m in _TOKEN.finditer(text)]
    for i, raw in enumerate(tokens):
        token = raw.rstrip(".:!?").strip("[]")
        if not token or token in facts.literals or token.lower() in _ABBREVIATIONS:
            continue
        if _IMAGE.match(token):
            if not _known_image(token, facts):
                found.append(f"image {token}, which no fact names")
            continue
        if _FILE_PATH.match(token) and len(token) > 1:
            found.append(f"path {token}, which no fact names")
            continue
        if _FIELD_PATH.match(token):
            if not _known_path(token, facts):
                found.append(f"field {token}, which no fact names")
            continue
        if not any(ch.isdigit() for ch in token):
            continue
        unit = tokens[i + 1].rstrip(".:!?").lower() if i + 1 < len(tokens) else ""
        why = _number_problem(token, unit, facts)
        if why:
            found.append(why)
    return found


def _number_problem(token: str, next_word: str, facts: Facts) -> str | None:
    m = _QUANTITY.match(token)
    if m:
        number, suffix = m.group(1), m.group(2) or ""
        unit = suffix.lower()
        if not suffix and (next_word in _MEMORY_UNITS or next_word in _CPU_UNITS):
            unit = next_word
        if suffix == "m" or unit in _CPU_UNITS:  # Kubernetes' millicores, or words
            cores = float(number) * _CPU_UNITS.get(unit, 1.0) / 1000
            if any(abs(cores - k) < 1e-6 for k in facts.amounts.get("cpu", set())):
                return None
            return f"amount {token}, which no fact states"
        if unit in _MEMORY_UNITS:
            if _memory_known(float(number), unit, facts):
                return None
            shown = token if suffix else f"{token} {next_word}"
            return f"amount {shown}, which no fact states"
        if number in facts.numbers and unit in ("", "x"):
            return None
        return f"number {token}, which no fact states"
    version = token.lstrip("vV")
    if re.fullmatch(r"\d+(?:\.\d+)+", version):
        return None if version in facts.numbers else f"version {token}, which no fact states"
    lines = " ".join(facts.lines)
    if re.fullmatch(r"\d+/\d+", token):
        return None if token in lines else f"ratio {token}, which no fact states"
    if token.lower() in _COMMON or token.lower() in lines.lower():
        return None
    runs = re.findall(r"\d+", token)
    if all(r in facts.numbers for r in runs):
        return None
    return f"{token}, which no fact states"


def _memory_known(number: float, unit: str, facts: Facts) -> bool:
    known = facts.amounts.get("memory", set())
    candidates = {number * _MEMORY_UNITS[unit]}
    if unit in _DECIMAL_TWIN:  # "512MB" is often meant as 512Mi
        candidates.add(number * _DECIMAL_TWIN[unit])
    return any(abs(c - k) < 0.5 for c in candidates for k in known)


def _known_image(token: str, facts: Facts) -> bool:
    images = {lit for lit in facts.literals if "/" in lit or ":" in lit}
    return any(i == token or i.endswith(f"/{token}") for i in images)


def _known_path(token: str, facts: Facts) -> bool:
    wanted = [p for p in split_path(token) if isinstance(p, str)]
    for path in facts.paths:
        have = [p for p in split_path(path) if isinstance(p, str)]
        if _subsequence(wanted, have):
            return True
    return False


def _subsequence(wanted: list[str], have: list[str]) -> bool:
    it = iter(have)
    return all(any(w == h for h in it) for w in wanted)


def _field_problems(text: str, facts: Facts) -> list[str]:
    found = []
    for kind, pattern in _KIND_WORDS.items():
        m = pattern.search(text)
        if m and kind not in facts.kinds and not _symptom_only(kind, text, facts):
            found.append(f"the {m.group(0)}, which no fact names")
    return found


_SYMPTOM = {
    # Words that name a symptom, not a field: "out of memory" for a container killed for it.
    "memory": re.compile(r"(?i)\bout\s+of\s+memory\b"),
    "image": re.compile(r"(?i)\bpull\w*\s+(?:its|the|their)\s+(?:container\s+)?images?\b"),
    "probe": re.compile(r"(?i)\bhealth\s*checks?\b"),
}


def _symptom_only(kind: str, text: str, facts: Facts) -> bool:
    """The kind is named only as the symptom the detected class is about."""
    symptom = _SYMPTOM.get(kind)
    if symptom is None:
        return False
    own = {"memory": "OOMKilled", "image": "ImagePull", "probe": "ProbeFailure"}[kind]
    if facts.failure_class != own:
        return False
    return not _KIND_WORDS[kind].search(symptom.sub(" ", text))


def _direction_problems(text: str, facts: Facts) -> list[str]:
    """An amount said to be too high where the facts show it needed raising, or the reverse."""
    needs = _needs(facts)
    found = []
    for clause in _CLAUSE.split(text):
        high, low = _HIGH.search(clause), _LOW.search(clause)
        if not (high or low):
            continue
        for resource in ("memory", "cpu"):
            if not _KIND_WORDS[resource].search(clause):
                continue
            scopes = [s for s, p in (("limit", _LIMIT), ("request", _REQUEST)) if p.search(clause)]
            for scope in scopes or ["limit", "request"]:
                role = f"{resource} {scope}"
                need = needs.get(role)
                if need == "more" and high:
                    found.append(f"says the {role} is {high.group(0)}, but it needed raising")
                if need == "less" and low:
                    found.append(f"says the {role} is {low.group(0)}, but it needed lowering")
            found += _amount_roles(clause, resource, scopes, facts)
    return found


def _needs(facts: Facts) -> dict[str, str]:
    """Which way each resource amount had to go: from the fix, else from the release."""
    needs: dict[str, str] = {}
    for source, sign in ((facts.diff, -1), (facts.changes, 1)):
        for change in source:
            role = _role(change.path)
            before, after = _amount(change.before), _amount(change.after)
            if role and before is not None and after is not None and before != after:
                # The fix raising it, or the release lowering it, both say "it needs more".
                needs[role] = "more" if (after > before) == (sign > 0) else "less"
    return needs


def _amount_roles(clause: str, resource: str, scopes: list[str], facts: Facts) -> list[str]:
    """In a clause about one amount (the memory limit), a quantity must be that amount's."""
    if len(scopes) != 1 or resource != "memory":
        return []
    role = f"{resource} {scopes[0]}"
    known = facts.amounts.get(role, set())
    found = []
    for m in re.finditer(r"\b(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|KiB|MiB|GiB|KB|MB|GB)\b", clause):
        unit = m.group(2).lower()
        candidates = {float(m.group(1)) * _MEMORY_UNITS[unit]}
        if unit in _DECIMAL_TWIN:
            candidates.add(float(m.group(1)) * _DECIMAL_TWIN[unit])
        if not any(abs(c - k) < 0.5 for c in candidates for k in known):
            found.append(f"calls {m.group(0)} the {role}, which it never was")
    return found


_AMOUNT = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|Pi|k|M|G|T|m)?$")
_FACTORS = {
    None: 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
}  # fmt: skip


def _amount(value: Any) -> float | None:
    """A Kubernetes quantity in base units (bytes, cores); None if it is not one."""
    if isinstance(value, bool) or value is None:
        return None
    m = _AMOUNT.match(str(value))
    return float(m.group(1)) * _FACTORS[m.group(2)] if m else None
