"""What a proposed fix may change, decided before anything touches the cluster.

A proposal comes from a model (untrusted: it may be wrong, confused or steered by a
log line written by an attacker) or from a playbook. Either way it is checked here
against the live Deployment, and refused unless every difference is one aifixer is
trusted to make on its own:

- the object stays the same object: apiVersion, kind, name, namespace and selector;
- only an allow-list of fields changes (`ALLOWED_CONTAINER_FIELDS` of the existing
  containers, and `spec.replicas` within bounds). An absent field counts as a change:
  a proposal is the whole Deployment, and a field it drops would be dropped;
- nothing raises privilege; these get their own reasons although the allow-list
  refuses them too, because they are what a reviewer must see first;
- nothing runs new code or reaches somewhere new. A field that executes or connects
  (`command`, `args`, exec probes, a probe's `host` and `httpHeaders`, environment
  variables, `envFrom`) may only become a value the workload itself had, live or in
  its last healthy revision. `command` and `args` may also be removed, which runs the
  image's own entrypoint (code the workload never ran, perhaps as root): only as a
  return to a last healthy revision that had no override, or, for a container that
  never ran healthy, when its pods' status holds the container runtime's StartError
  naming exactly the override's executable (`runtime_cannot_exec`, the rule the
  playbook follows too). Such a removal is a pure one: `command` and `args` both go,
  so the entrypoint runs with its own arguments, and nothing else of that container
  changes. No new variable name (`LD_PRELOAD`, `HTTPS_PROXY`), no new literal (a
  literal for a secret is an invented secret);
- no invented references: a Secret or ConfigMap reference never becomes a literal,
  and references point only to objects and keys the workload already used (live or
  in its last healthy revision). A key never used before is a guess about an object
  aifixer cannot read, and a server-side dry-run would not catch it: the kubelet
  fails only at container start;
- images only from a repository the workload already ran; tags and digests are free;
- amounts stay tunable within bounds: resources parse, memory and CPU limits stay
  under `settings.max_memory_limit` and `settings.max_cpu_limit`, requests stay under
  limits, probe timings stay within `PROBE_BOUNDS`;
- the result is plausible as a schema (the server-side dry-run, done by the pipeline,
  is the complete check).

The rules hold for every source of a proposal alike (the model, the playbooks, a
remembered fix): `check` knows only the live Deployment, the proposal and the
workload's past (`Past`: its revisions, last healthy pod template and its pods'
status, read from the cluster). The pipeline runs it when a fix is chosen and again, on a past re-read from
the cluster, immediately before writing.

`check` returns every reason it finds, in words that name the field, so a refusal can
be recorded and read out to the on-call engineer.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

from . import manifests
from .models import Manifest, PodState, Revision
from .settings import Settings

POD_SPEC = "spec.template.spec"
ALLOWED_CONTAINER_FIELDS = (
    "image",
    "command",
    "args",
    "env",
    "envFrom",
    "resources",
    "readinessProbe",
    "livenessProbe",
    "startupProbe",
    "ports",
)
PROBES = ("readinessProbe", "livenessProbe", "startupProbe")
PROBE_HANDLERS = ("httpGet", "tcpSocket", "exec", "grpc")
IDENTITY_PATHS = ("apiVersion", "kind", "metadata.name", "metadata.namespace", "spec.selector")

_ALLOWED_PATH = re.compile(
    r"^spec\.replicas$"
    r"|^spec\.template\.spec\.containers\[\d+\]\.(?:"
    + "|".join(ALLOWED_CONTAINER_FIELDS)
    + r")(?:[.\[]|$)"
)
_CONTAINERS_PATH = f"{POD_SPEC}.containers"
CREDENTIAL_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|KEY|CREDENTIAL", re.IGNORECASE)
_REF_KINDS = {"secretKeyRef": "Secret", "configMapKeyRef": "ConfigMap"}
_ENV_FROM_KINDS = {"secretRef": "Secret", "configMapRef": "ConfigMap"}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# A path an HTTP probe may be given: absolute, URL characters only, bounded.
SAFE_PROBE_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,199}")
# Probe timings a fix may tune, each within (lowest, highest) seconds or counts.
PROBE_BOUNDS = {
    "initialDelaySeconds": (0, 600),
    "periodSeconds": (1, 300),
    "timeoutSeconds": (1, 120),
    "failureThreshold": (1, 120),
    "successThreshold": (1, 10),
    "terminationGracePeriodSeconds": (1, 600),
}


class Past(NamedTuple):
    """What the workload ran before: its revisions and the last healthy pod template;
    and its pods' status now, where the container runtime's StartError is read.

    `Evidence` has the three attributes and may stand in for it. Without pods, no
    removal of a command override is ever a repair of one the runtime cannot execute.
    """

    revisions: list[Revision]
    last_healthy_template: Manifest | None
    pods: Sequence[PodState] = ()


# Namespaces aifixer never writes to, whatever the configuration says.
FORBIDDEN_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")


def namespace_refusal(namespace: Any, settings: Settings) -> str | None:
    """Why aifixer may not act in `namespace`; None when it may.

    Only watched namespaces (`settings.namespaces`; empty means all), and never the
    cluster's own (`FORBIDDEN_NAMESPACES`) or the farm's (`settings.own_namespace`).
    """
    if not isinstance(namespace, str) or not _DNS_LABEL.match(namespace):
        return f"{_short(namespace)} is not a namespace name"
    if namespace in FORBIDDEN_NAMESPACES or namespace == settings.own_namespace:
        return f"namespace {namespace} is never changed by aifixer"
    if settings.namespaces and namespace not in settings.namespaces:
        return f"namespace {namespace} is not watched (AIFIXER_NAMESPACES)"
    return None


def is_allowed_path(path: str) -> bool:
    """Whether aifixer may change the manifest field at `path` on its own."""
    return bool(_ALLOWED_PATH.match(path))


def check(live: Manifest, proposed: Any, past: Past | Any, settings: Settings) -> list[str]:
    """Why `proposed` may not replace `live`; an empty list means it may.

    Args:
        live: the Deployment as the cluster has it (status and server fields are ignored).
        proposed: the whole corrected Deployment, as a model or a playbook wrote it;
            anything, since a model reply may not even be a mapping.
        past: the workload's revisions and last healthy template (a `Past`, or the
            incident's `Evidence`): which images, commands, variables, Secrets,
            ConfigMaps and keys the workload already used.
        settings: `max_replicas`, `max_memory_limit` and `max_cpu_limit` are the bounds.
    """
    if not isinstance(proposed, dict):
        return [f"the proposal is not a mapping but a {type(proposed).__name__}"]
    live, proposed = manifests.clean(live), manifests.clean(proposed)
    reasons = _identity(live, proposed) + _shape(proposed)
    if reasons:
        return reasons
    refusal = rollout_refusal(live)
    if refusal:
        return [refusal]
    live, proposed = comparable(live), comparable(proposed)
    history = _History(live, past)
    for found in (
        _container_list(live, proposed),
        _allow_list(live, proposed),
        _privileges(live, proposed),
        _code(live, proposed, history),
        _secrets(live, proposed, history),
        _images(live, proposed, history),
        _resources(live, proposed, settings),
        _probe_timings(live, proposed),
        _probe_paths(live, proposed),
        _replicas(live, proposed, settings),
        _schema(proposed),
    ):
        reasons.extend(r for r in found if r not in reasons)
    return reasons


def rollout_refusal(live: Manifest) -> str | None:
    """Why no fix of this workload could ever be verified, or None.

    A fix is proven by its pods running healthy. An OnDelete StatefulSet or DaemonSet
    never replaces a pod for a new template (nor back, after a rollback), and a
    partitioned StatefulSet leaves the pods below the partition on the old one: the
    fix would stay unproven, or prove nothing. Such a workload is left to a person.
    """
    kind = live.get("kind")
    if kind not in ("StatefulSet", "DaemonSet"):
        return None
    strategy = _dict(_dict(live.get("spec")).get("updateStrategy"))
    kind_words = "StatefulSet" if kind == "StatefulSet" else "DaemonSet"
    if strategy.get("type", "RollingUpdate") != "RollingUpdate":
        return (
            f"spec.updateStrategy: the {kind_words} updates {_short(strategy.get('type'))}, "
            "so its pods never run a fix until deleted by hand: nothing is changed"
        )
    partition = _dict(strategy.get("rollingUpdate")).get("partition")
    if kind == "StatefulSet" and partition not in (None, 0):
        return (
            f"spec.updateStrategy.rollingUpdate.partition: the StatefulSet is partitioned "
            f"({_short(partition)}), so the pods below it would never run a fix: nothing is "
            "changed"
        )
    return None


# -- comparing what the server would store -------------------------------------------

# The API server's defaults for a Deployment's fields. A reply that leaves one out asks
# for the default, which the live object already shows, so it is no change.
_DEPLOYMENT_DEFAULTS = {"replicas": 1, "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600}
_ROLLING_UPDATE_DEFAULTS = {"maxUnavailable": "25%", "maxSurge": "25%"}
_SET_DEFAULTS: dict[str, dict[str, Any]] = {
    "StatefulSet": {
        "podManagementPolicy": "OrderedReady",
        "revisionHistoryLimit": 10,
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
        "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
    },
    "DaemonSet": {
        "revisionHistoryLimit": 10,
        "updateStrategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
        },
    },
}
_POD_DEFAULTS = {
    "restartPolicy": "Always",
    "dnsPolicy": "ClusterFirst",
    "schedulerName": "default-scheduler",
    "terminationGracePeriodSeconds": 30,
}
_CONTAINER_DEFAULTS = {
    "terminationMessagePath": "/dev/termination-log",
    "terminationMessagePolicy": "File",
}
_PROBE_DEFAULTS = {
    "timeoutSeconds": 1,
    "periodSeconds": 10,
    "successThreshold": 1,
    "failureThreshold": 3,
}
_HTTP_GET_DEFAULTS = {"path": "/", "scheme": "HTTP"}
_CONFIG_VOLUME_DEFAULTS = {"defaultMode": 420}


def comparable(deployment: Manifest) -> Manifest:
    """A copy as the API server would store it, for comparison only.

    Absent defaulted fields are filled in, and empty maps and lists dropped: Kubernetes
    reads `annotations: {}` or `env: []` as absent, and a reply may write either.
    """
    out = copy.deepcopy(deployment)
    spec = _dict(out.get("spec"))
    kind_defaults = _SET_DEFAULTS.get(out.get("kind"))  # type: ignore[arg-type]
    if kind_defaults is not None:
        # A StatefulSet's or DaemonSet's own defaults (updateStrategy...), beside the
        # Deployment's filled in on both sides below, which change nothing compared.
        for key, value in kind_defaults.items():
            if isinstance(value, dict) and isinstance(spec.get(key), dict):
                _fill(spec[key], {k: v for k, v in value.items() if k != "rollingUpdate"})
                rolling = value.get("rollingUpdate")
                if rolling and spec[key].get("type") == "RollingUpdate":
                    _fill(_dict(spec[key].setdefault("rollingUpdate", {})), rolling)
            else:
                _fill(spec, {key: value})
    _fill(spec, _DEPLOYMENT_DEFAULTS)
    strategy = spec.setdefault("strategy", {})
    if isinstance(strategy, dict):
        _fill(strategy, {"type": "RollingUpdate"})
        if strategy["type"] == "RollingUpdate":
            _fill(_dict(strategy.setdefault("rollingUpdate", {})), _ROLLING_UPDATE_DEFAULTS)
    pod = pod_spec(out)
    _fill(pod, _POD_DEFAULTS)
    for kind in ("initContainers", "containers"):
        for container in _list(pod.get(kind)):
            _container_defaults(_dict(container))
    for volume in _list(pod.get("volumes")):
        for source in ("configMap", "secret"):
            _fill(_dict(_dict(volume).get(source)), _CONFIG_VOLUME_DEFAULTS)
    return _pruned(out)


def _container_defaults(container: dict[str, Any]) -> None:
    _fill(container, _CONTAINER_DEFAULTS)
    image = container.get("image")
    if isinstance(image, str):
        _fill(container, {"imagePullPolicy": _pull_policy(image)})
    for port in _list(container.get("ports")):
        _fill(_dict(port), {"protocol": "TCP"})
    for probe in PROBES:
        probe_spec = _dict(container.get(probe))
        _fill(probe_spec, _PROBE_DEFAULTS)
        _fill(_dict(probe_spec.get("httpGet")), _HTTP_GET_DEFAULTS)


def _pull_policy(image: str) -> str:
    """Always for `:latest` or no tag, IfNotPresent for a tag or a digest."""
    if "@" in image:
        return "IfNotPresent"
    last = image.rsplit("/", 1)[-1]
    return "IfNotPresent" if ":" in last and not last.endswith(":latest") else "Always"


def _fill(target: dict[str, Any], defaults: dict[str, Any]) -> None:
    for key, value in defaults.items():
        if target.get(key) is None:
            target[key] = copy.deepcopy(value)


def _pruned(value: Any) -> Any:
    if isinstance(value, dict):
        kept = {k: _pruned(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


# -- quantities and image references (shared with the playbooks) -----------------------

_QUANTITY = re.compile(
    r"^([+-]?(?:\d+\.?\d*|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$"
)
_BINARY_SUFFIX = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL_SUFFIX = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
MEBIBYTE = 1024 * 1024


class QuantityError(ValueError):
    """Not a Kubernetes resource quantity."""


def parse_quantity(value: Any) -> Decimal:
    """The exact value of a quantity: "128Mi" -> 134217728, "250m" -> 0.25, 2 -> 2."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise QuantityError(f"{value!r} is not a quantity")
    if not isinstance(value, str):
        return Decimal(str(value))
    match = _QUANTITY.match(value.strip())
    if not match:
        raise QuantityError(f"{value!r} is not a quantity")
    number, suffix = match.groups()
    try:
        amount = Decimal(number)
    except InvalidOperation as exc:
        raise QuantityError(f"{value!r} is not a quantity") from exc
    if not suffix:
        return amount
    if suffix in _BINARY_SUFFIX:
        return amount * Decimal(1024) ** _BINARY_SUFFIX[suffix]
    if suffix in _DECIMAL_SUFFIX:
        return amount * Decimal(10) ** _DECIMAL_SUFFIX[suffix]
    return amount * Decimal(10) ** int(suffix[1:])


