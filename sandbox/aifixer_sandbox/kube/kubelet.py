"""The kubelet and its container runtime, simulated: what happens to a pod on a node.

Each pod bound to a registered node gets a worker coroutine that plays the real
kubelet's sync loop in simulated time: mount volumes, create the sandbox, pull images
(with the image manager's back-off), build the container config (env and envFrom
references), create and start containers, run probes, and restart containers with the
crash-loop back-off. How a container behaves is read from the scenario's image
catalog; what it reports — waiting/terminated reasons, exit codes, messages, events,
conditions, log lines — follows the real kubelet and containerd word for word, because
that text is the evidence a manifest fixer reasons from.

Status is written only through the pods/status subresource and only when it changed,
and every wait is a simulated sleep, so a thousand healthy pods cost nothing once
they are Ready.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import secrets
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..clock import Clock, rfc3339
from ..scenario import Image
from . import errors
from .defaults import image_pull_policy, qos_class
from .events import EventRecorder
from .podlogs import PodLogs
from .resources import core
from .scheduler import memory_limit_bytes
from .store import Obj, Store

log = logging.getLogger("aifixer_sandbox.kubelet")

PODS = core("pods")
NODES = core("nodes")
CONFIGMAPS = core("configmaps")
SECRETS = core("secrets")

COMPONENT = "kubelet"
LogSink = Callable[[dict, list], None]

SYNC_SECONDS = 1.0  # PLEG relist: how soon the kubelet notices a container exited
RESYNC_SECONDS = 10.0  # pod worker back-off period: how often a failing sync is retried
BACKOFF_INITIAL, BACKOFF_MAX = 10.0, 300.0  # container restart and image pull back-off
FIRST_PROBE_SECONDS = 1.0  # probe workers start with the pod sync, not the process
EXIT_DELAY_SECONDS = 0.2  # a process that fails its own startup checks exits about this fast
PULL_BYTES_PER_SECOND = 50_000_000
MOUNT_RETRY_INITIAL, MOUNT_RETRY_MAX = 0.5, 122.0  # volume manager's exponential back-off
_EPSILON = 0.01  # past a back-off deadline, not on it
ZERO_TIME = "1970-01-01T00:00:00Z"  # containerd's startedAt for a process that never started
_SHELLS = {"sh", "bash", "ash", "dash", "zsh"}
_ENV_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")


# -- small formatting helpers ---------------------------------------------------------


def go_duration(seconds: float) -> str:
    """time.Duration.String() of a duration truncated to milliseconds ("796ms", "1m20s")."""
    ms = int(seconds * 1000)
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    minutes, ms = divmod(ms, 60_000)
    hours, minutes = divmod(minutes, 60)
    secs = f"{ms // 1000}.{ms % 1000:03d}".rstrip("0").rstrip(".")
    out = f"{secs}s"
    if minutes or hours:
        out = f"{minutes}m{out}"
    if hours:
        out = f"{hours}h{out}"
    return out


def normalize_image(ref: str) -> str:
    """containerd's fully qualified reference: `nginx:1.25` -> `docker.io/library/nginx:1.25`."""
    name, _, digest = ref.partition("@")
    first = name.split("/", 1)[0]
    if "/" not in name or not ("." in first or ":" in first or first == "localhost"):
        name = "docker.io/" + (name if "/" in name else "library/" + name)
    if not digest and ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return f"{name}@{digest}" if digest else name


def image_id(ref: str) -> str:
    """The repo digest containerd reports (`docker.io/library/nginx@sha256:...`)."""
    name = normalize_image(ref).partition("@")[0]
    head, _, last = name.rpartition("/")
    repo = f"{head}/{last.partition(':')[0]}"
    return f"{repo}@sha256:{hashlib.sha256(ref.encode()).hexdigest()}"


def _pod_ref(pod: Obj) -> str:
    """format.Pod: `name_namespace(uid)`."""
    m = pod["metadata"]
    return f"{m['name']}_{m.get('namespace', '')}({m['uid']})"


# -- back-off (client-go flowcontrol.Backoff) ---------------------------------------------


class Backoff:
    """Per-key exponential back-off; an entry idle for 2×max is forgotten (the 10-minute reset)."""

    def __init__(self, initial: float = BACKOFF_INITIAL, maximum: float = BACKOFF_MAX) -> None:
        self.initial, self.maximum = initial, maximum
        self._entries: dict[str, tuple[float, float]] = {}  # key -> (duration, last update)

    def _expired(self, key: str, at: float) -> bool:
        entry = self._entries.get(key)
        return entry is None or at - entry[1] > 2 * self.maximum

    def next(self, key: str, at: float) -> None:
        if self._expired(key, at):
            self._entries[key] = (self.initial, at)
        else:
            self._entries[key] = (min(self._entries[key][0] * 2, self.maximum), at)

    def get(self, key: str) -> float:
        return self._entries.get(key, (0.0, 0.0))[0]

    def in_backoff_since(self, key: str, event_time: float, now: float) -> bool:
        """IsInBackOffSince: still within the current back-off counted from `event_time`."""
        if self._expired(key, event_time):
            return False
        return now - event_time < self._entries[key][0]

    def in_backoff_since_update(self, key: str, now: float) -> bool:
        """IsInBackOffSinceUpdate: within the back-off counted from the last failure."""
        entry = self._entries.get(key)
        if entry is None or self._expired(key, now):
            return False
        return now - entry[1] < entry[0]

    def remaining(self, key: str, since: float, now: float) -> float:
        return max(0.0, since + self.get(key) - now)


