"""The Deployment and ReplicaSet controllers of kube-controller-manager, in-process.

`kubectl rollout status/history/undo` and any product that reads Deployment and
ReplicaSet status see only what these controllers write, so they follow the real
ones (pkg/controller/deployment, pkg/controller/replicaset) decision by decision:
the same rolling-update arithmetic, the same revision annotations, the same
Progressing/Available conditions with the same timestamp discipline, the same
events. A rollout to a broken template therefore stalls exactly as on a cluster:
old pods keep serving while the new ReplicaSet's pods fail, until the progress
deadline turns the Progressing condition to ProgressDeadlineExceeded.

Both controllers are client-go style: store changes enqueue object keys into a
deduplicating work queue drained by one worker coroutine; deadlines
(progressDeadlineSeconds, minReadySeconds) re-queue keys after a delay measured
in simulated time. Timestamps written into objects are wall-clock (second
precision) while deadlines are simulated, so each controller remembers the
simulated instant behind every timestamp it relies on (`SimStamps`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import deque
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from ..clock import Clock, rfc3339
from . import defaults
from .errors import ApiError
from .events import EventRecorder
from .resources import Resource, core
from .selectors import match_label_selector
from .store import Store

log = logging.getLogger(__name__)

Obj = dict[str, Any]

DEPLOYMENTS = core("deployments")
REPLICASETS = core("replicasets")
PODS = core("pods")

HASH_LABEL = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
DESIRED_REPLICAS = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
# Annotations the Deployment keeps for itself rather than copying to its ReplicaSets.
_ANNOTATIONS_NOT_COPIED = frozenset(
    {
        "kubectl.kubernetes.io/last-applied-configuration",
        REVISION,
        REVISION_HISTORY,
        DESIRED_REPLICAS,
        MAX_REPLICAS,
        "deprecated.deployment.rollback.to",
    }
)
_MAX_REV_HISTORY_CHARS = 2000
_MAX_INT32 = 2**31 - 1

# Progressing condition reasons (deployment/util).
NEW_RS_CREATED = "NewReplicaSetCreated"
FOUND_NEW_RS = "FoundNewReplicaSet"
RS_UPDATED = "ReplicaSetUpdated"
NEW_RS_AVAILABLE = "NewReplicaSetAvailable"
TIMED_OUT = "ProgressDeadlineExceeded"
PAUSED = "DeploymentPaused"
RESUMED = "DeploymentResumed"
FAILED_RS_CREATE = "ReplicaSetCreateError"

DEPLOYMENT_COMPONENT = "deployment-controller"
REPLICASET_COMPONENT = "replicaset-controller"

_SAFE_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery rand.SafeEncodeString alphabet
_POD_PHASE_ORDER = {"Pending": 0, "Unknown": 1, "Running": 2}


# -- small helpers shared by both controllers ------------------------------------


def _key(obj: Obj) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


def _split(key: str) -> tuple[str, str]:
    namespace, _, name = key.partition("/")
    return namespace, name


def _controller_ref(obj: Obj) -> Obj | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return ref
    return None


def _new_controller_ref(owner: Obj) -> Obj:
    """metav1.NewControllerRef: the reference kubectl and the garbage collector follow."""
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _owned_by(obj: Obj, owner: Obj) -> bool:
    ref = _controller_ref(obj)
    return ref is not None and ref.get("uid") == owner["metadata"]["uid"]


def _labels(obj: Obj) -> dict[str, str]:
    return obj["metadata"].get("labels") or {}


def _replicas(obj: Obj) -> int:
    """spec.replicas; the API server defaults it to 1."""
    value = obj.get("spec", {}).get("replicas")
    return 1 if value is None else int(value)


def _status_int(obj: Obj | None, field: str) -> int:
    return int(((obj or {}).get("status") or {}).get(field) or 0)


def _by_creation(objs: Iterable[Obj]) -> list[Obj]:
    """controller.ReplicaSetsByCreationTimestamp: oldest first, ties by name."""
    return sorted(
        objs, key=lambda o: (o["metadata"].get("creationTimestamp", ""), o["metadata"]["name"])
    )


def _active(rses: Iterable[Obj | None]) -> list[Obj]:
    """controller.FilterActiveReplicaSets: those with spec.replicas > 0."""
    return [rs for rs in rses if rs is not None and _replicas(rs) > 0]


def _parse_time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _round_half_away(x: float) -> int:
    """Go's math.Round (integer.RoundToInt32), not Python's banker's rounding."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def scaled_value(value: int | str | None, total: int, round_up: bool) -> int:
    """intstr.GetScaledValueFromIntOrPercent: an int as is, "N%" of `total` rounded."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise ValueError(f"invalid value for IntOrString: {value!r}")
    if isinstance(value, int):
        return value
    if not isinstance(value, str) or not value.endswith("%"):
        raise ValueError(
            f"invalid value for IntOrString: invalid type: string is not a percentage: {value!r}"
        )
    try:
        percent = int(value[:-1])
    except ValueError:
        raise ValueError(f"invalid value for IntOrString: invalid value {value!r}") from None
    exact = percent * total / 100
    return math.ceil(exact) if round_up else math.floor(exact)


def _pod_condition(pod: Obj, type_: str) -> Obj | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return cond
    return None


def pod_ready(pod: Obj) -> bool:
    cond = _pod_condition(pod, "Ready")
    return cond is not None and cond.get("status") == "True"


def _pod_active(pod: Obj) -> bool:
    """controller.IsPodActive: not terminal and not being deleted."""
    phase = (pod.get("status") or {}).get("phase")
    return phase not in ("Succeeded", "Failed") and not pod["metadata"].get("deletionTimestamp")


class _Descending:
    """Sort wrapper reversing string order (newer creationTimestamp first)."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __lt__(self, other: _Descending) -> bool:
        return self.value > other.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and self.value == other.value


