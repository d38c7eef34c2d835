"""Which GitOps layouts get a proven pull request for which failure class: the README table.

For every source layout a team uses (plain manifests; a kustomize base with a staging
and a prod overlay, prod pinning the image with `images:` and patching memory; a Helm
chart whose values set image, resources, probes and node selector; a repository
mixing plain manifests and a chart) and every failure class the fixer repairs, the
field change its repair makes is proposed through the real forge adapter
(`Forge.propose`, against the sandbox's GitHub stand-in, one repository per cell).
Then, independently of the adapter's own proof, the pushed branch is cloned and
checked the way a reviewer would:

- the pull request touches exactly the file the layout decides the field in;
- rendering the branch with the real `kubectl kustomize` / `helm template` (a plain
  file: reading it) gives the Deployment rendered from main with exactly the changed
  field set to the fixed value, nothing else moved;
- every other kustomize overlay renders as on main, or differs only on that field,
  at that value (a shared base edited).

A change the adapter cannot prove (`Unproven`: a field the chart writes literally
into its template) is a "no": in the farm it becomes a draft pull request listing
the hand edit, and a phone call.

    python -m aifixer_sandbox.gitopsproof             # print the table
    python -m aifixer_sandbox.gitopsproof --readme README.md          # rewrite it there
    python -m aifixer_sandbox.gitopsproof --readme README.md --check  # fail if stale

The table in the README sits between the two markers below and is only ever written
by this command (tests/integration/test_gitops_proof_table.py runs the check).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aifixer.adapters.errors import PermanentError, Unproven
from aifixer.adapters.forge import Forge
from aifixer.manifests import apply_changes, diff, get_path
from aifixer.models import FieldChange, Workload
from aifixer.settings import Settings

from .world import World

START = (
    "<!-- gitops-proof-table:start (python -m aifixer_sandbox.gitopsproof --readme README.md) -->"
)
END = "<!-- gitops-proof-table:end -->"
C0 = "spec.template.spec.containers[0]"

# -- the repositories ----------------------------------------------------------------------

_CONTAINER = """\
        - name: web
          image: ghcr.io/acme/web:1.0.0{image_comment}
          command: ["/app/web", "--config", "/etc/web/web.yaml"]
          env:
            - name: LOG_LEVEL
              value: verbose
          ports:
            - containerPort: 8080
          readinessProbe:
            httpGet: {{path: /ready, port: 8080}}
          livenessProbe:
            httpGet: {{path: /healthz, port: 8080}}
          resources:
            requests: {{cpu: "2", memory: 64Mi}}
            limits:
              memory: 128Mi
      nodeSelector:
        pool: general
"""


def _deployment(name: str, namespace: str | None, image_comment: str = "") -> str:
    ns = f"\n  namespace: {namespace}" if namespace else ""
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}{ns}
  labels: {{app: {name}}}
spec:
  replicas: 2
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
""" + _CONTAINER.format(image_comment=image_comment).replace("name: web\n", f"name: {name}\n")


PLAIN = {
    "apps/shop/web.yaml": "# The web shop: its Deployment and Service.\n"
    + _deployment("web", "shop")
    + """---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports:
    - port: 80
      targetPort: 8080
""",
}

KUSTOMIZE = {
    "base/kustomization.yaml": "resources:\n  - deployment.yaml\n",
    "base/deployment.yaml": _deployment("web", None, "   # overlays pin the tag"),
    "overlays/staging/kustomization.yaml": """\
# Staging: the next release, the base's resources.
namespace: shop-staging
resources:
  - ../../base
images:
  - name: ghcr.io/acme/web
    newTag: "1.5.0"
""",
    "overlays/prod/kustomization.yaml": """\
# Production: pinned release, three replicas, more memory, its own readiness path.
namespace: shop
resources:
  - ../../base
images:
  - name: ghcr.io/acme/web
    newTag: "1.4.2"   # the release to run
replicas:
  - name: web
    count: 3
patches:
  - path: memory.yaml
  - target: {kind: Deployment, name: web}
    patch: |-
      - op: replace
        path: /spec/template/spec/containers/0/readinessProbe/httpGet/path
        value: /readyz
""",
    "overlays/prod/memory.yaml": """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  template:
    spec:
      containers:
        - name: web
          resources:
            limits:
              memory: 192Mi   # month-end reports
""",
}