# -- what a container run ends with -----------------------------------------------------


@dataclass
class Termination:
    exit_code: int
    reason: str  # Completed | Error | OOMKilled | StartError
    message: str = ""


class ConfigError(Exception):
    """The container config cannot be generated (CreateContainerConfigError)."""


@dataclass
class NodeState:
    name: str
    host_ip: str
    subnet: str  # "10.244.N"
    images: set[str] = field(default_factory=set)
    ips: set[int] = field(default_factory=set)

    def allocate_ip(self) -> str:
        for n in range(2, 255):
            if n not in self.ips:
                self.ips.add(n)
                return f"{self.subnet}.{n}"
        raise RuntimeError(f"node {self.name}: pod CIDR exhausted")

    def release_ip(self, ip: str | None) -> None:
        if ip:
            self.ips.discard(int(ip.rsplit(".", 1)[1]))


# -- the kubelet ----------------------------------------------------------------------


class Kubelet:
    """The kubelets of all registered nodes (one object; per-node state in NodeState)."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        recorder: EventRecorder,
        logs: PodLogs,
        images: Callable[[str], Image | None],
        log_sink: LogSink | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.recorder = recorder
        self.logs = logs
        self.images = images
        self.log_sink = log_sink
        self.nodes: dict[str, NodeState] = {}
        self.workers: dict[str, PodWorker] = {}  # by pod uid
        self._running = False
        self._sink_failed = False
        store.on_change(self._on_change)

    def start(self) -> None:
        self._running = True
        for pod in self.store.list(PODS):
            self._maybe_start(pod)

    async def stop(self) -> None:
        self._running = False
        workers, self.workers = list(self.workers.values()), {}
        for w in workers:
            w.cancel()
        await asyncio.gather(*(w.task for w in workers if w.task), return_exceptions=True)

    def node(self, name: str) -> NodeState | None:
        state = self.nodes.get(name)
        if state is None:
            obj = self.store.try_get(NODES, None, name)
            if obj is None:
                return None
            cidr = (obj.get("spec") or {}).get("podCIDR") or f"10.244.{len(self.nodes)}.0/24"
            addresses = (obj.get("status") or {}).get("addresses") or []
            host_ip = next(
                (a["address"] for a in addresses if a.get("type") == "InternalIP"),
                f"172.18.0.{len(self.nodes) + 2}",
            )
            state = self.nodes[name] = NodeState(name, host_ip, cidr.rsplit(".", 1)[0])
        return state

    # -- change feed ---------------------------------------------------------------

    def _on_change(self, ev_type: str, res, new: Obj, old: Obj | None) -> None:
        if not self._running:
            return
        if res.key == PODS.key:
            if ev_type == "DELETED":
                worker = self.workers.pop(new["metadata"]["uid"], None)
                if worker is not None:
                    worker.deleted()
            else:
                self._maybe_start(new)
        elif res.key in (CONFIGMAPS.key, SECRETS.key):
            ns = new["metadata"].get("namespace")
            for w in self.workers.values():
                if w.namespace == ns:
                    w.poke()
        elif res.key == NODES.key and ev_type == "ADDED":
            for pod in self.store.list(
                PODS,
                predicate=lambda p: (
                    (p.get("spec") or {}).get("nodeName") == new["metadata"]["name"]
                ),
            ):
                self._maybe_start(pod)

    def _maybe_start(self, pod: Obj) -> None:
        node_name = (pod.get("spec") or {}).get("nodeName")
        uid = pod["metadata"]["uid"]
        if not node_name or uid in self.workers:
            return
        node = self.node(node_name)
        if node is None:
            return  # no kubelet registered under that name: the pod stays Pending
        worker = self.workers[uid] = PodWorker(self, pod, node)
        worker.task = asyncio.get_running_loop().create_task(worker.run(), name=f"pod {uid}")

    # -- output -----------------------------------------------------------------------

    def event(
        self, pod: Obj, type_: str, reason: str, message: str, container: str | None, host: str
    ) -> None:
        field_path = f"spec.containers{{{container}}}" if container else ""
        try:
            self.recorder.record(
                pod, type_, reason, message, COMPONENT, field_path=field_path, host=host
            )
        except errors.ApiError as exc:  # e.g. the namespace is being deleted
            log.debug(
                "event %s on %s not recorded: %s", reason, pod["metadata"]["name"], exc.message
            )

    def write_log(self, worker: PodWorker, container: str, stream: str, lines: list[str]) -> None:
        if not lines:
            return
        ns, pod = worker.namespace, worker.name
        entries = []
        for line in lines:
            ts = worker.next_log_ns()
            when = datetime.fromtimestamp(ts / 1e9, UTC)
            self.logs.append(ns, pod, container, when, line)
            entries.append((ts, line))
        if self.log_sink is None:
            return
        labels = {
            "namespace": ns,
            "pod": pod,
            "container": container,
            "job": f"{ns}/{container}",
            "node_name": worker.node.name,
            "stream": stream,
        }
        if worker.app:
            labels["app"] = worker.app
        try:
            self.log_sink(labels, entries)
        except Exception as exc:  # noqa: BLE001 - a full log store must not stop the pod
            if not self._sink_failed:
                log.warning("log sink refused lines of %s/%s: %s", ns, pod, exc)
                self._sink_failed = True


# -- one pod --------------------------------------------------------------------------


@dataclass
class ContainerStatus:
    """What the kubelet reports for one container; turned into a v1.ContainerStatus."""

    name: str
    image: str
    state: dict = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict = field(default_factory=dict)
    created: int = 0  # containers created so far; restartCount is one less
    ready: bool = False
    started: bool = False
    container_id: str = ""
    image_ref: str = ""  # set once the image is on the node

    def to_api(self) -> dict:
        out: dict[str, Any] = {
            "name": self.name,
            "image": normalize_image(self.image) if self.image_ref else self.image,
            "imageID": self.image_ref,
            "ready": self.ready,
            "restartCount": max(0, self.created - 1),
            "started": self.started,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.container_id:
            out["containerID"] = self.container_id
        return out

    def waiting(self, reason: str, message: str | None = None) -> None:
        if "terminated" in self.state:
            self.last_state = self.state
        self.state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        self.ready = self.started = False


class PodWorker:
    def __init__(self, kubelet: Kubelet, pod: Obj, node: NodeState) -> None:
        self.kubelet = kubelet
        self.clock = kubelet.clock
        self.store = kubelet.store
        self.pod = pod
        meta = pod["metadata"]
        self.uid, self.namespace, self.name = meta["uid"], meta.get("namespace", ""), meta["name"]
        labels = meta.get("labels") or {}
        self.app = labels.get("app") or labels.get("app.kubernetes.io/name") or ""
        self.node = node
        self.spec = pod.get("spec") or {}
        self.pod_ip: str | None = None
        self.start_time = rfc3339(self.clock.now())
        self.sandbox_ready = False
        self.init = [
            ContainerStatus(c["name"], c.get("image", ""))
            for c in self.spec.get("initContainers") or []
        ]
        self.main = [
            ContainerStatus(c["name"], c.get("image", ""))
            for c in self.spec.get("containers") or []
        ]
        if self.init:
            for cs in self.main:
                cs.state = {"waiting": {"reason": "PodInitializing"}}
        self.task: asyncio.Task | None = None
        self._poke = asyncio.Event()
        self._conditions: dict[str, dict] = {}
        self._last_status: dict | None = None
        self._last_log_ns = 0
        self.pull_backoff = Backoff()
        self.restart_backoff = Backoff()

    # -- lifecycle ------------------------------------------------------------------

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def deleted(self) -> None:
        """The pod was deleted: stop its containers and give back its address."""
        for cs in self.init + self.main:
            if "running" in cs.state:
                self.event("Normal", "Killing", f"Stopping container {cs.name}", cs.name)
        self.cancel()
        self.node.release_ip(self.pod_ip)
        self.kubelet.logs.forget_pod(self.namespace, self.name)

    def poke(self) -> None:
        """Something this pod may be waiting for changed (a ConfigMap or Secret)."""
        self._poke.set()

    async def wait(self, sim_seconds: float) -> None:
        """Sleep, but wake early when poked."""
        self._poke.clear()
        try:
            await asyncio.wait_for(self._poke.wait(), self.clock.wall_seconds(sim_seconds))
        except TimeoutError:
            pass

    async def run(self) -> None:
        try:
            self.publish()
            await self._mount_volumes()
            self.pod_ip = self.node.allocate_ip()
            self.sandbox_ready = True
            self.publish()
            for spec, cs in zip(self.spec.get("initContainers") or [], self.init, strict=True):
                if not await ContainerRunner(self, spec, cs, init=True).run():
                    return
            for cs in self.main:
                cs.state = {"waiting": {"reason": "ContainerCreating"}}
            await asyncio.gather(
                *(
                    ContainerRunner(self, spec, cs).run()
                    for spec, cs in zip(self.spec.get("containers") or [], self.main, strict=True)
                )
            )
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not take the whole sandbox loop down
            log.exception("pod worker %s/%s failed", self.namespace, self.name)

    # -- volumes ----------------------------------------------------------------------

    async def _mount_volumes(self) -> None:
        delay = MOUNT_RETRY_INITIAL
        while True:
            failures = [
                msg for msg in (self._mount_error(v) for v in self.spec.get("volumes") or []) if msg
            ]
            if not failures:
                return
            for msg in failures:
                self.event("Warning", "FailedMount", msg, None)
            await self.wait(delay)
            delay = min(delay * 2, MOUNT_RETRY_MAX)

    def _mount_error(self, volume: dict) -> str | None:
        sources = [volume] + [s for s in ((volume.get("projected") or {}).get("sources") or [])]
        for src in sources:
            for kind, res, name_key in (
                ("configMap", CONFIGMAPS, "name"),
                ("secret", SECRETS, "secretName"),
            ):
                ref = src.get(kind)
                if not isinstance(ref, dict) or ref.get("optional"):
                    continue
                name = ref.get(name_key) or ref.get("name")
                obj = self.store.try_get(res, self.namespace, name)
                what = kind.lower()
                if obj is None:
                    return f'MountVolume.SetUp failed for volume "{volume["name"]}" : {what} "{name}" not found'
                keys = _data_keys(obj)
                for item in ref.get("items") or []:
                    if item.get("key") not in keys:
                        return (
                            f'MountVolume.SetUp failed for volume "{volume["name"]}" : '
                            f"{what} references non-existent config key: {item.get('key')}"
                        )
        return None

    # -- status -----------------------------------------------------------------------

    def publish(self) -> None:
        """Write the pod status if it changed since the last write."""
        current = self.store.try_get(PODS, self.namespace, self.name)
        if current is None or current["metadata"]["uid"] != self.uid:
            return
        self.pod = current
        status = self._status(current)
        if status == self._last_status:
            return
        self._last_status = status
        try:
            self.store.update(
                PODS,
                {
                    "metadata": {"namespace": self.namespace, "name": self.name},
                    "status": self.store.copy(status),
                },
                subresource="status",
            )
        except errors.ApiError as exc:
            log.debug("status of %s/%s not written: %s", self.namespace, self.name, exc.message)

    def _condition(self, type_: str, status: bool, reason: str = "", message: str = "") -> dict:
        value = "True" if status else "False"
        prev = self._conditions.get(type_)
        ltt = (
            prev["lastTransitionTime"]
            if prev and prev["status"] == value
            else rfc3339(self.clock.now())
        )
        cond = {"type": type_, "status": value, "lastProbeTime": None, "lastTransitionTime": ltt}
        if reason:
            cond["reason"] = reason
        if message:
            cond["message"] = message
        self._conditions[type_] = cond
        return cond

    def _status(self, current: Obj) -> dict:
        init_done = all(
            "terminated" in cs.state and cs.state["terminated"]["exitCode"] == 0 for cs in self.init
        )
        incomplete = [
            cs.name
            for cs in self.init
            if not ("terminated" in cs.state and cs.state["terminated"]["exitCode"] == 0)
        ]
        unready = [cs.name for cs in self.main if not cs.ready]
        unready_msg = f"containers with unready status: [{' '.join(unready)}]" if unready else ""
        conditions = [
            self._condition("PodReadyToStartContainers", self.sandbox_ready),
            self._condition(
                "Initialized",
                init_done,
                "" if init_done else "ContainersNotInitialized",
                "" if init_done else f"containers with incomplete status: [{' '.join(incomplete)}]",
            ),
            self._condition(
                "Ready", not unready, "ContainersNotReady" if unready else "", unready_msg
            ),
            self._condition(
                "ContainersReady", not unready, "ContainersNotReady" if unready else "", unready_msg
            ),
        ]
        scheduled = next(
            (
                c
                for c in (current.get("status") or {}).get("conditions") or []
                if c.get("type") == "PodScheduled"
            ),
            None,
        )
        conditions.append(scheduled or self._condition("PodScheduled", True))
        host = self.node.host_ip
        status: dict[str, Any] = {
            "phase": self._phase(),
            "conditions": conditions,
            "hostIP": host,
            "hostIPs": [{"ip": host}],
            "startTime": self.start_time,
            "containerStatuses": [cs.to_api() for cs in self.main],
            "qosClass": qos_class(self.spec),
        }
        if self.pod_ip:
            status["podIP"] = self.pod_ip
            status["podIPs"] = [{"ip": self.pod_ip}]
        if self.init:
            status["initContainerStatuses"] = [cs.to_api() for cs in self.init]
        return status

    def _phase(self) -> str:
        """kubelet getPhase for the app containers."""
        policy = self.spec.get("restartPolicy", "Always")
        for cs in self.init:
            term = cs.state.get("terminated") or (
                cs.last_state.get("terminated") if "waiting" in cs.state else None
            )
            if policy == "Never" and term and term["exitCode"] != 0:
                return "Failed"
            if not ("terminated" in cs.state and cs.state["terminated"]["exitCode"] == 0):
                return "Pending"
        running = waiting = stopped = succeeded = 0
        for cs in self.main:
            if "running" in cs.state:
                running += 1
            elif "terminated" in cs.state:
                stopped += 1
                succeeded += cs.state["terminated"]["exitCode"] == 0
            elif cs.last_state.get("terminated"):
                stopped += 1
            else:
                waiting += 1
        if waiting:
            return "Pending"
        if running:
            return "Running"
        if stopped:
            if policy == "Always":
                return "Running"
            if stopped == succeeded:
                return "Succeeded"
            if policy == "Never":
                return "Failed"
            return "Running"
        return "Pending"

    # -- output -------------------------------------------------------------------------

    def event(self, type_: str, reason: str, message: str, container: str | None) -> None:
        self.kubelet.event(self.pod, type_, reason, message, container, self.node.name)

    def next_log_ns(self) -> int:
        self._last_log_ns = max(time.time_ns(), self._last_log_ns + 1)
        return self._last_log_ns


def _data_keys(obj: Obj) -> set[str]:
    return (
        set(obj.get("data") or {})
        | set(obj.get("binaryData") or {})
        | set(obj.get("stringData") or {})
    )


def _secret_value(obj: Obj, key: str) -> str | None:
    if key in (obj.get("stringData") or {}):
        return str(obj["stringData"][key])
    raw = (obj.get("data") or {}).get(key)
    if raw is None:
        return None
    try:
        return base64.b64decode(raw).decode(errors="replace")
    except ValueError:
        return raw


# -- one container --------------------------------------------------------------------


class ContainerRunner:
    """The restart loop of one container: back-off, image, config, run, repeat."""

    def __init__(
        self, worker: PodWorker, spec: dict, cs: ContainerStatus, *, init: bool = False
    ) -> None:
        self.w = worker
        self.clock = worker.clock
        self.spec = spec
        self.cs = cs
        self.init = init
        self.name = spec["name"]
        self.ref = spec.get("image", "")
        self.finished_at: float | None = None  # sim time the last container exited
        self._ready_since: float | None = None

    def event(self, type_: str, reason: str, message: str) -> None:
        self.w.event(type_, reason, message, self.name)

    def log(self, stream: str, lines: list[str]) -> None:
        self.w.kubelet.write_log(self.w, self.name, stream, lines)

    async def run(self) -> bool:
        """Run until the container is done for good; True when it completed successfully."""
        key = self.name
        policy = self.w.spec.get("restartPolicy", "Always")
        while True:
            if self.finished_at is not None:
                backoff = self.w.restart_backoff
                if backoff.in_backoff_since(key, self.finished_at, self.clock.sim()):
                    await self._crash_loop_wait(backoff, key, self.finished_at)
                    continue
                backoff.next(key, self.finished_at)
            image = await self._ensure_image()
            try:
                env = self._environment()
            except ConfigError as exc:
                self.cs.waiting("CreateContainerConfigError", str(exc))
                self.w.publish()
                self.event("Warning", "Failed", f"Error: {exc}")
                await self.w.wait(RESYNC_SECONDS)
                continue
            end = await self._run_instance(image, env)
            self.finished_at = self.clock.sim()
            restart = (
                policy == "Always" and not self.init or (policy != "Never" and end.exit_code != 0)
            )
            if not restart:
                return end.exit_code == 0
            await self.clock.sleep(SYNC_SECONDS)

    async def _crash_loop_wait(self, backoff: Backoff, key: str, finished_at: float) -> None:
        pod_ref = _pod_ref(self.w.pod)
        self.cs.waiting(
            "CrashLoopBackOff",
            f"back-off {go_duration(backoff.get(key))} restarting failed "
            f"container={self.name} pod={pod_ref}",
        )
        self.w.publish()
        self.event(
            "Warning",
            "BackOff",
            f"Back-off restarting failed container {self.name} in pod {pod_ref}",
        )
        await self.clock.sleep(
            min(RESYNC_SECONDS, backoff.remaining(key, finished_at, self.clock.sim())) + _EPSILON
        )

    # -- image ---------------------------------------------------------------------------

    async def _ensure_image(self) -> Image:
        ref = self.ref
        policy = self.spec.get("imagePullPolicy") or image_pull_policy(ref)
        last_error = ""
        while True:
            present = ref in self.w.node.images
            image = self.w.kubelet.images(ref)
            if present and image is not None and policy != "Always":
                self.event(
                    "Normal", "Pulled", f'Container image "{ref}" already present on machine'
                )
                self.cs.image_ref = image_id(ref)
                return image
            if policy == "Never":
                msg = f'Container image "{ref}" is not present with pull policy of Never'
                self.event("Warning", "ErrImageNeverPull", msg)
                await self._image_failure("ErrImageNeverPull", msg)
                continue
            now = self.clock.sim()
            backoff = self.w.pull_backoff
            if backoff.in_backoff_since_update(ref, now):
                msg = f'Back-off pulling image "{ref}"'
                self.event("Normal", "BackOff", msg)
                await self._image_failure("ImagePullBackOff", f"{msg}: ErrImagePull: {last_error}")
                continue
            self.event("Normal", "Pulling", f'Pulling image "{ref}"')
            if image is None:
                await self.clock.sleep(0.5)
                full = normalize_image(ref)
                last_error = (
                    f'rpc error: code = NotFound desc = failed to pull and unpack image "{full}": '
                    f'failed to resolve reference "{full}": {full}: not found'
                )
                self.event("Warning", "Failed", f'Failed to pull image "{ref}": {last_error}')
                self.w.pull_backoff.next(ref, self.clock.sim())
                self.cs.waiting("ErrImagePull", last_error)
                self.w.publish()
                self.event("Warning", "Failed", "Error: ErrImagePull")
                # A failed sync is retried after the pod worker's back-off period, so
                # ErrImagePull shows until then (and again if the pull back-off is over).
                await self.clock.sleep(RESYNC_SECONDS + _EPSILON)
                continue
            took = 0.2 + image.size_bytes / PULL_BYTES_PER_SECOND
            await self.clock.sleep(took)
            self.w.node.images.add(ref)
            self.cs.image_ref = image_id(ref)
            self.event(
                "Normal",
                "Pulled",
                f'Successfully pulled image "{ref}" in {go_duration(took)} '
                f"({go_duration(took + 0.012)} including waiting). "
                f"Image size: {image.size_bytes} bytes.",
            )
            return image

    async def _image_failure(self, reason: str, message: str) -> None:
        self.cs.waiting(reason, message)
        self.w.publish()
        self.event("Warning", "Failed", f"Error: {reason}")
        await self.clock.sleep(RESYNC_SECONDS + _EPSILON)

    # -- config ------------------------------------------------------------------------

    def _lookup(self, res, name: str) -> Obj | None:
        return self.w.store.try_get(res, self.w.namespace, name)

    def _environment(self) -> dict[str, str]:
        """makeEnvironmentVariables: envFrom first, then env; missing references are errors."""
        env: dict[str, str] = {}
        for src in self.spec.get("envFrom") or []:
            prefix = src.get("prefix") or ""
            for kind, res, what in (
                ("configMapRef", CONFIGMAPS, "configmap"),
                ("secretRef", SECRETS, "secret"),
            ):
                ref = src.get(kind)
                if not isinstance(ref, dict):
                    continue
                obj = self._lookup(res, ref.get("name", ""))
                if obj is None:
                    if ref.get("optional"):
                        continue
                    raise ConfigError(f'{what} "{ref.get("name")}" not found')
                for k in sorted(_data_keys(obj) - set(obj.get("binaryData") or {})):
                    env[prefix + k] = (
                        _secret_value(obj, k)
                        if what == "secret"
                        else str((obj.get("data") or {}).get(k, ""))
                    ) or ""
        for var in self.spec.get("env") or []:
            name = var.get("name", "")
            if "valueFrom" in var:
                value = self._value_from(var["valueFrom"])
                if value is None:
                    continue
                env[name] = value
            else:
                env[name] = _expand(var.get("value") or "", env)
        return env

    def _value_from(self, source: dict) -> str | None:
        for kind, res, what, label in (
            ("configMapKeyRef", CONFIGMAPS, "configmap", "ConfigMap"),
            ("secretKeyRef", SECRETS, "secret", "Secret"),
        ):
            ref = source.get(kind)
            if not isinstance(ref, dict):
                continue
            name, key, optional = ref.get("name", ""), ref.get("key", ""), ref.get("optional")
            obj = self._lookup(res, name)
            if obj is None:
                if optional:
                    return None
                raise ConfigError(f'{what} "{name}" not found')
            value = (
                _secret_value(obj, key) if what == "secret" else (obj.get("data") or {}).get(key)
            )
            if value is None:
                if optional:
                    return None
                raise ConfigError(f"couldn't find key {key} in {label} {self.w.namespace}/{name}")
            return str(value)
        field_ref = source.get("fieldRef")
        if isinstance(field_ref, dict):
            return self._field_value(field_ref.get("fieldPath", ""))
        if isinstance(source.get("resourceFieldRef"), dict):
            return "0"
        return None

    def _field_value(self, path: str) -> str:
        meta = self.w.pod["metadata"]
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if m:
            return (meta.get(m.group(1)) or {}).get(m.group(2), "")
        return {
            "metadata.name": self.w.name,
            "metadata.namespace": self.w.namespace,
            "metadata.uid": self.w.uid,
            "spec.nodeName": self.w.node.name,
            "spec.serviceAccountName": self.w.spec.get("serviceAccountName", "default"),
            "status.hostIP": self.w.node.host_ip,
            "status.hostIPs": self.w.node.host_ip,
            "status.podIP": self.w.pod_ip or "",
            "status.podIPs": self.w.pod_ip or "",
        }.get(path, "")

    # -- running ------------------------------------------------------------------------

    async def _run_instance(self, image: Image, env: dict[str, str]) -> Termination:
        cs = self.cs
        cs.created += 1
        cs.container_id = "containerd://" + secrets.token_hex(32)
        self.w.kubelet.logs.start_instance(self.w.namespace, self.w.name, self.name)
        self.event("Normal", "Created", f"Created container: {self.name}")
        start_error = self._start_error(image)
        if start_error:
            return self._start_failed(start_error)
        started_at = rfc3339(self.clock.now())
        if "terminated" in cs.state:
            cs.last_state = cs.state
        cs.state = {"running": {"startedAt": started_at}}
        probes = {k: self.spec.get(k) for k in ("startupProbe", "livenessProbe", "readinessProbe")}
        cs.started = probes["startupProbe"] is None
        cs.ready = cs.started and probes["readinessProbe"] is None and not self.init
        self.w.publish()
        self.event("Normal", "Started", f"Started container {self.name}")
        run = _Instance(self, image, env, probes)
        end = await run.wait()
        cs.ready = cs.started = False
        term = {
            "exitCode": end.exit_code,
            "reason": end.reason,
            "startedAt": started_at,
            "finishedAt": rfc3339(self.clock.now()),
            "containerID": cs.container_id,
        }
        message = end.message or self._fallback_message(run)
        if message:
            term["message"] = message
        cs.state = {"terminated": term}
        self.w.publish()
        return end

    def _fallback_message(self, run: _Instance) -> str:
        """terminationMessagePolicy FallbackToLogsOnError: the log tail of a failed container."""
        if (
            self.spec.get("terminationMessagePolicy") != "FallbackToLogsOnError"
            or run.exit_code_hint == 0
        ):
            return ""
        return "\n".join(run.lines[-80:])[-2048:]

    def _start_error(self, image: Image) -> str | None:
        return start_error(container_argv(self.spec, image), image)

    def _start_failed(self, message: str) -> Termination:
        """containerd StartError: the container exists but its process never ran."""
        cs = self.cs
        self.event("Warning", "Failed", f"Error: {message}")
        now = rfc3339(self.clock.now())
        cs.last_state = {
            "terminated": {
                "exitCode": 128,
                "reason": "StartError",
                "message": message,
                "startedAt": ZERO_TIME,
                "finishedAt": now,
                "containerID": cs.container_id,
            }
        }
        cs.state = {"waiting": {"reason": "RunContainerError", "message": message}}
        cs.ready = cs.started = False
        self.w.publish()
        return Termination(128, "StartError", message)


def start_error(argv: list[str], image: Image) -> str | None:
    """The runtime's error when the process `argv` names cannot be executed in `image`."""
    if not argv or image.binaries is None:
        return None
    exe = argv[0]
    if _basename(exe) in image.binaries:
        return None
    detail = (
        f'exec: "{exe}": stat {exe}: no such file or directory'
        if "/" in exe
        else f'exec: "{exe}": executable file not found in $PATH'
    )
    return (
        "failed to create containerd task: failed to create shim task: OCI runtime create failed: "
        "runc create failed: unable to start container process: error during container init: "
        f"{detail}: unknown"
    )