def _semantic(value: Any) -> Any:
    """Normalise JSON so that absent, null, empty map and empty list compare equal.

    apimachinery's semantic DeepEqual treats nil and empty slices and maps alike and
    Go's omitempty drops them from the wire; two templates differing only so are one.
    """
    if isinstance(value, dict):
        out = {k: _semantic(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_semantic(v) for v in value]
    return value


def _template_without_hash(template: Obj) -> Any:
    t = Store.copy(template or {})
    (t.get("metadata") or {}).get("labels", {}).pop(HASH_LABEL, None)
    return _semantic(t)


def equal_ignore_hash(a: Obj, b: Obj) -> bool:
    """deploymentutil.EqualIgnoreHash: pod templates equal but for pod-template-hash."""
    return _template_without_hash(a) == _template_without_hash(b)


def _fnv32a(data: bytes) -> int:
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def pod_template_hash(template: Obj, collision_count: int | None) -> str:
    """controller.ComputeHash: fnv32a of the template (+ collisionCount), safe-encoded.

    The real one hashes Go's spew dump of the struct; this hashes canonical JSON, so
    the strings differ from a real cluster's but share their shape and stability.
    """
    data = json.dumps(_semantic(template), sort_keys=True, separators=(",", ":")).encode()
    if collision_count is not None:
        data += (collision_count & 0xFFFFFFFF).to_bytes(4, "little") + b"\0\0\0\0"
    return "".join(_SAFE_CHARS[b % len(_SAFE_CHARS)] for b in str(_fnv32a(data)).encode())


class SimStamps:
    """The simulated instant behind wall-clock timestamps this process saw being set.

    Conditions carry second-precision wall-clock times, yet deadlines here run on
    the simulated clock. A timestamp observed as it was written is pinned to the
    simulated time of that moment; one never observed (written before we started)
    is converted from its wall-clock age.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._marks: dict[tuple[str, str], tuple[str, float]] = {}

    def mark(self, uid: str, what: str, stamp: str) -> None:
        self._marks[(uid, what)] = (stamp, self.clock.sim())

    def sim_of(self, uid: str, what: str, stamp: str) -> float:
        known = self._marks.get((uid, what))
        if known is not None and known[0] == stamp:
            return known[1]
        try:
            age = max(0.0, (self.clock.now() - _parse_time(stamp)).total_seconds())
        except ValueError:  # missing or malformed: count from now, never from the epoch
            age = 0.0
        return self.clock.sim() - age * self.clock.speed

    def forget(self, uid: str) -> None:
        for k in [k for k in self._marks if k[0] == uid]:
            del self._marks[k]


# -- the work queue --------------------------------------------------------------


class WorkQueue:
    """client-go's rate-limited work queue, for one worker on the event loop.

    A key is queued at most once; a key re-added while being processed is queued
    again once it is done, so no change is lost and no key is synced concurrently.
    Delays and back-off are simulated seconds.
    """

    BASE_DELAY = 0.005  # workqueue.DefaultControllerRateLimiter's exponential base
    MAX_DELAY = 1000.0

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._queue: deque[str] = deque()
        self._dirty: set[str] = set()
        self._processing: set[str] = set()
        self._failures: dict[str, int] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self._wake = asyncio.Event()
        self._shut = False

    def add(self, key: str) -> None:
        if self._shut or key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.append(key)
            self._wake.set()

    def add_after(self, key: str, sim_seconds: float) -> None:
        if sim_seconds <= 0:
            self.add(key)
            return
        if self._shut:
            return
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            self.add(key)

        handle = loop.call_later(self.clock.wall_seconds(sim_seconds), fire)
        self._timers.add(handle)

    def add_rate_limited(self, key: str) -> None:
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        self.add_after(key, min(self.BASE_DELAY * 2**failures, self.MAX_DELAY))

    def num_requeues(self, key: str) -> int:
        return self._failures.get(key, 0)

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)

    async def get(self) -> str:
        while not self._queue:
            self._wake.clear()
            await self._wake.wait()
        key = self._queue.popleft()
        self._dirty.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: str) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.append(key)
            self._wake.set()

    @property
    def idle(self) -> bool:
        """Nothing queued or in progress (delayed re-queues may still be pending)."""
        return not self._queue and not self._processing

    def shut_down(self) -> None:
        self._shut = True
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()


class _Controller:
    """The informer + work queue + worker plumbing both controllers share."""

    component = ""
    max_retries = 15

    def __init__(self, store: Store, clock: Clock, recorder: EventRecorder) -> None:
        self.store = store
        self.clock = clock
        self.recorder = recorder
        self.queue = WorkQueue(clock)
        self.stamps = SimStamps(clock)
        self._task: asyncio.Task | None = None
        self._listening = False

    # subclasses: which stored objects to sync first, how changes map to keys, the sync.
    primary: Resource

    def _available(self, pod: Obj, min_ready_seconds: int) -> bool:
        """podutil.IsPodAvailable, with minReadySeconds measured in simulated time."""
        if not pod_ready(pod):
            return False
        if not min_ready_seconds:
            return True
        stamp = _ready_time_key(pod)
        if not stamp:
            return False
        return (
            self.stamps.sim_of(pod["metadata"]["uid"], "ready", stamp) + min_ready_seconds
            < self.clock.sim()
        )

    def _requeue_for_availability(self, owner: Obj, pods: list[Obj]) -> None:
        """Sync again when the next ready pod has been ready for minReadySeconds."""
        min_ready = int(owner.get("spec", {}).get("minReadySeconds") or 0)
        if not min_ready:
            return
        waits = [
            self.stamps.sim_of(p["metadata"]["uid"], "ready", _ready_time_key(p))
            + min_ready
            - self.clock.sim()
            for p in pods
            if pod_ready(p) and _ready_time_key(p) and not self._available(p, min_ready)
        ]
        if waits:
            # Strictly after the instant, as IsPodAvailable compares with Before().
            self.queue.add_after(_key(owner), max(0.0, min(waits)) + 0.001 * self.clock.speed)

    def _on_change(self, ev_type: str, res: Resource, new: Obj, old: Obj | None) -> None:
        raise NotImplementedError

    def sync(self, key: str) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Watch the store and start the worker on the running event loop."""
        if self._task is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        if not self._listening:
            self.store.on_change(self._listener)
            self._listening = True
        self.queue = WorkQueue(self.clock)
        for obj in self.store.list(self.primary):
            self.queue.add(_key(obj))
        self._task = asyncio.get_running_loop().create_task(self._worker(), name=self.component)

    async def stop(self) -> None:
        self.queue.shut_down()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def _listener(self, ev_type: str, res: Resource, new: Obj, old: Obj | None) -> None:
        if self._task is not None:
            self._on_change(ev_type, res, new, old)

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                self.sync(key)
                self.queue.forget(key)
            except Exception as exc:  # noqa: BLE001 - a failed sync is retried, as handleErr does
                self._handle_error(key, exc)
            finally:
                self.queue.done(key)
            await asyncio.sleep(0)  # let the API server and kubelet run between syncs

    def _handle_error(self, key: str, exc: Exception) -> None:
        if isinstance(exc, ApiError):
            log.debug("%s: error syncing %s: %s", self.component, key, exc.message)
        else:
            log.exception("%s: error syncing %s", self.component, key)
        if self.queue.num_requeues(key) < self.max_retries:
            self.queue.add_rate_limited(key)
        else:
            log.warning("%s: dropping %s out of the queue: %s", self.component, key, exc)
            self.queue.forget(key)

    def _event(self, obj: Obj, reason: str, message: str, type_: str = "Normal") -> None:
        self.recorder.record(obj, type_, reason, message, self.component)


# -- ReplicaSet controller -------------------------------------------------------


def _ready_time_key(pod: Obj) -> str:
    cond = _pod_condition(pod, "Ready")
    return (cond or {}).get("lastTransitionTime") or ""


class ReplicaSetController(_Controller):
    """Keeps each ReplicaSet's pod count at spec.replicas and reports status."""

    component = REPLICASET_COMPONENT
    primary = REPLICASETS
    burst_replicas = 500

    def _on_change(self, ev_type: str, res: Resource, new: Obj, old: Obj | None) -> None:
        if res.key == REPLICASETS.key:
            if ev_type == "DELETED":
                self.stamps.forget(new["metadata"]["uid"])
            self.queue.add(_key(new))
        elif res.key == PODS.key:
            self._pod_changed(ev_type, new, old)

    def _pod_changed(self, ev_type: str, new: Obj, old: Obj | None) -> None:
        uid = new["metadata"]["uid"]
        if ev_type == "DELETED":
            self.stamps.forget(uid)
        elif pod_ready(new) and (
            old is None or not pod_ready(old) or _ready_time_key(old) != _ready_time_key(new)
        ):
            self.stamps.mark(uid, "ready", _ready_time_key(new))
        for pod in (new, old):
            ref = _controller_ref(pod) if pod is not None else None
            if ref is not None and ref.get("kind") == "ReplicaSet":
                self.queue.add(f"{pod['metadata'].get('namespace', '')}/{ref['name']}")

    # -- sync ------------------------------------------------------------------

    def sync(self, key: str) -> None:
        namespace, name = _split(key)
        rs = self.store.try_get(REPLICASETS, namespace, name)
        if rs is None:
            return
        pods = self._owned_active_pods(rs)
        manage_error: ApiError | None = None
        if not rs["metadata"].get("deletionTimestamp"):
            manage_error = self._manage_replicas(rs, pods)
        status = self._calculate_status(rs, pods, manage_error)
        updated = self._update_status(rs, status)
        self._requeue_for_availability(updated, pods)
        if manage_error is not None:
            raise manage_error

    def _owned_active_pods(self, rs: Obj) -> list[Obj]:
        selector = rs.get("spec", {}).get("selector")
        return [
            pod
            for pod in self.store.list(PODS, rs["metadata"].get("namespace"))
            if _pod_active(pod)
            and _owned_by(pod, rs)
            and match_label_selector(selector, _labels(pod))
        ]

    def _manage_replicas(self, rs: Obj, pods: list[Obj]) -> ApiError | None:
        diff = len(pods) - _replicas(rs)
        if diff < 0:
            return self._create_pods(rs, min(-diff, self.burst_replicas))
        if diff > 0:
            for pod in self._pods_to_delete(rs, pods, min(diff, self.burst_replicas)):
                try:
                    self.store.delete(
                        PODS, pod["metadata"].get("namespace"), pod["metadata"]["name"]
                    )
                except ApiError as exc:
                    if exc.code == 404:
                        continue
                    self._event(rs, "FailedDelete", f"Error deleting: {exc.message}", "Warning")
                    return exc
                self._event(rs, "SuccessfulDelete", f"Deleted pod: {pod['metadata']['name']}")
        return None

    def _create_pods(self, rs: Obj, count: int) -> ApiError | None:
        for _ in range(count):
            pod = self._pod_from_template(rs)
            try:
                created = self.store.create(PODS, pod)
            except ApiError as exc:
                self._event(rs, "FailedCreate", f"Error creating: {exc.message}", "Warning")
                return exc
            self._event(rs, "SuccessfulCreate", f"Created pod: {created['metadata']['name']}")
        return None

    @staticmethod
    def _pod_from_template(rs: Obj) -> Obj:
        """controller.GetPodFromTemplate, then the API server's pod defaulting."""
        template = rs.get("spec", {}).get("template") or {}
        tmeta = template.get("metadata") or {}
        meta: Obj = {
            "generateName": f"{rs['metadata']['name']}-",
            "namespace": rs["metadata"].get("namespace"),
            "labels": dict(tmeta.get("labels") or {}),
            "ownerReferences": [_new_controller_ref(rs)],
        }
        for field in ("annotations", "finalizers"):
            if tmeta.get(field):
                meta[field] = Store.copy(tmeta[field])
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": Store.copy(template.get("spec") or {}),
        }
        return defaults.apply_defaults(pod)

    def _pods_to_delete(self, rs: Obj, pods: list[Obj], count: int) -> list[Obj]:
        """getPodsToDelete: rank with controller.ActivePodsWithRanks, take the first."""
        if count >= len(pods):
            return pods
        pods_on_node: dict[str, int] = {}
        for pod in pods:
            node = pod.get("spec", {}).get("nodeName") or ""
            pods_on_node[node] = pods_on_node.get(node, 0) + 1
        return sorted(pods, key=lambda p: self._deletion_rank(p, pods_on_node))[:count]

    def _deletion_rank(self, pod: Obj, pods_on_node: dict[str, int]) -> tuple:
        """Sort key: first to delete sorts first (ActivePodsWithRanks.Less).

        Unscheduled before scheduled; Pending < Unknown < Running; not ready before
        ready; lower pod-deletion-cost first; more siblings on the same node first;
        ready more recently first; more restarts first; newer first.
        """
        node = pod.get("spec", {}).get("nodeName") or ""
        status = pod.get("status") or {}
        ready = pod_ready(pod)
        annotations = pod["metadata"].get("annotations") or {}
        try:
            cost = int(annotations.get("controller.kubernetes.io/pod-deletion-cost", 0))
        except ValueError:
            cost = 0
        ready_since = (
            -self.stamps.sim_of(pod["metadata"]["uid"], "ready", _ready_time_key(pod))
            if ready
            else 0.0
        )
        restarts = max(
            (c.get("restartCount", 0) for c in status.get("containerStatuses") or []), default=0
        )
        created = pod["metadata"].get("creationTimestamp") or ""
        return (
            bool(node),
            _POD_PHASE_ORDER.get(status.get("phase", ""), 0),
            ready,
            cost,
            -pods_on_node.get(node, 0),
            ready_since,
            -restarts,
            _Descending(created),
        )

    def _calculate_status(self, rs: Obj, pods: list[Obj], manage_error: ApiError | None) -> Obj:
        spec = rs.get("spec", {})
        template_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        min_ready = int(spec.get("minReadySeconds") or 0)
        status = Store.copy(rs.get("status") or {})
        status["replicas"] = len(pods)
        status["fullyLabeledReplicas"] = sum(
            1 for p in pods if all(_labels(p).get(k) == v for k, v in template_labels.items())
        )
        status["readyReplicas"] = sum(1 for p in pods if pod_ready(p))
        status["availableReplicas"] = sum(1 for p in pods if self._available(p, min_ready))
        conditions = [
            c for c in status.get("conditions") or [] if c.get("type") != "ReplicaFailure"
        ]
        failure = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "ReplicaFailure"), None
        )
        if manage_error is not None and failure is None:
            reason = "FailedCreate" if len(pods) < _replicas(rs) else "FailedDelete"
            failure = {
                "type": "ReplicaFailure",
                "status": "True",
                "lastTransitionTime": rfc3339(self.clock.now()),
                "reason": reason,
                "message": manage_error.message,
            }
        if manage_error is not None:
            conditions.append(failure)
        status["conditions"] = conditions
        return status

    def _update_status(self, rs: Obj, status: Obj) -> Obj:
        """updateReplicaSetStatus: write only when counts, conditions or generation moved."""
        old = rs.get("status") or {}
        generation = rs["metadata"].get("generation", 0)
        unchanged = all(
            int(old.get(f) or 0) == int(status[f])
            for f in ("replicas", "fullyLabeledReplicas", "readyReplicas", "availableReplicas")
        )
        if (
            unchanged
            and int(old.get("observedGeneration") or 0) == generation
            and (old.get("conditions") or []) == status["conditions"]
        ):
            return rs
        status["observedGeneration"] = generation
        out = Store.copy(rs)
        out["status"] = _omit_empty(status, keep=("replicas",))
        return self.store.update(REPLICASETS, out, subresource="status")


