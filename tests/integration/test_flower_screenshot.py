"""Flower, seen: an incident's canvas in Flower's tasks page, as a person would see it.

A bundled scenario plays against the real farm (Redis, workers, beat, web) with Flower
started beside it, behind its login as in docker-compose.yml. Flower's HTTP API must
list the incident's canvas, diagnose → recall → patch → apply → verify →
chord(open_pr | call_oncall) → finalize, every task with the incident's id as its one
argument; then headless Chromium renders the tasks page, whose rows must name those
tasks, and its screenshot is kept in aifixer-demo/flower-tasks.png (gitignored).

Beat is stopped once the incident is open: the polls it sends every 2 s would
otherwise push the canvas off the page's first rows.
"""

from __future__ import annotations

import ast
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from aifixer_sandbox import browser, harness
from aifixer_sandbox import scenario as scenario_mod
from aifixer_sandbox.harness import FarmRun, Process, free_port, spawn
from aifixer_sandbox.scenario import bundled_dir

pytestmark = [pytest.mark.integration, pytest.mark.scenario]

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = bundled_dir() / "image-typo-storefront.yaml"
SCREENSHOT = ROOT / "aifixer-demo" / "flower-tasks.png"
USER = "ops"
CANVAS = [
    f"aifixer.tasks.{name}"
    for name in ("diagnose", "recall", "patch", "apply", "verify", "open_pr", "call_oncall",
                 "finalize")
]  # fmt: skip
COLUMNS = "name,uuid,state,args,received,runtime,worker"


def start_flower(env: dict[str, str], workdir: Path, password: str) -> tuple[Process, int]:
    """`celery -A aifixer flower` on a free loopback port, its login as production sets it."""
    port = free_port()
    flower = spawn(
        "flower",
        [
            sys.executable, "-m", "celery", "-A", "aifixer", "flower",
            f"--port={port}", "--address=127.0.0.1", "--persistent=False",
            f"--tasks_columns={COLUMNS}",
        ],
        {**env, "FLOWER_BASIC_AUTH": f"{USER}:{password}"},
        workdir / "logs",
    )  # fmt: skip
    deadline = time.monotonic() + 45
    while True:
        try:
            resp = requests.get(
                f"http://127.0.0.1:{port}/api/workers", auth=(USER, password), timeout=2
            )
            if resp.status_code == 200:
                return flower, port
        except requests.ConnectionError:
            pass
        if flower.popen.poll() is not None or time.monotonic() > deadline:
            flower.stop()
            raise RuntimeError(f"Flower did not start; see {flower.log_path}")
        time.sleep(0.3)


@pytest.mark.timeout(300)
def test_flower_shows_the_incidents_canvas(needs_chromium, keep, monkeypatch, tmp_path):
    password = secrets.token_urlsafe(12)
    flower_port: list[int] = []
    real_start_farm = harness.start_farm

    def start_farm_with_flower(env, workdir, **kwargs):
        # Flower first, on the farm's Redis: it sees only the events sent after it starts.
        flower, port = start_flower(env, workdir, password)
        flower_port.append(port)
        try:
            return [flower, *real_start_farm(env, workdir, **kwargs)]
        except BaseException:
            flower.stop()
            raise

    monkeypatch.setattr(harness, "start_farm", start_farm_with_flower)
    sc = scenario_mod.load(SCENARIO)
    with FarmRun(sc, tmp_path / "run", speed=30) as run:
        base = f"http://127.0.0.1:{flower_port[0]}"
        auth = (USER, password)
        beat = next(p for p in run.procs if p.name == "beat")

        deadline = time.monotonic() + 180
        states = run.incidents()
        while not states:
            assert time.monotonic() < deadline, "no incident was opened"
            time.sleep(0.5)
            states = run.incidents()
        beat.stop()  # no more polls: the canvas's tasks are the newest in Flower
        while not run.finished(states):
            assert time.monotonic() < deadline, run.report(states)
            time.sleep(0.5)
            states = run.incidents()
        assert [s.outcome for s in states] == ["fixed"], run.report(states)
        incident_id = states[0].incident.id

        # Flower's API lists the canvas, each task done, each with the incident's id.
        while True:
            tasks = requests.get(f"{base}/api/tasks", auth=auth, timeout=10).json()
            canvas = {
                t["name"]: t
                for t in tasks.values()
                if t.get("name") in CANVAS and _args(t) == [incident_id]
            }
            if set(canvas) == set(CANVAS) and all(t["state"] == "SUCCESS" for t in canvas.values()):
                break
            assert time.monotonic() < deadline, {n: t["state"] for n, t in canvas.items()}
            time.sleep(0.5)
        url = f"{base}/tasks"
        shot = browser.screenshot(url, SCREENSHOT, width=1720, height=1100, auth=auth)
        dom = browser.dump_dom(url, auth=auth)

    # The rows Chromium rendered (from DataTables' request to Flower) name the canvas.
    body = re.search(r"<tbody[^>]*>(.*?)</tbody>", dom, re.S)
    assert body is not None, dom[-3000:]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", body.group(1), re.S)
    shown = {name for name in CANVAS for row in rows if name in row and incident_id in row}
    assert shown == set(CANVAS), rows
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    keep(shot, "Flower's tasks page with the incident's canvas")


def _args(task: dict) -> list | None:
    """A task's positional arguments as Flower reports them (their repr)."""
    try:
        return list(ast.literal_eval(task.get("args") or "None") or [])
    except (ValueError, SyntaxError):
        return None


def test_the_screenshot_stays_out_of_git():
    check = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", str(SCREENSHOT)])
    assert check.returncode == 0, ".gitignore must keep aifixer-demo/ out of git"
