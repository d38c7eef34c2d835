"""`aifixer web` over loopback with a real Redis: signatures, exactly-once lines, Alertmanager.

Twilio's requests are forged here the way Twilio makes them: form parameters signed
with the sandbox's `sign` (an implementation independent of the twilio library the
app validates with), over the exact URL requested.
"""

from __future__ import annotations

import json
import queue
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import pytest
import redis
import requests
from pydantic import SecretStr

from aifixer import web
from aifixer.callfile import CallContext, CallFile, store_call_context
from aifixer.models import CallRecord, Signal
from aifixer.settings import Settings
from aifixer_sandbox.phone import sign
from aifixer_sandbox.serve import serve_in_thread

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ACCOUNT = "AC" + "2" * 32
TOKEN = secrets.token_hex(16)
WEB_TOKEN = "alert-" + secrets.token_hex(8)
NUMBER = "+33612345678"
SPEECH = "The orders API cannot start: DATABASE_URL is missing. Rolling back did not help."
HTTP_TIMEOUT = 10


@dataclass
class Served:
    url: str
    settings: Settings
    redis: redis.Redis
    finished: queue.Queue = field(default_factory=queue.Queue)
    signals: list[list[Signal]] = field(default_factory=list)
    levels: list[str] = field(default_factory=list)

    @property
    def calls(self) -> list[CallRecord]:
        return CallFile(self.settings.call_file).read()

    def dialled(self, attempt: int = 1) -> tuple[str, str]:
        """Store a call's context as the caller does before dialling; (fingerprint, CallSid)."""
        fingerprint, call_sid = secrets.token_hex(8), "CA" + secrets.token_hex(16)
        context = CallContext(
            incident_id=fingerprint, fingerprint=fingerprint, attempt=attempt, number=NUMBER, speech=SPEECH,
            time=datetime.now(UTC), call_sid=call_sid,
        )  # fmt: skip
        store_call_context(self.redis, context)
        return fingerprint, call_sid

    def twilio(
        self, path: str, fingerprint: str, params: dict[str, str], *, attempt: int = 1,
        token: str | None = TOKEN,
    ) -> requests.Response:  # fmt: skip
        """POST as Twilio does; token=None sends no signature at all."""
        url = f"{self.url}{path}?{urlencode({'incident': fingerprint, 'attempt': attempt})}"
        form = {"AccountSid": ACCOUNT, "ApiVersion": "2010-04-01", "To": NUMBER} | params
        headers = {} if token is None else {"X-Twilio-Signature": sign(token, url, form)}
        return requests.post(url, data=form, headers=headers, timeout=HTTP_TIMEOUT)

    def metric(self, line_start: str) -> int:
        body = requests.get(self.url + "/metrics", timeout=HTTP_TIMEOUT).text
        values = [
            int(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(line_start)
        ]
        return sum(values)


@pytest.fixture
def served(tmp_path: Path, redis_url: str) -> Iterator[Served]:
    settings = Settings(
        _env_file=None,
        redis_url=redis_url,
        twilio_account_sid=ACCOUNT,
        twilio_auth_token=SecretStr(TOKEN),
        twilio_from_number="+15005550006",
        call_file=tmp_path / "calls.jsonl",
        web_token=SecretStr(WEB_TOKEN),
    )
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    state = Served("", settings, client)
    app = web.make_app(
        settings,
        client,
        lambda fp, record: state.finished.put((fp, record)),
        state.signals.append,
        on_levels=state.levels.extend,
    )
    state.url, stop = serve_in_thread(app, "web")
    settings.public_base_url = state.url  # known once bound; read per request
    yield state
    stop()
    client.close()


def test_answered_call_writes_one_line_and_reports_it(served: Served) -> None:
    fp, sid = served.dialled(attempt=2)
    gathered = served.twilio(
        "/twilio/gather", fp, {"CallSid": sid, "CallStatus": "in-progress",
                               "SpeechResult": "Oui, je peux.", "Confidence": "0.9"},
        attempt=2,
    )  # fmt: skip
    assert gathered.status_code == 200
    assert gathered.headers["Content-Type"].startswith("text/xml")
    assert "Thank you, noted: you can intervene." in gathered.text
    assert "<Hangup" in gathered.text
    assert served.calls == []  # the line waits for the final status
    for status in ("ringing", "in-progress"):
        assert served.twilio("/twilio/status", fp, {"CallSid": sid, "CallStatus": status},
                             attempt=2).status_code == 204  # fmt: skip
    assert served.calls == []
    done = served.twilio(
        "/twilio/status", fp, {"CallSid": sid, "CallStatus": "completed"}, attempt=2
    )
    assert done.status_code == 204
    [line] = served.calls
    assert (line.fingerprint, line.number, line.speech, line.can_intervene) == (
        fp, NUMBER, SPEECH, True,
    )  # fmt: skip
    assert (line.status, line.call_sid, line.attempt, line.answer_text) == (
        "completed", sid, 2, "Oui, je peux.",
    )  # fmt: skip
    reported_fp, reported = served.finished.get(timeout=5)
    assert reported_fp == fp and reported == line


@pytest.mark.parametrize(
    ("gather_params", "expected_text"),
    [({"SpeechResult": "No, sorry."}, "No, sorry."), ({"Digits": "2"}, "2"), ({}, None)],
    ids=["no", "press-2", "silence"],
)
def test_no_or_silence_is_false(served: Served, gather_params, expected_text) -> None:
    fp, sid = served.dialled()
    reply = served.twilio("/twilio/gather", fp, {"CallSid": sid} | gather_params)
    assert "Thank you. We will call the next person." in reply.text
    served.twilio("/twilio/status", fp, {"CallSid": sid, "CallStatus": "completed"})
    [line] = served.calls
    assert line.can_intervene is False and line.answer_text == expected_text


def test_retried_status_callback_writes_no_second_line(served: Served) -> None:
    fp, sid = served.dialled()
    final = {"CallSid": sid, "CallStatus": "no-answer", "CallDuration": "0"}
    for _ in range(3):
        assert served.twilio("/twilio/status", fp, final).status_code == 204
    [line] = served.calls
    assert line.status == "no-answer" and line.can_intervene is False
    served.finished.get(timeout=5)
    assert served.finished.empty()  # reported once too
    assert served.metric('aifixer_calls_finished_total{status="no-answer"}') == 1


@pytest.mark.parametrize("path", ["/twilio/gather", "/twilio/status"])
@pytest.mark.parametrize("token", ["0" * 32, None], ids=["other-token", "unsigned"])
def test_forged_request_is_refused_and_changes_nothing(served: Served, path, token) -> None:
    fp, sid = served.dialled()
    forged = {"CallSid": sid, "CallStatus": "completed", "Digits": "1"}
    resp = served.twilio(path, fp, forged, token=token)
    assert resp.status_code == 403
    assert served.calls == []
    assert list(served.redis.scan_iter(match=f"aifixer:call:{sid}:*")) == []
    assert served.finished.empty()
    assert served.metric("aifixer_twilio_callbacks_total{endpoint=") == 1
    assert served.metric("aifixer_twilio_callbacks_total{endpoint=") == served.metric(
        f'aifixer_twilio_callbacks_total{{endpoint="{path.rsplit("/", 1)[1]}",result="rejected"}}'
    )


def test_signature_over_another_url_is_refused(served: Served) -> None:
    """A valid signature for one call's URL does not authorise another call's."""
    fp, sid = served.dialled()
    other_url = f"{served.url}/twilio/status?{urlencode({'fp': 'someone-else', 'attempt': 1})}"
    form = {"CallSid": sid, "CallStatus": "completed"}
    url = f"{served.url}/twilio/status?{urlencode({'fp': fp, 'attempt': 1})}"
    resp = requests.post(url, data=form, headers={"X-Twilio-Signature": sign(TOKEN, other_url, form)},
                         timeout=HTTP_TIMEOUT)  # fmt: skip
    assert resp.status_code == 403 and served.calls == []


def test_tampered_parameter_is_refused(served: Served) -> None:
    fp, sid = served.dialled()
    url = f"{served.url}/twilio/gather?{urlencode({'fp': fp, 'attempt': 1})}"
    signature = sign(TOKEN, url, {"CallSid": sid, "Digits": "2"})
    resp = requests.post(url, data={"CallSid": sid, "Digits": "1"},
                         headers={"X-Twilio-Signature": signature}, timeout=HTTP_TIMEOUT)  # fmt: skip
    assert resp.status_code == 403


def test_unknown_call_is_acknowledged_but_not_recorded(served: Served) -> None:
    sid = "CA" + secrets.token_hex(16)
    resp = served.twilio(
        "/twilio/status", "never-dialled", {"CallSid": sid, "CallStatus": "completed"}
    )
    assert resp.status_code == 204 and served.calls == [] and served.finished.empty()


def alert(status: str, **labels: str) -> dict:
    return {
        "status": status,
        "labels": {"alertname": "KubePodCrashLooping", "severity": "critical"} | labels,
        "annotations": {
            "summary": f"{labels.get('pod') or labels.get('deployment')} is crash looping"
        },
        "startsAt": "2026-03-01T10:00:00.123Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": secrets.token_hex(8),
    }


def alertmanager_payload(alerts: list[dict]) -> dict:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="KubePodCrashLooping"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "aifixer",
        "groupLabels": {"alertname": "KubePodCrashLooping"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": alerts,
    }


def post_alerts(served: Served, body, token: str | None = WEB_TOKEN) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = body if isinstance(body, str) else json.dumps(body)
    return requests.post(served.url + "/alertmanager", data=data, timeout=HTTP_TIMEOUT,
                         headers=headers | {"Content-Type": "application/json"})  # fmt: skip


def test_alertmanager_firing_alerts_become_signals(served: Served) -> None:
    payload = alertmanager_payload(
        [
            alert("firing", namespace="shop", pod="checkout-7d9f-abcde"),
            alert("firing", namespace="shop", deployment="orders-api"),
            alert("firing", namespace="shop", statefulset="ledger-db"),
            alert("resolved", namespace="shop", pod="search-1"),
            alert("firing", namespace="shop"),  # neither pod nor deployment: not ours to fix
            alert("firing", pod="node-exporter-x"),  # no namespace
        ]
    )
    resp = post_alerts(served, payload)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"alerts": 6, "signals": 3, "levels": 0}
    [signals] = served.signals
    pod, deployment, statefulset = signals
    assert (pod.source, pod.namespace, pod.pod, pod.workload, pod.reason) == (
        "alertmanager", "shop", "checkout-7d9f-abcde", None, "KubePodCrashLooping",
    )  # fmt: skip
    assert pod.message == "checkout-7d9f-abcde is crash looping"
    assert pod.observed_at == datetime(2026, 3, 1, 10, 0, 0, 123000, tzinfo=UTC)
    assert pod.raw == {}  # the payload is not carried along
    assert (deployment.pod, deployment.workload) == (None, "orders-api")
    assert deployment.workload_kind == "Deployment"
    assert (statefulset.workload, statefulset.workload_kind) == ("ledger-db", "StatefulSet")
    assert served.metric('aifixer_alerts_received_total{status="firing"}') == 5
    assert served.metric('aifixer_alerts_received_total{status="resolved"}') == 1


