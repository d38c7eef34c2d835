"""Several clusters from one farm: the clusters file, and each incident kept to its cluster.

The file is parsed into each cluster's settings or refused with one error naming every
problem; without it the single-cluster settings are one implicit cluster as before. The
stages run over fake ports per cluster (records in the tests' real Redis), so each
assertion says which cluster's API server, forge and on-call list an incident reached.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis as redis_lib

from aifixer import clusters, detect, fixer, pipeline, tasks
from aifixer.adapters.errors import PermanentError
from aifixer.app import app
from aifixer.models import GitOpsPause, IncidentState, Signal, stored
from aifixer.settings import Settings
from aifixer.store import Store
from tests.unit.fakeports import (
    FakeForge,
    FakeKube,
    FakeLoki,
    context,
    open_incident,
)

ROOT = Path(__file__).resolve().parents[2]

TWO = """\
default: prod
clusters:
  - name: staging
    kubeconfig: staging.kubeconfig
    namespaces: [shop]
    loki: {url: "http://127.0.0.1:3101", tenant: staging}
    gitops: {path: overlays/staging}
    oncall: ["+15550000101"]
  - name: prod
    kubeconfig: /KUBE/prod.kubeconfig
    context: prod-admin
    loki:
      url: http://127.0.0.1:3102
      tenant: prod
      username: prod
      password_env: TEST_LOKI_PROD_PASSWORD
    gitops:
      repo: acme/prod-deploy
      token_env: TEST_GITOPS_PROD_TOKEN
      path: overlays/prod
      paths: {shop/checkout: apps/checkout/prod}
    oncall: ["+15550000201", "+15550000202"]
