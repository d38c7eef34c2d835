"""From raw signals to incidents: failure classes, their precedence, fingerprints.

Everything here is pure (no I/O), so the polls, the Alertmanager webhook and the tests
share one definition of "what kind of breakage is this" and "is this the same incident".

A workload in trouble shows several symptoms at once: an OOM-killed container also
crash-loops, a crash-looping one also fails its probes and prints error lines. The
incident is about the root cause, so `dominant` ranks classes cause-first (see
`PRECEDENCE`), and the fingerprint — (cluster, namespace, kind, name, failure class) —
keys de-duplication: a storm of 10,000 identical error lines is one group, hence one
incident (the atomic "already open?" check itself lives in Redis, in the pipeline).

Reading a pod's status into reasons and a `PodState` is the Kubernetes adapter's job
(`aifixer.adapters.kube.pod_reasons` / `pod_state`): adapters may not import this
module, and the adapter is where the API's payload shapes are known.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from .models import NO_ENDPOINTS, UNBOUND_CLAIMS, FailureClass, Signal

# Classes about an object beside the workload: the pods may look healthy (a Service
# selecting none of them) and the fix is made to that object, not to the Deployment.
OBJECT_CLASSES: tuple[FailureClass, ...] = ("VolumePending", "NoEndpoints")

# Pod waiting/terminated reasons and event reasons that name their class outright
# (kubelet error names, containerd exit reasons, scheduler and volume events).
_BY_REASON: dict[str, FailureClass] = {
    **dict.fromkeys(
        (
            "ErrImagePull",
            "ImagePullBackOff",
            "InvalidImageName",
            "ErrImageNeverPull",
            "ImageInspectError",
            "RegistryUnavailable",
            "InspectFailed",
        ),
        "ImagePull",
    ),
    **dict.fromkeys(
        (
            "CrashLoopBackOff",
            "Error",
            "StartError",
            "RunContainerError",
            "CreateContainerError",
            "PreStartHookError",
            "PostStartHookError",
            "FailedPostStartHook",
            "ContainerCannotRun",
        ),
        "CrashLoop",
    ),
    "OOMKilled": "OOMKilled",
    **dict.fromkeys(("Unhealthy", "NotReady", "ProbeWarning"), "ProbeFailure"),
    **dict.fromkeys(("FailedScheduling", "Unschedulable"), "Unschedulable"),
    **dict.fromkeys(
        ("CreateContainerConfigError", "FailedMount", "FailedAttachVolume"), "ConfigError"
    ),
    "LogError": "AppError",
    # The persistentvolume-controller on a claim; the pod reason the Kubernetes adapter
    # gives a pod the scheduler keeps for unbound claims (its FailedScheduling message).
    **dict.fromkeys(("ProvisioningFailed", UNBOUND_CLAIMS), "VolumePending"),
    NO_ENDPOINTS: "NoEndpoints",
}

# The scheduler's VolumeBinding message: the pod waits for claims that are not bound.
_UNBOUND_MESSAGE = re.compile(r"unbound immediate PersistentVolumeClaims")

# The kubelet's `Failed` event carries the real error in its message.
_CONFIG_MESSAGE = re.compile(
    r"(configmap|secret) \"[^\"]*\" not found|couldn't find key|not found in (configmap|secret)",
    re.IGNORECASE,
)
_IMAGE_MESSAGE = re.compile(
    r"failed to pull image|back-off pulling image|Error: (ErrImagePull|ImagePullBackOff|"
    r"InvalidImageName|ErrImageNeverPull)",
    re.IGNORECASE,
)
_PROBE_KILL = re.compile(r"failed (liveness|startup) probe", re.IGNORECASE)

# Cause first. A container that cannot be created (missing ConfigMap, image that does not
# pull, pod that cannot be scheduled or waits for its volume) never ran, so probe failures or error lines seen
# beside it come from elsewhere or follow from it; the fix is the cause. OOMKilled beats
# CrashLoop because the back-off is the consequence of the kills. A crashing container
# also fails its probes, and an unready one logs errors, so CrashLoop > ProbeFailure >
# AppError; a Service that selects no pod is a fault beside the pods, after theirs; error
# lines alone are the weakest evidence.
PRECEDENCE: tuple[FailureClass, ...] = (
    "ConfigError",
    "ImagePull",
    "VolumePending",
    "Unschedulable",
    "OOMKilled",
    "CrashLoop",
    "ProbeFailure",
    "NoEndpoints",
    "AppError",
)

DEFAULT_ERROR_PATTERNS = (r"(?i)(error|fatal|panic|exception|traceback|not found|killed)",)


def classify(reason: str, message: str = "", exit_code: int | None = None) -> FailureClass | None:
    """The failure class a pod reason, an event or a log line points at.

    Args:
        reason: a pod waiting/terminated reason, an event reason, an alert name, or
            "LogError" for a log line.
        message: the event message or status message; decides the generic `Failed`,
            `BackOff` and `Killing` events.
        exit_code: a terminated container's exit code, when known: it tells a
            container that exited (and so loops) from a mere "Completed" status.

    Returns:
        The class, or None when the signal is informational (Normal events such as
        Pulling, Scheduled, Killing to stop a container) or unknown.
    """
    if reason == "Completed":
        # A Deployment's containers are meant to run for ever (restartPolicy Always): one
        # that exits, even with 0, is restarted and loops. Without an exit code the word
        # is only a finished container's status.
        return "CrashLoop" if exit_code is not None else None
    if reason == "Failed":
        if _CONFIG_MESSAGE.search(message):
            return "ConfigError"
        if _IMAGE_MESSAGE.search(message):
            return "ImagePull"
        return "CrashLoop"  # "Error: <runtime create/start error>"
    if reason == "BackOff":
        # "Back-off pulling image" (a Normal event) vs "Back-off restarting failed container".
        return "ImagePull" if _IMAGE_MESSAGE.search(message) else "CrashLoop"
    if reason == "Killing":
        return "ProbeFailure" if _PROBE_KILL.search(message) else None
    if reason == "LogError" and _CONFIG_MESSAGE.search(message):
        return "ConfigError"
    if reason in ("FailedScheduling", "Unschedulable") and _UNBOUND_MESSAGE.search(message):
        return "VolumePending"
    return _BY_REASON.get(reason)


def signal_class(signal: Signal) -> FailureClass | None:
    """`classify` for a Signal (its exit code, when the source recorded one, is in `raw`)."""
    exit_code = signal.raw.get("exitCode")
    return classify(
        signal.reason, signal.message, exit_code if isinstance(exit_code, int) else None
    )


def dominant(classes: Iterable[FailureClass | None]) -> FailureClass:
    """The root cause among the classes a workload shows (see PRECEDENCE).

    Raises:
        ValueError: when no class is given (None entries are ignored).
    """
    present = {c for c in classes if c is not None}
    if not present:
        raise ValueError("no failure class to choose from")
    return min(present, key=PRECEDENCE.index)


def fingerprint(cluster: str, namespace: str, kind: str, name: str, failure_class: str) -> str:
    """A short, stable id for one kind of breakage of one workload.

    The same inputs always give the same 16 hex digits (in every process, on every
    machine): it keys de-duplication, the incident's Redis lock and the PR branch name.
    """
    parts = (cluster, namespace, kind, name, failure_class)
    for p in parts:
        if not p:
            raise ValueError(f"fingerprint needs non-empty parts, got {parts!r}")
    # The unit separator cannot appear in Kubernetes names, so the join is unambiguous.
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def is_error_line(line: str, patterns: Iterable[str] = DEFAULT_ERROR_PATTERNS) -> bool:
    """Whether a log line matches any of the (Python regex) error patterns."""
    return any(re.search(p, line) for p in patterns)


def group_signals(signals: Iterable[Signal]) -> dict[tuple[str, str], list[Signal]]:
    """Signals per workload (namespace, Deployment name), in arrival order.

    A storm of identical signals lands in one group, so it opens one incident; the
    group's class is `dominant(signal_class(s) for s in group)`. Signals whose workload
    is not resolved yet, or that are informational (no class), are left out.
    """
    groups: dict[tuple[str, str], list[Signal]] = {}
    for s in signals:
        if s.workload and signal_class(s) is not None:
            groups.setdefault((s.namespace, s.workload), []).append(s)
    return groups