_IMAGE_REF = re.compile(
    r"^(?P<name>[a-z0-9]+(?:[._-][a-z0-9]+)*(?::\d+(?=/))?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?$"
)


def image_repository(ref: Any) -> str | None:
    """The registry and repository an image comes from, normalized, or None if malformed.

    `web/storefront:3.1.0` and `docker.io/web/storefront@sha256:...` are the same
    repository, `docker.io/web/storefront`; `nginx` is `docker.io/library/nginx`.
    """
    if not isinstance(ref, str):
        return None
    match = _IMAGE_REF.match(ref)
    if not match:
        return None
    name = match.group("name")
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    else:
        registry, path = "docker.io", name
    if registry == "index.docker.io":
        registry = "docker.io"
    if registry == "docker.io" and "/" not in path:
        path = f"library/{path}"
    return f"{registry}/{path}"


# -- what the workload already used -----------------------------------------------------


def pod_spec(template_or_deployment: Manifest | None) -> dict[str, Any]:
    """The pod spec of a Deployment or of a pod template; {} when there is none."""
    if not isinstance(template_or_deployment, dict):
        return {}
    spec = _dict(template_or_deployment.get("spec"))
    if "template" in spec:
        spec = _dict(_dict(spec["template"]).get("spec"))
    return spec


