"""Runs the real farm against the sandbox: the demo and the scenario runner.

For one scenario it starts a private Redis, the stand-in world (with the scenario
loaded and its bad change applied), a model endpoint, and the farm exactly as an
operator runs it — `celery -A aifixer worker`, `celery -A aifixer beat` and
`aifixer web` as separate processes configured only through AIFIXER_* environment
variables — then waits until every incident reached an outcome and every phone call
ended, and reports what happened as the `aifixer scenario run --json` document.

The farm processes never learn they are in a sandbox: they get URLs, a kubeconfig,
tokens and phone numbers.
"""

from __future__ import annotations

import logging
import math
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aifixer import grounding, pipeline
from aifixer.models import IncidentState

from . import timeline
from .scenario import Scenario
from .serve import Site, start_site
from .world import World

log = logging.getLogger("aifixer.harness")

# Farm timings for a sandbox whose clock runs `speed` times faster: short polls and
# windows so a scenario plays in tens of seconds. The verification deadline is wall time
# on a machine that may be loaded (a test run plays several farms on two cores): 90 s
# leaves a slowed rollout room, and a fix that fails still ends sooner, on its
# Deployment's progress deadline (600 simulated seconds: 20 s at speed 30).
FAST_FARM = {
    "AIFIXER_POLL_INTERVAL_S": "2",
    "AIFIXER_SERVICE_POLL_INTERVAL_S": "2",
    "AIFIXER_VERIFY_STABILITY_S": "6",
    "AIFIXER_VERIFY_DEADLINE_S": "90",
    "AIFIXER_VERIFY_POLL_S": "1",
    "AIFIXER_LOKI_LOOKBACK_S": "300",
    "AIFIXER_GATHER_TIMEOUT_S": "5",
}