def container_argv(spec: dict, image: Image) -> list[str]:
    """The process a container runs, as containerd builds it from the spec and the image.

    `command` replaces the image's ENTRYPOINT (and drops its CMD); `args` replace the
    CMD. An image whose catalog entry names neither runs what the manifest says; there,
    a leading flag in `args` alone means an ENTRYPOINT not described, so nothing to check.
    """
    command, args = spec.get("command") or [], spec.get("args") or []
    if command:
        argv = list(command) + list(args)
    elif image.entrypoint is not None or image.cmd is not None:
        argv = list(image.entrypoint or []) + list(args or image.cmd or [])
    else:
        argv = list(args)
        if argv and str(argv[0]).startswith("-"):
            return []
    return [str(a) for a in argv]


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _shell_script(argv: list[str]) -> str | None:
    """The script of `sh -c "..."` style commands."""
    if len(argv) >= 3 and _basename(argv[0]) in _SHELLS and argv[1] in ("-c", "-ec", "-ce", "-euc"):
        return argv[2]
    return None


def _script_command(script: str) -> str | None:
    """The first command a shell script runs (skipping `exec` and VAR=value prefixes)."""
    try:
        words = shlex.split(script)
    except ValueError:
        words = script.split()
    for word in words:
        if word == "exec" or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", word):
            continue
        return re.split(r"[;&|]", word)[0] or None
    return None