def test_alertmanager_without_firing_alerts_calls_nobody(served: Served) -> None:
    resp = post_alerts(served, alertmanager_payload([alert("resolved", namespace="a", pod="b")]))
    assert resp.json() == {"alerts": 1, "signals": 0, "levels": 0} and served.signals == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("not json", "not JSON"),
        ([1, 2], "not an Alertmanager v4 webhook payload"),
        ({"version": "3", "status": "firing", "alerts": []}, "version"),
        (alertmanager_payload([{"status": "firing"}]), "labels"),
        (
            alertmanager_payload([alert("firing", namespace="a", pod="b") | {"startsAt": "soon"}]),
            "startsAt",
        ),
    ],
    ids=["not-json", "not-an-object", "version-3", "no-labels", "bad-time"],
)
def test_alertmanager_bad_payload_is_400(served: Served, body, message) -> None:
    resp = post_alerts(served, body)
    assert resp.status_code == 400 and message in resp.text
    assert served.signals == []


@pytest.mark.parametrize("token", [None, "wrong"])
def test_alertmanager_requires_the_bearer_token(served: Served, token) -> None:
    resp = post_alerts(
        served, alertmanager_payload([alert("firing", namespace="a", pod="b")]), token
    )
    assert resp.status_code == 401 and served.signals == []