_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    """The first port the kernel hands to outgoing connections (32768 by default)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def free_port() -> int:
    """A loopback port nothing listens on, for a server started in another process.

    Chosen at random below the kernel's ephemeral range, so that between this check
    and the server's bind no outgoing connection of a busy test machine can take it
    as its source port (bind(("127.0.0.1", 0)) picks from that very range), and never
    the same twice in one process. Where that range starts too low to leave room, the
    kernel picks.
    """
    low = _ephemeral_low()
    if low > 12_000:
        for _ in range(200):
            port = random.randrange(10_000, low)
            if port in _HANDED_OUT:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _HANDED_OUT.add(port)
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _HANDED_OUT.add(port)
    return port


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}") from None
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log_path: Path

    def stop(self, timeout: float = 15) -> None:
        if self.popen.poll() is not None:
            return
        try:
            # The leader first: a Celery worker's warm shutdown stops its own pool.
            self.popen.send_signal(signal.SIGTERM)
            self.popen.wait(timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait(5)


def spawn(name: str, args: list[str], env: dict[str, str], logdir: Path) -> Process:
    logdir.mkdir(parents=True, exist_ok=True)
    path = logdir / f"{name}.log"
    out = path.open("ab")
    popen = subprocess.Popen(
        args,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    out.close()
    return Process(name, popen, path)


# What the farm's Redis user may do, as in docker-compose.yml and deploy/redis.yaml:
# every key and channel, every command but the dangerous ones (FLUSHALL, KEYS, CONFIG,
# DEBUG, SHUTDOWN ...). The default user is off: no connection without the password.
# It keeps every permission, though: Redis (7.0, and Valkey until its PR #3984) replays
# the append-only file as the default user and checks its ACL at each EXEC, so a
# default user with none silently drops every transaction on restart.
REDIS_USER = "aifixer"
REDIS_ACL = ["~*", "&*", "+@all", "-@dangerous"]
REDIS_DEFAULT_USER = ["off", "resetpass", "~*", "&*", "+@all"]


def start_redis(
    workdir: Path,
    *,
    port: int | None = None,
    append_only: bool = False,
    password: str | None = None,
) -> tuple[str, Process]:
    """A private redis-server on a free loopback port (or `port`), password required.

    By default it keeps nothing on disk; with `append_only` it keeps an append-only
    file in `workdir`, as a production Redis does, so it can be restarted mid-incident.
    It runs as production's does: the default user off, one ACL user (`REDIS_USER`,
    `REDIS_ACL`) with `password` (a fresh one unless given). Returns the URL with the
    credentials in it.
    """
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError(
            "redis-server is not installed (./dev installs it: apt-get install redis-server)"
        )
    port = port or free_port()
    password = password or secrets.token_urlsafe(18)
    proc = spawn(
        "redis",
        [
            exe,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "yes" if append_only else "no",
            "--dir",
            str(workdir),
            "--user",
            "default",
            *REDIS_DEFAULT_USER,
            "--user",
            REDIS_USER,
            "on",
            f">{password}",
            *REDIS_ACL,
        ],
        dict(os.environ),
        workdir,
    )
    wait_port(port, 10, proc.popen)
    return f"redis://{REDIS_USER}:{password}@127.0.0.1:{port}/0", proc


def farm_env(
    world: World,
    redis_url: str,
    model_url: str,
    model_name: str,
    web_port: int,
    workdir: Path,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    ep = world.endpoints
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIFIXER_", "TWILIO_"))}
    env.update(FAST_FARM)
    env.update(
        {
            "AIFIXER_REDIS_URL": redis_url,
            "AIFIXER_STATE_DIR": str(workdir),
            "AIFIXER_KUBECONFIG": ep.kubeconfig,
            "AIFIXER_LOKI_URL": ep.loki,
            "AIFIXER_MODEL_BASE_URL": model_url,
            "AIFIXER_MODEL_NAME": model_name,
            "AIFIXER_GITHUB_API_URL": ep.github_api,
            "AIFIXER_GITHUB_TOKEN": ep.github_token,
            "AIFIXER_GITHUB_REPO": ep.gitops_repo,
            "AIFIXER_GIT_CLONE_URL": ep.gitops_clone_url,
            "AIFIXER_TWILIO_ACCOUNT_SID": ep.twilio_account_sid,
            "AIFIXER_TWILIO_AUTH_TOKEN": ep.twilio_auth_token,
            "AIFIXER_TWILIO_FROM_NUMBER": ep.twilio_from,
            "AIFIXER_TWILIO_API_BASE_URL": ep.twilio_base,
            "AIFIXER_PUBLIC_BASE_URL": f"http://127.0.0.1:{web_port}",
            "AIFIXER_ONCALL_NUMBERS": ",".join(ep.oncall_numbers),
            "AIFIXER_CALL_FILE": str(workdir / "calls.jsonl"),
            "AIFIXER_INCIDENTS_FILE": str(workdir / "incidents.jsonl"),
            "AIFIXER_WEB_PORT": str(web_port),
            "AIFIXER_WEB_TOKEN": secrets.token_urlsafe(24),
            "HOME": str(workdir),  # git and kubectl caches stay in the run's directory
        }
    )
    spec = world.scenario.registry if world.scenario is not None else None
    if spec is not None:  # the scenario's repair asks the sandbox registry
        env.update(
            {
                "AIFIXER_REGISTRIES": spec.host,
                "AIFIXER_REGISTRY_URLS": f"{spec.host}={ep.registry}",
                "AIFIXER_REGISTRY_CREDENTIALS": world.registry.docker_config(),
            }
        )
    env.update(extra or {})
    return env


def start_farm(
    env: dict[str, str],
    workdir: Path,
    workers: int = 1,
    concurrency: int = 2,
    python: Sequence[str] | None = None,
) -> list[Process]:
    """web, beat, `workers` farm workers, and one worker for the memory queue.

    The memory worker is separate, as in docker-compose.yml: it alone loads the
    embedding model, so the farm workers stay small. `python` is the interpreter (and
    its options) the farm runs with: this one's by default, or another installation's
    (`[venv/bin/python, "-I"]`: the farm as `pip install aifixer` has it).
    """
    py = list(python or [sys.executable])
    logs = workdir / "logs"
    celery = [*py, "-m", "celery", "-A", "aifixer"]

    def worker(name: str, queues: str, n: int) -> Process:
        return spawn(
            name,
            [
                *celery,
                "worker",
                "--loglevel",
                "INFO",
                "--pool",
                "prefork",
                "--concurrency",
                str(n),
                "-Q",
                queues,
                "-n",
                f"{name}@%h",
            ],
            env,
            logs,
        )

    procs = [
        spawn(
            "web",
            [
                *py,
                "-m",
                "aifixer.cli",
                "web",
                "--host",
                "127.0.0.1",
                "--port",
                env["AIFIXER_WEB_PORT"],
            ],
            env,
            logs,
        ),
        spawn(
            "beat",
            [*celery, "beat", "--loglevel", "INFO", "--schedule", str(workdir / "beat-schedule")],
            env,
            logs,
        ),
        worker("memory0", "memory", 1),
    ]
    procs += [
        worker(f"worker{i}", "polls,model,cluster,notify,scaling", concurrency)
        for i in range(workers)
    ]
    wait_port(int(env["AIFIXER_WEB_PORT"]), 30, procs[0].popen)
    return procs


# The rules the farm's Prometheus loads in production, read from this repository's deploy/
# (sandbox/aifixer_sandbox/harness.py -> the checkout's root), so the sandbox plays them.
MONITORING_RULES = (
    Path(__file__).resolve().parents[2] / "deploy" / "monitoring" / "cpu-levels-rules.yaml"
)


def monitoring_env(sc: Scenario, speed: float, prometheus_url: str) -> dict[str, str]:
    """The farm's Prometheus and forecast-scaling settings at this world's time scale.

    The farm reads time in wall seconds (Prometheus stores wall time); the sandbox's load
    runs `speed` times faster. A real deployment's defaults — a pass a minute, 15 s steps,
    a 2 m rate window, 30 minutes (or three seasons) of history — shrink by `speed`,
    kept above what one-second scrapes can resolve.
    """
    return {"AIFIXER_PROMETHEUS_URL": prometheus_url} | {
        f"AIFIXER_{k.upper()}": f"{v:g}" if isinstance(v, float) else v
        for k, v in scaled_scaling(sc.season_seconds(), speed).items()
    }


def scaled_scaling(season_s: float, speed: float, scrape_s: float = 1.0) -> dict[str, Any]:
    """The farm's scaling settings (their defaults) for a load `speed` times faster with a
    season of `season_s` simulated seconds, in wall seconds; `scrape_s` the wall seconds
    between scrapes: the rate window spans at least four, a step at least one second.
    Three seasons of history for a season shorter than a day.
    """
    from aifixer.scaling.forecast import duration_s
    from aifixer.settings import Settings

    default = {k: f.default for k, f in Settings.model_fields.items()}
    history = default["scaling_history_s"]
    if season_s < 86_400:
        history = max(history, 3 * season_s)
    window = max(4 * math.ceil(scrape_s),
                 round(duration_s(default["scaling_rate_window"], "rate window") / speed))  # fmt: skip
    return {
        "scaling_interval_s": max(1.0, default["scaling_interval_s"] / speed),
        "scaling_step_s": max(1.0, default["scaling_step_s"] / speed),
        "scaling_rate_window": f"{window}s",
        "scaling_history_s": history / speed,
        "scaling_season_s": season_s / speed,
        "scaling_max_gap_s": max(10.0, default["scaling_max_gap_s"] / speed),
    }


def start_monitoring(
    sc: Scenario, world: World, env: dict[str, str], workdir: Path, speed: float
) -> tuple[dict[str, str], list[Process]]:
    """A real Alertmanager posting to the farm's web, and a real Prometheus scraping the
    world with deploy/'s CPU-level rules (windows and holds at this time scale) and the
    scenario's past load backfilled. Returns the farm's extra settings and the processes.
    """
    from . import promstack

    port = env["AIFIXER_WEB_PORT"]
    am_url, am = promstack.start_alertmanager(
        workdir / "alertmanager",
        f"http://127.0.0.1:{port}/alertmanager",
        token=env["AIFIXER_WEB_TOKEN"],
        group_wait=f"{max(1, round(30 / speed))}s",
        group_interval=f"{max(1, round(30 / speed))}s",
    )
    try:
        rules = promstack.rule_file_from(
            MONITORING_RULES,
            workdir / "prometheus-rules.yml",
            window=f"{max(4, round(120 / speed))}s",
            hold=f"{max(2, round(120 / speed))}s",
        )
        history = world_history(world) if _history_seconds(sc) else None
        prom_url, prom = promstack.start_prometheus(
            workdir / "prometheus",
            world.endpoints.metrics,
            rule_files=[rules],
            alertmanager_url=am_url,
            history=history,
        )
    except BaseException:
        am.stop()
        raise
    return monitoring_env(sc, speed, prom_url), [am, prom]


def world_history(world: World, timeout: float = 120) -> str:
    """The world's past load as OpenMetrics for backfilling, read on the world's loop (it
    reads the live cluster state), labelled as Prometheus scrapes the world's metrics."""
    instance = urlsplit(world.endpoints.metrics).netloc

    async def read() -> str:
        return world.metrics.history(instance)

    return world.call(read, timeout=timeout)


