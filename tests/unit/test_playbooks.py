"""Playbooks on real-shaped evidence built from the bundled scenarios.

Each scenario's `manifests` is the last healthy revision and its `change` the live
Deployment, both defaulted the way the API server stores them. Pods, events and logs
carry the text the sandbox's scheduler and kubelet write for that failure, so a
playbook is exercised on what the evidence gatherer will really hand it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from aifixer import guardrails, manifests, playbooks
from aifixer.models import (
    EventRecord,
    Evidence,
    FailureClass,
    LogLine,
    PodState,
    Revision,
)
from aifixer.settings import Settings
from aifixer_sandbox.kube.defaults import apply_defaults
from aifixer_sandbox.kube.kubelet import container_argv, start_error
from aifixer_sandbox.kube.scheduler import NodeUsage, fit_error, node_filter
from aifixer_sandbox.scenario import Scenario, bundled_dir, load

# The scenarios whose fix is to the workload; a claim or Service beside it is fixed
# by its own playbooks (tests/unit/test_object_fixes.py).
SCENARIOS = [
    p
    for p in sorted((bundled_dir()).glob("*.yaml"))
    if not any(
        c.startswith(("spec.storageClassName", "spec.selector")) for c in load(p).expect.changed
    )
]
SETTINGS = Settings(max_replicas=20, max_memory_limit="4Gi")
TIME = "2025-01-01T00:00:00Z"


def deployment_of(files) -> dict:
    """The scenario's workload: its Deployment, StatefulSet or DaemonSet."""
    kinds = ("Deployment", "StatefulSet", "DaemonSet")
    return next(d for f in files for d in f.documents() if d["kind"] in kinds)


def served(deployment: dict, revision: int) -> dict:
    """The Deployment as the API server returns it: defaulted, with server fields and status."""
    out = apply_defaults(copy.deepcopy(deployment))
    out["metadata"].update(
        uid="0d1e2f", resourceVersion="4242", generation=revision, creationTimestamp=TIME
    )
    out["metadata"].setdefault("annotations", {})["deployment.kubernetes.io/revision"] = str(
        revision
    )
    out["status"] = {"observedGeneration": revision, "replicas": out["spec"].get("replicas", 1)}
    return out


def failure_class(scenario: Scenario) -> FailureClass:
    """The class a diagnosis reaches from the scenario's symptoms."""
    reasons = set(scenario.expect.symptoms.pod_reasons)
    for reason, cls in (
        ("OOMKilled", "OOMKilled"),
        ("ErrImagePull", "ImagePull"),
        ("CreateContainerConfigError", "ConfigError"),
        ("Unschedulable", "Unschedulable"),
        ("CrashLoopBackOff", "CrashLoop"),
    ):
        if reason in reasons:
            return cls
    if "Unhealthy" in scenario.expect.symptoms.events:
        return "ProbeFailure"
    return "AppError"


def scheduling_message(scenario: Scenario, live: dict) -> str:
    """The FitError text the sandbox scheduler writes for this pod on these nodes."""
    pod = {"spec": live["spec"]["template"]["spec"]}
    reasons, preemptable = {}, {}
    for node in scenario.nodes:
        obj = {
            "metadata": {"name": node.name, "labels": dict(node.labels)},
            "spec": {"taints": [t.model_dump() for t in node.taints]},
            "status": {
                "allocatable": {
                    "cpu": f"{node.cpu_millicores}m",
                    "memory": f"{node.memory_mib}Mi",
                    "pods": "110",
                }
            },
        }
        reasons[node.name], preemptable[node.name] = node_filter(pod, obj, NodeUsage())
    return fit_error(len(scenario.nodes), reasons, preemptable)


def crash_lines(scenario: Scenario, live: dict) -> list[str]:
    """What the containers print before they exit, worded as the sandbox kubelet does."""
    lines = list(scenario.expect.symptoms.logs)
    for container in live["spec"]["template"]["spec"]["containers"]:
        image = scenario.image(container["image"])
        if image is None:
            continue
        env = {v["name"] for v in container.get("env") or []}
        lines += [
            f"FATAL: environment variable {var} is not set"
            for var in image.requires_env
            if var not in env
        ]
        if image.crash:
            lines += image.crash.logs
    return lines