def _omit_empty(status: Obj, keep: Iterable[str] = ()) -> Obj:
    """Drop zero counts and empty lists, as Go's omitempty does on the wire."""
    return {k: v for k, v in status.items() if k in keep or v not in (0, None, [], {})}


# -- Deployment controller ---------------------------------------------------------


def _is_rolling(d: Obj) -> bool:
    return ((d.get("spec") or {}).get("strategy") or {}).get(
        "type", "RollingUpdate"
    ) == "RollingUpdate"


def resolve_fenceposts(d: Obj) -> tuple[int, int]:
    """deploymentutil.ResolveFenceposts: (maxSurge rounded up, maxUnavailable rounded down)."""
    rolling = ((d.get("spec") or {}).get("strategy") or {}).get("rollingUpdate") or {}
    desired = _replicas(d)
    surge = scaled_value(rolling.get("maxSurge"), desired, True)
    unavailable = scaled_value(rolling.get("maxUnavailable"), desired, False)
    if surge == 0 and unavailable == 0:
        unavailable = 1  # validation forbids both zero; the controller guards anyway
    return surge, unavailable


def max_surge(d: Obj) -> int:
    return resolve_fenceposts(d)[0] if _is_rolling(d) else 0


def max_unavailable(d: Obj) -> int:
    if not _is_rolling(d) or _replicas(d) == 0:
        return 0
    return min(resolve_fenceposts(d)[1], _replicas(d))