def containers_by_name(spec: dict[str, Any], kind: str = "containers") -> dict[str, dict[str, Any]]:
    return {name: c for c in _list(spec.get(kind)) if (name := _name(c)) is not None}


# The container runtime's words when the process a container names cannot be executed
# (runc through containerd, reason StartError): `exec: "<argv[0]>": executable file not
# found in $PATH` for a bare name, `exec: "<path>": stat <path>: no such file or
# directory` for a path.
_EXEC_MISSING = re.compile(
    r'exec: "((?:[^"\\]|\\.)*)": (?:executable file not found in \$PATH|stat [^:]*: '
    r"no such file or directory)"
)


def missing_executables(pods: Iterable[PodState]) -> dict[str, set[str]]:
    """Container name -> the executables the runtime could not start, read from the pods'
    last terminations with reason StartError (set by the runtime, not by the process:
    a process that printed the same words ended with another reason)."""
    found: dict[str, set[str]] = {}
    for pod in pods:
        term = pod.last_termination or {}
        if term.get("reason") != "StartError" or not isinstance(term.get("container"), str):
            continue
        for match in _EXEC_MISSING.finditer(str(term.get("message") or "")):
            exe = re.sub(r"\\(.)", r"\1", match.group(1))
            found.setdefault(term["container"], set()).add(exe)
    return found


def runtime_cannot_exec(container: Any, pods: Iterable[PodState]) -> bool:
    """Whether the pods' status holds the container runtime's StartError naming exactly
    `command[0]` of `container`: the only evidence on which removing a command override
    of a container that never ran healthy is a repair. Nothing a log line, an event
    message or a model reply says counts; another executable (an argument of the
    override, another container's) neither.
    """
    container = _dict(container)
    name, command = container.get("name"), container.get("command")
    if not isinstance(name, str) or not isinstance(command, list) or not command:
        return False
    return isinstance(command[0], str) and command[0] in missing_executables(pods).get(name, set())