"""

ENV = {"TEST_LOKI_PROD_PASSWORD": "loki-s3cret-value", "TEST_GITOPS_PROD_TOKEN": "ghp_prodtoken"}


def write_clusters(tmp_path: Path, text: str = TWO) -> Path:
    kube = tmp_path / "kube"
    kube.mkdir(exist_ok=True)
    (kube / "prod.kubeconfig").write_text("apiVersion: v1\nkind: Config\n")
    (kube / "staging.kubeconfig").write_text("apiVersion: v1\nkind: Config\n")
    path = kube / "clusters.yaml"
    path.write_text(text.replace("/KUBE", str(kube)))
    return path


def base(tmp_path: Path, **values) -> Settings:
    return Settings(
        _env_file=None,
        github_repo="acme/gitops",
        github_token="ghp_farmtoken",
        git_clone_url="http://127.0.0.1:9/acme/gitops.git",
        oncall_numbers=["+15550000001"],
        **values,
    )


# -- the file ----------------------------------------------------------------------------


def test_each_cluster_gets_its_own_endpoints_paths_and_people(tmp_path):
    path = write_clusters(tmp_path)
    found = clusters.load(base(tmp_path, clusters_file=path), ENV)
    assert found.names == ["staging", "prod"] and found.default == "prod" and found.from_file
    staging, prod = found.settings["staging"], found.settings["prod"]
    assert staging.kubeconfig == path.parent / "staging.kubeconfig"  # relative to the file
    assert (prod.kubeconfig, prod.kube_context) == (path.parent / "prod.kubeconfig", "prod-admin")
    assert (staging.loki_url, staging.loki_org_id) == ("http://127.0.0.1:3101", "staging")
    assert (prod.loki_url, prod.loki_org_id, prod.loki_username) == (
        "http://127.0.0.1:3102", "prod", "prod",
    )  # fmt: skip
    assert prod.loki_password.get_secret_value() == ENV["TEST_LOKI_PROD_PASSWORD"]
    assert staging.loki_password is None
    # GitOps: the farm's repository unless the cluster names its own (with its token).
    assert (staging.github_repo, staging.gitops_path) == ("acme/gitops", "overlays/staging")
    assert staging.github_token.get_secret_value() == "ghp_farmtoken"
    assert (prod.github_repo, prod.gitops_path) == ("acme/prod-deploy", "overlays/prod")
    assert prod.clone_url == "http://127.0.0.1:9/acme/prod-deploy.git"  # same forge
    assert prod.github_token.get_secret_value() == "ghp_prodtoken"
    assert prod.gitops_paths == {"shop/checkout": "apps/checkout/prod"}
    assert staging.namespaces == ["shop"] and prod.namespaces == []
    assert staging.oncall_numbers == ["+15550000101"]
    assert prod.oncall_numbers == ["+15550000201", "+15550000202"]
    # The rest is the farm's.
    assert {s.redis_url for s in found.settings.values()} == {Settings(_env_file=None).redis_url}
    # Secrets stay secret in a repr.
    assert "s3cret" not in repr(prod) and "prodtoken" not in repr(prod)


def test_without_a_file_the_single_cluster_settings_are_one_implicit_cluster(tmp_path):
    s = base(tmp_path, cluster_name="eu-1", loki_url="http://127.0.0.1:3100")
    found = clusters.load(s)
    assert (found.names, found.default, found.from_file) == (["eu-1"], "eu-1", False)
    assert found.settings["eu-1"] is s


def test_the_first_cluster_is_the_default_unless_named(tmp_path):
    path = write_clusters(tmp_path, TWO.replace("default: prod\n", ""))
    assert clusters.load(base(tmp_path, clusters_file=path), ENV).default == "staging"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("oncall: [\"+15550000101\"]", "oncall: [\"+15550000101\"]\n    token: abc"),
         "'token': secrets are not written in the clusters file; name the environment variable"),
        (("gitops: {path: overlays/staging}", "gitops: {path: overlays/staging, token: abc}"),
         "clusters[0].gitops: 'token': secrets are not written"),
        (("http://127.0.0.1:3101", "http://user:pw@127.0.0.1:3101"),
         "clusters[0].loki.url: credentials do not belong in the URL"),
        (("name: staging", "name: prod"), "cluster names must differ: prod more than once"),
        (("name: staging", "name: Staging_1"), "clusters[0].name: 'Staging_1' is not a cluster name"),
        (("default: prod", "default: qa"), "default: 'qa' is none of the clusters listed"),
        (("tenant: staging}", "tenant: staging, org: x}"),
         "clusters[0].loki.org: Extra inputs are not permitted"),
        (("path: overlays/staging", "path: ../elsewhere"),
         "clusters[0].gitops.path: '../elsewhere' is not a path inside the repository"),
        (("apps/checkout/prod", "-rf"), "'-rf' is not a path inside the repository"),
        (("+15550000101", "555-0101"), "'555-0101' is not a phone number in E.164 form"),
        (("tenant: prod", "tenant: 'a/b'"), "'a/b' is not a Loki tenant ID"),
        (("password_env: TEST_LOKI_PROD_PASSWORD", "password_env: TEST_UNSET_VARIABLE"),
         "clusters[1] (prod): loki.password_env: the environment variable it names is not set"),
        (("    kubeconfig: staging.kubeconfig\n", ""), None),  # one in-cluster cluster is fine
        (("clusters:", "clusterz:"), "clusters: Field required"),
        (("namespaces: [shop]", "namespaces: [shop"), "not valid YAML at line"),
    ],
)  # fmt: skip
def test_bad_input_is_one_clear_error(tmp_path, change, expected):
    old, new = change
    assert old in TWO
    path = write_clusters(tmp_path, TWO.replace(old, new, 1))
    if expected is None:
        assert clusters.load(base(tmp_path, clusters_file=path), ENV).names == ["staging", "prod"]
        return
    with pytest.raises(clusters.ClustersError) as err:
        clusters.load(base(tmp_path, clusters_file=path), ENV)
    message = str(err.value)
    assert message.startswith(str(path))
    assert expected in message
    assert "abc" not in message.replace(str(tmp_path), "")  # an inline secret is not echoed


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # No scheme: urlsplit reads "prodreader" as one, and the password as the path.
        (("http://127.0.0.1:3101", "prodreader:Zq8-loki-pass@loki.prod:3100"),
         "clusters[0].loki.url: not an http(s) URL"),
        (("http://127.0.0.1:3101", "https://:Zq8-loki-pass@loki.prod:3100"),
         "clusters[0].loki.url: credentials do not belong in the URL"),
        (("repo: acme/prod-deploy", "clone_url: 'bot:Zq8-loki-pass@git.example.com/a/b.git'"),
         "clusters[1].gitops.clone_url: not an http(s) URL"),
        # A token pasted where the variable's name goes: it looks like a name.
        (("token_env: TEST_GITOPS_PROD_TOKEN", "token_env: ghp_Zq8lokipass0123456789"),
         "clusters[1] (prod): gitops.token_env: the environment variable it names is not set"),
        (("password_env: TEST_LOKI_PROD_PASSWORD", "password_env: 'Zq8-loki-pass'"),
         "clusters[1].loki.password_env: not an environment variable name"),
    ],
)  # fmt: skip
def test_a_secret_in_the_wrong_key_is_never_echoed(tmp_path, change, expected):
    old, new = change
    assert old in TWO
    path = write_clusters(tmp_path, TWO.replace(old, new, 1))
    with pytest.raises(clusters.ClustersError) as err:
        clusters.load(base(tmp_path, clusters_file=path), ENV)
    message = str(err.value)
    assert expected in message
    for part in ("Zq8", "lokipass", "loki-pass"):
        assert part not in message
    # names() (beat) reads the file alone: the same refusal, the same silence.
    if "names is not set" not in expected:
        with pytest.raises(clusters.ClustersError) as err:
            clusters.names(base(tmp_path, clusters_file=path))
        assert expected in str(err.value) and "Zq8" not in str(err.value)


def test_two_clusters_in_the_farm_s_own_pod_are_refused(tmp_path):
    text = TWO.replace("    kubeconfig: staging.kubeconfig\n", "").replace(
        "    kubeconfig: /KUBE/prod.kubeconfig\n    context: prod-admin\n", ""
    )
    path = write_clusters(tmp_path, text)
    with pytest.raises(clusters.ClustersError, match="only one cluster can be the one the farm"):
        clusters.load(base(tmp_path, clusters_file=path), ENV)


def test_a_context_without_its_kubeconfig_is_refused(tmp_path):
    """Without the file the context names nothing: in the farm's pod the entry would be the
    farm's own cluster under another name, polled, fixed and rolled back as "prod"."""
    text = TWO.replace("    kubeconfig: /KUBE/prod.kubeconfig\n", "")
    path = write_clusters(tmp_path, text)
    for read in (lambda: clusters.load(base(tmp_path, clusters_file=path), ENV),
                 lambda: clusters.names(base(tmp_path, clusters_file=path))):  # fmt: skip
        with pytest.raises(clusters.ClustersError) as err:
            read()
        assert "kubeconfig: is required with it" in str(err.value)
        assert "prod" in str(err.value).rsplit(":", 1)[-1]


