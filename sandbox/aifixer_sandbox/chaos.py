"""The fault-injection benchmark: the real farm, faults at every stage, the promise checked.

Each cell plays one scenario with the real farm (separate worker, beat and web
processes, the stub model, one worker pool process) and, when the incident reaches a
given stage, breaks something: a stand-in answers 503, 429 with a Retry-After, or
hangs past the client's timeout (through the stand-ins' `/sandbox/faults`, so the
farm cannot tell); the pool process running a given task is SIGKILLed; a person
changes the Deployment. Then it checks what the promise says:

- every incident ended (closed), with the expected outcome — or `called` with the
  fault named, where the fault made a fix impossible;
- a fixed incident has exactly one pull request;
- no number was dialled twice for one incident;
- the rollback snapshot is the Deployment as it was before aifixer's first write;
- a person's change was never reverted.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from aifixer import manifests
from aifixer.models import IncidentState

from . import scenario as scenario_mod
from .harness import FarmRun

log = logging.getLogger("aifixer.chaos")

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
FIXED = "image-typo-storefront"  # expected fixed: one PR
CALLED = "unfixable-ghost-image"  # expected called: no safe fix, two numbers (no, yes)

# The farm for the benchmark: short windows, a watchdog that acts within a minute, a
# Retry-After cap short enough for a cell to finish, no incident memory (no PyTorch).
CHAOS_ENV = {
    "AIFIXER_MEMORY_ENABLED": "false",
    "AIFIXER_WATCHDOG_STALL_S": "45",
    "AIFIXER_WATCHDOG_INTERVAL_S": "5",
    "AIFIXER_RETRY_AFTER_MAX_S": "10",
    "AIFIXER_REQUEST_TIMEOUT_S": "5",
    "AIFIXER_MODEL_TIMEOUT_S": "10",
    "AIFIXER_INCIDENT_COOLDOWN_S": "600",
}
SLOW = 4.0  # seconds a slowed request waits, so the task doing it can be caught alive
HOTFIX_ENV = {"name": "HOTFIX_BY", "value": "on-call"}


@dataclass
class Cell:
    """One fault at one moment of one scenario, and what must come of it."""

    name: str
    scenario: str
    expect: str  # the outcome; "called" cells accept "error" (a called outcome with a reason)
    at: str  # the incident's stage that triggers the fault ("opened", "diagnosed", ...)
    faults: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    early: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # from the start
    kill: str | None = None  # SIGKILL the pool process running this task
    person: bool = False  # a person deploys a hotfix at the trigger
    redis_restart: bool = False  # Redis (append-only file on) restarts at the trigger
    incidents: int = 1  # how many incidents the cell opens
    env: dict[str, str] = field(default_factory=dict)
    ci: bool = False  # part of the subset run in CI


def _fault(path: str, **kw: Any) -> dict[str, Any]:
    return {"path": path, **kw}


SERVICE_PATHS = {
    "kubernetes": r"^/apis?/",
    "loki": r"^/loki/api/v1/query",
    "model": r"^/v1/chat/completions",
    "forge": r"^/api/v3/repos/",
    "twilio": r"/Calls\.json$",
}
DEPLOYMENT = r"/deployments/[^/]+$"  # one Deployment: the fixer's reads, dry-run and apply
# The stage each service is needed at first after the incident opened.
SERVICE_AT = {
    "kubernetes": "opened",
    "loki": "opened",
    "model": "opened",
    "forge": "applied",  # verify's stability window leaves time to inject before open_pr
    "twilio": "opened",  # only calls use it
}
SERVICE_SCENARIO = {"twilio": CALLED}
# The task to SIGKILL, and the requests slowed (from the opening on) so that the pool
# process is caught while it runs that task.
KILLS = {
    # diagnose asks no model (its explanation comes after the apply): its evidence reads
    # Loki's logs, which are slowed instead.
    "diagnose": ("loki", _fault(SERVICE_PATHS["loki"], delay=SLOW, duration=20)),
    # patch asks the model nothing for a single candidate with no amount to size (the
    # fixed scenario's): its server-side dry-run, the first PATCH, is slowed instead.
    "patch": ("kubernetes", _fault(DEPLOYMENT, method="PATCH", delay=SLOW, count=1)),
    "apply": ("kubernetes", _fault(DEPLOYMENT, method="PATCH", delay=SLOW, duration=40)),
    # Each verify run counts the new error lines in Loki, then re-schedules itself; the
    # fault lasts past detection, diagnose, patch and apply, into verify's runs.
    "verify": ("loki", _fault(SERVICE_PATHS["loki"], delay=2.0, duration=120)),
    "open_pr": ("forge", _fault(SERVICE_PATHS["forge"], delay=SLOW, duration=90)),
    "call_oncall": ("twilio", _fault(SERVICE_PATHS["twilio"], method="POST", delay=SLOW, duration=40)),
    "call_next": ("twilio", _fault(SERVICE_PATHS["twilio"], method="POST", delay=SLOW, duration=90)),
    "finalize": ("kubernetes", _fault(DEPLOYMENT, method="GET", delay=1.0, duration=120)),
}  # fmt: skip
# Stages a scenario passes in milliseconds, held for a moment so the restart lands
# there. The fixed one: the API server answers patch's dry-run 2 s late (the incident
# waits at "diagnosed"; patch asks the model nothing for its single candidate), and the
# dry-run and the apply 2 s late (it waits at "patched"). The called one has nothing to
# apply and asks nobody anything between "diagnosed" and "applied": it is held at
# "applied" while the first call is placed.
DWELL = {
    (FIXED, "diagnosed"): (
        "kubernetes", _fault(DEPLOYMENT, method="PATCH", delay=2.0, count=1)
    ),
    (FIXED, "patched"): (
        "kubernetes", _fault(DEPLOYMENT, method="PATCH", delay=2.0, count=2)
    ),
    (CALLED, "applied"): (
        "twilio", _fault(SERVICE_PATHS["twilio"], method="POST", delay=2.0, count=1)
    ),
}  # fmt: skip
RUNS_IN = {
    FIXED: {"diagnose", "patch", "apply", "verify", "open_pr", "finalize"},
    # No candidate fix: patch asks nothing of anyone there, nothing to catch it in.
    CALLED: {"diagnose", "call_oncall", "call_next", "finalize"},
}


def cells() -> list[Cell]:
    out: list[Cell] = []
    for task, slow in KILLS.items():
        for sc, expect in ((FIXED, "fixed"), (CALLED, "called")):
            if task not in RUNS_IN[sc]:
                continue
            out.append(
                Cell(
                    name=f"SIGKILL in {task} ({expect})",
                    scenario=sc,
                    expect=expect,
                    at="opened",
                    early=[slow],  # from the start: the stages before apply take a second
                    kill=task,
                    ci=task in ("apply", "call_oncall"),
                )
            )
    for service, path in SERVICE_PATHS.items():
        sc = SERVICE_SCENARIO.get(service, FIXED)
        expect = "called" if sc == CALLED else "fixed"
        method = {"twilio": "POST"}.get(service)
        kinds = {
            "503 for 30 s": {"status": 503, "duration": 30},
            "hang past the timeout": {"hang": True, "duration": 12},
            "429 Retry-After 5": {"status": 429, "retry_after": "5", "count": 2},
            "429 Retry-After 86400": {"status": 429, "retry_after": "86400", "count": 2},
            "429 Retry-After inf": {"status": 429, "retry_after": "inf", "count": 2},
        }
        for kind, spec in kinds.items():
            body = _fault(path, **spec) | ({"method": method} if method else {})
            out.append(
                Cell(
                    name=f"{service} {kind}",
                    scenario=sc,
                    expect=expect,
                    at=SERVICE_AT[service],
                    faults=[(service, body)],
                    ci=(service, kind)
                    in {("kubernetes", "503 for 30 s"), ("forge", "429 Retry-After inf")},
                )  # fmt: skip
            )
    out += [
        Cell(
            name="a person's hotfix between patch and apply",
            scenario=FIXED,
            expect="called",
            at="patched",
            # The dry run (patch) and the apply both PATCH: both wait, so the person's
            # replace lands between aifixer's read and its write.
            early=[("kubernetes", _fault(DEPLOYMENT, method="PATCH", delay=SLOW, count=2))],
            person=True,
            ci=True,
        ),
        Cell(
            name="a person's hotfix during verify",
            scenario=FIXED,
            expect="called",
            at="applied",
            person=True,
        ),
        *[
            Cell(
                name=f"Redis restarted at {stage} ({expect})",
                scenario=sc,
                expect=expect,
                at=stage,
                early=[DWELL[sc, stage]] if (sc, stage) in DWELL else [],
                redis_restart=True,
                ci=stage == "applied",
            )
            for sc, expect, stages in (
                (FIXED, "fixed", ("opened", "diagnosed", "patched", "applied", "verified")),
                (CALLED, "called", ("opened", "applied")),
            )
            for stage in stages
        ],
        Cell(
            name="the same failure three times after the cooldown",
            scenario=CALLED,
            expect="called",
            at="opened",
            incidents=3,
            env={"AIFIXER_INCIDENT_COOLDOWN_S": "3"},
        ),
    ]
    return out


# ------------------------------------------------------------------------------ running


class CellRun:
    """One cell: the farm, the trigger, the fault, the checks."""

    def __init__(self, cell: Cell, workdir: Path, timeout: float) -> None:
        self.cell = cell
        self.workdir = workdir
        self.timeout = timeout
        self.notes: list[str] = []
        self.counts: dict[str, Any] = {}

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        sc = scenario_mod.load(SCENARIOS / f"{self.cell.scenario}.yaml")
        env = CHAOS_ENV | self.cell.env
        before: dict[str, Any] = {}

        def ready(farm: FarmRun) -> None:
            # Before the farm starts: an incident reaches its apply within a second or so
            # of its opening (no model call before it), so what the farm must not have
            # touched yet is read now, and the faults meant from the start are in place.
            self.farm = farm
            before.update(self._deployment(sc))
            for service, body in self.cell.early:
                self._inject(service, body)

        with FarmRun(
            sc,
            self.workdir,
            extra_env=env,
            concurrency=1,
            append_only_redis=self.cell.redis_restart,
            before_farm=ready,
        ) as farm:
            self.farm = farm
            triggered = self._wait_for_trigger()
            if triggered:
                self._act(sc)
            states = self._wait_end(sc)
            problems = self._check(sc, states, before)
            if not triggered:
                problems.insert(0, f"the incident never reached stage {self.cell.at!r}")
            if self.cell.kill and self.counts.get("killed") != self.cell.kill:
                problems.insert(0, f"{self.cell.kill} was never caught running: nothing killed")
        return {
            "cell": self.cell.name,
            "scenario": self.cell.scenario,
            "expected": self.cell.expect,
            "outcomes": [s.outcome for s in states],
            "ok": not problems,
            "problems": problems,
            "notes": self.notes,
            **self.counts,
            "seconds": round(time.monotonic() - started, 1),
        }

    # -- the moment and the fault ----------------------------------------------------

    def _stage(self) -> str | None:
        states = self.farm.incidents()
        if not states:
            return None
        return "closed" if states[0].closed_at is not None else states[0].stage

    def _wait_for_trigger(self) -> bool:
        want = self.cell.at
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            stage = self._stage()
            if stage is not None and (want == "opened" or stage == want):
                return True
            if stage == "closed":
                return False
            time.sleep(0.05)
        return False

    def _act(self, sc) -> None:
        for service, body in self.cell.faults:
            self._inject(service, body)
        if self.cell.person:
            self._person_hotfix(sc)
        if self.cell.kill:
            self._kill(self.cell.kill)
        if self.cell.redis_restart:
            self.farm.restart_redis()
            self.notes.append("Redis restarted")

    def _url(self, service: str) -> str:
        ep = self.farm.world.endpoints
        return {
            "kubernetes": ep.kubernetes,
            "loki": ep.loki,
            "forge": ep.github_api.removesuffix("/api/v3"),
            "twilio": ep.twilio_base,
            "model": self.farm.env["AIFIXER_MODEL_BASE_URL"].removesuffix("/v1"),
        }[service]

    def _inject(self, service: str, body: dict[str, Any]) -> None:
        r = requests.post(f"{self._url(service)}/sandbox/faults", json=body, timeout=5)
        r.raise_for_status()
        self.notes.append(f"{service}: {json.dumps(body)}")

    def _kill(self, task: str) -> None:
        """SIGKILL the pool process while it runs `task` (found with `celery inspect`)."""
        from celery import Celery

        control = Celery(broker=self.farm.env["AIFIXER_REDIS_URL"])
        name = f"aifixer.tasks.{task}"
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                active = control.control.inspect(timeout=0.5).active() or {}
                for running in (t for tasks in active.values() for t in tasks):
                    if running.get("name") == name and running.get("worker_pid"):
                        os.kill(running["worker_pid"], signal.SIGKILL)
                        self.counts["killed"] = task
                        self.notes.append(f"SIGKILL pid {running['worker_pid']} in {task}")
                        return
                time.sleep(0.05)
            self.notes.append(f"{task} was never seen running: nothing killed")
        finally:
            control.close()

    def _person_hotfix(self, sc) -> None:
        """A person replaces the Deployment (PUT): the last healthy image and a marker."""
        kube = self._kube()
        ns, name = self._workload(sc)
        live = kube.get_deployment(ns, name)
        container = live["spec"]["template"]["spec"]["containers"][0]
        container["image"] = self._healthy_image(sc)
        container["env"] = [*(container.get("env") or []), HOTFIX_ENV]
        live["metadata"].pop("managedFields", None)
        kube._json(kube.apps.replace_namespaced_deployment, name, ns, live)  # noqa: SLF001
        self.notes.append("a person replaced the Deployment with a hotfix")

    # -- the end and the checks ------------------------------------------------------

    def _wait_end(self, sc) -> list[IncidentState]:
        deadline = time.monotonic() + self.timeout
        while True:
            states = self.farm.incidents()
            done = len(states) >= self.cell.incidents and all(
                s.closed_at is not None and self._escalated(s) for s in states
            )
            if done:
                return states
            if time.monotonic() >= deadline:
                self.timed_out = True
                return states
            time.sleep(0.25)

    def _escalated(self, s: IncidentState) -> bool:
        if s.outcome in ("fixed", "recovered"):
            return True
        return self.farm.ctx.store.escalation_done(s.incident.id)

    def _check(self, sc, states: list[IncidentState], before: dict[str, Any]) -> list[str]:
        problems = []
        if getattr(self, "timed_out", False):
            problems.append(f"not finished within {self.timeout:.0f} s")
        if len(states) < self.cell.incidents:
            problems.append(f"{len(states)} incident(s), expected {self.cell.incidents}")
        for s in states:
            if s.closed_at is None:
                problems.append(f"incident {s.incident.id} never ended (stage {s.stage})")
                continue
            ok = s.outcome == self.cell.expect or (
                self.cell.expect == "called" and s.outcome == "error"
            )
            if not ok:
                why = s.error or s.pr_error or (s.verification.reason if s.verification else "")
                problems.append(f"outcome {s.outcome}, expected {self.cell.expect} ({why})")
        prs = [p for repo in self.farm.world.forge.repos.values() for p in repo.pulls.values()]
        fixed = [s for s in states if s.outcome == "fixed"]
        for s in fixed:
            mine = [p for p in prs if p.head_ref == f"aifixer/{s.incident.id}"]
            if len(mine) != 1:
                problems.append(f"{len(mine)} pull requests for a fixed incident")
        self.counts["prs"] = len(prs)
        calls = self.farm.world.phone.calls()
        self.counts["calls"] = len(calls)
        for s in states:
            if s.outcome not in ("fixed", "recovered") and not any(
                c.status != "failed" for c in s.calls
            ):
                problems.append(f"incident {s.incident.id} ended {s.outcome} but nobody was called")
        dialled = [(s.incident.id, c.number) for s in states for c in s.calls]
        if len(dialled) != len(set(dialled)):
            problems.append("a number was dialled twice for one incident")
        per_number: dict[str, int] = {}
        for c in calls:
            per_number[c["to"]] = per_number.get(c["to"], 0) + 1
        if any(n > len(states) for n in per_number.values()):
            problems.append(f"more calls than incidents to one number: {per_number}")
        if self.cell.incidents > 1:
            firsts = [s.calls[0].number if s.calls else None for s in states]
            if len(set(firsts)) != 1 or firsts[0] is None:
                problems.append(f"recurrences did not call from the first number: {firsts}")
        for s in states:
            snap = self.farm.ctx.store.snapshot(s.incident.id)
            if snap is not None and s is states[0] and not self.cell.person:
                if manifests.diff(before.get("spec"), snap.manifest.get("spec"), "spec"):
                    problems.append("the rollback snapshot is not the Deployment before the fix")
        if self.cell.person:
            live = self._kube().get_deployment(*self._workload(sc))
            env = live["spec"]["template"]["spec"]["containers"][0].get("env") or []
            if HOTFIX_ENV not in env:
                problems.append("the person's hotfix was reverted")
        return problems

    # -- helpers -----------------------------------------------------------------------

    def _kube(self):
        from aifixer.adapters.kube import Kube
        from aifixer.settings import Settings

        if not hasattr(self, "_kube_client"):
            self._kube_client = Kube(
                Settings(_env_file=None, kubeconfig=self.farm.world.endpoints.kubeconfig)
            )
        return self._kube_client

    @staticmethod
    def _workload(sc) -> tuple[str, str]:
        from .harness import changed_workloads

        return changed_workloads(sc)[0]

    def _deployment(self, sc) -> dict[str, Any]:
        return manifests.clean(self._kube().get_deployment(*self._workload(sc)))

    @staticmethod
    def _healthy_image(sc) -> str:
        for mf in sc.manifests:
            for doc in mf.documents():
                if doc.get("kind") == "Deployment":
                    return doc["spec"]["template"]["spec"]["containers"][0]["image"]
        raise ValueError("no Deployment in the scenario")


def run_cells(
    selected: list[Cell],
    workdir: Path,
    *,
    timeout: float = 300.0,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    rows = []
    for i, cell in enumerate(selected):
        row = CellRun(cell, workdir / f"cell{i:02d}", timeout).run()
        rows.append(row)
        if progress is not None:
            progress(row)
    return rows


# ------------------------------------------------------------------------------ storm


def storm_scenario(n: int) -> scenario_mod.Scenario:
    """`n` copies of the storefront, one replica each, all broken by the same release."""
    base = scenario_mod.load(SCENARIOS / f"{FIXED}.yaml")

    def copies(files: list[scenario_mod.ManifestFile]) -> list[scenario_mod.ManifestFile]:
        out = []
        for i in range(n):
            name = f"storefront-{i:02d}"
            for mf in files:
                text = (
                    mf.yaml.replace("name: storefront", f"name: {name}")
                    .replace("name: storefront}", f"name: {name}}}")
                    .replace("replicas: 3", "replicas: 1")
                    .replace("{cpu: 100m, memory: 96Mi}", "{cpu: 10m, memory: 32Mi}")
                    .replace("{memory: 192Mi}", "{memory: 128Mi}")
                )
                out.append(
                    scenario_mod.ManifestFile(
                        path=mf.path.replace("/storefront/", f"/{name}/"), yaml=text
                    )
                )
        return out

    return base.model_copy(
        update={
            "name": f"storm-{n}",
            "manifests": copies(base.manifests),
            "change": copies(base.change),
        }
    )


def storm(n: int, processes: int, workdir: Path, *, model_s: float = 2.0,
          timeout: float = 1200.0) -> dict[str, Any]:  # fmt: skip
    """`n` workloads failing at once, the model answering in `model_s`: every incident
    must end; throughput with `processes` worker pool processes."""
    sc = storm_scenario(n)
    with FarmRun(sc, workdir, extra_env=CHAOS_ENV, concurrency=processes) as farm:
        url = farm.env["AIFIXER_MODEL_BASE_URL"].removesuffix("/v1")
        requests.post(
            f"{url}/sandbox/faults",
            json=_fault(SERVICE_PATHS["model"], delay=model_s, duration=timeout),
            timeout=5,
        ).raise_for_status()
        deadline = time.monotonic() + timeout
        first = None
        while True:
            states = farm.incidents()
            if states and first is None:
                first = time.monotonic()
            ended = [s for s in states if s.closed_at is not None]
            if len(ended) >= n or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        spent = time.monotonic() - (first or time.monotonic())
        prs = [p for repo in farm.world.forge.repos.values() for p in repo.pulls.values()]
        outcomes: dict[str, int] = {}
        for s in states:
            outcomes[str(s.outcome)] = outcomes.get(str(s.outcome), 0) + 1
        opened = min((s.incident.opened_at for s in states), default=None)
        ends = sorted((s.closed_at - opened).total_seconds() for s in ended) if opened else []
        return {
            "workloads": n,
            "processes": processes,
            "incidents": len(states),
            "ended": len(ended),
            "outcomes": outcomes,
            "prs": len(prs),
            "seconds": round(spent, 1),
            "per_minute": round(len(ended) / spent * 60, 1) if spent else 0.0,
            # When incidents ended, in seconds after the first opened: the first, the
            # median, the last; and how many the watchdog resumed or took over (a queued
            # incident must be neither: only one whose stage was lost or running).
            "ends_s": [round(ends[i], 1) for i in (0, len(ends) // 2, -1)] if ends else [],
            "watchdog": sum(1 for s in states if s.retries.get("watchdog")),
            "ok": len(ended) == n == len(states) and len(prs) == outcomes.get("fixed", 0),
        }