CHART = {
    "charts/web/Chart.yaml": "apiVersion: v2\nname: web\nversion: 0.3.0\nappVersion: 1.4.2\n",
    "charts/web/values.yaml": """\
# Values of the web chart.
replicaCount: 2
image:
  repository: ghcr.io/acme/web
  tag: "1.4.2"   # bumped by the release job
resources:
  requests:
    cpu: "2"
    memory: 64Mi
  limits:
    memory: 128Mi
probes:
  readinessPath: /ready
  livenessPath: /healthz
nodeSelector:
  pool: general
""",
    "charts/web/templates/_helpers.tpl": """\
{{- define "web.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
""",
    "charts/web/templates/deployment.yaml": """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "web.fullname" . }}
  namespace: {{ .Release.Namespace }}
  labels: {app: {{ include "web.fullname" . }}}
spec:
  replicas: {{ .Values.replicaCount }}
  selector:
    matchLabels: {app: {{ include "web.fullname" . }}}
  template:
    metadata:
      labels: {app: {{ include "web.fullname" . }}}
    spec:
      containers:
        - name: web
          image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
          command: ["/app/web", "--config", "/etc/web/web.yaml"]
          env:
            - name: LOG_LEVEL
              value: verbose
          ports:
            - containerPort: 8080
          readinessProbe:
            httpGet: {path: {{ .Values.probes.readinessPath }}, port: 8080}
          livenessProbe:
            httpGet: {path: {{ .Values.probes.livenessPath }}, port: 8080}
          resources:
            {{- toYaml .Values.resources | nindent 12 }}
      {{- with .Values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
""",
}

MIXED = {
    "apps/shop/worker.yaml": "# The shop's queue worker, kept as a plain manifest.\n"
    + _deployment("worker", "shop"),
    **CHART,
}


@dataclass(frozen=True)
class Layout:
    key: str
    title: str  # the table's row
    files: dict[str, str]
    workload: Workload
    render: tuple[str, ...]  # the pipeline's render, argv after the tool; () for plain
    tool: str = ""  # "kubectl" or "helm"
    release: str | None = None
    # Where each failure class's field is decided, relative to the repository.
    sources: dict[str, str] = field(default_factory=dict)
    siblings: tuple[str, ...] = ()  # other kustomize overlays whose renders are compared


WEB = Workload(cluster="app", namespace="shop", name="web")
WORKER = Workload(cluster="app", namespace="shop", name="worker")
HELM = ("template", "web", "charts/web", "--namespace", "shop")

LAYOUTS = (
    Layout(
        "plain",
        "plain manifests (Deployment and Service in one file)",
        PLAIN,
        WEB,
        (),
        sources=dict.fromkeys(
            ("image", "memory", "env", "probe", "command", "scheduling"), "apps/shop/web.yaml"
        ),
    ),
    Layout(
        "kustomize",
        "kustomize base + staging and prod overlays (prod: `images:`, memory patch)",
        KUSTOMIZE,
        WEB,
        ("kustomize", "overlays/prod"),
        "kubectl",
        sources={
            "image": "overlays/prod/kustomization.yaml",
            "memory": "overlays/prod/memory.yaml",
            "probe": "overlays/prod/kustomization.yaml",
            "env": "base/deployment.yaml",
            "command": "base/deployment.yaml",
            "scheduling": "base/deployment.yaml",
        },
        siblings=("overlays/staging",),
    ),
    Layout(
        "helm",
        "Helm chart (values: image, resources, probes, nodeSelector)",
        CHART,
        WEB,
        HELM,
        "helm",
        release="web",
        sources=dict.fromkeys(("image", "memory", "probe", "scheduling"), "charts/web/values.yaml"),
    ),
    Layout(
        "mixed-plain",
        "plain manifests beside a chart: the plain workload",
        MIXED,
        WORKER,
        (),
        sources=dict.fromkeys(
            ("image", "memory", "env", "probe", "command", "scheduling"), "apps/shop/worker.yaml"
        ),
    ),
    Layout(
        "mixed-chart",
        "plain manifests beside a chart: the chart's workload",
        MIXED,
        WEB,
        HELM,
        "helm",
        release="web",
        sources=dict.fromkeys(("image", "memory", "probe", "scheduling"), "charts/web/values.yaml"),
    ),
)


@dataclass(frozen=True)
class FailureClass:
    key: str
    title: str  # the table's column
    path: str
    after: Any  # the repair's value (None: the field removed)