def _history_seconds(sc: Scenario) -> float:
    return max((i.load.history_seconds for i in sc.images.values() if i.load), default=0.0)


def start_model_stub(world: World) -> tuple[str, str]:
    """The stand-in model endpoint, on the world's loop. Returns (base_url, model name)."""
    from . import model_stub

    site = world.call(start_site, Site("model", model_stub.make_app()))
    return f"{site.url}/v1", model_stub.MODEL_ID


def changed_workloads(sc: Scenario) -> list[tuple[str, str]]:
    """The workloads (Deployments, StatefulSets, DaemonSets) that should each end in an
    incident, and only those: a healthy neighbour is never waited for
    (`Scenario.failing_workloads`)."""
    return sc.failing_workloads()


def incident_report(state: IncidentState) -> dict[str, Any]:
    inc = state.incident
    pr = state.pull_request
    return {
        "id": inc.id,
        "fingerprint": inc.fingerprint,
        "stage": state.stage,
        "namespace": inc.workload.namespace,
        "workload": inc.workload.name,
        "failure_class": inc.failure_class,
        "opened_at": inc.opened_at.isoformat(),
        # What opened it: source, reason and when each signal was seen (a reopened
        # incident shows here what it saw).
        "signals": [
            f"{s.source}:{s.reason}:{s.pod or '-'}@{s.observed_at.isoformat()}" for s in inc.signals
        ],
        "outcome": state.outcome,
        "changed_paths": [c.path for c in state.apply.changes] if state.apply else [],
        "pull_request": {"number": pr.number, "url": pr.url, "branch": pr.branch} if pr else None,
        "calls": [
            {
                "time": c.time.isoformat(),
                "number": c.number,
                "speech": c.speech,
                "can_intervene": c.can_intervene,
            }
            for c in state.calls
        ],
        "diagnosis": grounding.shown(state)[0].summary if state.diagnosis else None,
        "verification": state.verification.reason if state.verification else None,
        "rejections": [r.model_dump() for r in state.rejections],
        "error": state.error,
        "stages": timeline.passed(state),
    }