def test_alertmanager_without_a_configured_token_refuses_everything(
    tmp_path: Path, redis_url: str
) -> None:
    settings = Settings(
        _env_file=None, redis_url=redis_url, twilio_auth_token=SecretStr(TOKEN),
        call_file=tmp_path / "c",
    )  # fmt: skip
    received: list = []
    url, stop = serve_in_thread(
        web.make_app(
            settings, redis.Redis.from_url(redis_url), print, received.append, on_levels=print
        )
    )
    try:
        payload = alertmanager_payload([alert("firing", namespace="shop", pod="b")])
        for headers in ({}, {"Authorization": "Bearer anything"}):
            resp = requests.post(url + "/alertmanager", json=payload, headers=headers,
                                 timeout=HTTP_TIMEOUT)  # fmt: skip
            assert resp.status_code == 403 and "AIFIXER_WEB_TOKEN" in resp.text
        assert received == []
    finally:
        stop()


def test_alertmanager_caps_the_alerts_of_one_payload(served: Served) -> None:
    many = [alert("firing", namespace="shop", pod=f"p-{i}") for i in range(web.MAX_ALERTS + 1)]
    resp = post_alerts(served, alertmanager_payload(many))
    assert resp.status_code == 413 and "max_alerts" in resp.text
    assert served.signals == []
    resp = post_alerts(served, alertmanager_payload(many[: web.MAX_ALERTS]))
    assert resp.status_code == 200 and resp.json()["signals"] == web.MAX_ALERTS


