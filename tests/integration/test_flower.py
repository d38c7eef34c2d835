"""`celery -A aifixer flower` works as Celery users expect, against the farm's Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import requests

from aifixer_sandbox.harness import free_port

pytestmark = pytest.mark.integration


@pytest.mark.timeout(90)
def test_flower_serves_the_farm(redis_url, tmp_path):
    port = free_port()
    env = {**os.environ, "AIFIXER_REDIS_URL": redis_url, "HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "aifixer",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
            "--persistent=False",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 45
        while True:
            try:
                resp = requests.get(f"http://127.0.0.1:{port}/healthcheck", timeout=2)
                break
            except requests.ConnectionError:
                assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
                assert time.monotonic() < deadline, "flower did not start"
                time.sleep(0.3)
        assert resp.status_code == 200 and resp.text == "OK"
        page = requests.get(f"http://127.0.0.1:{port}/broker", timeout=5)
        assert page.status_code == 200 and "redis://" in page.text  # Flower reads our broker
    finally:
        proc.terminate()
        proc.wait(15)
