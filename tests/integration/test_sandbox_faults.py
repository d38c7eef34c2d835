"""Injected faults on every stand-in, seen through the real clients over loopback.

Faults are set over each stand-in's own `/sandbox/faults` API (no proxy in between),
and each client sees what it would see from the real service failing: the
`kubernetes` client a `Status`, PyGithub GitHub's JSON error, the `twilio` client
Twilio's, the `openai` client an OpenAI error, `requests` on Loki a timeout.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import openai
import pytest
import requests
from github import Auth, Github, GithubException
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

from aifixer_sandbox import forge as forge_mod
from aifixer_sandbox import loki as loki_mod
from aifixer_sandbox import model_stub
from aifixer_sandbox import phone as phone_mod
from aifixer_sandbox.clock import Clock
from aifixer_sandbox.kube.podlogs import PodLogs
from aifixer_sandbox.kube.resources import core
from aifixer_sandbox.kube.server import make_app as kube_app
from aifixer_sandbox.kube.store import Store
from aifixer_sandbox.serve import LoopThread, Site, serve_in_thread, start_site, stop_site
from aifixer_sandbox.world import kubeconfig_text

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

TOKEN = "ghs_" + "f" * 36
ACCOUNT = "AC" + "2" * 32
AUTH_TOKEN = "e" * 32
DEPLOYMENTS = "/apis/apps/v1/namespaces/.*/deployments"


@dataclass
class Faults:
    """The fault control API of one stand-in."""

    url: str

    def add(self, **spec: object) -> dict:
        resp = requests.post(f"{self.url}/sandbox/faults", json=spec, timeout=5)
        assert resp.status_code == 201, resp.text
        return resp.json()

    def post(self, body: object) -> requests.Response:
        return requests.post(f"{self.url}/sandbox/faults", json=body, timeout=5)

    def list(self) -> list[dict]:
        resp = requests.get(f"{self.url}/sandbox/faults", timeout=5)
        assert resp.status_code == 200, resp.text
        return resp.json()["faults"]

    def clear(self) -> int:
        resp = requests.delete(f"{self.url}/sandbox/faults", timeout=5)
        assert resp.status_code == 200, resp.text
        return resp.json()["cleared"]


def deployment(name: str) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "nginx:1.25"}]},
            },
        },
    }


# -- servers, one of each per module; every test leaves no fault behind ------------------


@pytest.fixture(scope="module")
def kube(tmp_path_factory) -> Iterator[tuple[Faults, client.ApiClient]]:
    store = Store()
    store.create(core("namespaces"), {"metadata": {"name": "default"}})
    url, stop = serve_in_thread(kube_app(store, PodLogs()), "kube")
    kubeconfig = tmp_path_factory.mktemp("kube") / "kubeconfig"
    kubeconfig.write_text(kubeconfig_text(url))
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    # As the kube adapter does: urllib3's default Retry would honour Retry-After on a
    # GET's 503 by sleeping and retrying, hiding the fault from the caller.
    cfg.retries = False
    api = client.ApiClient(cfg)
    try:
        yield Faults(url), api
    finally:
        api.close()
        stop()


@pytest.fixture(scope="module")
def loki() -> Iterator[Faults]:
    url, stop = serve_in_thread(loki_mod.make_app(loki_mod.LogStore()), "loki")
    try:
        yield Faults(url)
    finally:
        stop()


@pytest.fixture(scope="module")
def forge(tmp_path_factory) -> Iterator[Faults]:
    store = forge_mod.Forge(tmp_path_factory.mktemp("forge"), TOKEN)
    site = Site("forge", forge_mod.make_app(store, lambda: site.url))
    loop = LoopThread().start()
    loop.call(store.create_repo, "acme", "shop", {"README.md": "# shop\n"}, "Initial commit")
    loop.call(start_site, site)
    try:
        yield Faults(site.url)
    finally:
        loop.call(stop_site, site)
        loop.stop()


@pytest.fixture(scope="module")
def phone(tmp_path_factory) -> Iterator[Faults]:
    calls = tmp_path_factory.mktemp("calls")
    url, stop = serve_in_thread(
        phone_mod.make_app(phone_mod.Phone(calls, {ACCOUNT: AUTH_TOKEN}, Clock(speed=200))),
        "phone",
    )
    try:
        yield Faults(url)
    finally:
        stop()


@pytest.fixture(scope="module")
def model() -> Iterator[Faults]:
    url, stop = serve_in_thread(model_stub.make_app(), "model")
    try:
        yield Faults(url)
    finally:
        stop()


@pytest.fixture(autouse=True)
def no_faults_left(request) -> Iterator[None]:
    yield
    for name in ("kube", "loki", "forge", "phone", "model"):
        if name in request.fixturenames:
            stand_in = request.getfixturevalue(name)
            (stand_in[0] if isinstance(stand_in, tuple) else stand_in).clear()


def github(url: str) -> Github:
    # No retries: the test looks at the first answer, not at PyGithub's retry policy.
    return Github(
        base_url=f"{url}/api/v3",
        auth=Auth.Token(TOKEN),
        seconds_between_requests=0,
        seconds_between_writes=0,
        retry=None,
    )


# -- each stand-in, through its real client -------------------------------------------------


def test_kubernetes_client_gets_a_503_status_with_retry_after_until_the_count_is_spent(kube):
    faults, api = kube
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment("default", deployment("web"))
    fault = faults.add(path=DEPLOYMENTS, method="GET", status=503, retry_after="5", count=2)
    assert fault["id"] and fault["hits"] == 0 and fault["remaining"] == 2

    for _ in range(2):
        with pytest.raises(ApiException) as caught:
            apps.list_namespaced_deployment("default", _request_timeout=5)
        assert caught.value.status == 503
        assert caught.value.headers["Retry-After"] == "5"
        status = json.loads(caught.value.body)
        assert status["kind"] == "Status" and status["apiVersion"] == "v1"
        assert status["status"] == "Failure" and status["code"] == 503
        assert status["reason"] == "ServiceUnavailable"
        assert status["details"] == {"retryAfterSeconds": 5}

    # Only GETs on deployments were faulted; and once the count is spent, all is well.
    assert client.CoreV1Api(api).list_namespace().items
    names = [d.metadata.name for d in apps.list_namespaced_deployment("default").items]
    assert names == ["web"]
    assert faults.list() == []


def test_pygithub_gets_githubs_error_for_a_faulted_pulls_call(forge):
    forge.add(path=r"/api/v3/repos/[^/]+/[^/]+/pulls$", status=503, retry_after="30", count=1)
    repo = github(forge.url).get_repo("acme/shop")
    with pytest.raises(GithubException) as caught:
        repo.get_pulls().totalCount  # noqa: B018 - the first page is fetched here
    assert caught.value.status == 503
    assert caught.value.data["message"] == "Service Unavailable"
    assert caught.value.data["documentation_url"].startswith("https://docs.github.com/")
    assert caught.value.headers["retry-after"] == "30"
    assert list(repo.get_pulls()) == []


def test_forge_git_paths_are_faulted_too(forge):
    forge.add(path=r"\.git/info/refs$", status=500, count=1)
    url = f"{forge.url}/acme/shop.git/info/refs"
    failed = requests.get(url, params={"service": "git-upload-pack"}, timeout=5)
    assert failed.status_code == 500 and failed.headers["Content-Type"].startswith("text/plain")
    ok = requests.get(url, params={"service": "git-upload-pack"}, timeout=5)
    assert ok.status_code == 200


def test_twilio_client_gets_twilios_error_when_creating_a_call(phone):
    phone.add(path=r"/Calls\.json$", method="POST", status=503, duration=10)
    twilio = Client(ACCOUNT, AUTH_TOKEN, environment={})
    twilio.api.base_url = phone.url
    with pytest.raises(TwilioRestException) as caught:
        twilio.calls.create(to="+33612345678", from_="+15005550006", twiml="<Response/>")
    assert caught.value.status == 503
    assert caught.value.code == 20503
    # Listing calls (a GET on the same path) is not faulted.
    assert twilio.calls.list() == []
    (listed,) = phone.list()
    assert listed["hits"] == 1 and listed["method"] == "POST"


def test_openai_client_gets_a_429_with_retry_after(model):
    model.add(path="/v1/chat/completions", status=429, retry_after="7", count=1)
    llm = openai.OpenAI(base_url=f"{model.url}/v1", api_key="sk-test", max_retries=0, timeout=5)
    with pytest.raises(openai.APIStatusError) as caught:
        llm.chat.completions.create(model="stub", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.body["type"] == "rate_limit_error"
    answer = llm.chat.completions.create(model="stub", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content


# -- time: duration, delay, hang ------------------------------------------------------------


def test_a_duration_fault_expires_by_itself(loki):
    loki.add(path="^/ready$", status=503, duration=0.5)
    failed = requests.get(f"{loki.url}/ready", timeout=5)
    assert failed.status_code == 503
    assert failed.headers["Content-Type"].startswith("text/plain")
    (active,) = loki.list()
    assert 0 < active["expires_in"] <= 0.5
    time.sleep(0.6)
    assert requests.get(f"{loki.url}/ready", timeout=5).status_code == 200
    assert loki.list() == []


def test_a_delay_fault_slows_the_answer_down(loki):
    loki.add(path="^/ready$", delay=0.3, count=1)
    started = time.monotonic()
    assert requests.get(f"{loki.url}/ready", timeout=5).status_code == 200
    assert time.monotonic() - started >= 0.3


def test_a_hang_times_the_client_out_and_frees_the_server(loki):
    query = {"query": '{app="api"}'}
    loki.add(path="/loki/api/v1/query_range", hang=True, duration=2, count=1)
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(f"{loki.url}/loki/api/v1/query_range", params=query, timeout=0.5)
    assert time.monotonic() - started < 1.5
    # The count is spent; the stand-in answers at once.
    resp = requests.get(f"{loki.url}/loki/api/v1/query_range", params=query, timeout=2)
    assert resp.status_code == 200


def test_a_hang_never_outlasts_its_fault(loki):
    loki.add(path="^/ready$", hang=True, duration=0.4)
    started = time.monotonic()
    assert requests.get(f"{loki.url}/ready", timeout=5).status_code == 200
    assert 0.3 <= time.monotonic() - started < 2


# -- the control API ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"path": "(", "status": 503, "count": 1}, "regular expression"),
        ({"path": "x", "status": 99, "count": 1}, "status"),
        ({"path": "x", "status": 600, "count": 1}, "status"),
        ({"path": "x", "status": "503", "count": 1}, "status"),
        ({"path": "x", "status": 503, "count": 0}, "count"),
        ({"path": "x", "status": 503, "count": 1.5}, "count"),
        ({"path": "x", "status": 503, "duration": -1}, "negative"),
        ({"path": "x", "delay": -0.1, "count": 1}, "negative"),
        ({"path": "x", "delay": 601, "count": 1}, "delay"),
        ({"path": "x", "status": 503}, "duration"),  # a fault that never ends
        ({"path": "x", "count": 1}, "do something"),
        ({"path": "x", "status": 503, "retry_after": 5, "count": 1}, "retry_after"),
        ({"path": "x", "retry_after": "5", "delay": 1, "count": 1}, "retry_after"),
        ({"path": "x", "status": 503, "hang": "yes", "count": 1}, "hang"),
        ({"path": "x", "method": "GET /", "status": 503, "count": 1}, "method"),
        ({"path": "x", "status": 503, "count": 1, "colour": "red"}, "unknown"),
        ({"status": 503, "count": 1}, "path"),
        ([], "JSON object"),
    ],
)
def test_bad_faults_are_refused(loki, body, says):
    resp = loki.post(body)
    assert resp.status_code == 400
    assert says in resp.json()["message"]
    assert loki.list() == []


def test_a_body_that_is_not_json_is_refused(loki):
    resp = requests.post(f"{loki.url}/sandbox/faults", data="status=503", timeout=5)
    assert resp.status_code == 400 and "JSON object" in resp.json()["message"]


def test_list_counts_hits_and_delete_clears_one_or_all(loki):
    first = loki.add(path="^/ready$", status=500, count=5, body='{"oops": true}')
    second = loki.add(path="/loki/api/v1/labels", method="get", status=502, duration=30)
    failed = requests.get(f"{loki.url}/ready", timeout=5)
    assert failed.status_code == 500 and failed.json() == {"oops": True}
    requests.get(f"{loki.url}/ready", timeout=5)
    by_id = {f["id"]: f for f in loki.list()}
    assert by_id[first["id"]]["hits"] == 2 and by_id[first["id"]]["remaining"] == 3
    assert by_id[second["id"]]["hits"] == 0 and by_id[second["id"]]["method"] == "GET"

    resp = requests.delete(f"{loki.url}/sandbox/faults/{first['id']}", timeout=5)
    assert resp.status_code == 200 and resp.json()["id"] == first["id"]
    assert requests.get(f"{loki.url}/ready", timeout=5).status_code == 200
    assert [f["id"] for f in loki.list()] == [second["id"]]
    missing = requests.delete(f"{loki.url}/sandbox/faults/{first['id']}", timeout=5)
    assert missing.status_code == 404
    assert loki.clear() == 1 and loki.list() == []


def test_the_control_api_is_never_faulted(kube):
    faults, _ = kube
    faults.add(path=".", status=500, count=10)  # every path
    assert faults.list()[0]["hits"] == 0
    assert requests.get(f"{faults.url}/version", timeout=5).status_code == 500
    assert faults.list()[0]["hits"] == 1


def test_faults_are_per_stand_in(loki, model):
    loki.add(path=".", status=503, count=1)
    assert model.list() == []
    assert requests.get(f"{model.url}/v1/models", timeout=5).status_code == 200
    assert requests.get(f"{loki.url}/ready", timeout=5).status_code == 503