def _revision(rs: Obj) -> int:
    try:
        return int((rs["metadata"].get("annotations") or {}).get(REVISION, "0"))
    except ValueError:
        return 0


def _progress_deadline(d: Obj) -> int | None:
    value = d.get("spec", {}).get("progressDeadlineSeconds")
    return None if value is None or value == _MAX_INT32 else int(value)


def get_condition(status: Obj, type_: str) -> Obj | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == type_:
            return cond
    return None


def remove_condition(status: Obj, type_: str) -> None:
    status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != type_]


def set_condition(status: Obj, cond: Obj) -> bool:
    """deploymentutil.SetDeploymentCondition; True when the condition was replaced.

    Same status and reason: nothing changes. Same status: lastTransitionTime kept.
    The condition moves to the end of the list, as the real helper appends it.
    """
    current = get_condition(status, cond["type"])
    if (
        current is not None
        and current["status"] == cond["status"]
        and current.get("reason") == cond["reason"]
    ):
        return False
    if current is not None and current["status"] == cond["status"]:
        cond["lastTransitionTime"] = current.get("lastTransitionTime")
    remove_condition(status, cond["type"])
    status["conditions"].append(cond)
    return True


def _deployment_complete(d: Obj, status: Obj) -> bool:
    want = _replicas(d)
    return (
        int(status.get("updatedReplicas") or 0) == want
        and int(status.get("replicas") or 0) == want
        and int(status.get("availableReplicas") or 0) == want
        and int(status.get("observedGeneration") or 0) >= d["metadata"].get("generation", 0)
    )


def _deployment_progressing(d: Obj, new: Obj) -> bool:
    old = d.get("status") or {}

    def n(s: Obj, f: str) -> int:
        return int(s.get(f) or 0)

    return (
        n(new, "updatedReplicas") > n(old, "updatedReplicas")
        or n(new, "replicas") - n(new, "updatedReplicas")
        < n(old, "replicas") - n(old, "updatedReplicas")
        or n(new, "readyReplicas") > n(old, "readyReplicas")
        or n(new, "availableReplicas") > n(old, "availableReplicas")
    )


