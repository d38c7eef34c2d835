"""Deployment and ReplicaSet controllers driven on an in-memory Store.

No kubelet runs here: a tiny stand-in marks pods Ready by writing their status, so
each test decides which pods ever become ready (a "broken" image never does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from aifixer_sandbox.clock import Clock, rfc3339
from aifixer_sandbox.kube import defaults
from aifixer_sandbox.kube.controllers import (
    DESIRED_REPLICAS,
    HASH_LABEL,
    MAX_REPLICAS,
    REVISION,
    REVISION_HISTORY,
    DeploymentController,
    ReplicaSetController,
    WorkQueue,
    equal_ignore_hash,
    pod_template_hash,
    resolve_fenceposts,
    scaled_value,
    set_condition,
)
from aifixer_sandbox.kube.events import EventRecorder
from aifixer_sandbox.kube.resources import core
from aifixer_sandbox.kube.store import Store

DEPLOYMENTS, REPLICASETS, PODS, EVENTS = (
    core("deployments"),
    core("replicasets"),
    core("pods"),
    core("events"),
)
NAMESPACES = core("namespaces")
SPEED = 100.0  # 1 simulated second = 10 ms


def deployment(name: str = "web", replicas: int = 3, image: str = "nginx:1", **spec) -> dict:
    obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": image}]},
            },
            **spec,
        },
    }
    return defaults.apply_defaults(obj)


class Harness:
    """A store, both controllers and a fake kubelet that readies pods of good images."""

    def __init__(self) -> None:
        self.clock = Clock(SPEED)
        self.store = Store(self.clock)
        self.store.create(NAMESPACES, {"metadata": {"name": "default"}})
        recorder = EventRecorder(self.store, self.clock)
        self.rsc = ReplicaSetController(self.store, self.clock, recorder)
        self.dc = DeploymentController(self.store, self.clock, recorder)
        self.max_pods = 0
        self.store.on_change(self._count_pods)
        self._kubelet: asyncio.Task | None = None

    def _count_pods(self, ev_type, res, new, old) -> None:
        if res.key == PODS.key:
            self.max_pods = max(self.max_pods, self.store.count(PODS))

    async def __aenter__(self) -> Harness:
        self.rsc.start()
        self.dc.start()
        self._kubelet = asyncio.get_running_loop().create_task(self._ready_pods())
        return self

    async def __aexit__(self, *exc) -> None:
        self._kubelet.cancel()
        await self.dc.stop()
        await self.rsc.stop()

    async def _ready_pods(self) -> None:
        while True:
            for pod in self.store.list(PODS):
                image = pod["spec"]["containers"][0]["image"]
                if (
                    image.startswith("broken")
                    or (pod.get("status") or {}).get("phase") == "Running"
                ):
                    continue
                pod = Store.copy(pod)
                now = rfc3339(self.clock.now())
                pod["status"] = {
                    "phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
                }
                self.store.update(PODS, pod, subresource="status")
            await asyncio.sleep(0.002)

    async def until(self, what: Callable[[], object], timeout: float = 15.0) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not what():
            if loop.time() > end:
                raise AssertionError(f"condition not reached in {timeout}s: {what.__doc__ or what}")
            await asyncio.sleep(0.002)

    # -- views -------------------------------------------------------------------------

    def deploy(self, name: str = "web") -> dict:
        return self.store.get(DEPLOYMENTS, "default", name)

    def rses(self) -> list[dict]:
        return self.store.list(REPLICASETS, "default")

    def pods(self, image: str | None = None) -> list[dict]:
        return [
            p
            for p in self.store.list(PODS, "default")
            if image is None or p["spec"]["containers"][0]["image"] == image
        ]

    def events(self, reason: str) -> list[str]:
        return [e["message"] for e in self.store.list(EVENTS, "default") if e["reason"] == reason]

    def condition(self, type_: str, name: str = "web") -> dict:
        return next(
            c for c in self.deploy(name)["status"].get("conditions", []) if c["type"] == type_
        )

    def complete(self, name: str = "web") -> bool:
        """kubectl rollout status's notion of done."""
        d = self.deploy(name)
        s = d.get("status", {})
        want = d["spec"]["replicas"]
        return (
            s.get("observedGeneration", 0) >= d["metadata"]["generation"]
            and s.get("updatedReplicas", 0) >= want
            and s.get("replicas", 0) <= s.get("updatedReplicas", 0)
            and s.get("availableReplicas", 0) >= s.get("updatedReplicas", 0)
            and any(c["reason"] == "NewReplicaSetAvailable" for c in s.get("conditions", []))
        )

    def change(self, name: str = "web", **spec_changes) -> None:
        d = Store.copy(self.deploy(name))
        d["spec"].update(spec_changes)
        self.store.update(DEPLOYMENTS, defaults.apply_defaults(d))

    def set_image(self, image: str, name: str = "web") -> None:
        d = Store.copy(self.deploy(name))
        d["spec"]["template"]["spec"]["containers"][0]["image"] = image
        self.store.update(DEPLOYMENTS, defaults.apply_defaults(d))