class _History:
    """Images, object references and keys the live workload or its past used."""

    def __init__(self, live: Manifest, past: Past | Any) -> None:
        specs = [pod_spec(live), pod_spec(past.last_healthy_template)]
        # The containers as they ran in the last healthy revision, by name.
        self.healthy = containers_by_name(specs[1])
        # The pods' status, where the runtime says which executable it could not start.
        self.pods: list[PodState] = list(getattr(past, "pods", None) or [])
        images = [r for rev in past.revisions for r in rev.images]
        self.objects: set[tuple[str, str]] = set()  # (kind, name)
        self.keys: set[tuple[str, str, str]] = set()  # (kind, name, key)
        self.literals: dict[str, set[str]] = {}  # env name -> literal values used
        self.value_from: dict[str, list[Any]] = {}  # env name -> fieldRef etc. used
        for spec in specs:
            for kind in ("initContainers", "containers"):
                for c in _list(spec.get(kind)):
                    c = _dict(c)
                    images.append(c.get("image"))
                    self._container_refs(c)
            for volume in _list(spec.get("volumes")):
                self._volume_refs(_dict(volume))
        self.repositories = {r for r in map(image_repository, images) if r}

    def _container_refs(self, container: dict[str, Any]) -> None:
        for var in _list(container.get("env")):
            var = _dict(var)
            if isinstance(var.get("value"), str):
                self.literals.setdefault(str(var.get("name")), set()).add(var["value"])
            other = {k: v for k, v in _dict(var.get("valueFrom")).items() if k not in _REF_KINDS}
            if other:
                self.value_from.setdefault(str(var.get("name")), []).append(other)
            for ref_field, kind in _REF_KINDS.items():
                ref = _dict(_dict(var.get("valueFrom")).get(ref_field))
                if ref:
                    self.objects.add((kind, str(ref.get("name"))))
                    self.keys.add((kind, str(ref.get("name")), str(ref.get("key"))))
        for source in _list(container.get("envFrom")):
            for ref_field, kind in _ENV_FROM_KINDS.items():
                ref = _dict(_dict(source).get(ref_field))
                if ref:
                    self.objects.add((kind, str(ref.get("name"))))

    def _volume_refs(self, volume: dict[str, Any]) -> None:
        sources = [volume] + [
            _dict(s) for s in _list(_dict(volume.get("projected")).get("sources"))
        ]
        for source in sources:
            if "secret" in source:
                secret = _dict(source["secret"])
                self.objects.add(("Secret", str(secret.get("secretName", secret.get("name")))))
            if "configMap" in source:
                self.objects.add(("ConfigMap", str(_dict(source["configMap"]).get("name"))))


# -- the rules ----------------------------------------------------------------------------


def _identity(live: Manifest, proposed: Manifest) -> list[str]:
    reasons = []
    for path in IDENTITY_PATHS:
        before, after = manifests.get_path(live, path), manifests.get_path(proposed, path)
        if before != after:
            reasons.append(f"{path} must stay {_short(before)}, the proposal has {_short(after)}")
    return reasons


def _shape(proposed: Manifest) -> list[str]:
    """The structure the other rules walk; without it there is nothing to compare."""
    for path in ("metadata", "spec", "spec.template", POD_SPEC):
        if not isinstance(manifests.get_path(proposed, path), dict):
            return [f"{path} must be a mapping"]
    containers = manifests.get_path(proposed, _CONTAINERS_PATH)
    if not isinstance(containers, list) or not containers:
        return [f"{_CONTAINERS_PATH} must be a non-empty list"]
    if not all(isinstance(c, dict) for c in containers):
        return [f"every item of {_CONTAINERS_PATH} must be a mapping"]
    return []


def _container_list(live: Manifest, proposed: Manifest) -> list[str]:
    before = [_name(c) for c in _list(pod_spec(live).get("containers"))]
    after = [_name(c) for c in _list(pod_spec(proposed).get("containers"))]
    if before == after:
        return []
    added, removed = set(after) - set(before), set(before) - set(after)
    if added and removed and len(before) == len(after):
        what = f"renamed ({_names(removed)} -> {_names(added)})"
    elif added:
        what = f"added ({_names(added)})"
    elif removed:
        what = f"removed ({_names(removed)})"
    else:
        what = f"reordered ({before} -> {after})"
    return [
        f"{_CONTAINERS_PATH}: containers may not be added, removed, renamed or reordered: {what}"
    ]


def _allow_list(live: Manifest, proposed: Manifest) -> list[str]:
    reasons = []
    for change in manifests.diff(live, proposed):
        # A whole-list change of the containers is a container added, removed, renamed or
        # reordered, which `_container_list` words better.
        if change.path != _CONTAINERS_PATH and not is_allowed_path(change.path):
            reasons.append(f"{change.path}: not a field aifixer may change")
    return reasons


def _privileges(live: Manifest, proposed: Manifest) -> list[str]:
    gained = _privilege_flags(pod_spec(proposed)) - _privilege_flags(pod_spec(live))
    return [f"raises privilege: {flag}" for flag in sorted(gained)]


def _privilege_flags(spec: dict[str, Any]) -> set[str]:
    """Every privilege the pod spec grants, each as words a reviewer understands."""
    flags = {
        f"{POD_SPEC}.{field}: true"
        for field in ("hostNetwork", "hostPID", "hostIPC")
        if spec.get(field) is True
    }
    account = spec.get("serviceAccountName") or spec.get("serviceAccount")
    if account:
        flags.add(f"service account {account!r}")
    for volume in _list(spec.get("volumes")):
        volume = _dict(volume)
        if "hostPath" in volume:
            path = _dict(volume["hostPath"]).get("path")
            flags.add(f"hostPath volume {volume.get('name')!r} mounting {path!r} from the node")
    flags |= _context_flags(f"{POD_SPEC}.securityContext", _dict(spec.get("securityContext")))
    for kind in ("initContainers", "containers"):
        for name, container in containers_by_name(spec, kind).items():
            where = f"{kind} {name!r}"
            context = _dict(container.get("securityContext"))
            flags |= _context_flags(f"{where} securityContext", context)
            if context.get("privileged") is True:
                flags.add(f"{where} securityContext.privileged: true")
            if context.get("allowPrivilegeEscalation") is True:
                flags.add(f"{where} securityContext.allowPrivilegeEscalation: true")
            for cap in _list(_dict(context.get("capabilities")).get("add")):
                flags.add(f"{where} adds capability {cap}")
            for port in _list(container.get("ports")):
                if _dict(port).get("hostPort"):
                    flags.add(f"{where} binds host port {_dict(port)['hostPort']}")
    return flags