class DeploymentController(_Controller):
    """Rolls Deployments out through ReplicaSets, as kube-controller-manager does."""

    component = DEPLOYMENT_COMPONENT
    primary = DEPLOYMENTS

    # -- change routing -------------------------------------------------------------

    def _on_change(self, ev_type: str, res: Resource, new: Obj, old: Obj | None) -> None:
        if res.key == DEPLOYMENTS.key:
            if ev_type == "DELETED":
                self.stamps.forget(new["metadata"]["uid"])
            self.queue.add(_key(new))
        elif res.key == REPLICASETS.key:
            for rs in (new, old):
                if rs is not None:
                    self._enqueue_owner(rs)
        elif res.key == PODS.key and ev_type == "DELETED":
            # A Recreate rollout waits for the old pods to be gone.
            self._enqueue_pod_deployment(new)

    def _enqueue_owner(self, rs: Obj) -> None:
        ref = _controller_ref(rs)
        if ref is None or ref.get("kind") != "Deployment":
            return
        namespace = rs["metadata"].get("namespace", "")
        d = self.store.try_get(DEPLOYMENTS, namespace, ref["name"])
        if d is not None and d["metadata"]["uid"] == ref.get("uid"):
            self.queue.add(_key(d))

    def _enqueue_pod_deployment(self, pod: Obj) -> None:
        ref = _controller_ref(pod)
        if ref is None or ref.get("kind") != "ReplicaSet":
            return
        rs = self.store.try_get(REPLICASETS, pod["metadata"].get("namespace", ""), ref["name"])
        if rs is not None:
            self._enqueue_owner(rs)

    # -- syncDeployment ---------------------------------------------------------------

    def sync(self, key: str) -> None:
        namespace, name = _split(key)
        stored = self.store.try_get(DEPLOYMENTS, namespace, name)
        if stored is None:
            return
        d = Store.copy(stored)
        d.setdefault("status", {})
        selector = d.get("spec", {}).get("selector")
        if not _semantic(selector):
            self._event(
                d,
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required.",
                "Warning",
            )
            if int(d["status"].get("observedGeneration") or 0) < d["metadata"].get("generation", 0):
                d["status"]["observedGeneration"] = d["metadata"]["generation"]
                self._write_status(d)
            return
        rs_list = self._replica_sets_for(d)
        self._check_paused_conditions(d)
        if d["spec"].get("paused"):
            self._sync_scale_only(d, rs_list)
        elif self._is_scaling_event(d, rs_list):
            self._sync_scale_only(d, rs_list)
        elif _is_rolling(d):
            self._rollout_rolling(d, rs_list)
        else:
            self._rollout_recreate(d, rs_list)

    def _replica_sets_for(self, d: Obj) -> list[Obj]:
        """ReplicaSets this Deployment controls whose labels its selector matches."""
        selector = d["spec"].get("selector")
        return [
            rs
            for rs in self.store.list(REPLICASETS, d["metadata"].get("namespace"))
            if _owned_by(rs, d) and match_label_selector(selector, _labels(rs))
        ]

    def _check_paused_conditions(self, d: Obj) -> None:
        if _progress_deadline(d) is None:
            return
        cond = get_condition(d["status"], "Progressing")
        if cond is not None and cond.get("reason") == TIMED_OUT:
            return
        paused = bool(d["spec"].get("paused"))
        paused_cond = cond is not None and cond.get("reason") == PAUSED
        if paused and not paused_cond:
            self._set_progressing(d, "Unknown", PAUSED, "Deployment is paused")
        elif not paused and paused_cond:
            self._set_progressing(d, "Unknown", RESUMED, "Deployment is resumed")
        else:
            return
        self._write_status(d)

    def _is_scaling_event(self, d: Obj, rs_list: list[Obj]) -> bool:
        new_rs, old_rses = self._new_and_old(d, rs_list, create=False)
        for rs in _active([*old_rses, new_rs]):
            desired = (rs["metadata"].get("annotations") or {}).get(DESIRED_REPLICAS)
            if (
                desired is not None
                and desired.lstrip("-").isdigit()
                and int(desired) != _replicas(d)
            ):
                return True
        return False

    # -- strategies ------------------------------------------------------------------------

    def _sync_scale_only(self, d: Obj, rs_list: list[Obj]) -> None:
        """dc.sync: scaling or paused; no new rollout is started."""
        new_rs, old_rses = self._new_and_old(d, rs_list, create=False)
        self._scale(d, new_rs, old_rses)
        new_rs, old_rses = self._refresh(new_rs), [self._refresh(rs) for rs in old_rses]
        if d["spec"].get("paused"):
            self._cleanup(d, old_rses)
        self._sync_status(d, [*old_rses, new_rs], new_rs)

    def _rollout_rolling(self, d: Obj, rs_list: list[Obj]) -> None:
        new_rs, old_rses = self._new_and_old(d, rs_list, create=True)
        all_rses = [*old_rses, new_rs]
        if self._reconcile_new(d, all_rses, new_rs):
            self._sync_rollout_status(d, self._refreshed(all_rses), self._refresh(new_rs))
            return
        new_rs = self._refresh(new_rs)
        active_old = _active(old_rses)
        if self._reconcile_old(d, [*old_rses, new_rs], active_old, new_rs):
            self._sync_rollout_status(d, self._refreshed(all_rses), self._refresh(new_rs))
            return
        if _deployment_complete(d, d["status"]):
            self._cleanup(d, old_rses)
        self._sync_rollout_status(d, self._refreshed(all_rses), self._refresh(new_rs))

    def _rollout_recreate(self, d: Obj, rs_list: list[Obj]) -> None:
        new_rs, old_rses = self._new_and_old(d, rs_list, create=False)
        scaled_down = False
        for rs in _active(old_rses):
            scaled_down |= self._scale_and_record(d, rs, 0)
        if scaled_down or self._old_pods_running(d, self._refreshed(old_rses)):
            self._sync_rollout_status(
                d, self._refreshed([*old_rses, new_rs]), self._refresh(new_rs)
            )
            return
        if new_rs is None:
            new_rs, old_rses = self._new_and_old(d, rs_list, create=True)
        self._scale_and_record(d, new_rs, _replicas(d))
        if _deployment_complete(d, d["status"]):
            self._cleanup(d, self._refreshed(old_rses))
        self._sync_rollout_status(d, self._refreshed([*old_rses, new_rs]), self._refresh(new_rs))

    def _old_pods_running(self, d: Obj, old_rses: list[Obj]) -> bool:
        if sum(_status_int(rs, "replicas") for rs in old_rses) > 0:
            return True
        old_uids = {rs["metadata"]["uid"] for rs in old_rses}
        selector = d["spec"].get("selector")
        for pod in self.store.list(PODS, d["metadata"].get("namespace")):
            ref = _controller_ref(pod)
            if (
                ref is None
                or ref.get("uid") not in old_uids
                or not match_label_selector(selector, _labels(pod))
            ):
                continue
            if (pod.get("status") or {}).get("phase") not in ("Failed", "Succeeded"):
                return True
        return False

    # -- the new ReplicaSet and its revision ---------------------------------------------------

    def _new_and_old(
        self, d: Obj, rs_list: list[Obj], *, create: bool
    ) -> tuple[Obj | None, list[Obj]]:
        """getAllReplicaSetsAndSyncRevision: (new RS or None, all old RSes)."""
        rs_list = self._refreshed(rs_list)  # an earlier step of this sync may have rewritten some
        existing = next(
            (
                rs
                for rs in _by_creation(rs_list)
                if equal_ignore_hash(
                    rs["spec"].get("template") or {}, d["spec"].get("template") or {}
                )
            ),
            None,
        )
        old_rses = [
            rs
            for rs in rs_list
            if existing is None or rs["metadata"]["uid"] != existing["metadata"]["uid"]
        ]
        new_revision = str(max((_revision(rs) for rs in old_rses), default=0) + 1)
        if existing is not None:
            return self._sync_existing_new(d, existing, new_revision), old_rses
        if not create:
            return None, old_rses
        return self._create_new(d, old_rses, new_revision), old_rses

    def _sync_existing_new(self, d: Obj, existing: Obj, new_revision: str) -> Obj:
        rs = Store.copy(existing)
        annotations_changed = self._set_new_rs_annotations(d, rs, new_revision, exists=True)
        min_ready = d["spec"].get("minReadySeconds") or 0
        if annotations_changed or (rs["spec"].get("minReadySeconds") or 0) != min_ready:
            rs["spec"]["minReadySeconds"] = min_ready
            return self.store.update(REPLICASETS, rs)
        revision_changed = self._set_revision(
            d, (rs["metadata"].get("annotations") or {}).get(REVISION, "")
        )
        status_changed = False
        if _progress_deadline(d) is not None and get_condition(d["status"], "Progressing") is None:
            status_changed = self._set_progressing(
                d, "True", FOUND_NEW_RS, f'Found new replica set "{rs["metadata"]["name"]}"'
            )
        if revision_changed or status_changed:
            self._write_status(d, revision_changed)
        return existing

    def _create_new(self, d: Obj, old_rses: list[Obj], new_revision: str) -> Obj:
        template = Store.copy(d["spec"].get("template") or {})
        collisions = d["status"].get("collisionCount")
        hash_ = pod_template_hash(d["spec"].get("template") or {}, collisions)
        template.setdefault("metadata", {})["labels"] = {
            **(template["metadata"].get("labels") or {}),
            HASH_LABEL: hash_,
        }
        selector = Store.copy(d["spec"].get("selector") or {})
        selector["matchLabels"] = {**(selector.get("matchLabels") or {}), HASH_LABEL: hash_}
        name = f"{d['metadata']['name']}-{hash_}"
        rs: Obj = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": name,
                "namespace": d["metadata"].get("namespace"),
                "labels": dict(template["metadata"]["labels"]),
                "ownerReferences": [_new_controller_ref(d)],
            },
            "spec": {
                "replicas": 0,
                "minReadySeconds": d["spec"].get("minReadySeconds") or 0,
                "selector": selector,
                "template": template,
            },
        }
        rs["spec"]["replicas"] = self._new_rs_new_replicas(d, [*old_rses, rs], rs)
        self._set_new_rs_annotations(d, rs, new_revision, exists=False)
        try:
            created = self.store.create(REPLICASETS, defaults.apply_defaults(rs))
        except ApiError as exc:
            if exc.code == 409 and exc.reason == "AlreadyExists":
                return self._name_collision(d, name)
            message = f'Failed to create new replica set "{name}": {exc.message}'
            if _progress_deadline(d) is not None:
                self._set_progressing(d, "False", FAILED_RS_CREATE, message)
                self._write_status(d)
            self._event(d, FAILED_RS_CREATE, message, "Warning")
            raise
        if _replicas(created) > 0:
            self._event(
                d,
                "ScalingReplicaSet",
                f"Scaled up replica set {name} from 0 to {_replicas(created)}",
            )
        revision_changed = self._set_revision(d, new_revision)
        status_changed = _progress_deadline(d) is not None and self._set_progressing(
            d, "True", NEW_RS_CREATED, f'Created new replica set "{name}"'
        )
        if revision_changed or status_changed:
            self._write_status(d, revision_changed)
        return created

    def _name_collision(self, d: Obj, name: str) -> Obj:
        """An RS by the new name exists: ours (a stale cache elsewhere) or a hash collision."""
        rs = self.store.get(REPLICASETS, d["metadata"].get("namespace"), name)
        if _owned_by(rs, d) and equal_ignore_hash(
            d["spec"].get("template") or {}, rs["spec"].get("template") or {}
        ):
            return rs
        d["status"]["collisionCount"] = int(d["status"].get("collisionCount") or 0) + 1
        self._write_status(d)
        raise ApiError(409, "AlreadyExists", f'replicasets.apps "{name}" already exists')

    def _new_rs_new_replicas(self, d: Obj, all_rses: list[Obj], new_rs: Obj) -> int:
        """deploymentutil.NewRSNewReplicas: how far the new RS may be scaled up now."""
        if not _is_rolling(d):
            return _replicas(d)
        surge = scaled_value(
            ((d["spec"].get("strategy") or {}).get("rollingUpdate") or {}).get("maxSurge"),
            _replicas(d),
            True,
        )
        current = sum(_replicas(rs) for rs in all_rses)
        max_total = _replicas(d) + surge
        if current >= max_total:
            return _replicas(new_rs)
        return _replicas(new_rs) + min(max_total - current, _replicas(d) - _replicas(new_rs))

    def _set_new_rs_annotations(self, d: Obj, rs: Obj, new_revision: str, *, exists: bool) -> bool:
        """deploymentutil.SetNewReplicaSetAnnotations; True when anything changed."""
        annotations = rs["metadata"].setdefault("annotations", {})
        changed = False
        for k, v in (d["metadata"].get("annotations") or {}).items():
            if k in _ANNOTATIONS_NOT_COPIED or annotations.get(k) == v:
                continue
            annotations[k] = v
            changed = True
        had_revision = REVISION in annotations
        old_revision = annotations.get(REVISION, "")
        try:
            old_int = int(old_revision) if old_revision else 0
        except ValueError:
            return False
        if old_int < int(new_revision):
            annotations[REVISION] = new_revision
            changed = True
            if had_revision:
                self._append_revision_history(annotations, old_revision)
        if not exists:
            changed |= self._set_replicas_annotations(d, rs)
        return changed

    @staticmethod
    def _append_revision_history(annotations: dict[str, str], old_revision: str) -> None:
        """A reused RS (a rollback) keeps the revisions it had, bounded in length."""
        history = annotations.get(REVISION_HISTORY, "")
        if not history:
            annotations[REVISION_HISTORY] = old_revision
            return
        revisions = history.split(",")
        total = len(history) + len(old_revision) + 1
        start = 0
        while total > _MAX_REV_HISTORY_CHARS and start < len(revisions):
            total -= len(revisions[start]) + 1
            start += 1
        if total <= _MAX_REV_HISTORY_CHARS:
            annotations[REVISION_HISTORY] = ",".join([*revisions[start:], old_revision])

    @staticmethod
    def _set_replicas_annotations(d: Obj, rs: Obj) -> bool:
        annotations = rs["metadata"].setdefault("annotations", {})
        want = {DESIRED_REPLICAS: str(_replicas(d)), MAX_REPLICAS: str(_replicas(d) + max_surge(d))}
        changed = any(annotations.get(k) != v for k, v in want.items())
        annotations.update(want)
        return changed

    @staticmethod
    def _set_revision(d: Obj, revision: str) -> bool:
        annotations = d["metadata"].setdefault("annotations", {})
        if annotations.get(REVISION) == revision:
            return False
        annotations[REVISION] = revision
        return True

    # -- scaling ----------------------------------------------------------------------

    def _scale_and_record(self, d: Obj, rs: Obj, new_scale: int) -> bool:
        if _replicas(rs) == new_scale:
            return False
        return self._scale_rs(d, rs, new_scale, "up" if _replicas(rs) < new_scale else "down")

    def _scale_rs(self, d: Obj, rs: Obj, new_scale: int, operation: str) -> bool:
        """dc.scaleReplicaSet: set replicas and replica annotations; event if resized."""
        rs = self.store.get(REPLICASETS, rs["metadata"].get("namespace"), rs["metadata"]["name"])
        resize = _replicas(rs) != new_scale
        copy = Store.copy(rs)
        annotations_changed = self._set_replicas_annotations(d, copy)
        if not resize and not annotations_changed:
            return False
        old_scale = _replicas(rs)
        copy["spec"]["replicas"] = new_scale
        self.store.update(REPLICASETS, copy)
        if resize:
            self._event(
                d,
                "ScalingReplicaSet",
                f"Scaled {operation} replica set {rs['metadata']['name']} from {old_scale} to {new_scale}",
            )
        return resize

    def _reconcile_new(self, d: Obj, all_rses: list[Obj], new_rs: Obj) -> bool:
        if _replicas(new_rs) == _replicas(d):
            return False
        if _replicas(new_rs) > _replicas(d):
            return self._scale_and_record(d, new_rs, _replicas(d))
        return self._scale_and_record(d, new_rs, self._new_rs_new_replicas(d, all_rses, new_rs))

    def _reconcile_old(self, d: Obj, all_rses: list[Obj], old_rses: list[Obj], new_rs: Obj) -> bool:
        if sum(_replicas(rs) for rs in old_rses) == 0:
            return False
        min_available = _replicas(d) - max_unavailable(d)
        new_unavailable = _replicas(new_rs) - _status_int(new_rs, "availableReplicas")
        max_scaled_down = sum(_replicas(rs) for rs in all_rses) - min_available - new_unavailable
        if max_scaled_down <= 0:
            return False
        cleaned = self._cleanup_unhealthy(d, old_rses, max_scaled_down)
        old_rses = self._refreshed(old_rses)
        scaled = self._scale_down_old_rolling(d, [*old_rses, new_rs], old_rses)
        return cleaned + scaled > 0

    def _cleanup_unhealthy(self, d: Obj, old_rses: list[Obj], max_cleanup: int) -> int:
        """Scale old RSes down by their unavailable pods first; they serve nobody."""
        total = 0
        for rs in _by_creation(old_rses):
            if total >= max_cleanup:
                break
            available = _status_int(rs, "availableReplicas")
            if _replicas(rs) == 0 or _replicas(rs) == available:
                continue
            count = min(max_cleanup - total, _replicas(rs) - available)
            self._scale_and_record(d, rs, _replicas(rs) - count)
            total += count
        return total

    def _scale_down_old_rolling(self, d: Obj, all_rses: list[Obj], old_rses: list[Obj]) -> int:
        min_available = _replicas(d) - max_unavailable(d)
        available = sum(_status_int(rs, "availableReplicas") for rs in all_rses if rs is not None)
        if available <= min_available:
            return 0
        budget = available - min_available
        total = 0
        for rs in _by_creation(old_rses):
            if total >= budget:
                break
            if _replicas(rs) == 0:
                continue
            count = min(_replicas(rs), budget - total)
            self._scale_and_record(d, rs, _replicas(rs) - count)
            total += count
        return total

    def _scale(self, d: Obj, new_rs: Obj | None, old_rses: list[Obj]) -> None:
        """dc.scale: a replica change outside a rollout, spread proportionally."""
        target = self._active_or_latest(new_rs, old_rses)
        if target is not None:
            if _replicas(target) != _replicas(d):
                self._scale_and_record(d, target, _replicas(d))
            return
        if self._saturated(d, new_rs):
            for rs in _active(old_rses):
                self._scale_and_record(d, rs, 0)
            return
        if not _is_rolling(d):
            return
        active = _active([*old_rses, new_rs])
        allowed = _replicas(d) + max_surge(d) if _replicas(d) > 0 else 0
        to_add = allowed - sum(_replicas(rs) for rs in active)
        operation = ""
        if to_add > 0:
            # Largest first; among equals the newer first when growing...
            active = sorted(_by_creation(active)[::-1], key=lambda rs: -_replicas(rs))
            operation = "up"
        elif to_add < 0:
            # ...and the older first when shrinking.
            active = sorted(_by_creation(active), key=lambda rs: -_replicas(rs))
            operation = "down"
        sizes: dict[str, int] = {}
        added = 0
        for rs in active:
            proportion = self._proportion(d, rs, to_add, added) if to_add else 0
            sizes[rs["metadata"]["name"]] = _replicas(rs) + proportion
            added += proportion
        for i, rs in enumerate(active):
            name = rs["metadata"]["name"]
            if i == 0 and to_add:
                sizes[name] = max(0, sizes[name] + to_add - added)
            self._scale_rs(d, rs, sizes[name], operation)

    @staticmethod
    def _active_or_latest(new_rs: Obj | None, old_rses: list[Obj]) -> Obj | None:
        if new_rs is None and not old_rses:
            return None
        newest_first = _by_creation(old_rses)[::-1]
        active = _active([*newest_first, new_rs])
        if len(active) == 1:
            return active[0]
        if not active:
            return new_rs if new_rs is not None else newest_first[0]
        return None

    @staticmethod
    def _saturated(d: Obj, rs: Obj | None) -> bool:
        if rs is None:
            return False
        desired = (rs["metadata"].get("annotations") or {}).get(DESIRED_REPLICAS, "")
        if not desired.lstrip("-").isdigit():
            return False
        want = _replicas(d)
        return (
            _replicas(rs) == want
            and int(desired) == want
            and _status_int(rs, "availableReplicas") == want
        )

    @staticmethod
    def _proportion(d: Obj, rs: Obj, to_add: int, added: int) -> int:
        """deploymentutil.GetReplicaSetProportion."""
        if _replicas(rs) == 0 or to_add == added:
            return 0
        allowed = to_add - added
        fraction = DeploymentController._fraction(d, rs)
        return min(fraction, allowed) if to_add > 0 else max(fraction, allowed)

    @staticmethod
    def _fraction(d: Obj, rs: Obj) -> int:
        if _replicas(d) == 0:
            return -_replicas(rs)
        target_max = _replicas(d) + max_surge(d)
        raw = (rs["metadata"].get("annotations") or {}).get(MAX_REPLICAS, "")
        before = int(raw) if raw.isdigit() else 0
        if before == 0:
            before = _status_int(d, "replicas")
            if before == 0:
                return _replicas(rs)
        return _round_half_away(_replicas(rs) * target_max / before) - _replicas(rs)

    def _cleanup(self, d: Obj, old_rses: list[Obj]) -> None:
        """Delete the oldest scaled-down RSes beyond revisionHistoryLimit."""
        limit = d["spec"].get("revisionHistoryLimit")
        if limit is None or limit == _MAX_INT32:
            return
        alive = [
            rs for rs in old_rses if rs is not None and not rs["metadata"].get("deletionTimestamp")
        ]
        excess = len(alive) - int(limit)
        if excess <= 0:
            return
        by_revision = sorted(_by_creation(alive), key=_revision)
        for rs in by_revision[:excess]:
            if (
                _status_int(rs, "replicas") != 0
                or _replicas(rs) != 0
                or rs["metadata"].get("generation", 0) > _status_int(rs, "observedGeneration")
            ):
                continue
            try:
                self.store.delete(
                    REPLICASETS, rs["metadata"].get("namespace"), rs["metadata"]["name"]
                )
            except ApiError as exc:
                if exc.code != 404:
                    raise

    # -- status ---------------------------------------------------------------------------

    def _calculate_status(self, d: Obj, all_rses: list[Obj], new_rs: Obj | None) -> Obj:
        rses = [rs for rs in all_rses if rs is not None]
        available = sum(_status_int(rs, "availableReplicas") for rs in rses)
        status: Obj = {
            "observedGeneration": d["metadata"].get("generation", 0),
            "replicas": sum(_status_int(rs, "replicas") for rs in rses),
            "updatedReplicas": _status_int(new_rs, "replicas"),
            "readyReplicas": sum(_status_int(rs, "readyReplicas") for rs in rses),
            "availableReplicas": available,
            "unavailableReplicas": max(0, sum(_replicas(rs) for rs in rses) - available),
            "conditions": Store.copy(d["status"].get("conditions") or []),
            "collisionCount": d["status"].get("collisionCount"),
        }
        if available >= _replicas(d) - max_unavailable(d):
            set_condition(
                status,
                self._condition(
                    "Available",
                    "True",
                    "MinimumReplicasAvailable",
                    "Deployment has minimum availability.",
                ),
            )
        else:
            set_condition(
                status,
                self._condition(
                    "Available",
                    "False",
                    "MinimumReplicasUnavailable",
                    "Deployment does not have minimum availability.",
                ),
            )
        return status

    def _sync_status(self, d: Obj, all_rses: list[Obj | None], new_rs: Obj | None) -> None:
        """syncDeploymentStatus: counts and Available, no progress estimation."""
        status = self._calculate_status(d, all_rses, new_rs)
        if _omit_empty(status) != _omit_empty(d["status"]):
            d["status"] = status
            self._write_status(d)

    def _sync_rollout_status(self, d: Obj, all_rses: list[Obj | None], new_rs: Obj | None) -> None:
        """syncRolloutStatus: counts plus the Progressing condition and its deadline."""
        status = self._calculate_status(d, all_rses, new_rs)
        deadline = _progress_deadline(d)
        if deadline is None:
            remove_condition(status, "Progressing")
        current = get_condition(d["status"], "Progressing")
        complete_before = (
            status["replicas"] == status["updatedReplicas"]
            and current is not None
            and current.get("reason") == NEW_RS_AVAILABLE
        )
        subject = (
            f'ReplicaSet "{new_rs["metadata"]["name"]}"'
            if new_rs is not None
            else f'Deployment "{d["metadata"]["name"]}"'
        )
        if deadline is not None and not complete_before:
            if _deployment_complete(d, status):
                self._set_progressing_in(
                    d, status, "True", NEW_RS_AVAILABLE, f"{subject} has successfully progressed."
                )
            elif _deployment_progressing(d, status):
                cond = self._condition(
                    "Progressing", "True", RS_UPDATED, f"{subject} is progressing."
                )
                if current is not None:
                    # Progress refreshes lastUpdateTime even when the reason is unchanged.
                    if current["status"] == "True":
                        cond["lastTransitionTime"] = current.get("lastTransitionTime")
                    remove_condition(status, "Progressing")
                set_condition(status, cond)
                self._mark_progress(d, cond)
            elif self._timed_out(d, status, deadline):
                self._set_progressing_in(
                    d, status, "False", TIMED_OUT, f"{subject} has timed out progressing."
                )
        failures = self._replica_failures(all_rses, new_rs)
        if failures:
            set_condition(status, failures[0])
        else:
            remove_condition(status, "ReplicaFailure")
        if _omit_empty(status) == _omit_empty(d["status"]):
            self._requeue_stuck(d, status)
            return
        d["status"] = status
        self._write_status(d)

    def _timed_out(self, d: Obj, status: Obj, deadline: int) -> bool:
        cond = get_condition(status, "Progressing")
        if cond is None or cond.get("reason") == NEW_RS_AVAILABLE:
            return False
        if cond.get("reason") == TIMED_OUT:
            return True
        return self._since_progress(d, cond) > deadline

    def _since_progress(self, d: Obj, cond: Obj) -> float:
        """Simulated seconds since the Progressing condition's lastUpdateTime."""
        return self.clock.sim() - self.stamps.sim_of(
            d["metadata"]["uid"], "progress", cond.get("lastUpdateTime") or ""
        )

    def _requeue_stuck(self, d: Obj, status: Obj) -> None:
        """Come back when the progress deadline would pass without further news."""
        deadline = _progress_deadline(d)
        cond = get_condition(d["status"], "Progressing")
        if deadline is None or cond is None:
            return
        if _deployment_complete(d, status) or cond.get("reason") == TIMED_OUT:
            return
        after = deadline - self._since_progress(d, cond)
        if after < 1:
            self.queue.add_rate_limited(_key(d))
        else:
            self.queue.add_after(_key(d), after + 1)

    @staticmethod
    def _replica_failures(all_rses: list[Obj | None], new_rs: Obj | None) -> list[Obj]:
        """ReplicaFailure conditions of the new RS, else of any RS, as Deployment conditions."""

        def failures(rses: Iterable[Obj | None]) -> list[Obj]:
            return [
                {
                    "type": c["type"],
                    "status": c["status"],
                    "lastUpdateTime": c.get("lastTransitionTime"),
                    "lastTransitionTime": c.get("lastTransitionTime"),
                    "reason": c.get("reason"),
                    "message": c.get("message"),
                }
                for rs in rses
                if rs is not None
                for c in (rs.get("status") or {}).get("conditions") or []
                if c.get("type") == "ReplicaFailure"
            ]

        return failures([new_rs]) or failures(all_rses)

    def _condition(self, type_: str, status: str, reason: str, message: str) -> Obj:
        now = rfc3339(self.clock.now())
        return {
            "type": type_,
            "status": status,
            "lastUpdateTime": now,
            "lastTransitionTime": now,
            "reason": reason,
            "message": message,
        }

    def _set_progressing(self, d: Obj, status: str, reason: str, message: str) -> bool:
        return self._set_progressing_in(d, d["status"], status, reason, message)

    def _set_progressing_in(
        self, d: Obj, target: Obj, status: str, reason: str, message: str
    ) -> bool:
        cond = self._condition("Progressing", status, reason, message)
        target.setdefault("conditions", [])
        if set_condition(target, cond):
            self._mark_progress(d, cond)
            return True
        return False

    def _mark_progress(self, d: Obj, cond: Obj) -> None:
        self.stamps.mark(d["metadata"]["uid"], "progress", cond["lastUpdateTime"])

    # -- writes ------------------------------------------------------------------------------

    def _write_status(self, d: Obj, annotations_changed: bool = False) -> None:
        """Write `d`'s status (and its revision annotation, when it moved).

        The real status subresource of Deployments also accepts metadata changes, so
        the controller sets the revision annotation in the same write; this store's
        status subresource takes status only, so the annotation goes first on its own.
        """
        namespace, name = d["metadata"].get("namespace"), d["metadata"]["name"]
        if annotations_changed:
            current = Store.copy(self.store.get(DEPLOYMENTS, namespace, name))
            current["metadata"].setdefault("annotations", {})[REVISION] = d["metadata"][
                "annotations"
            ][REVISION]
            self.store.update(DEPLOYMENTS, current)
        # A sync never awaits, so nothing else has written the Deployment meanwhile.
        current = Store.copy(self.store.get(DEPLOYMENTS, namespace, name))
        current["status"] = _omit_empty(d["status"])
        self.store.update(DEPLOYMENTS, current, subresource="status")

    def _refresh(self, rs: Obj | None) -> Obj | None:
        """The stored version of an RS this sync may have just rewritten."""
        if rs is None:
            return None
        return (
            self.store.try_get(REPLICASETS, rs["metadata"].get("namespace"), rs["metadata"]["name"])
            or rs
        )

    def _refreshed(self, rses: list[Obj | None]) -> list[Obj | None]:
        return [self._refresh(rs) for rs in rses]