def _in_order(wanted: list[str], seen: list[str]) -> bool:
    """`wanted` is a subsequence of `seen`."""
    it = iter(seen)
    return all(any(v == w for v in it) for w in wanted)


def _finished(ctx, state: IncidentState) -> bool:
    if state.outcome is None:
        return False
    if state.outcome in ("fixed", "recovered"):
        return True
    return ctx.store.escalation_done(state.incident.id) or not ctx.settings.oncall_numbers


class FarmRun:
    """One scenario's world and the farm running against it, as a context manager.

    `wait()` blocks until every changed workload has an incident and every incident
    is finished (or the timeout passes); the world stays up until the `with` block
    ends, so a caller can inspect the cluster, the forge and the call file.
    """

    def __init__(
        self,
        sc: Scenario,
        workdir: Path,
        *,
        speed: float = 30.0,
        model: Callable[[World], tuple[str, str]] = start_model_stub,
        workers: int = 1,
        concurrency: int = 2,
        extra_env: dict[str, str] | None = None,
        append_only_redis: bool = False,
        before_farm: Callable[[FarmRun], None] | None = None,
        python: Sequence[str] | None = None,
    ) -> None:
        self.scenario = sc
        self.python = python  # the farm's interpreter: see start_farm
        # Called once the world is up and the farm's settings are known, before any farm
        # process starts: what must be read or injected before the farm can act.
        self.before_farm = before_farm
        self.concurrency = concurrency
        self.append_only_redis = append_only_redis
        self.redis_proc: Process | None = None
        self.workdir = workdir
        self.speed = speed
        self.model = model
        self.workers = workers
        self.extra_env = extra_env
        self.model_name = ""
        self.world: World | None = None
        self.procs: list[Process] = []
        self.ctx = None
        self.env: dict[str, str] = {}
        self._stack = ExitStack()
        self._started = 0.0
        # Label values seen on each pod, in order: (namespace, deployment, pod) -> values.
        self.levels_seen: dict[tuple[str, str, str], list[str]] = {}
        if sc.speed is not None:
            self.speed = sc.speed

    def __enter__(self) -> FarmRun:
        from aifixer.pipeline import Context
        from aifixer.settings import Settings

        self._started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            redis_url, self.redis_proc = start_redis(
                self.workdir, append_only=self.append_only_redis
            )
            self._stack.callback(lambda: self.redis_proc.stop())
            self.world = World(self.scenario, self.workdir / "world", speed=self.speed)
            self._stack.callback(self.world.stop)
            self.world.start()
            model_url, self.model_name = self.model(self.world)
            self.env = farm_env(
                self.world,
                redis_url,
                model_url,
                self.model_name,
                free_port(),
                self.workdir,
                self.extra_env,
            )
            if self.scenario.monitored:
                extra, monitors = start_monitoring(
                    self.scenario, self.world, self.env, self.workdir, self.speed
                )
                for p in monitors:
                    self._stack.callback(p.stop)
                self.env.update(extra)
            if self.before_farm is not None:
                self.before_farm(self)
            self.procs = start_farm(
                self.env,
                self.workdir,
                workers=self.workers,
                concurrency=self.concurrency,
                python=self.python,
            )
            for p in self.procs:
                self._stack.callback(p.stop)
            self.ctx = Context(
                settings=Settings(
                    _env_file=None,
                    redis_url=redis_url,
                    oncall_numbers=self.world.endpoints.oncall_numbers,
                    call_file=Path(self.env["AIFIXER_CALL_FILE"]),
                )
            )
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def restart_redis(self, down_s: float = 1.0) -> None:
        """Stop Redis (it writes its append-only file), wait, start it again on its port."""
        url = urlsplit(self.env["AIFIXER_REDIS_URL"])
        self.redis_proc.stop()
        time.sleep(down_s)
        _, self.redis_proc = start_redis(
            self.workdir, port=url.port, append_only=self.append_only_redis, password=url.password
        )

    def incidents(self) -> list[IncidentState]:
        from aifixer.pipeline import all_incidents

        return all_incidents(self.ctx)

    def finished(self, states: list[IncidentState]) -> bool:
        seen = {(s.incident.workload.namespace, s.incident.workload.name) for s in states}
        return (
            set(changed_workloads(self.scenario)) <= seen
            and all(_finished(self.ctx, s) for s in states)
            and not self.levels_missing()
            and not self.scaling_missing()
        )

    def watch_levels(self) -> None:
        """Note each pod's CPU-level label when it changes."""
        key = self.ctx.settings.cpu_level_label
        for want in self.scenario.expect.levels:
            labels = self.world.pod_labels(want.namespace, want.deployment, key)
            for pod, value in labels.items():
                seen = self.levels_seen.setdefault((want.namespace, want.deployment, pod), [])
                if value is not None and (not seen or seen[-1] != value):
                    seen.append(value)

    def levels_missing(self) -> list[str]:
        """The expected label sequences no pod has passed through yet."""
        missing = []
        for want in self.scenario.expect.levels:
            pods = [v for (ns, dep, _), v in self.levels_seen.items()
                    if (ns, dep) == (want.namespace, want.deployment)]  # fmt: skip
            if not any(_in_order(want.sequence, seen) for seen in pods):
                missing.append(f"{want.namespace}/{want.deployment}: {'→'.join(want.sequence)}")
        return missing

    def decisions(self, namespace: str, name: str) -> list[dict[str, Any]]:
        from aifixer.scaling import scaler

        return scaler.decisions(self.ctx.redis, namespace, name)

    def scaling_missing(self) -> list[str]:
        missing = []
        for want in self.scenario.expect.scaling:
            made = self.decisions(want.namespace, want.deployment)
            # A refused write (Conflict) is recorded with replicas_after == replicas_before.
            applied = [d for d in made if d["mode"] == "apply"]
            if want.scale_out and not any(
                d["replicas_after"] > d["replicas_before"] for d in applied
            ):
                missing.append(f"{want.namespace}/{want.deployment}: scale-out")
            if want.scale_in and not any(
                d["replicas_after"] < d["replicas_before"] for d in applied
            ):
                missing.append(f"{want.namespace}/{want.deployment}: scale-in")
        return missing

    def wait(
        self, timeout: float, progress: Callable[[list[dict[str, Any]]], None] | None = None
    ) -> list[IncidentState]:
        deadline = time.monotonic() + timeout
        while True:
            states = self.incidents()
            self.watch_levels()
            if progress is not None:
                progress([incident_report(s) for s in states])
            if self.finished(states):
                # Read again: `finished` looks at the escalation now, and the records
                # read before it may miss the last call (written before it ended).
                return self.incidents()
            if time.monotonic() >= deadline:
                return states
            for p in self.procs:
                if p.popen.poll() is not None:
                    raise RuntimeError(
                        f"{p.name} exited with {p.popen.returncode}; see {p.log_path}"
                    )
            time.sleep(0.5)

    def settle(self, states: list[IncidentState], timeout: float = 120.0) -> list[IncidentState]:
        """Wait (bounded) for the work an outcome leaves behind: the model's explanation,
        which goes into a fixed incident's pull request after it was opened.

        Time to outcome is not touched (the records' `closed_at` is when each ended);
        this only lets the pull requests be read as their reviewers will read them, and
        keeps a model still writing from running into the next scenario.
        """
        deadline = time.monotonic() + timeout
        while any(not s.explained and pipeline.may_explain_pr(s) for s in states):
            if time.monotonic() >= deadline:
                break
            time.sleep(0.5)
            states = self.incidents()
        return states

    def report(self, states: list[IncidentState]) -> dict[str, Any]:
        expect = self.scenario.expect
        return {
            "scenario": self.scenario.name,
            "model": self.model_name,
            "incidents": [incident_report(s) for s in states],
            "levels": [
                {"namespace": ns, "deployment": dep, "pod": pod, "values": values}
                for (ns, dep, pod), values in sorted(self.levels_seen.items())
            ],
            "scaling": {
                f"{w.namespace}/{w.deployment}": self.decisions(w.namespace, w.deployment)
                for w in expect.scaling
            },
            "missing": self.levels_missing() + self.scaling_missing(),
            "duration_s": round(time.monotonic() - self._started, 2),
            "complete": self.finished(states),
            "logs": str(self.workdir / "logs"),
        }


