"""CPU levels: Alertmanager's CPU alerts become one label on the pod they name.

Prometheus fires one of three alerts per pod (`deploy/prometheus-rules.yaml`): CPU used
below 33 % of the pod's limit, 33–66 %, 66 % and more. Alertmanager posts them, firing
and resolved, to `aifixer web`, which records them here and enqueues one
`label_cpu_level` task per pod, carrying only the pod's id ("namespace/name").

The record is the set of level alerts firing for the pod, each with its `startsAt`:
the label is the level of the one that started last (the current load, when a
resolved notice of the previous level arrives late), and is removed when none fires.
A notice older than what is recorded changes nothing, and a resolved alert leaves a
tombstone, so Alertmanager's retries, an HA peer's duplicates and out-of-order
deliveries are harmless. The task reads the record, not the message, and
checks at the point of action that the namespace is one aifixer may change; it patches
its one label key and nothing else, only when the value differs; a pod that no longer
exists is not an error.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from ..adapters.errors import Conflict, TransientError
from ..adapters.kube import Kube
from ..guardrails import namespace_refusal
from ..settings import Settings

log = logging.getLogger("aifixer.scaling.levels")

CONFLICT_ATTEMPTS = 5
KEEP_S = 86_400  # a pod's record lives a day past its last notice (firing alerts repeat)
POD_ID = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?")

Outcome = Literal["set", "removed", "unchanged", "gone", "refused"]


@dataclass(frozen=True)
class LevelAlert:
    """One level alert of an Alertmanager webhook."""

    namespace: str
    pod: str
    alertname: str
    firing: bool
    starts_at: float  # epoch seconds

    @property
    def pod_id(self) -> str:
        return f"{self.namespace}/{self.pod}"


def split(alerts: list[Any], settings: Settings) -> tuple[list[LevelAlert], list[Any], int]:
    """(level alerts, the other alerts, level alerts ignored for naming no valid pod).

    `alerts` are the webhook's parsed alerts (labels, status, startsAt).
    """
    levels, rest, ignored = [], [], 0
    for alert in alerts:
        name = alert.labels.get("alertname", "")
        if name not in settings.cpu_levels:
            rest.append(alert)
            continue
        ns, pod = alert.labels.get("namespace", ""), alert.labels.get("pod", "")
        if not POD_ID.fullmatch(f"{ns}/{pod}"):
            ignored += 1
            continue
        starts = alert.startsAt.timestamp() if isinstance(alert.startsAt, datetime) else 0.0
        levels.append(LevelAlert(ns, pod, name, alert.status == "firing", starts))
    return levels, rest, ignored


def _key(pod_id: str) -> str:
    return f"aifixer:cpulevel:{pod_id}"


# Each alert of a pod has one field: its startsAt while it fires, minus its startsAt once
# resolved (a tombstone). A firing notice counts only if it started after what is
# recorded (a late or repeated "firing" of an alert already resolved brings nothing
# back); a resolved notice only if it is not older than the firing it ends.
_RECORD = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
local at = tonumber(ARGV[3])
local seen = current and math.abs(tonumber(current)) or nil
if ARGV[2] == 'firing' then
  if not seen or (tonumber(current) > 0 and seen <= at) or (tonumber(current) <= 0 and seen < at) then
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  end
elseif not seen or seen <= at then
  redis.call('HSET', KEYS[1], ARGV[1], '-' .. ARGV[3])
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""


def record(redis: Any, alerts: list[LevelAlert]) -> list[str]:
    """Record the notices; the ids of the pods whose label must be looked at."""
    script = redis.register_script(_RECORD)
    pods = []
    for a in alerts:
        state = "firing" if a.firing else "resolved"
        script(keys=[_key(a.pod_id)], args=[a.alertname, state, repr(a.starts_at), KEEP_S])
        if a.pod_id not in pods:
            pods.append(a.pod_id)
    return pods


def desired(redis: Any, pod_id: str, settings: Settings) -> str | None:
    """The level the pod's label must say, or None when no level alert fires for it."""
    recorded = {
        (k.decode() if isinstance(k, bytes) else k): float(v)
        for k, v in (redis.hgetall(_key(pod_id)) or {}).items()
    }
    known = [
        (started, name)
        for name, started in recorded.items()
        if started > 0 and name in settings.cpu_levels  # resolved ones are negative
    ]
    if not known:
        return None
    _, latest = max(known)
    return settings.cpu_levels[latest]


def label_pod(kube: Kube, redis: Any, settings: Settings, pod_id: str) -> Outcome:
    """Make the pod's level label say what its firing alerts say.

    Raises:
        ValueError: `pod_id` is not "namespace/name".
        TransientError, PermanentError: from the cluster.
    """
    if not isinstance(pod_id, str) or not POD_ID.fullmatch(pod_id):
        raise ValueError(f"not a pod id (namespace/name): {pod_id!r:.80}")
    namespace, name = pod_id.split("/", 1)
    refusal = namespace_refusal(namespace, settings)
    if refusal:
        log.warning("[%s] level not set: %s", pod_id, refusal)
        return "refused"
    key = settings.cpu_level_label
    for _ in range(CONFLICT_ATTEMPTS):
        # The pod first, then the record, then a write guarded by the pod's version: of
        # two tasks for one pod, the one that read the older record cannot write last.
        pod = kube.get_pod(namespace, name)
        if pod is None:
            return "gone"
        want = desired(redis, pod_id, settings)
        meta = pod.get("metadata") or {}
        have = (meta.get("labels") or {}).get(key)
        if have == want:
            return "unchanged"
        try:
            written = kube.set_pod_label(
                namespace, name, key, want, resource_version=meta.get("resourceVersion")
            )
        except Conflict:
            continue  # the pod changed (another task, the kubelet): read both again
        if written is None:
            return "gone"
        log.info("[%s] %s: %s -> %s", pod_id, key, have, want)
        return "set" if want is not None else "removed"
    raise TransientError("kubernetes", f"{pod_id} kept changing while its level was set")