def run(coro_fn):
    """Run an async test body with a fresh Harness, bounded in time."""

    async def main():
        async with Harness() as h:
            await asyncio.wait_for(coro_fn(h), 20)

    asyncio.run(main())


# -- pure helpers --------------------------------------------------------------------


def test_percentages_round_surge_up_and_unavailable_down():
    assert scaled_value("25%", 3, True) == 1
    assert scaled_value("25%", 3, False) == 0
    assert scaled_value(2, 3, True) == 2
    assert resolve_fenceposts(deployment(replicas=10)) == (3, 2)
    assert resolve_fenceposts(deployment(replicas=1)) == (1, 0)
    zero = deployment(
        replicas=4,
        strategy={
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"},
        },
    )
    assert resolve_fenceposts(zero) == (0, 1)  # never both zero
    with pytest.raises(ValueError):
        scaled_value("25", 3, True)


def test_template_hash_is_stable_short_and_collision_sensitive():
    t = deployment()["spec"]["template"]
    h = pod_template_hash(t, None)
    assert h == pod_template_hash(Store.copy(t), None)
    assert h.isalnum() and 1 <= len(h) <= 10 and not set(h) & set("aeiou013")
    assert pod_template_hash(t, 1) != h
    other = Store.copy(t)
    other["spec"]["containers"][0]["image"] = "nginx:2"
    assert pod_template_hash(other, None) != h


def test_equal_ignore_hash_ignores_only_the_hash_label_and_empty_fields():
    a = deployment()["spec"]["template"]
    b = Store.copy(a)
    b["metadata"]["labels"][HASH_LABEL] = "abc"
    b["metadata"]["annotations"] = {}
    assert equal_ignore_hash(a, b)
    b["metadata"]["labels"]["x"] = "y"
    assert not equal_ignore_hash(a, b)


