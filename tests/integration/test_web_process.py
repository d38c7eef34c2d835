"""The real `aifixer web` process: what a caller on the network can and cannot make it do.

The in-process tests (test_web.py) hold each handler to its rule; these start the
command operators run, configured only by its environment as in docker-compose.yml,
and read what it left in the broker and on disk: a refused request queues no message
and writes no line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from aifixer import tasks
from aifixer_sandbox.harness import free_port
from tests.integration.test_web import alert, alertmanager_payload

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "alert-token-process"  # noqa: S105 - a test's own, never a real one


def _start(tmp_path: Path, redis_url: str, **env: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    environ = (
        {k: v for k, v in os.environ.items() if not k.startswith("AIFIXER_")}
        | {
            "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'sandbox'}",
            "AIFIXER_REDIS_URL": redis_url,
            "AIFIXER_TWILIO_ACCOUNT_SID": "AC" + "3" * 32,
            "AIFIXER_TWILIO_AUTH_TOKEN": "twilio-token-process",
            "AIFIXER_CALL_FILE": str(tmp_path / "calls.jsonl"),
            "AIFIXER_NAMESPACES": "shop",
        }
        | env
    )
    log = (tmp_path / f"web-{port}.log").open("w")
    proc = subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
        [sys.executable, "-m", "aifixer.cli", "web", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path, env=environ, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"aifixer web exited: {_output(tmp_path, port)}")
        try:
            if requests.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except requests.ConnectionError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"aifixer web never answered: {_output(tmp_path, port)}")


def _output(tmp_path: Path, port: int | str) -> str:
    return (tmp_path / f"web-{port}.log").read_text(errors="replace")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture
def queued(redis_url) -> Iterator:
    """How many messages wait on the farm's broker lists (the web's signals queue)."""
    client = redis.Redis.from_url(redis_url)
    yield lambda: sum(int(client.llen(k)) for k in tasks.queue_keys())
    client.close()


def _post(url: str, payload, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(url + "/alertmanager", json=payload, headers=headers, timeout=10)


def test_without_a_token_every_alert_is_refused_and_the_start_says_how(tmp_path, redis_url, queued):
    proc, url = _start(tmp_path, redis_url)
    try:
        before = queued()
        payload = alertmanager_payload([alert("firing", namespace="shop", pod="checkout-1")])
        for token in (None, "anything"):
            resp = _post(url, payload, token)
            assert resp.status_code == 403 and "AIFIXER_WEB_TOKEN" in resp.text
        assert queued() == before
    finally:
        _stop(proc)
    out = _output(tmp_path, url.rsplit(":", 1)[1])
    assert "/alertmanager is refused: no AIFIXER_WEB_TOKEN is configured" in out


def test_a_configured_web_refuses_each_caller_it_must_and_queues_only_watched_alerts(
    tmp_path, redis_url, queued
):
    proc, url = _start(tmp_path, redis_url, AIFIXER_WEB_TOKEN=TOKEN)
    try:
        before = queued()
        watched = alertmanager_payload([alert("firing", namespace="shop", pod="checkout-1")])
        for token in (None, "wrong"):
            assert _post(url, watched, token).status_code == 401
        unwatched = alertmanager_payload(
            [
                alert("firing", namespace="kube-system", pod="coredns-1"),
                alert("firing", namespace="billing", deployment="ledger"),
            ]
        )
        resp = _post(url, unwatched, TOKEN)
        assert resp.status_code == 200 and resp.json()["signals"] == 0
        many = [alert("firing", namespace="shop", pod=f"p-{i}") for i in range(201)]
        assert _post(url, alertmanager_payload(many), TOKEN).status_code == 413
        big = json.dumps(watched).replace(
            '"summary": ', '"summary": "' + "x" * (2 << 20) + '", "s": '
        )
        resp = requests.post(
            url + "/alertmanager", data=big, timeout=10,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )  # fmt: skip
        assert resp.status_code == 413
        # A Twilio callback without a signature, and one signed with another token.
        for headers in ({}, {"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"}):
            resp = requests.post(
                url + "/twilio/status?incident=x&attempt=1", timeout=10, headers=headers,
                data={"CallSid": "CA" + "1" * 32, "CallStatus": "completed"},
            )  # fmt: skip
            assert resp.status_code == 403
        assert queued() == before  # nothing refused reached the farm
        assert not (tmp_path / "calls.jsonl").exists()
        # The same process does queue what it must: one watched alert, one message.
        resp = _post(url, watched, TOKEN)
        assert resp.status_code == 200 and resp.json()["signals"] == 1
        assert queued() == before + 1
    finally:
        _stop(proc)
    assert TOKEN not in _output(tmp_path, url.rsplit(":", 1)[1])