def failing_deployment(scenario: Scenario, files) -> dict:
    """The Deployment of these files the scenario expects to fail."""
    namespace, name = scenario.failing_workloads()[0]
    return next(
        d
        for f in files
        for d in f.documents()
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")
        and (d["metadata"].get("namespace", "default"), d["metadata"]["name"]) == (namespace, name)
    )


def start_termination(scenario: Scenario, live: dict) -> dict | None:
    """The StartError the sandbox kubelet records when the container's process cannot run."""
    container = live["spec"]["template"]["spec"]["containers"][0]
    image = scenario.image(container["image"])
    message = image and start_error(container_argv(container, image), image)
    if not message:
        return None
    return {"container": container["name"], "reason": "StartError", "exitCode": 128,
            "message": message}  # fmt: skip


def unhealthy_message(scenario: Scenario, live: dict) -> str:
    """The kubelet's Unhealthy message for the first probe of the first container that
    fails against its image (wrong port: refused; wrong path: 404)."""
    container = live["spec"]["template"]["spec"]["containers"][0]
    image = scenario.image(container["image"])
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports") or []}
    for probe, label in (
        ("startupProbe", "Startup"),
        ("livenessProbe", "Liveness"),
        ("readinessProbe", "Readiness"),
    ):
        for handler in ("httpGet", "tcpSocket"):
            action = (container.get(probe) or {}).get(handler)
            if not isinstance(action, dict) or image is None:
                continue
            port = ports.get(action["port"], action["port"])
            target = f"10.244.0.7:{port}"
            if port != image.port:
                return f"{label} probe failed: dial tcp {target}: connect: connection refused"
            if handler == "httpGet" and action.get("path", "/") != image.health_path:
                return f"{label} probe failed: HTTP probe failed with statuscode: 404"
    return "Liveness probe failed: HTTP probe failed with statuscode: 404"


def scenario_evidence(scenario: Scenario) -> Evidence:
    """Evidence for the scenario's broken state, as the farm would gather it."""
    healthy_doc = failing_deployment(scenario, scenario.manifests) if scenario.change else None
    live = served(
        failing_deployment(scenario, scenario.change or scenario.manifests),
        2 if healthy_doc else 1,
    )
    name = live["metadata"]["name"]
    first = live["spec"]["template"]["spec"]["containers"][0]["name"]
    symptoms = scenario.expect.symptoms
    reasons = list(symptoms.pod_reasons)
    termination = None
    if "OOMKilled" in reasons:
        termination = {"reason": "OOMKilled", "exitCode": 137}
    elif "StartError" in reasons:
        termination = start_termination(scenario, live)
    elif "Error" in reasons:
        termination = {"reason": "Error", "exitCode": 1}
    messages = {
        "FailedScheduling": scheduling_message(scenario, live),
        "BackOff": f"Back-off restarting failed container {first} in pod {name}-7f9c",
        "Unhealthy": unhealthy_message(scenario, live),
        "Failed": "Error: ImagePullBackOff",
    }
    failing = set(scenario.failing_workloads())
    neighbours = [
        served(d, 1)
        for f in scenario.manifests
        for d in f.documents()
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")
        and (d["metadata"].get("namespace", "default"), d["metadata"]["name"]) not in failing
    ]
    lines = crash_lines(scenario, live)
    revisions = [
        Revision(
            revision=2 if healthy_doc else 1,
            replicaset=f"{name}-5d8b",
            current=True,
            ready_replicas=0,
            images=_images(live),
        )
    ]
    healthy_template = None
    if healthy_doc is not None:
        healthy = served(healthy_doc, 1)
        healthy_template = copy.deepcopy(healthy["spec"]["template"])
        healthy_template["metadata"]["labels"]["pod-template-hash"] = "6c4f7"
        revisions.insert(
            0,
            Revision(
                revision=1,
                replicaset=f"{name}-6c4f7",
                current=False,
                ready_replicas=healthy["spec"].get("replicas", 1),
                images=_images(healthy),
            ),
        )
    return Evidence(
        deployment=live,
        pods=[
            PodState(
                name=f"{name}-5d8b-x2k9q",
                phase="Running",
                ready=False,
                node="node-1",
                reasons=reasons,
                restart_count=3 if termination else 0,
                last_termination=termination,
                revision_hash="5d8b",
            )
        ],
        events=[
            EventRecord(
                type="Warning",
                reason=r,
                message=messages.get(r, r),
                object=f"Pod/{name}-5d8b-x2k9q",
                count=4,
                last_seen=TIME,
            )
            for r in symptoms.events
        ],
        logs=[
            LogLine(time=TIME, pod=f"{name}-5d8b-x2k9q", container=first, line=line)
            for line in lines
        ],
        pod_logs={f"{name}-5d8b-x2k9q/{first}/previous": "\n".join(lines)},
        revisions=revisions,
        last_healthy_template=healthy_template,
        template_diff=manifests.diff(healthy_template, live["spec"]["template"])
        if healthy_template
        else [],
        healthy=False,
        peer_probes=playbooks.peer_probes(live, neighbours) if healthy_doc is None else [],
    )