def test_one_kubeconfig_and_context_under_two_names_is_refused(tmp_path):
    text = TWO.replace(
        "kubeconfig: staging.kubeconfig", "kubeconfig: prod.kubeconfig\n    context: prod-admin"
    )
    path = write_clusters(tmp_path, text.replace("/KUBE/prod.kubeconfig", "./prod.kubeconfig"))
    with pytest.raises(clusters.ClustersError, match="staging and prod name the same kubeconfig"):
        clusters.load(base(tmp_path, clusters_file=path), ENV)


def _kubeconfig(path: Path, servers: dict[str, str], current: str) -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": current,
        "clusters": [{"name": n, "cluster": {"server": u}} for n, u in servers.items()],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": n, "context": {"cluster": n, "user": "u"}} for n in servers],
    }))  # fmt: skip
    return path


@pytest.fixture
def in_a_pod(tmp_path, monkeypatch):
    """The in-cluster configuration as a pod sees it: the service account's token and CA,
    and KUBERNETES_SERVICE_HOST/PORT naming the farm's own API server."""
    from kubernetes.config import incluster_config, kube_config

    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("farm-token")
    (account / "ca.crt").write_text("not read until a request")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(account / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(account / "ca.crt"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    home = _kubeconfig(
        tmp_path / "config",
        {"staging": "http://127.0.0.1:7001", "prod": "http://127.0.0.1:7002"},
        current="staging",
    )
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(home))
    return "https://127.0.0.1:6443"


def test_in_a_pod_a_context_is_never_the_farm_s_own_cluster(in_a_pod, tmp_path):
    from aifixer.adapters.kube import Kube

    def host(**values) -> str:
        kube = Kube(Settings(_env_file=None, **values))
        try:
            return kube.api_client.configuration.host
        finally:
            kube.close()

    assert host() == in_a_pod  # neither: the cluster the farm runs in
    assert host(kube_context="prod") == "http://127.0.0.1:7002"  # ~/.kube/config's prod
    own = _kubeconfig(tmp_path / "own", {"eu": "http://127.0.0.1:7003"}, current="eu")
    assert host(kubeconfig=own) == "http://127.0.0.1:7003"


def test_beat_polls_each_cluster_by_name_and_refuses_a_bad_file(tmp_path):
    path = write_clusters(tmp_path)
    # Beat is given no secret: it needs the clusters' names only.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIFIXER_", "TEST_"))}
    env.update(AIFIXER_CLUSTERS_FILE=str(path), PYTHONPATH=str(ROOT))
    code = "import json, beat_schedule as b; print(json.dumps({k: [v['task'], list(v.get('args', ()))] for k, v in b.beat_schedule.items()}))"  # noqa: E501
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    entries = json.loads(out.stdout)
    polls = {k: v for k, v in entries.items() if k.startswith("poll-")}
    assert polls == {
        "poll-loki:staging": ["aifixer.tasks.poll_loki", ["staging"]],
        "poll-events:staging": ["aifixer.tasks.poll_events", ["staging"]],
        "poll-loki:prod": ["aifixer.tasks.poll_loki", ["prod"]],
        "poll-events:prod": ["aifixer.tasks.poll_events", ["prod"]],
    }
    assert "watchdog" in entries  # one beat: the farm's periodic tasks once
    path.write_text(TWO.replace("name: staging", "name: prod"))
    bad = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert bad.returncode != 0
    assert "cluster names must differ: prod more than once" in bad.stderr


# -- records ------------------------------------------------------------------------------


def test_a_record_stored_without_a_cluster_is_on_the_default_one(tmp_path):
    state = IncidentState.model_validate(
        {
            "incident": {
                "fingerprint": "0123456789abcdef",
                "workload": {"cluster": "x", "namespace": "shop", "name": "web"},
                "failure_class": "CrashLoop",
                "opened_at": datetime.now(UTC).isoformat(),
                "signals": [],
            }
        }
    )
    raw = json.loads(state.model_dump_json())
    del raw["incident"]["workload"]["cluster"]  # as a farm before clusters wrote it
    old = json.dumps(raw)
    assert (
        IncidentState.model_validate_json(old, context=stored("prod")).incident.workload.cluster
        == "prod"
    )
    assert (
        IncidentState.model_validate_json(old, context={"stored": True}).incident.workload.cluster
        == "app"
    )
    with pytest.raises(ValueError, match="cluster"):
        IncidentState.model_validate_json(old)  # anything but a stored record stays strict
    pause = GitOpsPause.model_validate_json(
        '{"controller": "argocd", "namespace": "argocd", "name": "web", "field": "/spec",'
        ' "paused_at": 1.0}',
        context={"stored": True},
    )
    assert pause.cluster is None  # pauses recorded before: the default cluster's


def test_the_store_loads_an_old_record_as_the_default_cluster_s(redis_url, tmp_path):
    client = redis_lib.Redis.from_url(redis_url, decode_responses=True)
    store = Store(client, lock_ttl_s=60, default_cluster="prod")
    iid = "fedcba9876543210-1700000000000"
    record = {
        "incident": {
            "id": iid, "fingerprint": "fedcba9876543210", "failure_class": "OOMKilled",
            "workload": {"namespace": "shop", "kind": "Deployment", "name": "api"},
            "opened_at": "2023-11-14T22:13:20Z", "signals": [],
        },
        "stage": "diagnosed", "version": 3,
    }  # fmt: skip
    client.set(store.key("incident", iid), json.dumps(record))
    try:
        assert store.load(iid).incident.workload.cluster == "prod"
    finally:
        client.delete(store.key("incident", iid))


def test_fingerprints_ids_and_locks_differ_by_cluster(redis_url, tmp_path):
    a = detect.fingerprint("staging", "shop", "Deployment", "web", "ImagePull")
    b = detect.fingerprint("prod", "shop", "Deployment", "web", "ImagePull")
    assert a != b


# -- the farm over fake ports, one set per cluster ---------------------------------------


@pytest.fixture
def farm(redis_url, tmp_path, monkeypatch):
    client = redis_lib.Redis.from_url(redis_url)
    stale = list(client.scan_iter(match="aifixer:*", count=1000))
    if stale:
        client.delete(*stale)
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    path = write_clusters(tmp_path)
    ctx = context(redis_url, tmp_path, clusters_file=path)
    staging = ctx.cluster("staging")
    staging.__dict__.update(kube=FakeKube(), loki=FakeLoki(), forge=FakeForge())
    monkeypatch.setattr(tasks, "context", lambda: ctx)
    monkeypatch.setattr(pipeline, "PHONE_BACKOFF_S", 0.0)
    monkeypatch.setattr(pipeline, "diagnose", lambda c, s: s)
    monkeypatch.setattr(pipeline, "patch", lambda c, s: s)
    app.conf.task_always_eager = True
    yield ctx
    app.conf.task_always_eager = False


def test_the_farm_context_is_the_default_cluster_s_and_shares_redis(farm):
    prod, staging = farm.cluster("prod"), farm.cluster("staging")
    assert prod is farm and farm.settings.cluster_name == "prod"
    assert staging.settings.cluster_name == "staging" and staging.farm is farm
    assert farm.cluster("staging") is staging  # built once
    assert staging.redis is farm.redis and staging.store is farm.store
    assert staging.phone is farm.phone and staging.model is farm.model
    assert staging.kube is not farm.kube and staging.forge is not farm.forge
    assert staging.several and farm.several
    with pytest.raises(PermanentError, match="no cluster named 'qa'"):
        farm.cluster("qa")


def test_each_incident_acts_on_its_own_cluster_only(farm):
    staging = farm.cluster("staging")
    s_id = open_incident(staging)
    p_id = open_incident(farm)
    farm.forge.fail("open_fix_pr", PermanentError("github", "422 refused"))  # prod: a call
    tasks.remediation(s_id).apply()
    tasks.remediation(p_id).apply()
    s_state, p_state = farm.store.load(s_id), farm.store.load(p_id)
    assert s_state.incident.workload.cluster == "staging"
    assert p_state.incident.workload.cluster == "prod"
    # Each fix went to its own API server, once.
    assert len(staging.kube.writes) == 1 and len(farm.kube.writes) == 1
    # Staging: fixed, its pull request from staging's forge; nobody called.
    assert s_state.outcome == "fixed"
    assert list(staging.forge.prs) == [f"aifixer/{s_id}"] and farm.forge.prs == {}
    # Prod: the pull request failed, so prod's on-call list was called, naming prod.
    assert p_state.outcome == "called"
    assert [n for n, iid, _ in farm.phone.dialled] == ["+15550000201"]
    assert farm.phone.spoken[0].startswith("This is about the cluster prod. ")
    assert fixer.speech_problems(farm.phone.spoken[0], p_state) == []
    # One lock per cluster: the same workload on both was open at once.
    assert farm.store.lock_holder("staging", "shop", "web") is None
    assert farm.store.lock_holder("prod", "shop", "web") is None


def test_a_record_naming_a_cluster_the_farm_does_not_watch_is_refused_at_apply(farm):
    iid = open_incident(farm)
    state = farm.store.load(iid)
    state.incident.workload.cluster = "qa"  # rewritten in Redis
    farm.store.save(state)
    tasks.remediation(iid).apply()
    done = farm.store.load(iid)
    assert farm.kube.writes == [] and farm.cluster("staging").kube.writes == []
    assert "no cluster named 'qa'" in done.error
    assert done.outcome == "error"
    assert [n for n, _, _ in farm.phone.dialled] == ["+15550000201"]  # still, someone hears


def test_polls_keep_a_cursor_per_cluster_and_drop_another_cluster_s_signals(farm):
    staging = farm.cluster("staging")
    asked = []
    for c, lines in ((staging, "staging"), (farm, "prod")):
        c.loki.error_signals = lambda since, until, who=lines: (asked.append(who), ([], until))[1]
    pipeline.poll_loki(staging)
    pipeline.poll_loki(farm)
    assert asked == ["staging", "prod"]
    keys = set(farm.redis.scan_iter(match="aifixer:cursor:*"))
    assert keys == {"aifixer:cursor:loki:staging", "aifixer:cursor:loki:prod"}
    sig = Signal(source="alertmanager", cluster="prod", namespace="shop", workload="web",
                 reason="KubePodCrashLooping", message="m", observed_at=datetime.now(UTC))  # fmt: skip
    assert pipeline.open_incidents(staging, [sig]) == []  # prod's alert opens nothing on staging


def test_the_default_cluster_resumes_the_cursor_of_a_farm_of_one(farm):
    farm.redis.set("aifixer:cursor:events", "12345")
    seen = []
    farm.kube.warning_signals = lambda rv: (seen.append(rv), ([], "12400"))[1]
    farm.kube.pod_signals = list
    farm.kube.service_signals = list
    staging = farm.cluster("staging")
    staging.kube.warning_signals = lambda rv: (seen.append(rv), ([], "77"))[1]
    staging.kube.pod_signals = list
    staging.kube.service_signals = list
    pipeline.poll_events(farm)
    pipeline.poll_events(staging)
    assert seen == ["12345", None]  # staging never starts from prod's resourceVersion
    assert farm.redis.get("aifixer:cursor:events:prod") == "12400"
    assert farm.redis.get("aifixer:cursor:events:staging") == "77"


def test_services_are_listed_once_a_window_per_cluster_whoever_polls(farm):
    """Listing every Service and EndpointSlice is the poll's heaviest read: one poll per
    AIFIXER_SERVICE_POLL_INTERVAL_S does it, on each cluster, whichever worker runs it."""
    listed = []
    for ctx in (farm, farm.cluster("staging")):
        ctx.kube.warning_signals = lambda rv: ([], "1")
        ctx.kube.pod_signals = list
        ctx.kube.service_signals = lambda ctx=ctx: (listed.append(ctx.settings.cluster_name), [])[1]
    staging = farm.cluster("staging")
    for _ in range(3):
        pipeline.poll_events(farm)
        pipeline.poll_events(staging)
    assert listed == ["prod", "staging"]
    ttl = farm.redis.pttl("aifixer:turn:services:prod")
    assert 0 < ttl <= farm.settings.service_poll_interval_s * 1000
    farm.redis.delete("aifixer:turn:services:prod")  # the window passed
    pipeline.poll_events(farm)
    pipeline.poll_events(staging)
    assert listed == ["prod", "staging", "prod"]


def test_an_incident_open_at_the_switch_to_a_clusters_file_is_verified_and_holds_its_workload(
    farm, redis_url, tmp_path
):
    """The farm of one cluster ("app", AIFIXER_CLUSTER_NAME's default) applied a fix; then
    the clusters file came, naming that cluster "prod" (the default). The fix is verified
    on prod, and the workload stays locked until then: no second incident on it."""
    assert farm.clusters.previous == "app" and farm.clusters.default == "prod"
    one = context(redis_url, tmp_path)  # before the file: the one implicit cluster
    one.__dict__["kube"] = farm.kube  # the same cluster, now called prod
    iid = open_incident(one)
    state = pipeline.apply(one, one.store.load(iid))
    state.explained = True  # the explanation its apply sent was written meanwhile
    one.store.save(state, "applied")
    assert farm.kube.writes and farm.store.load(iid).incident.workload.cluster == "app"
    # The old record is the default cluster's: no PermanentError, prod's clients.
    assert farm.of(farm.store.load(iid)) is farm
    # A new incident on prod's shop/web waits for it (the lock was taken as app's).
    web = ("shop", "Deployment", "web")
    assert farm.store.held("prod", [web]) == {web}
    assert farm.store.held("staging", [web]) == set()
    twin = farm.store.load(iid)
    twin.incident = twin.incident.model_copy(
        update={"id": "fp-twin-1700000000000", "workload": twin.incident.workload.model_copy(
            update={"cluster": "prod"})}
    )  # fmt: skip
    twin.version = 0
    assert not farm.store.create(twin, farm.store.lock_key(twin))
    # The worker of the new configuration goes on: verified on prod, the pull request.
    tasks.remediation(iid).apply()
    done = farm.store.load(iid)
    assert done.error is None, done.error
    assert done.verification is not None and done.verification.ok
    assert done.outcome == "fixed" and list(farm.forge.prs) == [f"aifixer/{iid}"]
    assert farm.cluster("staging").kube.writes == []
    # Ended, it frees the workload for prod's next incident.
    assert farm.store.lock_holder("app", "shop", "web") is None
    assert farm.store.create(twin, farm.store.lock_key(twin))


def test_the_previous_name_is_the_default_cluster_s_only_when_the_file_does_not_list_it(
    tmp_path,
):
    path = write_clusters(tmp_path)
    assert clusters.load(base(tmp_path, clusters_file=path), ENV).previous == "app"
    listed = clusters.load(base(tmp_path, clusters_file=path, cluster_name="staging"), ENV)
    assert listed.previous is None  # a record of "staging" is staging's
    assert clusters.load(base(tmp_path)).previous is None  # no file: nothing was renamed


def test_a_failure_ended_before_the_switch_is_not_reopened_on_the_default_cluster(farm):
    """The farm of one cluster ended a failure on this revision (a person was called);
    after the switch, prod's poll sees the same failure on the same revision: nothing new
    opens, as it would not have before the switch."""
    farm.kube.healthy = False  # shop/web crash loops, generation 2
    generation = farm.kube.get_deployment("shop", "web")["metadata"]["generation"]
    ended = detect.fingerprint("app", "shop", "Deployment", "web", "CrashLoop")
    farm.store.set(str(generation), "done", ended)
    sig = Signal(source="events", namespace="shop", workload="web", reason="BackOff",
                 message="Back-off restarting failed container", observed_at=datetime.now(UTC))  # fmt: skip
    assert pipeline.open_incidents(farm, [sig]) == []
    # Another revision is another failure: it opens.
    farm.store.set(str(generation - 1), "done", ended)
    [opened] = pipeline.open_incidents(farm, [sig])
    assert (opened.workload.cluster, opened.failure_class) == ("prod", "CrashLoop")