def _context_flags(where: str, context: dict[str, Any]) -> set[str]:
    flags = set()
    if context.get("runAsUser") == 0:
        flags.add(f"{where}.runAsUser: 0 (root)")
    if context.get("runAsNonRoot") is False:
        flags.add(f"{where}.runAsNonRoot: false")
    return flags


def _code(live: Manifest, proposed: Manifest, history: _History) -> list[str]:
    """What a container runs or reaches may only go back to what the workload had."""
    reasons = []
    live_containers = containers_by_name(pod_spec(live))
    for index, container in enumerate(_list(pod_spec(proposed).get("containers"))):
        where = f"{_CONTAINERS_PATH}[{index}]"
        name = _name(container)
        before = _container(live_containers, name)
        healthy = _container(history.healthy, name)
        for field in ("command", "args"):
            after = container.get(field)
            if after is None or after == before.get(field) or after == healthy.get(field):
                continue  # removed (the image's own entrypoint), unchanged, or restored
            reasons.append(
                f"{where}.{field}: {_short(after)} is not what this container ran in its "
                f"last healthy revision; a fix may only restore that {field} or remove it"
            )
        reasons.extend(
            _pure_removal(
                where, container, before, healthy, runtime_cannot_exec(before, history.pods)
            )
        )
        reasons.extend(_unrun_pair(where, container, before, healthy, reasons))
        known = [before, healthy]
        for probe in PROBES:
            reasons.extend(_probe_reach(f"{where}.{probe}", container.get(probe), known))
        reasons.extend(_env_names(where, container, known))
        for source in _list(container.get("envFrom")):
            if not any(source in _list(c.get("envFrom")) for c in known):
                reasons.append(
                    f"{where}.envFrom: {_short(source)} is a source of variables this "
                    f"container never had"
                )
    return reasons


def _unrun_pair(
    where: str,
    container: dict[str, Any],
    before: dict[str, Any],
    healthy: dict[str, Any],
    found: list[str],
) -> list[str]:
    """`command` and `args` run together: each restored from a different revision (the
    live command with the healthy args) is a pairing that never ran, even though each
    half did. The pair must be the live one or the healthy one (either of which may be
    "none": the image's own), unless a reason about them was already `found`."""
    pair = (container.get("command"), container.get("args"))
    if pair in ((before.get("command"), before.get("args")),
                (healthy.get("command"), healthy.get("args"))):  # fmt: skip
        return []
    if any(r.startswith((f"{where}.command", f"{where}.args")) for r in found):
        return []
    return [
        f"{where}.command and args: {_short(pair[0])} with {_short(pair[1])} never ran "
        "together; a fix may only restore the pair of its last healthy revision"
    ]


def _pure_removal(
    where: str,
    container: dict[str, Any],
    before: dict[str, Any],
    healthy: dict[str, Any],
    cannot_exec: bool,
) -> list[str]:
    """A command or args override removed without restoring the last healthy revision:
    the container then runs the image's own entrypoint, code it never ran (perhaps as
    root, perhaps the image's migrations, and `_privileges` cannot see it).

    Allowed only for a container that never ran healthy, when the runtime reported that
    it cannot execute the live `command[0]` (`cannot_exec`, see `runtime_cannot_exec`):
    a wrapper the healthy revision ran is restored, never removed, and no log line or
    reply makes a working override removable. And only as a pure removal: both go, so
    the entrypoint runs with the image's own arguments, and nothing else of the
    container changes with them. Removing `command` alone would hand the override's
    arguments to the image's entrypoint, and removing `args` alone would run the
    override without them: both run something the workload never ran.
    """
    removed = [
        field
        for field in ("command", "args")
        if container.get(field) is None
        and before.get(field) is not None
        and not (healthy and healthy.get(field) is None)
    ]
    if not removed:
        return []
    what = " and ".join(removed)
    reasons = []
    if healthy:
        reasons.append(
            f"{where}: removing {what} does not restore the last healthy revision, which "
            f"ran an override; a fix may restore that revision's {what}, not remove it"
        )
    elif not cannot_exec:
        reasons.append(
            f"{where}: removing {what} runs the image's own entrypoint, which this container "
            f"never ran; only when its pods' status holds the container runtime's StartError "
            f"naming the command's executable"
        )
    reasons += [
        f"{where}.{field}: removing {what} must remove {field} too, so the "
        f"image's own entrypoint runs with its own arguments"
        for field in ("command", "args")
        if field not in removed and container.get(field) is not None
    ]
    others = sorted(
        field
        for field in set(container) | set(before)
        if field not in ("command", "args") and container.get(field) != before.get(field)
    )
    if others:
        reasons.append(
            f"{where}: removing {' and '.join(removed)} gives the image's own entrypoint back "
            f"only as a change of its own; the proposal also changes {', '.join(others)}"
        )
    return reasons


def _probe_reach(where: str, probe: Any, known: list[dict[str, Any]]) -> list[str]:
    """A probe's command, host and headers: only values this container's probes had."""
    probe = _dict(probe)
    seen = [_dict(c.get(p)) for c in known for p in PROBES]
    reasons = []
    for handler, field in (
        ("exec", "command"),
        ("httpGet", "host"),
        ("httpGet", "httpHeaders"),
        ("tcpSocket", "host"),
    ):
        value = _dict(probe.get(handler)).get(field)
        if value in (None, []) or any(_dict(s.get(handler)).get(field) == value for s in seen):
            continue
        what = "runs" if handler == "exec" else "reaches"
        reasons.append(
            f"{where}.{handler}.{field}: {_short(value)} {what} something this container's "
            f"probes never did"
        )
    return reasons


def _env_names(where: str, container: dict[str, Any], known: list[dict[str, Any]]) -> list[str]:
    """No variable the container never had: a name can change what a program loads."""
    had = {_name(v) for c in known for v in _list(c.get("env"))}
    return [
        f"{where}.env {_name(var)}: a variable this container never had (live or in its "
        f"last healthy revision)"
        for var in _list(container.get("env"))
        if _name(var) not in had
    ]


