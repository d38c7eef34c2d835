"""The real Prometheus and Alertmanager, on loopback, for the sandbox.

Debian's `prometheus` (2.42) and `prometheus-alertmanager` (0.25) are the servers a
team runs; nothing here stands in for them. Prometheus scrapes the sandbox's exporters
(`metrics.py`) as it scrapes a kubelet and kube-state-metrics, evaluates the rule
files it is given and sends its alerts to Alertmanager, which posts them to a webhook
(`aifixer web`) with a bearer token, as the receiver in deploy/ is configured.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
import yaml

from .harness import Process, free_port, spawn, wait_port

PROMETHEUS = ("prometheus",)
ALERTMANAGER = ("prometheus-alertmanager", "alertmanager")


class MissingServer(RuntimeError):
    pass


def _binary(names: tuple[str, ...], package: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise MissingServer(
        f"{names[0]} is not installed (./dev installs it: apt-get install {package})"
    )


def _wait_ready(url: str, proc: Process, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(
                f"{proc.name} exited with {proc.popen.returncode}; see {proc.log_path}"
            )
        try:
            if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{proc.name} not ready after {timeout:.0f}s; see {proc.log_path}")


def prometheus_config(
    metrics_url: str,
    *,
    rule_files: list[Path] = (),  # type: ignore[assignment]
    alertmanager_url: str | None = None,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    apps: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Two jobs as on a real cluster: the kubelet's cAdvisor path and kube-state-metrics;
    and `apps` (job name → metrics URL), applications' own exporters, scraped as a
    ServiceMonitor does by default (their labels yield to the target's)."""
    target = urlsplit(metrics_url).netloc
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": scrape_interval,
            "evaluation_interval": evaluation_interval,
        },
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": "kubelet",
                "metrics_path": "/metrics/cadvisor",
                "honor_labels": True,
                "static_configs": [{"targets": [target]}],
                # As kube-prometheus-stack's kubelet ServiceMonitor: the path a series
                # came from is a label, so queries select cAdvisor's by it.
                "relabel_configs": [
                    {"source_labels": ["__metrics_path__"], "target_label": "metrics_path"}
                ],
            },
            {
                "job_name": "kube-state-metrics",
                "metrics_path": "/metrics",
                "honor_labels": True,
                "static_configs": [{"targets": [target]}],
            },
        ],
    }
    for job, url in (apps or {}).items():
        parts = urlsplit(url)
        config["scrape_configs"].append(
            {
                "job_name": job,
                "metrics_path": parts.path or "/metrics",
                "static_configs": [{"targets": [parts.netloc]}],
            }
        )
    if alertmanager_url:
        config["alerting"] = {
            "alertmanagers": [
                {"static_configs": [{"targets": [urlsplit(alertmanager_url).netloc]}]}
            ]
        }
    return config


def backfill(tsdb: Path, openmetrics: str) -> None:
    """Write `openmetrics` (samples with timestamps) into blocks under `tsdb`.

    `promtool tsdb create-blocks-from openmetrics`, as a team backfills history; run it
    before Prometheus starts on `tsdb`.
    """
    tsdb.mkdir(parents=True, exist_ok=True)
    source = tsdb.parent / "history.om"
    source.write_text(openmetrics)
    done = subprocess.run(
        [_binary(("promtool",), "prometheus"), "tsdb", "create-blocks-from", "openmetrics",
         str(source), str(tsdb)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"promtool could not backfill: {done.stdout}{done.stderr}")


def start_prometheus(
    workdir: Path,
    metrics_url: str,
    *,
    rule_files: list[Path] = (),  # type: ignore[assignment]
    alertmanager_url: str | None = None,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    port: int | None = None,
    history: str | None = None,
    apps: dict[str, str] | None = None,
) -> tuple[str, Process]:
    """A private Prometheus on a free loopback port scraping `metrics_url`; returns its URL.

    `history` (OpenMetrics with timestamps, see `Metrics.history`, its `instance` being
    `metrics_url`'s host:port) is backfilled into its storage before it starts.
    """
    exe = _binary(PROMETHEUS, "prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    if history:
        backfill(workdir / "tsdb", history)
    config = workdir / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            prometheus_config(
                metrics_url,
                rule_files=list(rule_files),
                alertmanager_url=alertmanager_url,
                scrape_interval=scrape_interval,
                evaluation_interval=evaluation_interval,
                apps=apps,
            ),
            sort_keys=False,
        )
    )
    return _serve(
        "prometheus",
        [
            exe,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            "--storage.tsdb.retention.time=30d",
        ],
        workdir,
        port,
        wait=_wait_scraped,
    )