def run_scenario(
    sc: Scenario,
    workdir: Path,
    *,
    speed: float = 30.0,
    timeout: float = 240.0,
    model: Callable[[World], tuple[str, str]] = start_model_stub,
    progress: Callable[[list[dict[str, Any]]], None] | None = None,
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
    keep: Callable[[FarmRun, list[IncidentState], dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Play one scenario end to end with the real farm; returns the JSON report.

    `keep(run, states, report)`, if given, is called while the world is still up: what
    it wants of the forge, the phone or the cluster it must read then.
    """
    with FarmRun(
        sc, workdir, speed=speed, model=model, workers=workers, extra_env=extra_env
    ) as run:
        states = run.settle(run.wait(timeout, progress))
        report = run.report(states)
        if keep is not None:
            keep(run, states, report)
        return report


def model_choice(name: str) -> tuple[Callable[[World], tuple[str, str]], dict[str, str]]:
    """The model starter and farm settings for `--model local|stub`.

    local: the embedded qwen2.5-coder-1.5b server (one per process, reused); stub: the
    stand-in endpoint, a test double that answers from the playbook candidates.
    """
    if name == "local":
        from aifixer.localmodel import FARM_ENV, start_local_model

        return start_local_model, dict(FARM_ENV)
    if name == "stub":
        return start_model_stub, {}
    raise ValueError(f"unknown model {name!r}: expected local or stub")