def _secrets(live: Manifest, proposed: Manifest, history: _History) -> list[str]:
    reasons = []
    live_containers = containers_by_name(pod_spec(live))
    for index, container in enumerate(_list(pod_spec(proposed).get("containers"))):
        where = f"{_CONTAINERS_PATH}[{index}]"
        before = _env_by_name(_container(live_containers, _name(container)))
        for var in _list(container.get("env")):
            var = _dict(var)
            reasons.extend(_env_var(where, var, before.get(_name(var)), history))
        for source in _list(container.get("envFrom")):
            for ref_field, kind in _ENV_FROM_KINDS.items():
                name = _dict(_dict(source).get(ref_field)).get("name")
                if ref_field in _dict(source) and (kind, str(name)) not in history.objects:
                    reasons.append(
                        f"{where}.envFrom: {kind} {name!r} is not one this workload already uses"
                    )
    return reasons


def _env_var(
    where: str, var: dict[str, Any], before: dict[str, Any] | None, history: _History
) -> list[str]:
    name = var.get("name")
    if var == before:
        return []
    reasons = []
    refs_after = _env_refs(var)
    if before is not None and _env_refs(before) and not refs_after:
        kinds = " and ".join(kind for kind, _, _ in _env_refs(before))
        reasons.append(f"{where}.env {name}: a {kinds} reference may not become a literal value")
    literal = var.get("value")
    if isinstance(literal, str) and literal not in history.literals.get(str(name), set()):
        reasons.append(
            f"{where}.env {name}: a new literal for a credential-like variable is an invented secret"
            if CREDENTIAL_NAME.search(str(name))
            else f"{where}.env {name}: {_short(literal)} is a value this variable never had; "
            f"a fix may only restore the last healthy revision's"
        )
    other = {k: v for k, v in _dict(var.get("valueFrom")).items() if k not in _REF_KINDS}
    if other and other not in history.value_from.get(str(name), []):
        reasons.append(f"{where}.env {name}: {_short(other)} is a source this variable never had")
    for kind, obj, key in refs_after:
        if (kind, obj) not in history.objects:
            reasons.append(
                f"{where}.env {name}: {kind} {obj!r} is not one this workload already uses"
            )
        elif (kind, obj, key) not in history.keys:
            reasons.append(
                f"{where}.env {name}: key {key!r} of {kind} {obj!r} was never used by "
                f"this workload or its last healthy revision"
            )
    return reasons


def _env_refs(var: dict[str, Any]) -> list[tuple[str, str, str]]:
    source = _dict(var.get("valueFrom"))
    return [
        (kind, str(_dict(source[field]).get("name")), str(_dict(source[field]).get("key")))
        for field, kind in _REF_KINDS.items()
        if field in source
    ]


def _env_by_name(container: dict[str, Any]) -> dict[str | None, dict[str, Any]]:
    return {_name(v): _dict(v) for v in _list(container.get("env"))}


def _images(live: Manifest, proposed: Manifest, history: _History) -> list[str]:
    reasons = []
    spec_before, spec_after = pod_spec(live), pod_spec(proposed)
    for kind in ("initContainers", "containers"):
        before = containers_by_name(spec_before, kind)
        for index, container in enumerate(_list(spec_after.get(kind))):
            image = _dict(container).get("image")
            if image == _container(before, _name(container)).get("image"):
                continue
            repository = image_repository(image)
            where = f"{POD_SPEC}.{kind}[{index}].image"
            if repository is None:
                reasons.append(f"{where}: {_short(image)} is not an image reference")
            elif repository not in history.repositories:
                reasons.append(
                    f"{where}: repository {repository} never ran in this workload "
                    f"(known: {', '.join(sorted(history.repositories))})"
                )
    return reasons


def _resources(live: Manifest, proposed: Manifest, settings: Settings) -> list[str]:
    reasons = []
    caps = {
        "memory": (parse_quantity(settings.max_memory_limit), settings.max_memory_limit),
        "cpu": (parse_quantity(settings.max_cpu_limit), settings.max_cpu_limit),
    }
    before = containers_by_name(pod_spec(live))
    for index, container in enumerate(_list(pod_spec(proposed).get("containers"))):
        resources = _dict(container.get("resources"))
        if resources == _container(before, _name(container)).get("resources", {}):
            continue  # an unchanged container is not the fix's doing
        where = f"{_CONTAINERS_PATH}[{index}].resources"
        values: dict[tuple[str, str], Decimal] = {}
        for section in ("requests", "limits"):
            for resource, raw in _dict(resources.get(section)).items():
                try:
                    values[section, resource] = parse_quantity(raw)
                except QuantityError:
                    reasons.append(f"{where}.{section}.{resource}: {_short(raw)} is not a quantity")
        for (section, resource), amount in values.items():
            # A request above the largest allowed limit could never run under one either.
            cap, words = caps.get(resource, (None, ""))
            if cap is not None and amount > cap:
                reasons.append(
                    f"{where}.{section}.{resource}: {resources[section][resource]} is above "
                    f"the {words} aifixer may set"
                )
            elif amount < 0:
                reasons.append(f"{where}.{section}.{resource}: a negative amount")
        for (section, resource), request in values.items():
            limit = values.get(("limits", resource))
            if section == "requests" and limit is not None and request > limit:
                reasons.append(
                    f"{where}.requests.{resource}: the request is above the limit "
                    f"({resources['requests'][resource]} > {resources['limits'][resource]})"
                )
    return reasons


def _probe_timings(live: Manifest, proposed: Manifest) -> list[str]:
    reasons = []
    before = containers_by_name(pod_spec(live))
    for index, container in enumerate(_list(pod_spec(proposed).get("containers"))):
        for probe in PROBES:
            spec = _dict(container.get(probe))
            was = _dict(_container(before, _name(container)).get(probe))
            for field, (low, high) in PROBE_BOUNDS.items():
                value = spec.get(field)
                if value is None or (value == was.get(field) and not isinstance(value, bool)):
                    continue
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int)
                    or not low <= value <= high
                ):
                    reasons.append(
                        f"{_CONTAINERS_PATH}[{index}].{probe}.{field}: {_short(value)} is "
                        f"outside {low}..{high}"
                    )
    return reasons