def _serve(
    name: str,
    args: list[str],
    workdir: Path,
    port: int | None,
    wait: Callable[[str, Process], None] | None = None,
) -> tuple[str, Process]:
    """`args` listening on 127.0.0.1 (a free port unless given), ready (and `wait`ed)."""
    port = port or free_port()
    proc = spawn(
        name,
        [*args, f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        {"PATH": "/usr/bin:/bin"},
        workdir,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_port(port, 30, proc.popen)
        _wait_ready(url, proc)
        if wait is not None:
            wait(url, proc)
    except BaseException:
        proc.stop()
        raise
    return url, proc


def _wait_scraped(url: str, proc: Process, timeout: float = 30) -> None:
    """Until every target was scraped once (Prometheus applies targets ~5 s after start)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        targets = requests.get(f"{url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        if targets and all(t["health"] == "up" for t in targets):
            return
        if any(t["health"] == "down" for t in targets):
            errors = "; ".join(t["lastError"] for t in targets if t["lastError"])
            raise RuntimeError(f"prometheus cannot scrape the sandbox: {errors}")
        time.sleep(0.2)
    raise TimeoutError(f"{proc.name} scraped nothing after {timeout:.0f}s; see {proc.log_path}")


def alertmanager_config(
    webhook_url: str,
    *,
    token: str | None = None,
    group_wait: str = "1s",
    group_interval: str = "1s",
    repeat_interval: str = "1m",
    max_alerts: int = 200,
) -> dict[str, Any]:
    """One receiver, the webhook, grouped per alert and pod as deploy/ configures it."""
    webhook: dict[str, Any] = {"url": webhook_url, "send_resolved": True, "max_alerts": max_alerts}
    if token:
        webhook["http_config"] = {"authorization": {"type": "Bearer", "credentials": token}}
    return {
        "route": {
            "receiver": "aifixer",
            "group_by": ["alertname", "namespace", "pod"],
            "group_wait": group_wait,
            "group_interval": group_interval,
            "repeat_interval": repeat_interval,
        },
        "receivers": [{"name": "aifixer", "webhook_configs": [webhook]}],
    }


def start_alertmanager(
    workdir: Path,
    webhook_url: str,
    *,
    token: str | None = None,
    group_wait: str = "1s",
    group_interval: str = "1s",
    repeat_interval: str = "1m",
    port: int | None = None,
) -> tuple[str, Process]:
    """A private, single-node Alertmanager (no cluster port) posting to `webhook_url`."""
    exe = _binary(ALERTMANAGER, "prometheus-alertmanager")
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "alertmanager.yml"
    # It holds the webhook's token: readable by this user only, from its creation.
    os.close(os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    config.write_text(
        yaml.safe_dump(
            alertmanager_config(
                webhook_url,
                token=token,
                group_wait=group_wait,
                group_interval=group_interval,
                repeat_interval=repeat_interval,
            ),
            sort_keys=False,
        )
    )
    return _serve(
        "alertmanager",
        [
            exe,
            f"--config.file={config}",
            f"--storage.path={workdir / 'data'}",
            "--cluster.listen-address=",  # single node: no gossip port on 0.0.0.0:9094
        ],
        workdir,
        port,
    )


def rule_file_from(
    prometheus_rule: Path, out: Path, *, window: str | None = None, hold: str | None = None
) -> Path:
    """The groups of a PrometheusRule (deploy/monitoring/) as a plain rule file.

    `window` replaces the rules' rate windows and `hold` their `for:`, so a run whose
    load changes within seconds sees the same rules at its own time scale.
    """
    doc = yaml.safe_load(prometheus_rule.read_text())
    if not isinstance(doc, dict) or doc.get("kind") != "PrometheusRule":
        raise ValueError(f"{prometheus_rule} is not a PrometheusRule")
    groups = doc["spec"]["groups"]
    for group in groups:
        for rule in group["rules"]:
            if window:
                rule["expr"] = re.sub(r"\[\d+[smhd]\]", f"[{window}]", rule["expr"])
            if hold:
                for key in ("for", "keep_firing_for"):
                    if key in rule:
                        rule[key] = hold
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return out


def check_rules(path: Path) -> None:
    """`promtool check rules`: raises with promtool's words when the file is refused."""
    done = subprocess.run(
        [_binary(("promtool",), "prometheus"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise ValueError(f"promtool refused {path}: {done.stdout}{done.stderr}")


def query(prometheus_url: str, promql: str) -> list[dict[str, Any]]:
    """An instant query through the HTTP API; the result vector."""
    r = requests.get(f"{prometheus_url}/api/v1/query", params={"query": promql}, timeout=10)
    body = r.json()
    if body.get("status") != "success":
        raise RuntimeError(f"query {promql!r} failed: {json.dumps(body)[:300]}")
    return body["data"]["result"]