def _shell_not_found(shell: str, command: str) -> str:
    if _basename(shell) == "bash":
        return f"{shell}: line 1: {command}: command not found"
    return f"{shell}: 1: {command}: not found"


def _expand(value: str, env: dict[str, str]) -> str:
    """$(VAR) references to earlier variables; $$ is a literal $."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _ENV_REF.sub(sub, value)


def _port(spec: dict, port: Any) -> int | None:
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for p in spec.get("ports") or []:
        if p.get("name") == port:
            return p.get("containerPort")
    return None


def _covering_mount(spec: dict, path: str) -> dict | None:
    best = None
    for m in spec.get("volumeMounts") or []:
        mp = (m.get("mountPath") or "").rstrip("/") or "/"
        if m.get("subPath"):
            covers = path == mp
        else:
            covers = path == mp or path.startswith(mp.rstrip("/") + "/")
        if covers and (best is None or len(mp) > len(best["mountPath"].rstrip("/"))):
            best = m
    return best


class _Instance:
    """One started container process: its logs, exit, and probes."""

    def __init__(
        self, runner: ContainerRunner, image: Image, env: dict[str, str], probes: dict
    ) -> None:
        self.r = runner
        self.clock = runner.clock
        self.image = image
        self.env = env
        self.probes = probes
        self.t0 = self.clock.sim()
        self.lines: list[str] = []
        self.exit_code_hint: int | None = None
        self.started = asyncio.Event()
        if probes["startupProbe"] is None:
            self.started.set()

    def log(self, stream: str, lines: list[str]) -> None:
        self.lines.extend(lines)
        self.r.log(stream, lines)

    async def wait(self) -> Termination:
        tasks = [asyncio.create_task(self._process())]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            if self.probes[kind] is not None:
                tasks.append(asyncio.create_task(self._probe_loop(kind, self.probes[kind])))
        try:
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    if t.result() is not None:
                        self.exit_code_hint = t.result().exit_code
                        return t.result()
            await asyncio.Future()  # nothing left that can end it: runs until the pod goes
            raise AssertionError("unreachable")
        finally:
            for t in tasks:
                t.cancel()

    # -- the process itself --------------------------------------------------------------

    async def _process(self) -> Termination | None:
        image, spec = self.image, self.r.spec
        argv = container_argv(spec, image)
        script = _shell_script(argv)
        if script is not None and image.binaries is not None:
            cmd = _script_command(script)
            if cmd and _basename(cmd) not in image.binaries:
                await self.clock.sleep(EXIT_DELAY_SECONDS)
                self.log("stderr", [_shell_not_found(argv[0], cmd)])
                return Termination(127, "Error")
        for var, expected in self.image.requires_env.items():
            value = self.env.get(var)
            if not value:
                return await self._fatal(f"FATAL: environment variable {var} is not set")
            if expected is not None and value != expected:
                return await self._fatal(
                    f'FATAL: environment variable {var} has an invalid value: "{value}"'
                )
        for path in self.image.requires_files:
            if not self._file_present(path):
                return await self._fatal(f"FATAL: open {path}: no such file or directory")
        self.log("stdout", list(image.logs))
        limit = memory_limit_bytes(spec)
        if limit is not None and limit < image.memory_mib * 1024 * 1024:
            # The kernel kills it as its working set grows: no last words from the app.
            await self.clock.sleep(max(image.start_seconds, EXIT_DELAY_SECONDS))
            return Termination(137, "OOMKilled")
        if image.crash is not None:
            await self.clock.sleep(image.crash.after_seconds)
            self.log("stderr", list(image.crash.logs))
            code = image.crash.exit_code
            return Termination(code, "Completed" if code == 0 else "Error")
        if self.r.init:
            await self.clock.sleep(image.start_seconds)
            return Termination(0, "Completed")
        return None

    async def _fatal(self, line: str) -> Termination:
        await self.clock.sleep(EXIT_DELAY_SECONDS)
        self.log("stderr", [line])
        return Termination(1, "Error")

    def _file_present(self, path: str) -> bool:
        mount = _covering_mount(self.r.spec, path)
        if mount is None:
            return False
        volume = next(
            (v for v in self.r.w.spec.get("volumes") or [] if v.get("name") == mount.get("name")),
            None,
        )
        if volume is None:
            return False
        rel = (
            mount["subPath"]
            if mount.get("subPath")
            else path[len(mount["mountPath"].rstrip("/")) :].lstrip("/")
        )
        sources = [volume] + list((volume.get("projected") or {}).get("sources") or [])
        typed = [
            s
            for s in sources
            if isinstance(s.get("configMap"), dict) or isinstance(s.get("secret"), dict)
        ]
        if not typed:
            return True  # emptyDir, hostPath, PVC, downwardAPI...: the app finds its files there
        store, ns = self.r.w.store, self.r.w.namespace
        for src in typed:
            ref, res = (
                (src["configMap"], CONFIGMAPS) if "configMap" in src else (src["secret"], SECRETS)
            )
            obj = store.try_get(res, ns, ref.get("name") or ref.get("secretName") or "")
            if obj is None:
                continue
            items = ref.get("items")
            files = (
                {i.get("path") for i in items if i.get("key") in _data_keys(obj)}
                if items
                else _data_keys(obj)
            )
            if rel in files or any(f.startswith(rel.rstrip("/") + "/") for f in files if rel):
                return True
        return False

    # -- probes --------------------------------------------------------------------------

    def _elapsed(self) -> float:
        return self.clock.sim() - self.t0

    async def _sleep_until(self, elapsed: float) -> None:
        await self.clock.sleep(elapsed - self._elapsed())

    async def _probe_loop(self, kind: str, probe: dict) -> Termination | None:
        label = {
            "startupProbe": "Startup",
            "livenessProbe": "Liveness",
            "readinessProbe": "Readiness",
        }[kind]
        period = probe.get("periodSeconds") or 10
        failure_threshold = probe.get("failureThreshold") or 3
        success_threshold = probe.get("successThreshold") or 1
        if kind != "startupProbe":
            await self.started.wait()
        at = max(float(probe.get("initialDelaySeconds") or 0), FIRST_PROBE_SECONDS, self._elapsed())
        successes = failures = 0
        while True:
            await self._sleep_until(at)
            ok, output, errored = self._probe(probe)
            settled = self._elapsed() >= self.image.start_seconds  # results no longer change
            if ok:
                successes, failures = successes + 1, 0
                if kind == "startupProbe":
                    self._set(started=True)
                    self.started.set()
                    return None
                if kind == "readinessProbe" and successes >= success_threshold:
                    self._set(ready=True)
                    if settled:
                        return None
                elif kind == "livenessProbe" and settled:
                    return None
            else:
                successes, failures = 0, failures + 1
                verb = "errored" if errored else "failed"
                self.r.event("Warning", "Unhealthy", f"{label} probe {verb}: {output}")
                if kind == "readinessProbe":
                    self._set(ready=False)
                elif failures >= failure_threshold:
                    self.r.event(
                        "Normal",
                        "Killing",
                        f"Container {self.r.name} failed {label.lower()} probe, will be restarted",
                    )
                    return Termination(137, "Error")
            at += period

    def _set(self, *, started: bool | None = None, ready: bool | None = None) -> None:
        cs = self.r.cs
        if started is not None:
            cs.started = started
            if started and self.probes["readinessProbe"] is None:
                cs.ready = True
        if ready is not None:
            cs.ready = ready
        self.r.w.publish()

    def _probe(self, probe: dict) -> tuple[bool, str, bool]:
        """(success, output, errored) of one probe against this process right now."""
        image, spec = self.image, self.r.spec
        host = self.r.w.pod_ip or ""
        # A working set over the memory limit is killed as it grows, while the process
        # starts: it never listens (the kill and the first answer are due at the same
        # moment, and the kill wins, as the kernel's does).
        limit = memory_limit_bytes(spec)
        oom_bound = limit is not None and limit < image.memory_mib * 1024 * 1024
        listening = (
            image.port is not None and self._elapsed() >= image.start_seconds and not oom_bound
        )
        for kind in ("httpGet", "tcpSocket", "grpc"):
            action = probe.get(kind)
            if not isinstance(action, dict):
                continue
            port = _port(spec, action.get("port"))
            if port is None:
                return (
                    False,
                    f'unable to find port "{action.get("port")}" in container {self.r.name}',
                    True,
                )
            target = f"{action.get('host') or host}:{port}"
            open_ = listening and port == image.port
            if kind == "httpGet":
                path = action.get("path") or "/"
                url = f"{(action.get('scheme') or 'HTTP').lower()}://{target}{path}"
                if not open_:
                    return (
                        False,
                        f'Get "{url}": dial tcp {target}: connect: connection refused',
                        False,
                    )
                if path.split("?", 1)[0] != image.health_path:
                    return False, "HTTP probe failed with statuscode: 404", False
                return True, "", False
            if kind == "tcpSocket":
                return (
                    (True, "", False)
                    if open_
                    else (False, f"dial tcp {target}: connect: connection refused", False)
                )
            return (
                (True, "", False)
                if open_
                else (False, f'timeout: failed to connect service "{target}" within 1s', False)
            )
        command = [str(a) for a in ((probe.get("exec") or {}).get("command") or [])]
        if command and image.binaries is not None:
            script = _shell_script(command)
            if _basename(command[0]) not in image.binaries:
                return (
                    False,
                    (
                        "rpc error: code = Unknown desc = failed to exec in container: failed to start "
                        f"exec: OCI runtime exec failed: exec failed: unable to start container process: "
                        f'exec: "{command[0]}": executable file not found in $PATH: unknown'
                    ),
                    True,
                )
            cmd = _script_command(script) if script is not None else None
            if cmd and _basename(cmd) not in image.binaries:
                return False, _shell_not_found(command[0], cmd), False
        return True, "", False