def _probe_paths(live: Manifest, proposed: Manifest) -> list[str]:
    """A probe path a fix sets is a plain absolute URL path (`SAFE_PROBE_PATH`)."""
    reasons = []
    before = containers_by_name(pod_spec(live))
    for index, container in enumerate(_list(pod_spec(proposed).get("containers"))):
        for probe in PROBES:
            path = _dict(_dict(container.get(probe)).get("httpGet")).get("path")
            was = _dict(_dict(_container(before, _name(container)).get(probe)).get("httpGet"))
            if path is None or path == was.get("path"):
                continue
            if not isinstance(path, str) or not SAFE_PROBE_PATH.fullmatch(path):
                reasons.append(
                    f"{_CONTAINERS_PATH}[{index}].{probe}.httpGet.path: {_short(path)} is not "
                    f"an absolute URL path"
                )
    return reasons


def _replicas(live: Manifest, proposed: Manifest, settings: Settings) -> list[str]:
    after = manifests.get_path(proposed, "spec.replicas")
    if after == manifests.get_path(live, "spec.replicas"):
        return []
    if live.get("kind") == "StatefulSet":
        # A member removed may take its volume with it (persistentVolumeClaimRetentionPolicy
        # whenScaled: Delete) and a quorum with it; one added joins a cluster on its own.
        return [
            f"spec.replicas: a StatefulSet's member count is never changed "
            f"({_short(manifests.get_path(live, 'spec.replicas'))} to {_short(after)})"
        ]
    if (
        isinstance(after, bool)
        or not isinstance(after, int)
        or not 1 <= after <= settings.max_replicas
    ):
        return [f"spec.replicas: {_short(after)} is outside 1..{settings.max_replicas}"]
    return []


def _schema(proposed: Manifest) -> list[str]:
    reasons = []
    for index, container in enumerate(_list(pod_spec(proposed).get("containers"))):
        where = f"{_CONTAINERS_PATH}[{index}]"
        name = container.get("name")
        if not isinstance(name, str) or not _DNS_LABEL.match(name):
            reasons.append(f"{where}.name: {_short(name)} is not a valid container name")
        if not isinstance(container.get("image"), str) or not container["image"].strip():
            reasons.append(f"{where}.image: a container needs an image")
        for field in ("command", "args"):
            value = container.get(field)
            if value is not None and not (
                isinstance(value, list) and all(isinstance(v, str) for v in value)
            ):
                reasons.append(f"{where}.{field}: must be a list of strings")
        reasons.extend(_schema_env(where, container.get("env")))
        port_names, port_reasons = _schema_ports(where, container.get("ports"))
        reasons.extend(port_reasons)
        for probe in PROBES:
            if probe in container:
                reasons.extend(_schema_probe(f"{where}.{probe}", container[probe], port_names))
        if "resources" in container:
            resources = container["resources"]
            if not isinstance(resources, dict) or not all(
                isinstance(v, dict) for k, v in resources.items() if k in ("requests", "limits")
            ):
                reasons.append(f"{where}.resources: requests and limits must be mappings")
    return reasons


def _schema_env(where: str, env: Any) -> list[str]:
    if env is None:
        return []
    if not isinstance(env, list):
        return [f"{where}.env: must be a list"]
    reasons = []
    for i, var in enumerate(env):
        var = var if isinstance(var, dict) else {}
        if not isinstance(var.get("name"), str) or not var["name"]:
            reasons.append(f"{where}.env[{i}]: a variable needs a name")
        if "value" in var and "valueFrom" in var:
            reasons.append(f"{where}.env[{i}]: value and valueFrom are exclusive")
        if "value" in var and not isinstance(var["value"], str):
            reasons.append(f"{where}.env[{i}].value: must be a string")
    return reasons


def _schema_ports(where: str, ports: Any) -> tuple[set[str], list[str]]:
    """The container's port names, and what is wrong with its ports."""
    if ports is None:
        return set(), []
    if not isinstance(ports, list):
        return set(), [f"{where}.ports: must be a list"]
    names, reasons = set(), []
    for i, port in enumerate(ports):
        port = port if isinstance(port, dict) else {}
        for field in ("containerPort", "hostPort"):
            if field in port or field == "containerPort":
                if not _is_port_number(port.get(field)):
                    reasons.append(
                        f"{where}.ports[{i}].{field}: {_short(port.get(field))} is not "
                        f"a port number (1-65535)"
                    )
        if isinstance(port.get("name"), str):
            names.add(port["name"])
    return names, reasons


def _schema_probe(where: str, probe: Any, port_names: set[str]) -> list[str]:
    if not isinstance(probe, dict):
        return [f"{where}: must be a mapping"]
    handlers = [h for h in PROBE_HANDLERS if h in probe]
    if len(handlers) != 1:
        return [f"{where}: needs exactly one handler of {', '.join(PROBE_HANDLERS)}"]
    handler = _dict(probe[handlers[0]])
    if handlers[0] not in ("httpGet", "tcpSocket"):
        return []
    port = handler.get("port")
    if isinstance(port, str):
        # IntOrString: a string is a port name, never a number in quotes.
        if port not in port_names:
            return [f"{where}.{handlers[0]}.port: no container port is named {port!r}"]
        return []
    if not _is_port_number(port):
        return [f"{where}.{handlers[0]}.port: {_short(port)} is not a port number (1-65535)"]
    return []


# -- helpers -------------------------------------------------------------------------------


def _is_port_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def _name(item: Any) -> str | None:
    """The `name` of a named list item, None for anything malformed."""
    name = _dict(item).get("name")
    return name if isinstance(name, str) else None


def _container(containers: dict[str, dict[str, Any]], name: str | None) -> dict[str, Any]:
    """The container of that name; {} when there is none, or the name is missing."""
    return _dict(containers.get(name)) if name is not None else {}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _names(names: set[Any]) -> str:
    return ", ".join(sorted(map(str, names)))


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- fixes to an object beside the workload: a claim, a Service ---------------------------

# The annotations the persistentvolume-controller writes on a claim: a re-created claim
# starts without them, which is no change of its author's.
CLAIM_CONTROLLER_ANNOTATIONS = (
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
    "volume.kubernetes.io/storage-provisioner",
    "volume.beta.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/selected-node",
)
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


