"""`aifixer web`: the HTTP endpoints the outside world calls into the farm.

* `POST /twilio/gather`, `POST /twilio/status`: Twilio reporting on the calls the farm
  placed. Anyone on the internet can reach these URLs, so every request must carry an
  `X-Twilio-Signature` that validates against the account's Auth Token over the exact
  URL Twilio requested (`public_base_url` + the raw path and query) and the form
  parameters; anything else is refused with 403 before it is read further. The
  gather result is kept in Redis by CallSid; a final status writes the call's line to
  the call file exactly once (Twilio may deliver a callback twice) and hands the
  record to `on_call_finished`, which moves the incident on (next number, outcome).
* `POST /alertmanager`: Alertmanager's webhook (payload version 4); firing alerts about
  a pod or a Deployment become `Signal`s for `on_signals`, the third detection source.
  It needs `Authorization: Bearer <AIFIXER_WEB_TOKEN>`; without a configured token it
  refuses every post (403) and says so at start-up. At most `MAX_ALERTS` alerts per
  payload (Alertmanager's `max_alerts` on the receiver), only watched namespaces, and
  the signal carries the alert's labels it needs, not the payload.
* `GET /healthz` (Redis reachable) and `GET /metrics` (Prometheus text format): this
  process's own counters (summed over web replicas), then the farm's, read from Redis
  at each scrape (`aifixer.metrics`: farm-wide, the same on every replica).

Redis, the call file and the callbacks are blocking; they run in the default thread
pool so a slow disk or Redis never stalls the event loop that answers Twilio.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import redis
from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from aifixer import clusters
from aifixer import metrics as farm_metrics
from aifixer.adapters.errors import bounded
from aifixer.adapters.phone import (
    ATTEMPT_PARAM,
    GATHER_PATH,
    INCIDENT_PARAM,
    STATUS_PATH,
    Phone,
)
from aifixer.answers import parse_answer
from aifixer.callfile import FINAL_STATUSES, CallFile, finish_call, store_answer
from aifixer.guardrails import namespace_refusal
from aifixer.models import CallRecord, Signal, WorkloadKind
from aifixer.redact import redact
from aifixer.scaling import levels
from aifixer.settings import Settings

log = logging.getLogger(__name__)

CallFinished = Callable[[str, CallRecord], None]  # (incident id, the call file line)
SignalsReceived = Callable[[list[Signal]], None]
LevelsReceived = Callable[[list[str]], None]  # ids ("namespace/pod") whose level may change

SIGNATURE_HEADER = "X-Twilio-Signature"
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


# ---------------------------------------------------------------------------
# Metrics: a few counters, rendered in Prometheus' text exposition format


@dataclass
class Metrics:
    """Counters per process; Prometheus sums the replicas."""

    counters: dict[str, Counter] = field(default_factory=dict)
    help: dict[str, str] = field(default_factory=dict)

    def declare(self, name: str, text: str) -> None:
        self.counters[name] = Counter()
        self.help[name] = text

    def inc(self, name: str, by: int = 1, **labels: str) -> None:
        self.counters[name][tuple(sorted(labels.items()))] += by

    def render(self) -> str:
        lines = []
        for name, counter in self.counters.items():
            lines += [f"# HELP {name} {self.help[name]}", f"# TYPE {name} counter"]
            for labels, value in sorted(counter.items()):
                text = ",".join(f'{k}="{_label_value(v)}"' for k, v in labels)
                lines.append(f"{name}{{{text}}} {value}" if text else f"{name} {value}")
        return "\n".join(lines) + "\n"


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


CALLBACKS = "aifixer_twilio_callbacks_total"
CALLS_FINISHED = "aifixer_calls_finished_total"
ALERTS = "aifixer_alerts_received_total"
ALERTS_IGNORED = "aifixer_alerts_ignored_total"


def _metrics() -> Metrics:
    metrics = Metrics()
    metrics.declare(CALLBACKS, "Twilio callbacks, by endpoint and by accepted/rejected signature.")
    metrics.declare(CALLS_FINISHED, "Calls written to the call file, by final Twilio status.")
    metrics.declare(ALERTS, "Alertmanager alerts received, by alert status.")
    metrics.declare(ALERTS_IGNORED, "Alertmanager alerts that led to nothing, by reason.")
    return metrics


# ---------------------------------------------------------------------------
# Alertmanager's webhook payload (version 4)


class _Alert(BaseModel):
    model_config = ConfigDict(extra="ignore")  # Alertmanager adds fields across versions

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = {}
    startsAt: datetime  # noqa: N815 - Alertmanager's field name
    fingerprint: str = ""


class _AlertmanagerPayload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    alerts: list[_Alert]


MAX_ALERTS = 200  # per payload; set `max_alerts` on Alertmanager's webhook receiver


def parse_alerts(payload: Any) -> list[_Alert]:
    """The alerts of an Alertmanager webhook.

    Raises:
        ValueError: the payload is not a version-4 Alertmanager webhook, or has more
            than `MAX_ALERTS` alerts.
    """
    try:
        parsed = _AlertmanagerPayload.model_validate(payload)
    except ValidationError as exc:
        raise ValueError(f"not an Alertmanager v4 webhook payload: {exc}") from None
    if len(parsed.alerts) > MAX_ALERTS:
        raise ValueError(
            f"{len(parsed.alerts)} alerts in one payload, at most {MAX_ALERTS} are read: "
            f"set max_alerts: {MAX_ALERTS} on the Alertmanager webhook receiver"
        )
    return parsed.alerts


# An alert's label naming the workload, and the workload's kind.
_WORKLOAD_LABELS: tuple[tuple[str, WorkloadKind], ...] = (
    ("deployment", "Deployment"),
    ("statefulset", "StatefulSet"),
    ("daemonset", "DaemonSet"),
)


def alert_signals(alerts: list[_Alert]) -> list[Signal]:
    """The incident signals among `alerts`.

    Only firing alerts with a `namespace` label and a `pod`, `deployment`,
    `statefulset` or `daemonset` label (kube-state-metrics' names) make a signal: the
    farm fixes those workloads, and needs to know which one.
    """
    signals = []
    for alert in alerts:
        labels = alert.labels
        pod = labels.get("pod")
        kind: WorkloadKind = "Deployment"
        workload = None
        for label, label_kind in _WORKLOAD_LABELS:
            if labels.get(label):
                kind, workload = label_kind, labels[label]
                break
        if alert.status != "firing" or "namespace" not in labels or not (pod or workload):
            continue
        alertname = labels.get("alertname", "Alert")
        summary = alert.annotations.get("summary") or alert.annotations.get("description")
        signals.append(
            Signal(
                source="alertmanager",
                cluster=labels.get("cluster"),
                namespace=labels["namespace"],
                pod=pod,
                workload=workload,
                workload_kind=kind,
                reason=alertname,
                message=redact(bounded(summary or alertname)),
                observed_at=alert.startsAt,
            )
        )
    return signals


# ---------------------------------------------------------------------------
# The application


@dataclass
class Web:
    """What the handlers share."""

    settings: Settings
    redis: Any
    phone: Phone
    call_file: CallFile
    on_call_finished: CallFinished
    on_signals: SignalsReceived
    on_levels: LevelsReceived
    metrics: Metrics
    # With a clusters file, the default cluster's name: CPU levels act on it alone.
    level_cluster: str | None = None

    def signed(self, request: web.Request, params: Any) -> bool:
        signature = request.headers.get(SIGNATURE_HEADER)
        if not signature:
            return False
        url = self.settings.public_base_url.rstrip("/") + request.raw_path
        return self.phone.validator().validate(url, params, signature)

    def finish_call(self, incident_id: str, attempt: int, call_sid: str, status: str) -> bool:
        """Write the call's line (once) and report it (once); True if the line was written now.

        Blocking: runs in a worker thread.
        """
        return finish_call(
            self.redis, self.call_file, incident_id, attempt, call_sid, status,
            self.on_call_finished,
        )  # fmt: skip


WEB = web.AppKey("web", Web)


def make_app(
    settings: Settings,
    redis_client: Any,
    on_call_finished: CallFinished,
    on_signals: SignalsReceived,
    *,
    on_levels: LevelsReceived,
) -> web.Application:
    """The `aifixer web` application.

    Args:
        settings: Twilio credentials, `public_base_url`, `call_file`, `web_token`.
        redis_client: a synchronous `redis.Redis`, shared with the workers.
        on_call_finished: called once per ended call with (incident_id, record).
        on_signals: called with the signals of each Alertmanager webhook that has any.
        on_levels: called with the pods whose CPU level alerts were recorded.

    Raises:
        ValueError: no Twilio Auth Token is configured (no callback could be verified),
            or the clusters file cannot be used (`clusters.ClustersError`).
    """
    if not settings.twilio_auth_token.get_secret_value():
        raise ValueError("AIFIXER_TWILIO_AUTH_TOKEN is required to verify Twilio's callbacks")
    level_cluster = clusters.default_name(settings)
    app = web.Application()
    app[WEB] = Web(
        settings=settings,
        redis=redis_client,
        phone=Phone(settings),
        call_file=CallFile(settings.call_file),
        on_call_finished=on_call_finished,
        on_signals=on_signals,
        on_levels=on_levels,
        metrics=_metrics(),
        level_cluster=level_cluster,
    )
    app.router.add_post(GATHER_PATH, gather)
    app.router.add_post(STATUS_PATH, status)
    app.router.add_post("/alertmanager", alertmanager)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


async def _twilio_form(request: web.Request, endpoint: str) -> tuple[Any, str, int]:
    """The verified form, incident_id and attempt of a Twilio callback; 403 if unsigned."""
    state = request.app[WEB]
    form = await request.post()
    if not state.signed(request, form):
        state.metrics.inc(CALLBACKS, endpoint=endpoint, result="rejected")
        log.warning("%s: rejected a request without a valid %s", request.path, SIGNATURE_HEADER)
        raise web.HTTPForbidden(text=f"invalid {SIGNATURE_HEADER}\n")
    state.metrics.inc(CALLBACKS, endpoint=endpoint, result="accepted")
    incident_id = request.query.get(INCIDENT_PARAM)
    attempt = request.query.get(ATTEMPT_PARAM, "")
    if not incident_id or not attempt.isdigit() or not form.get("CallSid"):
        raise web.HTTPBadRequest(
            text=f"expected ?{INCIDENT_PARAM}=...&{ATTEMPT_PARAM}=N and a CallSid\n"
        )
    return form, incident_id, int(attempt)


async def gather(request: web.Request) -> web.Response:
    state = request.app[WEB]
    form, incident_id, attempt = await _twilio_form(request, "gather")
    speech, digits = form.get("SpeechResult"), form.get("Digits")
    answer = parse_answer(speech, digits)
    answer_text = (digits or speech or "").strip() or None
    await asyncio.to_thread(store_answer, state.redis, form["CallSid"], answer, answer_text)
    log.info("[%s] call %s (attempt %d) answered %r: %s",
             incident_id, form["CallSid"], attempt, answer_text, answer)  # fmt: skip
    return web.Response(text=state.phone.thanks(answer is True), content_type="text/xml")


async def status(request: web.Request) -> web.Response:
    state = request.app[WEB]
    form, incident_id, attempt = await _twilio_form(request, "status")
    call_status = form.get("CallStatus", "")
    if call_status in FINAL_STATUSES:
        written = await asyncio.to_thread(
            state.finish_call, incident_id, attempt, form["CallSid"], call_status
        )
        if written:
            state.metrics.inc(CALLS_FINISHED, status=call_status)
    return web.Response(status=204)


ALERTMANAGER_UNCONFIGURED = (
    "/alertmanager is refused: no AIFIXER_WEB_TOKEN is configured. Set one, and give "
    "Alertmanager the same in the receiver's http_config.authorization.credentials"
)


async def alertmanager(request: web.Request) -> web.Response:
    state = request.app[WEB]
    token = state.settings.web_token
    if token is None or not token.get_secret_value():
        raise web.HTTPForbidden(text=ALERTMANAGER_UNCONFIGURED + "\n")
    if not _bearer_matches(request, token.get_secret_value()):
        raise web.HTTPUnauthorized(
            text="a valid bearer token is required\n", headers={"WWW-Authenticate": "Bearer"}
        )
    try:
        payload = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="the body is not JSON\n") from None
    if isinstance(payload, dict) and len(_list(payload.get("alerts"))) > MAX_ALERTS:
        raise web.HTTPRequestEntityTooLarge(
            MAX_ALERTS, len(payload["alerts"]),
            text=f"at most {MAX_ALERTS} alerts per payload: set max_alerts on the receiver\n",
        )  # fmt: skip
    try:
        alerts = parse_alerts(payload)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"{exc}\n") from None
    for alert in alerts:
        state.metrics.inc(ALERTS, status=alert.status)
    settings = state.settings
    here, elsewhere = _levels_of_other_clusters(alerts, settings, state.level_cluster)
    if elsewhere:
        # A pod name (db-0) exists in every cluster: acting would label another's pod.
        state.metrics.inc(ALERTS_IGNORED, elsewhere, reason="level alert from another cluster")
        log.info("/alertmanager: %d CPU level alert(s) of another cluster than %s ignored "
                 "(levels act on the default cluster only)", elsewhere, state.level_cluster)  # fmt: skip
    level_alerts, others, unnamed = levels.split(here, settings)
    if unnamed:
        state.metrics.inc(ALERTS_IGNORED, unnamed, reason="level alert without a valid pod")
    watched_levels = [a for a in level_alerts if namespace_refusal(a.namespace, settings) is None]
    signals = alert_signals(others)
    # With several clusters, an alert naming its cluster is checked against that
    # cluster's namespaces when it opens an incident (pipeline.open_incidents).
    several = settings.clusters_file is not None
    watched = [
        s
        for s in signals
        if (several and s.cluster is not None) or namespace_refusal(s.namespace, settings) is None
    ]
    unwatched = len(level_alerts) - len(watched_levels) + len(signals) - len(watched)
    if unwatched:
        state.metrics.inc(ALERTS_IGNORED, unwatched, reason="namespace aifixer does not change")
        log.info("/alertmanager: %d alert(s) about namespaces aifixer does not change ignored",
                 unwatched)  # fmt: skip
    unused = len(others) - len(signals)
    if unused:  # resolved, or naming no workload: neither a level nor an incident
        state.metrics.inc(ALERTS_IGNORED, unused, reason="not a level, no incident")
    pods: list[str] = []
    if watched_levels:
        pods = await asyncio.to_thread(levels.record, state.redis, watched_levels)
        await asyncio.to_thread(state.on_levels, pods)
    if watched:
        await asyncio.to_thread(state.on_signals, watched)
    return web.json_response({"alerts": len(alerts), "signals": len(watched), "levels": len(pods)})


def _levels_of_other_clusters(
    alerts: list[_Alert], settings: Settings, level_cluster: str | None
) -> tuple[list[_Alert], int]:
    """(`alerts` without the CPU level alerts whose `cluster` label names another cluster
    than `level_cluster`, how many were left out). Without a clusters file
    (`level_cluster` None) every alert is kept, whatever its label says."""
    if level_cluster is None:
        return alerts, 0
    kept = [
        a
        for a in alerts
        if a.labels.get("alertname") not in settings.cpu_levels
        or (a.labels.get("cluster") or level_cluster) == level_cluster
    ]
    return kept, len(alerts) - len(kept)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _bearer_matches(request: web.Request, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


async def healthz(request: web.Request) -> web.Response:
    try:
        await asyncio.to_thread(request.app[WEB].redis.ping)
    except Exception as exc:  # noqa: BLE001 - any failure means "not healthy", said in the body
        return web.Response(status=503, text=f"redis: {bounded(str(exc))}\n")
    return web.Response(text="ok\n")


async def metrics(request: web.Request) -> web.Response:
    state = request.app[WEB]
    farm = await asyncio.to_thread(farm_metrics.render, state.redis)
    return web.Response(
        text=state.metrics.render() + farm,
        headers={"Content-Type": PROMETHEUS_TEXT},
    )


def run(
    settings: Settings,
    on_call_finished: CallFinished,
    on_signals: SignalsReceived,
    *,
    on_levels: LevelsReceived,
    host: str | None = None,
    port: int | None = None,
) -> None:
    """Serve `aifixer web` until interrupted (host and port default to the settings)."""
    client = redis.Redis.from_url(
        settings.redis_dsn,
        socket_timeout=settings.request_timeout_s,
        socket_connect_timeout=settings.request_timeout_s,
    )
    app = make_app(settings, client, on_call_finished, on_signals, on_levels=on_levels)
    if settings.web_token is None or not settings.web_token.get_secret_value():
        log.warning(ALERTMANAGER_UNCONFIGURED)
    web.run_app(app, host=host or settings.web_host, port=port or settings.web_port)
