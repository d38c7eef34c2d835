"""GitOps repositories as teams lay them out: kustomize overlays and a Helm chart.

Written into a directory (a checkout, or the sandbox forge's repository) by the tests
of aifixer.sources and of the forge adapter; rendered there with the real tools.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from aifixer.settings import Settings

# ./dev puts the pinned tools first on PATH; a bare pytest run finds them in the venv.
TOOLS = Path(__file__).parents[1] / ".venv" / "tools" / "bin"
SEARCH = os.pathsep.join([str(TOOLS), os.environ.get("PATH", "")])
KUBECTL = shutil.which("kubectl", path=SEARCH) or "kubectl"
HELM = shutil.which("helm", path=SEARCH) or "helm"


def tool_settings(**values) -> Settings:
    return Settings(_env_file=None, kubectl_bin=KUBECTL, helm_bin=HELM, **values)


KUSTOMIZE = {
    "base/kustomization.yaml": """\
# The web shop's base: one Deployment, one Service.
resources:
  - deployment.yaml
  - service.yaml
""",
    "base/deployment.yaml": """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: ghcr.io/acme/web:1.0.0   # overlays pin the tag
          ports:
            - containerPort: 8080
          readinessProbe:
            httpGet: {path: /ready, port: 8080}
          livenessProbe:
            httpGet:
              path: /healthz   # the base's probe: no overlay changes it
              port: 8080
          resources:
            requests: {cpu: 100m, memory: 64Mi}
            limits:
              memory: 128Mi
""",
    "base/service.yaml": """\
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
    - port: 80
      targetPort: 8080
""",
    "overlays/staging/kustomization.yaml": """\
namespace: shop-staging
resources:
  - ../../base
images:
  - name: ghcr.io/acme/web
    newTag: "1.4.2"
""",
    "overlays/prod/kustomization.yaml": """\
# Production: pinned image, three replicas, more memory.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: shop
resources:
  - ../../base
images:
  - name: ghcr.io/acme/web
    newTag: "1.5.0-bad"   # the release to run
replicas:
  - name: web
    count: 3
patches:
  - path: memory.yaml   # production's memory
  - target:
      kind: Deployment
      name: web
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
              memory: 96Mi   # tuned down in March
""",
}

CHART = {
    "charts/web/Chart.yaml": """\
apiVersion: v2
name: web
version: 0.3.0
appVersion: "1.4.2"
""",
    "charts/web/values.yaml": """\
# Values of the web chart.
replicaCount: 2

image:
  repository: ghcr.io/acme/web
  tag: "1.5.0-bad"   # bumped by the release job

resources:
  requests:
    memory: 64Mi
  limits:
    memory: 96Mi   # the working set is ~110Mi

probes:
  liveness:
    path: /healthz
    port: 8080

# The worker's memory is computed: base plus headroom.
worker:
  baseMi: 96
  headroomMi: 32
""",
    "charts/web/templates/deployment.yaml": """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
  namespace: {{ .Release.Namespace }}
  labels:
    app.kubernetes.io/instance: {{ .Release.Name }}
spec:
  replicas: {{ .Values.replicaCount }}
  selector:
    matchLabels:
      app.kubernetes.io/instance: {{ .Release.Name }}
  template:
    metadata:
      labels:
        app.kubernetes.io/instance: {{ .Release.Name }}
    spec:
      containers:
        - name: web
          image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
          livenessProbe:
            httpGet:
              path: {{ .Values.probes.liveness.path }}
              port: {{ .Values.probes.liveness.port }}
          resources:
            {{- toYaml .Values.resources | nindent 12 }}
        - name: worker
          image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
          args: ["worker"]
          resources:
            limits:
              memory: {{ add .Values.worker.baseMi .Values.worker.headroomMi }}Mi
""",
    "charts/web/templates/service.yaml": """\
apiVersion: v1
kind: Service
metadata:
  name: {{ .Release.Name }}
spec:
  selector:
    app.kubernetes.io/instance: {{ .Release.Name }}
  ports:
    - port: {{ .Values.probes.liveness.port }}
""",
}


def write(root: Path, files: dict[str, str]) -> None:
    for path, text in files.items():
        file = root / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text)
