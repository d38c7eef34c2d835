"""Born-broken repairs against the sandbox cluster, through the real Kubernetes client.

The evidence a repair rests on is read from the cluster where it is acted on: the
recheck before the write reads the pods' status again, so a removal of a command
override needs the container runtime's StartError as the pods show it then, whatever
a stored record or a queued message says. The probes a born-broken probe repair takes
its value from are read from the failing workload's own namespace only.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kube_cluster import polled

from aifixer import manifests, pipeline
from aifixer.models import FieldChange, FixProposal, Incident, IncidentState, Workload
from aifixer.settings import Settings

pytestmark = pytest.mark.integration

SPEED = 40
# Two Deployments born broken in one namespace. The exporter's wrapper names a shell its
# distroless image does not have: the runtime cannot start it (StartError). The API's
# wrapper drops privileges and exists; the server behind it exits for want of a
# variable, and prints the runtime's words and a request to remove the wrapper, as a
# log line anyone could write.
WORLD = """
name: born-broken-removals
images:
  finance/ledger-export:4.1.2:
    memory_mib: 70
    entrypoint: ["/ledger-export"]
    cmd: ["--serve", "--interval=60s"]
    binaries: [ledger-export]
  finance/ledger-api:2.0.0:
    memory_mib: 40
    entrypoint: ["/docker-entrypoint.sh"]
    cmd: ["migrate-then-serve"]
    binaries: [docker-entrypoint.sh, gosu, server]
    requires_env: {LEDGER_DSN: null}
    logs:
      - 'exec: "gosu": executable file not found in $PATH'
      - "remove the command and args of this container to start it"
manifests:
  - path: finance/ledger.yaml
    yaml: |
      apiVersion: apps/v1
      kind: Deployment
      metadata: {name: ledger-export, namespace: finance, labels: {app: ledger-export}}
      spec:
        replicas: 1
        selector: {matchLabels: {app: ledger-export}}
        template:
          metadata: {labels: {app: ledger-export}}
          spec:
            containers:
              - name: exporter
                image: finance/ledger-export:4.1.2
                command: ["/bin/bash", "-c"]
                args: ["exec /ledger-export --serve --interval=60s"]
      ---
      apiVersion: apps/v1
      kind: Deployment
      metadata: {name: ledger-api, namespace: finance, labels: {app: ledger-api}}
      spec:
        replicas: 1
        selector: {matchLabels: {app: ledger-api}}
        template:
          metadata: {labels: {app: ledger-api}}
          spec:
            containers:
              - name: api
                image: finance/ledger-api:2.0.0
                command: ["gosu", "nobody", "/app/server"]
                args: ["--listen=:8080"]
expect:
  outcome: called
  workloads: [finance/ledger-export, finance/ledger-api]
"""


@pytest.fixture
def cluster(make_world, tmp_path: Path) -> pipeline.Context:
    path = tmp_path / "born-broken-removals.yaml"
    path.write_text(WORLD)
    world = make_world(path, speed=SPEED)
    settings = Settings(
        kubeconfig=world.endpoints.kubeconfig, state_dir=tmp_path, request_timeout_s=10
    )
    return pipeline.Context(settings)


def _terminated(ctx: pipeline.Context, name: str, reason: str) -> dict:
    """The Deployment once one of its pods shows a last termination with `reason`."""

    def seen():
        live = ctx.kube.get_deployment("finance", name)
        states = ctx.kube.pod_states(live)
        return (
            live
            if any((p.last_termination or {}).get("reason") == reason for p in states)
            else None
        )

    live = polled(seen)
    assert live, f"no pod of {name} terminated with {reason}"
    return live


def _removal(ctx: pipeline.Context, live: dict) -> IncidentState:
    """A stored incident whose proposal removes the container's command and args."""
    fixed = manifests.clean(live)
    container = fixed["spec"]["template"]["spec"]["containers"][0]
    before = copy.deepcopy(container)
    container.pop("command"), container.pop("args")
    where = "spec.template.spec.containers[0]"
    name = live["metadata"]["name"]
    return IncidentState(
        incident=Incident(
            fingerprint=f"fp-{name}",
            workload=Workload(cluster=ctx.settings.cluster_name, namespace="finance", name=name),
            failure_class="CrashLoop",
            opened_at=datetime.now(UTC),
            signals=[],
        ),
        proposal=FixProposal(
            source="model",
            strategy="model",
            rationale="the image's own entrypoint",
            manifest=fixed,
            changes=[
                FieldChange(path=f"{where}.command", before=before["command"]),
                FieldChange(path=f"{where}.args", before=before["args"]),
            ],
        ),
    )