# The field each failure class's repair changes (aifixer.playbooks), and its new value.
CLASSES = (
    FailureClass(
        "image", "image (ImagePull)", f"{C0}.image", "ghcr.io/acme/web:1.4.1"
    ),  # restore_known_good_image
    FailureClass(
        "memory", "memory (OOMKilled)", f"{C0}.resources.limits.memory", "320Mi"
    ),  # raise_memory_limit
    FailureClass("env", "env (CrashLoop)", f"{C0}.env[0].value", "info"),  # restore_env
    FailureClass(
        "probe", "probe (ProbeFailure)", f"{C0}.readinessProbe.httpGet.path", "/health/ready"
    ),  # fix_probe_path
    FailureClass("command", "command (CrashLoop)", f"{C0}.command", None),  # drop_command_override
    FailureClass(
        "scheduling", "scheduling (Unschedulable)", f"{C0}.resources.requests.cpu", "500m"
    ),  # fit_requests_to_nodes
)


# -- checking one cell ---------------------------------------------------------------------


@dataclass
class Cell:
    layout: str
    failure: str
    proven: bool
    files: list[str] = field(default_factory=list)
    why: str = ""  # a "no": what the adapter or the check said
    siblings: list[str] = field(default_factory=list)  # what other overlays do


def _run(argv: list[str], cwd: Path) -> str:
    out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=True)
    return out.stdout


def _deployment_of(text: str, workload: Workload) -> dict[str, Any]:
    for doc in yaml.safe_load_all(text):
        if (
            isinstance(doc, dict)
            and doc.get("kind") == "Deployment"
            and (doc.get("metadata") or {}).get("name") == workload.name
        ):
            return doc
    raise LookupError(f"no Deployment {workload.name} rendered")


def _rendered(layout: Layout, checkout: Path, settings: Settings, argv: tuple[str, ...]) -> dict:
    if not argv:
        return _deployment_of(
            (checkout / layout.sources["image"]).read_text(encoding="utf-8"), layout.workload
        )
    tool = settings.kubectl_bin if layout.tool == "kubectl" else settings.helm_bin
    return _deployment_of(_run([tool, *argv], checkout), layout.workload)


def _clone(url: str, branch: str, where: Path) -> Path:
    _run(["git", "clone", "-q", "--branch", branch, "--", url, str(where)], where.parent)
    return where


def check_cell(
    world: World, layout: Layout, failure: FailureClass, settings: Settings, tmp: Path
) -> Cell:
    """Propose `failure`'s repair on `layout` through the forge adapter and check the PR."""
    ep = world.endpoints
    repo = f"proof/{layout.key}-{failure.key}"
    world.call(world.forge.create_repo, *repo.split("/"), layout.files, "The team's layout")
    url = ep.gitops_clone_url.removesuffix(f"{ep.gitops_repo}.git") + f"{repo}.git"
    cell = Cell(layout.key, failure.key, False)
    work = tmp / repo.replace("/", "_")
    work.mkdir(parents=True)
    main = _clone(url, "main", work / "main")
    before = _rendered(layout, main, settings, layout.render)
    change = FieldChange(
        path=failure.path, before=get_path(before, failure.path), after=failure.after
    )
    forge = Forge(_settings(settings, github_repo=repo, git_clone_url=url))
    try:
        ref = forge.propose(
            layout.workload,
            [change],
            incident_id=f"proof-{layout.key}-{failure.key}",
            title=f"Proof: {failure.key} on {layout.key}",
            body=lambda edit: edit.proof.markdown() if edit.proof else edit.diff,
            release=layout.release,
        )
    except Unproven as exc:
        cell.why = exc.hand_edits[0] if exc.hand_edits else exc.message
        return cell
    except PermanentError as exc:  # refused otherwise: not proven either
        cell.why = exc.message
        return cell
    branch = _clone(url, ref.branch, work / "branch")
    cell.files = _run(["git", "diff", "--name-only", "origin/main", "HEAD"], branch).split()
    expected = layout.sources.get(failure.key)
    after = _rendered(layout, branch, settings, layout.render)
    problems = []
    if cell.files != [expected]:
        problems.append(f"touches {cell.files}, expected [{expected}]")
    if after != apply_changes(before, [change]):
        moved = [d.path for d in diff(before, after)]
        problems.append(f"the branch renders {moved} changed")
    for overlay in layout.siblings:
        argv = ("kustomize", overlay)
        s0 = _rendered(layout, main, settings, argv)
        s1 = _rendered(layout, branch, settings, argv)
        moved = diff(s0, s1)
        if not moved:
            cell.siblings.append(f"{overlay} renders the same")
        elif [(d.path, d.after) for d in moved] == [(change.path, change.after)]:
            cell.siblings.append(f"{overlay} gets the same fix on that field only")
        else:
            problems.append(f"{overlay} renders {[d.path for d in moved]} changed")
    cell.proven = not problems
    cell.why = "; ".join(problems)
    return cell