def _images(deployment: dict) -> list[str]:
    return [c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]]


def scenario_ids(paths):
    return [p.stem for p in paths]


FIXED = [p for p in SCENARIOS if load(p).expect.outcome == "fixed"]
CALLED = [p for p in SCENARIOS if load(p).expect.outcome == "called"]


def test_the_bundled_scenarios_cover_both_outcomes():
    assert len(FIXED) >= 8 and len(CALLED) >= 4


@pytest.mark.parametrize("path", FIXED, ids=scenario_ids(FIXED))
def test_first_candidate_is_the_expected_fix_and_passes_the_guardrails(path):
    scenario = load(path)
    evidence = scenario_evidence(scenario)
    found = playbooks.candidates(evidence, failure_class(scenario), SETTINGS)
    assert found, "no playbook proposed a fix"
    # The fix that verifies: the first candidate, or the one tried after those expected
    # to be undone (`expect.attempts`: each a playbook of another kind).
    assert len({p.strategy for p in found[: scenario.expect.attempts]}) == (
        scenario.expect.attempts
    )
    best = found[scenario.expect.attempts - 1]
    assert sorted(c.path for c in best.changes) == sorted(scenario.expect.changed)
    assert best.changes == manifests.diff(manifests.clean(evidence.deployment), best.manifest)
    assert guardrails.check(evidence.deployment, best.manifest, evidence, SETTINGS) == []
    assert best.source == "playbook" and best.rationale


@pytest.mark.parametrize("path", FIXED, ids=scenario_ids(FIXED))
def test_the_first_fix_restores_the_healthy_values_or_raises_memory(path):
    scenario = load(path)
    evidence = scenario_evidence(scenario)
    best = playbooks.candidates(evidence, failure_class(scenario), SETTINGS)[
        scenario.expect.attempts - 1
    ]
    if evidence.last_healthy_template is None:
        assert_grounded_without_history(best, evidence)
        return
    healthy = {"spec": {"template": evidence.last_healthy_template}}
    for change in best.changes:
        was = manifests.get_path(healthy, change.path)
        if change.path.endswith("env"):  # the healthy variables are all there again
            assert all(v in change.after for v in was)
        elif was == change.before:
            # The breaking change left this field alone (a new release that needs more
            # memory): there is nothing to restore, and the only new value a playbook
            # may write is a higher memory limit.
            assert change.path.endswith("resources.limits.memory")
            assert guardrails.parse_quantity(change.after) > guardrails.parse_quantity(was)
        else:
            assert change.after == was


def assert_grounded_without_history(best, evidence: Evidence) -> None:
    """Born broken, a fix only removes an override or sets a probe to a value the
    cluster shows: a port the container declares, a path a healthy peer probes."""
    container = evidence.deployment["spec"]["template"]["spec"]["containers"][0]
    declared = {p["containerPort"] for p in container.get("ports") or []} | {
        p.get("name") for p in container.get("ports") or []
    }
    for change in best.changes:
        if change.path.endswith((".command", ".args")):
            assert change.after is None and change.before is not None
        elif change.path.endswith(".port"):
            assert change.after in declared - {None}
        elif change.path.endswith(".path"):
            assert change.after in {p.path for p in evidence.peer_probes}
        else:
            raise AssertionError(f"{change.path}: not a change a born-broken repair makes")