def test_alertmanager_ignores_namespaces_aifixer_does_not_change(served: Served) -> None:
    served.settings.namespaces = ["shop"]
    payload = alertmanager_payload(
        [
            alert("firing", namespace="shop", pod="checkout-1"),
            alert("firing", namespace="kube-system", pod="coredns-1"),
            alert("firing", namespace="billing", deployment="ledger"),
        ]
    )
    resp = post_alerts(served, payload)
    assert resp.status_code == 200 and resp.json() == {"alerts": 3, "signals": 1, "levels": 0}
    [[signal]] = served.signals
    assert (signal.namespace, signal.pod) == ("shop", "checkout-1")
    served.settings.namespaces = []
    resp = post_alerts(served, payload)
    assert resp.json()["signals"] == 2  # kube-system never, even when all are watched


def test_healthz_pings_redis(served: Served) -> None:
    resp = requests.get(served.url + "/healthz", timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200


def test_healthz_reports_redis_down(tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None, twilio_auth_token=SecretStr(TOKEN), call_file=tmp_path / "c"
    )
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    url, stop = serve_in_thread(web.make_app(settings, unreachable, print, print, on_levels=print))
    try:
        resp = requests.get(url + "/healthz", timeout=HTTP_TIMEOUT)
        assert resp.status_code == 503 and resp.text.startswith("redis:")
    finally:
        stop()


def test_metrics_text_format(served: Served) -> None:
    fp, sid = served.dialled()
    served.twilio("/twilio/status", fp, {"CallSid": sid, "CallStatus": "busy"})
    served.twilio("/twilio/status", fp, {"CallSid": sid, "CallStatus": "busy"}, token=None)
    resp = requests.get(served.url + "/metrics", timeout=HTTP_TIMEOUT)
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    lines = resp.text.splitlines()
    assert "# TYPE aifixer_twilio_callbacks_total counter" in lines
    assert 'aifixer_twilio_callbacks_total{endpoint="status",result="accepted"} 1' in lines
    assert 'aifixer_twilio_callbacks_total{endpoint="status",result="rejected"} 1' in lines
    assert 'aifixer_calls_finished_total{status="busy"} 1' in lines


def test_make_app_needs_the_auth_token(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="AIFIXER_TWILIO_AUTH_TOKEN"):
        web.make_app(
            Settings(_env_file=None, call_file=tmp_path / "c"), None, print, print, on_levels=print
        )


def test_cpu_level_alerts_are_recorded_for_the_label_task_not_incidents(served: Served) -> None:
    def level(name: str, status: str, **labels: str) -> dict:
        return alert(status, **labels) | {"labels": {"alertname": name, **labels}}

    payload = alertmanager_payload(
        [
            level("PodCpuFailure", "firing", namespace="shop", pod="api-1"),
            level("PodCpuNormal", "resolved", namespace="shop", pod="api-1"),
            level("PodCpuFailure", "firing", namespace="kube-system", pod="coredns-1"),
            level("PodCpuFailure", "firing", namespace="shop"),  # names no pod
            alert("resolved", namespace="shop", pod="search-1"),  # neither level nor incident
        ]
    )
    resp = post_alerts(served, payload)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"alerts": 5, "signals": 0, "levels": 1}
    assert served.signals == [] and served.levels == ["shop/api-1"]
    started = datetime_to_epoch("2026-03-01T10:00:00.123Z")
    assert served.redis.hgetall("aifixer:cpulevel:shop/api-1") == {
        b"PodCpuFailure": str(started).encode(),
        b"PodCpuNormal": f"-{started}".encode(),  # resolved: a tombstone
    }
    page = requests.get(served.url + "/metrics", timeout=HTTP_TIMEOUT).text
    for reason, n in (
        ("level alert without a valid pod", 1),
        ("namespace aifixer does not change", 1),
        ("not a level, no incident", 1),
    ):
        assert f'aifixer_alerts_ignored_total{{reason="{reason}"}} {n}' in page