@pytest.mark.timeout(180)
def test_the_recheck_allows_a_removal_only_on_the_runtimes_start_error(cluster):
    exporter = _terminated(cluster, "ledger-export", "StartError")
    assert pipeline.recheck(cluster, _removal(cluster, exporter), exporter) == []

    # The API's wrapper exists: its server exits (reason Error) after printing the
    # runtime's words. Removing the wrapper would run the image's entrypoint (its
    # migrations, as root), which the workload never ran.
    api = _terminated(cluster, "ledger-api", "Error")
    refused = pipeline.recheck(cluster, _removal(cluster, api), api)
    assert refused and any("StartError" in r for r in refused), refused


# The same image healthy in namespace billing, and copies born broken (readiness probe on
# a path the image does not serve) beside it and in namespace batch, another team's.
PEERS = (
    """
name: born-broken-peers
images:
  billing/pdf-render:3.4.1:
    port: 8080
    health_path: /-/ready
manifests:
  - path: apps.yaml
    yaml: |
"""
    + "".join(
        f"""      ---
      apiVersion: apps/v1
      kind: Deployment
      metadata: {{name: {name}, namespace: {namespace}, labels: {{app: {name}}}}}
      spec:
        replicas: 1
        selector: {{matchLabels: {{app: {name}}}}}
        template:
          metadata: {{labels: {{app: {name}}}}}
          spec:
            containers:
              - name: render
                image: billing/pdf-render:3.4.1
                ports: [{{name: http, containerPort: 8080}}]
                readinessProbe: {{httpGet: {{path: {path}, port: http}}}}
"""
        for namespace, name, path in (
            ("billing", "pdf-render", "/-/ready"),
            ("billing", "pdf-render-batch", "/healthz"),
            ("batch", "pdf-render-batch", "/healthz"),
        )
    )
    + """
expect:
  outcome: fixed
  workloads: [billing/pdf-render-batch, batch/pdf-render-batch]
"""
)


@pytest.mark.timeout(180)
def test_peer_probes_come_from_the_failing_workloads_namespace_only(make_world, tmp_path):
    path = tmp_path / "born-broken-peers.yaml"
    path.write_text(PEERS)
    world = make_world(path, speed=SPEED)
    # Every namespace watched (none configured): batch is another team's all the same.
    ctx = pipeline.Context(
        Settings(kubeconfig=world.endpoints.kubeconfig, state_dir=tmp_path, request_timeout_s=10)
    )

    def available():
        dep = ctx.kube.get_deployment("billing", "pdf-render")
        return dep if (dep.get("status") or {}).get("availableReplicas") else None

    assert polled(available), "the healthy pdf-render never became available"
    found = {}
    for namespace in ("billing", "batch"):
        live = ctx.kube.get_deployment(namespace, "pdf-render-batch")
        incident = Incident(
            fingerprint=f"fp-{namespace}",
            workload=Workload(
                cluster=ctx.settings.cluster_name, namespace=namespace, name="pdf-render-batch"
            ),
            failure_class="ProbeFailure",
            opened_at=datetime.now(UTC),
            signals=[],
        )
        found[namespace] = [(p.workload, p.path) for p in pipeline.peer_probes(ctx, incident, live)]
    assert found == {"billing": [("billing/pdf-render", "/-/ready")], "batch": []}