@pytest.mark.parametrize("path", CALLED, ids=scenario_ids(CALLED))
def test_no_candidate_passes_the_guardrails_when_a_person_must_decide(path):
    scenario = load(path)
    evidence = scenario_evidence(scenario)
    if scenario.expect.attempts > 1:
        # Fixes are tried and undone before the call: as many of different kinds.
        found = playbooks.candidates(evidence, failure_class(scenario), SETTINGS)
        tried = found[: scenario.expect.attempts]
        assert len({p.strategy for p in tried}) == scenario.expect.attempts
        for proposal in tried:
            assert (
                guardrails.check(evidence.deployment, proposal.manifest, evidence, SETTINGS) == []
            )
        return
    for cls in (failure_class(scenario), "CrashLoop", "ConfigError", "ImagePull", "AppError"):
        for proposal in playbooks.candidates(evidence, cls, SETTINGS):
            assert guardrails.check(evidence.deployment, proposal.manifest, evidence, SETTINGS)


@pytest.mark.parametrize("path", SCENARIOS, ids=scenario_ids(SCENARIOS))
def test_every_candidate_stays_inside_the_allow_list(path):
    scenario = load(path)
    evidence = scenario_evidence(scenario)
    for cls in (
        "ImagePull",
        "CrashLoop",
        "OOMKilled",
        "ProbeFailure",
        "Unschedulable",
        "ConfigError",
        "AppError",
    ):
        for proposal in playbooks.candidates(evidence, cls, SETTINGS):
            assert proposal.strategy in {
                p.__name__.replace("_", "-") for p in playbooks.PLAYBOOKS[cls]
            }
            assert all(guardrails.is_allowed_path(c.path) for c in proposal.changes)


def test_a_live_deployment_that_matches_its_healthy_revision_gets_no_fix():
    scenario = load(path_of("command-typo-billing-worker"))
    evidence = scenario_evidence(scenario)
    evidence.deployment["spec"]["template"] = copy.deepcopy(evidence.last_healthy_template)
    for cls in playbooks.PLAYBOOKS:
        assert playbooks.candidates(evidence, cls, SETTINGS) == []


def path_of(name: str) -> Path:
    return next(p for p in SCENARIOS if p.stem == name)


def evidence_of(name: str) -> Evidence:
    return scenario_evidence(load(path_of(name)))


# -- raise-memory-limit ------------------------------------------------------------------


def test_oom_in_a_crash_loop_diagnosis_still_raises_the_limit_first():
    best = playbooks.candidates(evidence_of("oom-report-api"), "CrashLoop", SETTINGS)[0]
    assert best.strategy == "raise-memory-limit"


def test_oom_without_a_healthy_revision_doubles_the_limit_to_a_step():
    evidence = evidence_of("oom-report-api")
    evidence.last_healthy_template = None
    _set_memory(evidence, requests="48Mi", limits="40Mi")
    (change,) = playbooks.candidates(evidence, "OOMKilled", SETTINGS)[0].changes
    assert change.after == "128Mi"  # 80Mi rounded up to a 64Mi step


def test_a_raised_limit_keeps_the_request_under_it():
    evidence = evidence_of("oom-report-api")
    evidence.last_healthy_template = None
    _set_memory(evidence, requests="100Mi", limits="100Mi")
    evidence.deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"][
        "memory"
    ] = "300Mi"
    best = playbooks.candidates(evidence, "OOMKilled", SETTINGS)[0]
    resources = best.manifest["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"]["memory"] == "256Mi"
    assert resources["requests"]["memory"] == "256Mi"
    assert guardrails.check(evidence.deployment, best.manifest, evidence, SETTINGS) == []


def test_a_raised_limit_stops_at_the_cap():
    evidence = evidence_of("oom-report-api")
    evidence.last_healthy_template = None
    _set_memory(evidence, requests="1Gi", limits="3Gi")
    best = playbooks.candidates(evidence, "OOMKilled", SETTINGS)[0]
    assert [c.after for c in best.changes] == ["4Gi"]
    _set_memory(evidence, requests="1Gi", limits="4Gi")
    assert playbooks.candidates(evidence, "OOMKilled", SETTINGS) == []


def test_a_new_release_that_needs_more_memory_keeps_its_image():
    evidence = evidence_of("oom-new-release-thumbnailer")
    best = playbooks.candidates(evidence, "OOMKilled", SETTINGS)[0]
    assert best.strategy == "raise-memory-limit"
    assert [(c.before, c.after) for c in best.changes] == [("256Mi", "512Mi")]
    container = best.manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "media/thumbnailer:1.7.0"