def test_set_condition_keeps_transition_time_for_same_status():
    status = {
        "conditions": [
            {
                "type": "Progressing",
                "status": "True",
                "lastUpdateTime": "t1",
                "lastTransitionTime": "t0",
                "reason": "NewReplicaSetCreated",
                "message": "m",
            },
            {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"},
        ]
    }
    same = {
        "type": "Progressing",
        "status": "True",
        "lastUpdateTime": "t2",
        "lastTransitionTime": "t2",
        "reason": "NewReplicaSetCreated",
        "message": "m",
    }
    assert not set_condition(status, dict(same))
    assert set_condition(status, {**same, "reason": "ReplicaSetUpdated"})
    assert [c["type"] for c in status["conditions"]] == ["Available", "Progressing"]
    assert status["conditions"][1]["lastTransitionTime"] == "t0"
    assert status["conditions"][1]["lastUpdateTime"] == "t2"
    assert set_condition(status, {**same, "status": "False", "reason": "ProgressDeadlineExceeded"})
    assert status["conditions"][1]["lastTransitionTime"] == "t2"


def test_work_queue_deduplicates_and_requeues_keys_added_while_processing():
    async def body():
        q = WorkQueue(Clock(SPEED))
        q.add("a")
        q.add("a")
        q.add("b")
        assert await q.get() == "a"
        q.add("a")  # while processing: held back until done
        assert await q.get() == "b"
        q.done("b")
        assert not q.idle  # 'a' is still being processed
        q.done("a")
        assert await q.get() == "a"
        q.done("a")
        assert q.idle
        q.add_after("c", 1.0)  # 10 ms
        assert q.idle
        assert await asyncio.wait_for(q.get(), 1) == "c"
        q.shut_down()

    asyncio.run(body())


# -- ReplicaSet controller -------------------------------------------------------------------


def test_replicaset_creates_owned_pods_and_reports_status():
    async def body(h: Harness):
        rs = defaults.apply_defaults(
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {"name": "solo", "namespace": "default"},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "solo"}},
                    "template": {
                        "metadata": {"labels": {"app": "solo"}},
                        "spec": {"containers": [{"name": "c", "image": "nginx"}]},
                    },
                },
            }
        )
        rs = h.store.create(REPLICASETS, rs)
        await h.until(
            lambda: (
                h.store.get(REPLICASETS, "default", "solo")
                .get("status", {})
                .get("availableReplicas")
                == 2
            )
        )
        pods = h.pods()
        assert len(pods) == 2
        for pod in pods:
            assert (
                pod["metadata"]["name"].startswith("solo-")
                and len(pod["metadata"]["name"]) == len("solo-") + 5
            )
            assert pod["metadata"]["labels"] == {"app": "solo"}
            assert pod["metadata"]["ownerReferences"] == [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "solo",
                    "uid": rs["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ]
            assert pod["spec"]["restartPolicy"] == "Always"  # defaulted like an API server create
        status = h.store.get(REPLICASETS, "default", "solo")["status"]
        assert status == {
            "replicas": 2,
            "fullyLabeledReplicas": 2,
            "readyReplicas": 2,
            "availableReplicas": 2,
            "observedGeneration": 1,
        }
        assert sorted(h.events("SuccessfulCreate")) == sorted(
            f"Created pod: {p['metadata']['name']}" for p in pods
        )

        # Scale down to one: the not-ready pod goes first.
        victim = Store.copy(pods[1])
        victim["status"]["conditions"][0]["status"] = "False"
        h.store.update(PODS, victim, subresource="status")
        current = Store.copy(h.store.get(REPLICASETS, "default", "solo"))
        current["spec"]["replicas"] = 1
        h.store.update(REPLICASETS, current)
        await h.until(lambda: len(h.pods()) == 1)
        assert h.pods()[0]["metadata"]["name"] == pods[0]["metadata"]["name"]
        assert h.events("SuccessfulDelete") == [f"Deleted pod: {victim['metadata']['name']}"]
        await h.until(
            lambda: (
                h.store.get(REPLICASETS, "default", "solo")["status"].get("observedGeneration") == 2
            )
        )

    run(body)


def test_min_ready_seconds_delays_availability_in_simulated_time():
    async def body(h: Harness):
        # 2 s of wall time: long enough that a loaded machine still sees it unavailable first.
        h.store.create(DEPLOYMENTS, deployment(replicas=1, minReadySeconds=200))
        await h.until(lambda: h.deploy().get("status", {}).get("readyReplicas") == 1)
        ready_at = h.clock.sim()
        assert h.deploy()["status"].get("availableReplicas", 0) == 0
        await h.until(lambda: h.deploy()["status"].get("availableReplicas") == 1)
        assert h.clock.sim() - ready_at >= 199
        await h.until(h.complete)

    run(body)


# -- Deployment controller ---------------------------------------------------------------------


def test_new_deployment_rolls_out_with_revision_one():
    async def body(h: Harness):
        d = h.store.create(DEPLOYMENTS, deployment())
        await h.until(h.complete)
        [rs] = h.rses()
        hash_ = rs["metadata"]["labels"][HASH_LABEL]
        assert rs["metadata"]["name"] == f"web-{hash_}"
        assert rs["spec"]["selector"]["matchLabels"] == {"app": "web", HASH_LABEL: hash_}
        assert rs["spec"]["template"]["metadata"]["labels"] == {"app": "web", HASH_LABEL: hash_}
        assert rs["metadata"]["ownerReferences"][0]["uid"] == d["metadata"]["uid"]
        assert rs["metadata"]["ownerReferences"][0]["controller"] is True
        ann = rs["metadata"]["annotations"]
        assert (ann[REVISION], ann[DESIRED_REPLICAS], ann[MAX_REPLICAS]) == ("1", "3", "4")
        assert all(p["metadata"]["labels"][HASH_LABEL] == hash_ for p in h.pods())
        dep = h.deploy()
        assert dep["metadata"]["annotations"][REVISION] == "1"
        assert dep["metadata"]["generation"] == 1
        s = dep["status"]
        assert {
            k: s.get(k)
            for k in (
                "observedGeneration",
                "replicas",
                "updatedReplicas",
                "readyReplicas",
                "availableReplicas",
                "unavailableReplicas",
            )
        } == {
            "observedGeneration": 1,
            "replicas": 3,
            "updatedReplicas": 3,
            "readyReplicas": 3,
            "availableReplicas": 3,
            "unavailableReplicas": None,
        }
        assert [c["type"] for c in s["conditions"]] == ["Available", "Progressing"]
        assert h.condition("Available")["reason"] == "MinimumReplicasAvailable"
        progressing = h.condition("Progressing")
        assert (
            progressing["message"]
            == f'ReplicaSet "{rs["metadata"]["name"]}" has successfully progressed.'
        )
        assert h.events("ScalingReplicaSet") == [
            f"Scaled up replica set {rs['metadata']['name']} from 0 to 3"
        ]
        events = [e for e in h.store.list(EVENTS, "default") if e["reason"] == "ScalingReplicaSet"]
        assert events[0]["source"]["component"] == "deployment-controller"
        assert events[0]["involvedObject"]["kind"] == "Deployment"

    run(body)


def test_rolling_update_respects_surge_and_records_revision_two():
    async def body(h: Harness):
        h.store.create(DEPLOYMENTS, deployment(replicas=4))
        await h.until(h.complete)
        [old] = h.rses()
        h.max_pods = 0
        h.set_image("nginx:2")
        await h.until(lambda: h.deploy()["metadata"]["annotations"].get(REVISION) == "2")
        await h.until(h.complete)
        assert h.max_pods <= 4 + 1  # 25% of 4 surge
        rses = {rs["metadata"]["name"]: rs for rs in h.rses()}
        new = next(rs for name, rs in rses.items() if name != old["metadata"]["name"])
        assert new["metadata"]["annotations"][REVISION] == "2"
        assert rses[old["metadata"]["name"]]["spec"]["replicas"] == 0
        assert len(h.pods("nginx:2")) == 4 and not h.pods("nginx:1")
        scaling = h.events("ScalingReplicaSet")
        assert f"Scaled up replica set {new['metadata']['name']} from 0 to 1" in scaling
        assert any(
            m.startswith(f"Scaled down replica set {old['metadata']['name']} from 4 to ")
            for m in scaling
        )
        assert h.deploy()["status"]["observedGeneration"] == 2

    run(body)


def test_broken_rollout_keeps_old_pods_and_exceeds_progress_deadline():
    async def body(h: Harness):
        h.store.create(DEPLOYMENTS, deployment(replicas=3, progressDeadlineSeconds=30))
        await h.until(h.complete)
        [old] = h.rses()
        h.set_image("broken:1")
        await h.until(lambda: h.condition("Progressing")["reason"] == "ProgressDeadlineExceeded")
        progressing = h.condition("Progressing")
        new = next(rs for rs in h.rses() if rs["metadata"]["uid"] != old["metadata"]["uid"])
        assert progressing["status"] == "False"
        assert (
            progressing["message"]
            == f'ReplicaSet "{new["metadata"]["name"]}" has timed out progressing.'
        )
        assert progressing["lastTransitionTime"] == progressing["lastUpdateTime"]
        # maxUnavailable floor(25% of 3) = 0: the old pods all keep serving; the surge pod is stuck.
        assert len(h.pods("nginx:1")) == 3 and len(h.pods("broken:1")) == 1
        s = h.deploy()["status"]
        assert (
            s["replicas"],
            s["updatedReplicas"],
            s["availableReplicas"],
            s["unavailableReplicas"],
        ) == (4, 1, 3, 1)
        assert h.condition("Available")["status"] == "True"
        assert not h.complete()

    run(body)


def test_undo_reuses_old_replicaset_as_revision_three():
    async def body(h: Harness):
        h.store.create(DEPLOYMENTS, deployment(replicas=2))
        await h.until(h.complete)
        [first] = h.rses()
        h.set_image("nginx:2")
        await h.until(
            lambda: h.deploy()["metadata"]["annotations"].get(REVISION) == "2" and h.complete()
        )
        h.set_image("nginx:1")  # what `kubectl rollout undo` writes: the revision-1 template
        await h.until(lambda: h.deploy()["metadata"]["annotations"].get(REVISION) == "3")
        await h.until(h.complete)
        assert len(h.rses()) == 2
        reused = h.store.get(REPLICASETS, "default", first["metadata"]["name"])
        assert reused["metadata"]["uid"] == first["metadata"]["uid"]
        assert reused["metadata"]["annotations"][REVISION] == "3"
        assert reused["metadata"]["annotations"][REVISION_HISTORY] == "1"
        assert reused["spec"]["replicas"] == 2 and len(h.pods("nginx:1")) == 2

    run(body)


def test_revision_history_limit_deletes_oldest_scaled_down_replicasets():
    async def body(h: Harness):
        h.store.create(DEPLOYMENTS, deployment(replicas=1, revisionHistoryLimit=1))
        for n in (1, 2, 3):
            await h.until(
                lambda n=n: (
                    h.complete() and h.deploy()["metadata"]["annotations"].get(REVISION) == str(n)
                )
            )
            if n < 3:
                h.set_image(f"nginx:{n + 1}")
        await h.until(lambda: len(h.rses()) == 2)
        revisions = sorted(rs["metadata"]["annotations"][REVISION] for rs in h.rses())
        assert revisions == ["2", "3"]

    run(body)


def test_recreate_never_runs_old_and_new_pods_together():
    async def body(h: Harness):
        h.store.create(DEPLOYMENTS, deployment(replicas=3, strategy={"type": "Recreate"}))
        await h.until(h.complete)
        both = []
        h.store.on_change(
            lambda t, res, new, old: (
                both.append(True)
                if res.key == PODS.key and h.pods("nginx:1") and h.pods("nginx:2")
                else None
            )
        )
        h.set_image("nginx:2")
        await h.until(
            lambda: h.deploy()["metadata"]["annotations"].get(REVISION) == "2" and h.complete()
        )
        assert not both
        assert len(h.pods("nginx:2")) == 3

    run(body)


def test_scaling_is_not_a_rollout():
    async def body(h: Harness):
        h.store.create(DEPLOYMENTS, deployment(replicas=2))
        await h.until(h.complete)
        [rs] = h.rses()
        h.change(replicas=5)
        await h.until(lambda: h.complete() and h.deploy()["status"]["availableReplicas"] == 5)
        [same] = h.rses()
        assert same["metadata"]["uid"] == rs["metadata"]["uid"]
        assert same["metadata"]["annotations"][DESIRED_REPLICAS] == "5"
        assert f"Scaled up replica set {rs['metadata']['name']} from 2 to 5" in h.events(
            "ScalingReplicaSet"
        )
        assert h.deploy()["metadata"]["annotations"][REVISION] == "1"

    run(body)


def test_paused_deployment_holds_template_changes_until_resumed():
    async def body(h: Harness):
        h.store.create(DEPLOYMENTS, deployment(replicas=1))
        await h.until(h.complete)
        h.change(paused=True)
        await h.until(lambda: h.condition("Progressing")["reason"] == "DeploymentPaused")
        assert h.condition("Progressing")["status"] == "Unknown"
        h.set_image("nginx:2")
        await h.until(lambda: h.deploy()["status"]["observedGeneration"] == 3)
        assert len(h.rses()) == 1
        h.change(paused=False)
        await h.until(
            lambda: h.deploy()["metadata"]["annotations"].get(REVISION) == "2" and h.complete()
        )
        assert len(h.pods("nginx:2")) == 1

    run(body)


def test_replicaset_without_deployment_owner_is_left_alone():
    async def body(h: Harness):
        d = h.store.create(DEPLOYMENTS, deployment(replicas=1))
        await h.until(h.complete)
        [rs] = h.rses()
        foreign = Store.copy(rs)
        foreign["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
        h.store.update(REPLICASETS, foreign)
        # The Deployment no longer sees it as its own: it makes a fresh RS of its own.
        await h.until(lambda: any(r["metadata"]["uid"] != rs["metadata"]["uid"] for r in h.rses()))
        mine = [
            r
            for r in h.rses()
            if r["metadata"]["ownerReferences"][0]["uid"] == d["metadata"]["uid"]
        ]
        assert len(mine) == 1

    run(body)


def test_scaling_a_stuck_rollout_is_proportional():
    async def body(h: Harness):
        h.store.create(DEPLOYMENTS, deployment(replicas=3))
        await h.until(h.complete)
        [old] = h.rses()
        h.set_image("broken:1")
        await h.until(lambda: len(h.pods("broken:1")) == 1)
        h.change(replicas=6)
        new = next(rs for rs in h.rses() if rs["metadata"]["uid"] != old["metadata"]["uid"])
        # 8 allowed (6 + 25% surge rounded up), 4 there: old 3 -> 3*8/4 = 6, new 1 -> 1*8/4 = 2.
        proportional = [
            f"Scaled up replica set {old['metadata']['name']} from 3 to 6",
            f"Scaled up replica set {new['metadata']['name']} from 1 to 2",
        ]
        await h.until(lambda: all(m in h.events("ScalingReplicaSet") for m in proportional))
        assert all(rs["metadata"]["annotations"][MAX_REPLICAS] == "8" for rs in h.rses())
        # Then the rollout goes on within the new bounds: one old pod may go (25% of 6
        # rounded down), never more while the new pods cannot become available.
        await h.until(lambda: sorted(rs["spec"]["replicas"] for rs in h.rses()) == [3, 5])
        await asyncio.sleep(0.1)
        assert sorted(rs["spec"]["replicas"] for rs in h.rses()) == [3, 5]
        assert h.deploy()["status"]["availableReplicas"] == 5

    run(body)