_OBJECT_PATHS = {
    "PersistentVolumeClaim": re.compile(r"^spec\.storageClassName$"),
    "Service": re.compile(r"^spec\.selector(\..+)?$"),
}


def is_allowed_object_path(kind: str, path: str) -> bool:
    """Whether a fix to a claim or a Service may change `path` (see `check_object`)."""
    allowed = _OBJECT_PATHS.get(kind)
    return allowed is not None and allowed.fullmatch(path) is not None


def check_object(
    live: Manifest,
    proposed: Any,
    workload: Manifest,
    storage_classes: list[str],
    settings: Settings,
) -> list[str]:
    """Why `proposed` may not replace `live`, a claim or a Service beside the workload.

    The only changes aifixer makes to these objects on its own, each undoing one fault:

    - a PersistentVolumeClaim that never bound (Pending, no volume) and asks for a
      storage class the cluster does not have gets a class the cluster has. Its spec is
      immutable, so the fix re-creates it: only a claim that holds no data may be
      re-created, and nothing else of it may change (not its size, access modes,
      labels or annotations). A Bound claim, or one with a volume, is never touched;
    - a Service whose selector matches none of the workload's pods gets a selector that
      matches them (every key and value one the workload's pod template carries), and
      nothing else of it changes.

    Args:
        live: the object as the cluster has it now.
        proposed: the corrected object (anything: it may come from a stored record).
        workload: the live workload the incident is about (its pod template labels).
        storage_classes: the names of the cluster's StorageClasses, read now.
        settings: the namespaces aifixer may change.
    """
    if not isinstance(proposed, dict):
        return [f"the proposal is not a mapping but a {type(proposed).__name__}"]
    refusal = namespace_refusal((live.get("metadata") or {}).get("namespace"), settings)
    if refusal:
        return [refusal]
    live_c, proposed_c = manifests.clean(live), manifests.clean(proposed)
    reasons = [
        f"{path} may not change (from {_short(manifests.get_path(live_c, path))} to "
        f"{_short(manifests.get_path(proposed_c, path))})"
        for path in ("apiVersion", "kind", "metadata.name", "metadata.namespace")
        if manifests.get_path(live_c, path) != manifests.get_path(proposed_c, path)
    ]
    if reasons:
        return reasons
    wmeta = workload.get("metadata") or {}
    if (live_c.get("metadata") or {}).get("namespace") != wmeta.get("namespace"):
        return ["the object is not in the workload's namespace"]
    kind = live_c.get("kind")
    if kind == "PersistentVolumeClaim":
        return _claim_fix(live, live_c, proposed_c, workload, storage_classes)
    if kind == "Service":
        return _service_fix(live_c, proposed_c, workload)
    return [f"aifixer changes no {_short(kind)} on its own"]


def _claim_fix(
    live: Manifest,
    live_c: Manifest,
    proposed: Manifest,
    workload: Manifest,
    storage_classes: list[str],
) -> list[str]:
    name = live_c["metadata"].get("name")
    spec = live.get("spec") or {}
    phase = (live.get("status") or {}).get("phase")
    if spec.get("volumeName") or phase not in (None, "Pending"):
        return [
            f"PersistentVolumeClaim {name} is {phase or 'bound'} with a volume: it may hold "
            "data, and is never re-created"
        ]
    mounted = [
        v["persistentVolumeClaim"].get("claimName")
        for v in _list(pod_spec(workload).get("volumes"))
        if isinstance(v, dict) and isinstance(v.get("persistentVolumeClaim"), dict)
    ]
    if name not in mounted:
        return [f"PersistentVolumeClaim {name} is not mounted by the workload"]
    annotations = live_c["metadata"].get("annotations") or {}
    if "volume.beta.kubernetes.io/storage-class" in annotations:
        return ["the claim names its class by the beta annotation: left to a person"]
    before = spec.get("storageClassName")
    if before in storage_classes:
        return [f"the storage class {_short(before)} exists: the claim's class is not the fault"]
    after = (proposed.get("spec") or {}).get("storageClassName")
    reasons = []
    if not isinstance(after, str) or after not in storage_classes:
        reasons.append(f"spec.storageClassName {_short(after)} is not a class the cluster has")
    for path in (c.path for c in manifests.diff(authored_view(live_c), authored_view(proposed))):
        if path != "spec.storageClassName":
            reasons.append(f"{path} may not change in a claim aifixer re-creates")
    return reasons


def authored_view(claim: Manifest) -> Manifest:
    """What a claim's author wrote: without the volume and the controller's annotations."""
    out = copy.deepcopy(claim)
    out.get("spec", {}).pop("volumeName", None)
    meta = out.get("metadata") or {}
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items()
        if k not in CLAIM_CONTROLLER_ANNOTATIONS
    }  # fmt: skip
    meta["annotations"] = annotations
    for key in ("finalizers", "deletionTimestamp", "deletionGracePeriodSeconds"):
        meta.pop(key, None)
    return out


def _service_fix(live: Manifest, proposed: Manifest, workload: Manifest) -> list[str]:
    name = live["metadata"].get("name")
    reasons = [
        f"{c.path} may not change in a Service (only its selector)"
        for c in manifests.diff(live, proposed)
        if not (c.path == "spec.selector" or c.path.startswith("spec.selector."))
    ]
    selector = (proposed.get("spec") or {}).get("selector")
    if not isinstance(selector, dict) or not selector:
        return [*reasons, f"Service {name}: the new selector is empty or not a map"]
    for key, value in selector.items():
        if not (isinstance(key, str) and _LABEL_KEY.fullmatch(key) and len(key) <= 316):
            reasons.append(f"selector key {_short(key)} is not a label key")
        if not (isinstance(value, str) and _LABEL_VALUE.fullmatch(value)):
            reasons.append(f"selector value {_short(value)} is not a label value")
    labels = ((workload.get("spec") or {}).get("template") or {}).get("metadata") or {}
    labels = labels.get("labels") or {}
    if any(labels.get(k) != v for k, v in selector.items()):
        reasons.append(
            f"Service {name}: the new selector does not match the workload's pod template labels"
        )
    if selector == (live.get("spec") or {}).get("selector"):
        reasons.append(f"Service {name}: the selector does not change")
    return reasons
