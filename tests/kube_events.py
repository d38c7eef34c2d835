"""Warning events on a Deployment, posted through the real Kubernetes client, as an
application or a controller of the cluster would post them."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime

from kubernetes import client as k8s
from kubernetes import config as k8s_config


def post_warnings(
    kubeconfig: str,
    namespace: str,
    name: str,
    messages: Iterable[tuple[str, str]],
    component: str,
) -> None:
    """One Warning event on Deployment `name` per (reason, message) of `messages`."""
    api = k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=kubeconfig))
    now = datetime.now(UTC)
    for reason, message in messages:
        api.create_namespaced_event(
            namespace,
            k8s.CoreV1Event(
                metadata=k8s.V1ObjectMeta(name=f"{name}.{uuid.uuid4().hex[:12]}"),
                involved_object=k8s.V1ObjectReference(
                    kind="Deployment", name=name, namespace=namespace, api_version="apps/v1"
                ),
                reason=reason,
                message=message,
                type="Warning",
                count=1,
                first_timestamp=now,
                last_timestamp=now,
                source=k8s.V1EventSource(component=component),
            ),
        )