def test_only_the_oom_killed_sidecar_gets_more_memory():
    best = playbooks.candidates(evidence_of("oom-sidecar-search-indexer"), "OOMKilled", SETTINGS)[0]
    assert [(c.path, c.after) for c in best.changes] == [
        ("spec.template.spec.containers[1].resources.limits.memory", "128Mi")
    ]


def test_no_memory_raise_without_an_oom_kill():
    evidence = evidence_of("oom-report-api")
    for pod in evidence.pods:
        pod.reasons, pod.last_termination = ["CrashLoopBackOff"], {"reason": "Error", "exitCode": 1}
    assert all(
        p.strategy != "raise-memory-limit"
        for p in playbooks.candidates(evidence, "CrashLoop", SETTINGS)
    )


def _set_memory(evidence: Evidence, requests: str, limits: str) -> None:
    container = evidence.deployment["spec"]["template"]["spec"]["containers"][0]
    container["resources"] = {"requests": {"memory": requests}, "limits": {"memory": limits}}


# -- env ---------------------------------------------------------------------------------------


def test_restore_env_puts_the_variable_back_and_keeps_the_added_one():
    best = playbooks.candidates(evidence_of("missing-env-orders-api"), "CrashLoop", SETTINGS)[0]
    assert best.strategy == "restore-env"
    env = best.manifest["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [v["name"] for v in env] == ["DATABASE_URL", "CACHE_HOST", "LOG_LEVEL"]


def test_restore_env_needs_a_log_line_naming_the_variable():
    evidence = evidence_of("missing-env-orders-api")
    evidence.logs, evidence.pod_logs = [], {}
    found = playbooks.candidates(evidence, "CrashLoop", SETTINGS)
    assert [p.strategy for p in found] == ["revert-to-last-healthy"]


def test_revert_drops_an_added_reference_but_keeps_an_added_literal():
    evidence = evidence_of("missing-env-orders-api")
    env = evidence.deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    env.append(
        {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "orders-api", "key": "token"}}}
    )
    best = playbooks.candidates(evidence, "ConfigError", SETTINGS)[0]
    names = [v["name"] for v in best.manifest["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert names == ["DATABASE_URL", "CACHE_HOST", "LOG_LEVEL"]


# -- images -----------------------------------------------------------------------------------


def test_known_good_image_from_a_serving_revision_when_no_template_is_known():
    evidence = evidence_of("image-typo-storefront")
    evidence.last_healthy_template = None
    best = playbooks.candidates(evidence, "ImagePull", SETTINGS)[0]
    assert [c.after for c in best.changes] == ["web/storefront:3.0.9"]


def test_no_image_from_another_repository():
    evidence = evidence_of("image-typo-storefront")
    evidence.last_healthy_template["spec"]["containers"][0]["image"] = "web/other:1.0"
    evidence.revisions[0].images = ["web/other:1.0"]
    assert all(
        p.strategy != "restore-known-good-image"
        for p in playbooks.candidates(evidence, "ImagePull", SETTINGS)
    )


# -- probes -----------------------------------------------------------------------------------


def test_probe_port_goes_to_the_only_declared_port_without_history():
    evidence = evidence_of("readiness-port-catalog")
    evidence.last_healthy_template = None
    best = playbooks.candidates(evidence, "ProbeFailure", SETTINGS)[0]
    assert best.strategy == "fix-probe-port"
    assert [c.after for c in best.changes] == [8080]


def test_probe_port_keeps_a_named_port_from_the_healthy_revision():
    evidence = evidence_of("image-typo-storefront")
    probe = evidence.deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["httpGet"]["port"] = 3001
    best = playbooks.candidates(evidence, "ProbeFailure", SETTINGS)[0]
    assert best.strategy == "fix-probe-port"
    assert [(c.path, c.after) for c in best.changes] == [
        ("spec.template.spec.containers[0].readinessProbe.httpGet.port", "http")
    ]


# -- placement ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["node-selector-gpu-inference", "taint-batch-ingest"])
def test_placement_failures_get_no_playbook(name):
    assert playbooks.candidates(evidence_of(name), "Unschedulable", SETTINGS) == []


def test_fit_requests_needs_an_insufficient_resource_event():
    evidence = evidence_of("unschedulable-memory-analytics")
    assert "Insufficient memory" in evidence.events[0].message
    evidence.events = []
    assert playbooks.candidates(evidence, "Unschedulable", SETTINGS) == []