def datetime_to_epoch(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


CLUSTERS = """\
default: prod
clusters:
  - name: staging
    kubeconfig: staging.kubeconfig
    loki: {url: "http://127.0.0.1:9"}
  - name: prod
    kubeconfig: prod.kubeconfig
    loki: {url: "http://127.0.0.1:9"}
"""


def test_cpu_level_alerts_of_another_cluster_are_dropped(tmp_path: Path, redis_url: str) -> None:
    """Levels act on the default cluster only, and a StatefulSet's pod name (db-0) exists
    in every cluster: staging's alert must not label prod's db-0."""
    (tmp_path / "clusters.yaml").write_text(CLUSTERS)
    settings = Settings(
        _env_file=None, redis_url=redis_url, twilio_account_sid=ACCOUNT,
        twilio_auth_token=SecretStr(TOKEN), call_file=tmp_path / "calls.jsonl",
        web_token=SecretStr(WEB_TOKEN), clusters_file=tmp_path / "clusters.yaml",
    )  # fmt: skip
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    client.delete("aifixer:cpulevel:shop/db-0", "aifixer:cpulevel:shop/db-1")
    state = Served("", settings, client)
    app = web.make_app(settings, client, print, state.signals.append, on_levels=state.levels.extend)
    state.url, stop = serve_in_thread(app, "web")
    try:

        def level(pod: str, **labels: str) -> dict:
            return alert("firing", namespace="shop", pod=pod, **labels) | {
                "labels": {"alertname": "PodCpuFailure", "namespace": "shop", "pod": pod, **labels}
            }

        payload = alertmanager_payload(
            [
                level("db-0", cluster="staging"),  # another cluster's pod
                level("db-0", cluster="prod"),
                level("db-1"),  # no label: the default cluster's
                alert("firing", namespace="shop", pod="db-2", cluster="staging"),  # an incident
            ]
        )
        resp = post_alerts(state, payload)
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"alerts": 4, "signals": 1, "levels": 2}
        assert sorted(state.levels) == ["shop/db-0", "shop/db-1"]
        started = str(datetime_to_epoch("2026-03-01T10:00:00.123Z")).encode()
        assert client.hgetall("aifixer:cpulevel:shop/db-0") == {b"PodCpuFailure": started}
        [[signal]] = state.signals
        assert signal.cluster == "staging"  # incidents go to the cluster they name
        assert state.metric('aifixer_alerts_ignored_total{reason="level alert from another') == 1
        # A bad clusters file stops the web at start, as it stops beat.
        (tmp_path / "clusters.yaml").write_text(CLUSTERS.replace("default: prod", "default: qa"))
        with pytest.raises(ValueError, match="default: 'qa' is none of the clusters"):
            web.make_app(settings, client, print, print, on_levels=print)
    finally:
        stop()
        client.delete("aifixer:cpulevel:shop/db-0", "aifixer:cpulevel:shop/db-1")
        client.close()
