"""Failure classes, precedence, fingerprints, grouping, and reading pods and Deployments.

The pod and Deployment JSON here is shaped like what a real API server returns (and
what the sandbox serves), trimmed to the fields that matter.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from aifixer import detect
from aifixer.adapters.kube import (
    label_selector,
    pod_reasons,
    pod_state,
    removed_fields,
    rollout_status,
)
from aifixer.adapters.loki import pods_selector, split_query
from aifixer.models import Signal


@pytest.mark.parametrize(
    ("reason", "message", "exit_code", "expected"),
    [
        (
            "ErrImagePull",
            'rpc error: code = NotFound desc = failed to pull "web/x:1"',
            None,
            "ImagePull",
        ),
        ("ImagePullBackOff", 'Back-off pulling image "web/x:1"', None, "ImagePull"),
        ("InvalidImageName", "", None, "ImagePull"),
        ("Failed", 'Failed to pull image "web/x:1": not found', None, "ImagePull"),
        ("Failed", "Error: ImagePullBackOff", None, "ImagePull"),
        ("BackOff", 'Back-off pulling image "web/x:1"', None, "ImagePull"),
        (
            "CrashLoopBackOff",
            "back-off 40s restarting failed container=app pod=a_b(c)",
            None,
            "CrashLoop",
        ),
        ("Error", "", 1, "CrashLoop"),
        ("StartError", "exec: not found", 128, "CrashLoop"),
        ("RunContainerError", "", None, "CrashLoop"),
        ("BackOff", "Back-off restarting failed container app in pod a_b(c)", None, "CrashLoop"),
        ("Completed", "", 0, "CrashLoop"),
        ("Completed", "", None, None),
        ("OOMKilled", "", 137, "OOMKilled"),
        (
            "Unhealthy",
            "Readiness probe failed: HTTP probe failed with statuscode: 500",
            None,
            "ProbeFailure",
        ),
        ("NotReady", "", None, "ProbeFailure"),
        ("Killing", "Container app failed liveness probe, will be restarted", None, "ProbeFailure"),
        ("Killing", "Stopping container app", None, None),
        (
            "FailedScheduling",
            "0/3 nodes are available: 3 Insufficient memory.",
            None,
            "Unschedulable",
        ),
        ("Unschedulable", "", None, "Unschedulable"),
        ("CreateContainerConfigError", 'configmap "app-config" not found', None, "ConfigError"),
        ("FailedMount", 'MountVolume.SetUp failed for volume "cfg"', None, "ConfigError"),
        ("Failed", 'Error: configmap "app-config" not found', None, "ConfigError"),
        ("Failed", 'Error: secret "db" not found', None, "ConfigError"),
        ("Failed", "Error: couldn't find key DB_HOST in ConfigMap shop/app", None, "ConfigError"),
        ("Failed", "Error: failed to create containerd task", None, "CrashLoop"),
        ("LogError", "panic: assignment to entry in nil map", None, "AppError"),
        ("LogError", 'Error: configmap "app-config" not found', None, "ConfigError"),
        ("Pulling", 'Pulling image "web/x:1"', None, None),
        ("Scheduled", "Successfully assigned web/x to node-1", None, None),
        ("ScalingReplicaSet", "Scaled up replica set x-1 from 0 to 3", None, None),
        ("SomethingNew", "", None, None),
    ],
)
def test_classify(reason, message, exit_code, expected):
    assert detect.classify(reason, message, exit_code) == expected


def test_dominant_prefers_the_root_cause():
    assert detect.dominant(["CrashLoop", "OOMKilled", "ProbeFailure"]) == "OOMKilled"
    assert detect.dominant(["AppError", "ProbeFailure"]) == "ProbeFailure"
    assert detect.dominant(["ProbeFailure", "ConfigError", None]) == "ConfigError"
    assert detect.dominant(["AppError", "ImagePull"]) == "ImagePull"
    assert detect.dominant(["CrashLoop", "Unschedulable"]) == "Unschedulable"
    assert detect.dominant(["AppError"]) == "AppError"
    # every class has a rank, so no combination can fail
    assert set(detect.PRECEDENCE) == set(detect.FailureClass.__args__)


def test_dominant_refuses_nothing():
    with pytest.raises(ValueError):
        detect.dominant([None, None])


def test_fingerprint_is_stable_short_and_distinct():
    fp = detect.fingerprint("app", "shop", "Deployment", "report-api", "OOMKilled")
    assert fp == detect.fingerprint("app", "shop", "Deployment", "report-api", "OOMKilled")
    assert len(fp) == 16 and int(fp, 16) >= 0
    others = {
        detect.fingerprint("other", "shop", "Deployment", "report-api", "OOMKilled"),
        detect.fingerprint("app", "web", "Deployment", "report-api", "OOMKilled"),
        detect.fingerprint("app", "shop", "Deployment", "report", "OOMKilled"),
        detect.fingerprint("app", "shop", "Deployment", "report-api", "CrashLoop"),
        # parts are separated, so shifting a character between them changes the id
        detect.fingerprint("app", "sho", "Deployment", "preport-api", "OOMKilled"),
    }
    assert fp not in others and len(others) == 5


def test_fingerprint_refuses_empty_parts():
    with pytest.raises(ValueError):
        detect.fingerprint("app", "", "Deployment", "x", "CrashLoop")


def test_is_error_line():
    assert detect.is_error_line("FATAL: cannot bind :8080")
    assert detect.is_error_line("Traceback (most recent call last):")
    assert not detect.is_error_line("listening on :8080")
    assert detect.is_error_line("slow request", [r"slow"])


def _signal(reason: str, message: str = "", workload: str | None = "api", ns: str = "shop"):
    return Signal(
        source="loki",
        namespace=ns,
        pod="api-1",
        workload=workload,
        reason=reason,
        message=message,
        observed_at=datetime.now(tz=UTC),
    )


def test_a_storm_is_one_group():
    storm = [_signal("LogError", "ERROR db timeout") for _ in range(10_000)]
    groups = detect.group_signals(
        [*storm, _signal("BackOff", "Back-off restarting failed container api in pod x")]
    )
    assert list(groups) == [("shop", "api")]
    assert len(groups[("shop", "api")]) == 10_001
    assert detect.dominant(detect.signal_class(s) for s in groups[("shop", "api")]) == "CrashLoop"


def test_group_signals_separates_workloads_and_drops_noise():
    groups = detect.group_signals(
        [
            _signal("LogError", "error", workload="a"),
            _signal("LogError", "error", workload="b"),
            _signal("LogError", "error", workload="a", ns="other"),
            _signal("Pulling", 'Pulling image "x"', workload="a"),  # informational
            _signal("LogError", "error", workload=None),  # owner not resolved
        ]
    )
    assert {k: len(v) for k, v in groups.items()} == {
        ("shop", "a"): 1,
        ("shop", "b"): 1,
        ("other", "a"): 1,
    }


def test_signal_class_uses_the_recorded_exit_code():
    s = _signal("Completed").model_copy(update={"raw": {"exitCode": 0}})
    assert detect.signal_class(s) == "CrashLoop"
    assert detect.signal_class(_signal("Completed")) is None


# ---------------------------------------------------------------- pods, as the API serves them


def _pod(container_status=None, conditions=None, phase="Running", node="node-1"):
    return {
        "metadata": {
            "name": "report-api-786cf8db94-98hmc",
            "namespace": "shop",
            "labels": {"app": "report-api", "pod-template-hash": "786cf8db94"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "report-api-786cf8db94",
                    "uid": "u1",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {"nodeName": node, "containers": [{"name": "report-api"}]},
        "status": {
            "phase": phase,
            "conditions": conditions
            or [
                {"type": "PodScheduled", "status": "True"},
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "ContainersNotReady",
                    "message": "containers with unready status: [report-api]",
                },
            ],
            "containerStatuses": [container_status] if container_status else [],
        },
    }


OOM_LOOP = {
    "name": "report-api",
    "ready": False,
    "started": False,
    "restartCount": 3,
    "image": "shop/report-api:2.4.1",
    "state": {
        "waiting": {
            "reason": "CrashLoopBackOff",
            "message": "back-off 40s restarting failed container=report-api pod=x",
        }
    },
    "lastState": {
        "terminated": {
            "exitCode": 137,
            "reason": "OOMKilled",
            "startedAt": "2026-01-01T00:00:01Z",
            "finishedAt": "2026-01-01T00:00:03Z",
        }
    },
}


def test_pod_state_of_an_oom_loop():
    state = pod_state(_pod(OOM_LOOP))
    assert state.reasons == ["CrashLoopBackOff", "OOMKilled"]
    assert not state.ready and state.phase == "Running" and state.node == "node-1"
    assert state.restart_count == 3
    assert state.last_termination["reason"] == "OOMKilled"
    assert state.last_termination["exitCode"] == 137
    assert state.last_termination["container"] == "report-api"
    assert state.revision_hash == "786cf8db94"
    assert detect.dominant(detect.classify(r) for r in state.reasons) == "OOMKilled"


def test_pod_reasons_for_each_failure_shape():
    unschedulable = _pod(
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient memory.",
            }
        ],
        phase="Pending",
        node=None,
    )
    assert pod_reasons(unschedulable) == ["Unschedulable"]
    assert pod_state(unschedulable).node is None

    def waiting(reason):
        return {
            "name": "c",
            "ready": False,
            "restartCount": 0,
            "state": {"waiting": {"reason": reason}},
        }

    assert pod_reasons(_pod(waiting("ImagePullBackOff"))) == ["ImagePullBackOff"]
    assert pod_reasons(_pod(waiting("CreateContainerConfigError"))) == [
        "CreateContainerConfigError"
    ]
    assert pod_reasons(_pod(waiting("ContainerCreating"))) == []  # a normal start
    unready = {
        "name": "c",
        "ready": False,
        "restartCount": 0,
        "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
    }
    assert pod_reasons(_pod(unready)) == ["NotReady"]
    healthy = {**unready, "ready": True}
    ok = _pod(healthy, conditions=[{"type": "Ready", "status": "True"}])
    assert pod_reasons(ok) == [] and pod_state(ok).ready


# ---------------------------------------------------------------- Deployment status


def _deployment(generation=2, **status):
    return {
        "metadata": {"name": "web", "generation": generation},
        "spec": {"replicas": 3},
        "status": {"observedGeneration": 2, **status},
    }


@pytest.mark.parametrize(
    ("dep", "done", "failed", "words"),
    [
        (_deployment(generation=3), False, False, "spec update to be observed"),
        (
            _deployment(
                conditions=[
                    {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
                ],
                updatedReplicas=1,
            ),
            False,
            True,
            'deployment "web" exceeded its progress deadline',
        ),
        (
            _deployment(updatedReplicas=1, replicas=4),
            False,
            False,
            "1 out of 3 new replicas have been updated",
        ),
        (
            _deployment(updatedReplicas=3, replicas=4),
            False,
            False,
            "1 old replicas are pending termination",
        ),
        (
            _deployment(updatedReplicas=3, replicas=3, availableReplicas=2),
            False,
            False,
            "2 of 3 updated replicas are available",
        ),
        (
            _deployment(updatedReplicas=3, replicas=3, availableReplicas=3),
            True,
            False,
            'deployment "web" successfully rolled out',
        ),
    ],
)
def test_rollout_status_follows_kubectl(dep, done, failed, words):
    status = rollout_status(dep)
    assert (status.done, status.failed) == (done, failed)
    assert words in status.message


def test_label_selector():
    sel = {
        "matchLabels": {"app": "web"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]},
            {"key": "canary", "operator": "DoesNotExist"},
        ],
    }
    assert label_selector(sel) == "app=web,tier in (a,b),!canary"


def test_removed_fields_lists_only_fields_others_own_and_the_fix_dropped():
    owned = {
        "f:spec": {
            "f:replicas": {},
            "f:template": {
                "f:spec": {
                    "f:nodeSelector": {"f:gpu": {}},
                    "f:containers": {
                        'k:{"name":"app"}': {
                            ".": {},
                            "f:image": {},
                            "f:command": {},
                            "f:env": {
                                'k:{"name":"A"}': {".": {}, "f:name": {}},
                                'k:{"name":"B"}': {".": {}, "f:name": {}},
                            },
                        }
                    },
                }
            },
        }
    }
    live = {
        "metadata": {
            "managedFields": [
                {"manager": "kubectl", "fieldsV1": owned},
                {"manager": "aifixer", "fieldsV1": {"f:spec": {"f:paused": {}}}},
            ]
        },
        "spec": {
            "replicas": 2,
            "paused": False,
            "template": {
                "spec": {
                    "nodeSelector": {"gpu": "true"},
                    "terminationGracePeriodSeconds": 30,  # defaulted: nobody owns it
                    "containers": [
                        {
                            "name": "app",
                            "image": "x:1",
                            "command": ["bad"],
                            "env": [{"name": "A"}, {"name": "B"}],
                        }
                    ],
                }
            },
        },
    }
    desired = {
        "spec": {
            "replicas": 2,
            "template": {
                "spec": {"containers": [{"name": "app", "image": "x:1", "env": [{"name": "B"}]}]}
            },
        }
    }
    assert removed_fields(live, desired) == [
        "/spec/template/spec/nodeSelector",
        "/spec/template/spec/containers/0/env/0",
        "/spec/template/spec/containers/0/command",
    ]


# ---------------------------------------------------------------- LogQL helpers


def test_pods_selector_escapes_names():
    assert (
        pods_selector("shop", ["api-1.x", "api-2"])
        == r'{namespace="shop", pod=~"api\\-1\\.x|api\\-2"}'
    )


def test_split_query():
    assert split_query('{namespace=~".+", a="}"} |~ "(?i)error"') == (
        '{namespace=~".+", a="}"}',
        '|~ "(?i)error"',
    )
    with pytest.raises(ValueError):
        split_query('|= "x"')