def _settings(settings: Settings, **values: Any) -> Settings:
    """`settings` with `values` set, validated again (a token becomes a secret)."""
    fields = settings.model_dump(exclude_unset=True)
    return Settings(_env_file=None, **{**fields, **values})  # type: ignore[call-arg]


def check_all(settings: Settings, workdir: Path) -> list[Cell]:
    """Every layout × failure class, against one sandbox forge started here."""
    cells = []
    with World(None, workdir / "world") as world:
        world.start(load=False)
        ep = world.endpoints
        settings = _settings(
            settings,
            github_api_url=ep.github_api,
            github_token=ep.github_token,
            git_clone_url=ep.gitops_clone_url,
            github_repo=ep.gitops_repo,
        )
        for layout in LAYOUTS:
            for failure in CLASSES:
                cells.append(check_cell(world, layout, failure, settings, workdir / "checkouts"))
    return cells


# -- the table -------------------------------------------------------------------------------


def table(cells: list[Cell]) -> str:
    by = {(c.layout, c.failure): c for c in cells}
    notes: dict[str, int] = {}
    lines = [
        "| source layout | " + " | ".join(f.title for f in CLASSES) + " |",
        "| --- |" + " --- |" * len(CLASSES),
    ]
    for layout in LAYOUTS:
        row = []
        for failure in CLASSES:
            cell = by[(layout.key, failure.key)]
            if cell.proven:
                text = "yes: `" + "`, `".join(cell.files) + "`"
                if any("same fix" in s for s in cell.siblings):
                    text += " (staging too)"
            else:
                reason = _reason(layout, cell)
                n = notes.setdefault(reason, len(notes) + 1)
                text = f"no [{n}]"
            row.append(text)
        lines.append(f"| {layout.title} | " + " | ".join(row) + " |")
    lines.append("")
    fields = "; ".join(
        f"{f.key}: `{f.path.removeprefix(C0 + '.')}` "
        + ("removed" if f.after is None else f"set to `{f.after}`")
        for f in CLASSES
    )
    lines.append(
        f'Each repair changes one field of the first container ({fields}). "yes": the pull '
        "request the forge adapter opened touches that file only, and its branch, rendered "
        "with the real tool, gives the Deployment rendered from main with exactly that field "
        'changed; "(staging too)": the edit is in the base, and staging\'s render changes '
        "on that field only, to the same value (prod's sibling overlay; shown in the pull "
        "request)."
    )
    lines.append("")
    for reason, n in notes.items():
        lines.append(f"[{n}] {reason}")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def _reason(layout: Layout, cell: Cell) -> str:
    if layout.tool == "helm" and "templates/" in cell.why:
        return (
            "The chart writes this field literally in its template; no values entry feeds "
            "it, so no edit of the values renders the fix. The farm opens a draft pull "
            "request naming the template to edit by hand, and calls the on-call engineer."
        )
    return f"Not proven: {cell.why}"


def splice(readme: str, generated: str) -> str:
    head, start, rest = readme.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise SystemExit(f"README has no {START} ... {END} section")
    return f"{head}{START}\n{generated}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aifixer_sandbox.gitopsproof")
    parser.add_argument("--readme", type=Path, help="rewrite the table in this file")
    parser.add_argument("--check", action="store_true", help="fail if --readme is stale")
    args = parser.parse_args(argv)
    settings = Settings(_env_file=None, request_timeout_s=10, git_timeout_s=60)
    with tempfile.TemporaryDirectory(prefix="gitopsproof-") as tmp:
        cells = check_all(settings, Path(tmp))
    generated = table(cells)
    if args.readme is None:
        sys.stdout.write(generated)
        return 0
    old = args.readme.read_text(encoding="utf-8")
    new = splice(old, generated)
    if args.check:
        if new != old:
            sys.stderr.write(
                f"{args.readme}: the GitOps proof table is stale; rerun without --check\n"
            )
            return 1
        return 0
    args.readme.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
