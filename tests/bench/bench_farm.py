"""The farm's own costs on the sandbox with the stub model: what aifixer adds on top of
the cluster, Loki, the forge and the model it talks to.

Four figures, each against its goal (exit 1 when one is missed):

1. Orchestration overhead per incident (goal <= 50 ms). The pipeline's steps run
   in-process, exactly as the tasks call them, against a scenario's world (private
   Redis, the stand-ins, the stub model). Every public method of every adapter on the
   pipeline's Context is wrapped to add up the wall time spent inside it (outermost
   call only, so an adapter method calling another is counted once). Each stage is
   timed from the poll that opened the incident to `finalize`, and between stages the
   record makes the round trip a task makes around its step (saved to Redis with the
   stage reached, loaded again by the next task; the message itself carries only the
   id). Overhead = stage time - adapter time: the farm's own CPU, Redis and file
   work. Waiting between verification checks is not a stage and is not counted. The
   median over several incidents (different scenarios) is reported.
   Separately, the Celery hop cost: with the real farm running (worker, beat, web as
   processes), a receiver on the broker collects Celery's task events; for each task
   sent without a countdown, hop = task-started - task-sent (both wall-clock
   timestamps from this machine). Median and p95, all tasks together and per task.
2. Detection latency (goal <= poll interval + 1 s). The world starts healthy, the
   farm runs with its beat at a known poll interval; once the first polls have run,
   the scenario's breaking change is applied and the time from the API server
   holding it until the incident is in Redis (checked every 10 ms) is taken. Median over several scenarios.
3. A storm of 10,000 identical error lines (goal: 1 incident). Right after a breaking
   change, 10,000 copies of one error line from a pod of the broken Deployment are
   pushed to the world's Loki over HTTP; the polls run until the incident ends and
   a few intervals more; the incidents for that workload are counted.
4. Worker RSS (goal <= 200 MB per process). VmRSS of the Celery worker's main process
   and of each pool child, read from /proc after the storm run, the heaviest; the sum
   is printed too.

Loopback only; every wait is bounded.

    .venv/bin/python tests/bench/bench_farm.py [--incidents 5] [--detections 3]
"""

from __future__ import annotations

import argparse
import functools
import inspect
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import requests
from celery import Celery

from aifixer import pipeline
from aifixer.models import IncidentState
from aifixer.settings import Settings
from aifixer_sandbox import scenario as scenario_mod
from aifixer_sandbox.harness import (
    FAST_FARM,
    farm_env,
    free_port,
    start_farm,
    start_model_stub,
    start_redis,
)
from aifixer_sandbox.world import World

GOAL_OVERHEAD_MS = 50.0
POLL_INTERVAL_S = float(FAST_FARM["AIFIXER_POLL_INTERVAL_S"])
GOAL_DETECTION_S = POLL_INTERVAL_S + 1.0
GOAL_STORM_INCIDENTS = 1
GOAL_RSS_MB = 200.0
STORM_LINES = 10_000
STORM_LINE = "ERROR upstream connect error: connection refused (db.internal:5432)"
SPEED = 30.0

# Scenarios broken by a change (so they start healthy) that end fixed: the in-process
# run needs no phone callbacks, and detection needs a healthy start.
SCENARIOS = (
    "image-typo-storefront",
    "oom-report-api",
    "command-typo-billing-worker",
    "missing-env-orders-api",
    "readiness-port-catalog",
    "liveness-path-search",
    "configmap-key-checkout",
)
INCIDENT_TIMEOUT_S = 90.0


def scenario(name: str) -> scenario_mod.Scenario:
    return scenario_mod.load(scenario_mod.bundled_dir() / f"{name}.yaml")


def settings_from_env(env: dict[str, str]) -> Settings:
    """The Settings a farm process builds from these AIFIXER_* variables."""
    prefix = "AIFIXER_"
    return Settings(
        _env_file=None,
        **{k[len(prefix) :].lower(): v for k, v in env.items() if k.startswith(prefix)},
    )


# -- 1. orchestration overhead, in-process ------------------------------------------------


class AdapterClock:
    """Adds up the wall time spent inside the adapters' public methods."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._depth = 0

    def instrument(self, ctx: pipeline.Context) -> None:
        """Wrap every adapter the Context builds, and the adapters those objects hold.

        Incident memory is logic (its Redis work is the farm's) around an embedding
        adapter (a model, like the chat model): only the adapter is wrapped.
        """
        for name, member in vars(pipeline.Context).items():
            if not isinstance(member, cached_property) or name == "redis":
                continue
            built = getattr(ctx, name)
            if built is None:
                continue
            for obj in (built, *getattr(built, "__dict__", {}).values()):
                if type(obj).__module__.startswith("aifixer.adapters."):
                    self._wrap(obj)

    def _wrap(self, adapter: Any) -> None:
        for attr, _ in inspect.getmembers(type(adapter), inspect.isfunction):
            if not attr.startswith("_"):
                setattr(adapter, attr, self._timed(getattr(adapter, attr)))

    def _timed(self, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return method(*args, **kwargs)
            self._depth += 1
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self._depth -= 1

        return timed


@dataclass
class StageMeter:
    """Wall time of the pipeline's stages, and how much of it the adapters took."""

    adapters: AdapterClock
    total: float = 0.0
    adapter: float = 0.0
    by_stage: dict[str, float] = field(default_factory=dict)  # stage -> overhead seconds

    def run(self, fn: Callable[..., Any], *args: Any, name: str | None = None) -> Any:
        before, started = self.adapters.seconds, time.perf_counter()
        try:
            return fn(*args)
        finally:
            total = time.perf_counter() - started
            adapter = self.adapters.seconds - before
            self.total += total
            self.adapter += adapter
            stage = name or fn.__name__
            self.by_stage[stage] = self.by_stage.get(stage, 0.0) + total - adapter

    def add(self, other: StageMeter) -> None:
        self.total += other.total
        self.adapter += other.adapter
        for stage, seconds in other.by_stage.items():
            self.by_stage[stage] = self.by_stage.get(stage, 0.0) + seconds

    def hop(self, ctx: pipeline.Context, state: IncidentState, stage: str) -> IncidentState:
        """What tasks do around a step: save the record with its stage, load it again."""

        def round_trip() -> IncidentState:
            pipeline.save(ctx, state, stage)
            return pipeline.load(ctx, state.incident.id)

        return self.run(round_trip, name="hops")

    @property
    def overhead_ms(self) -> float:
        return (self.total - self.adapter) * 1000


def first_incident(ctx: pipeline.Context, meter: StageMeter) -> IncidentState:
    """Poll until an incident opens; only the poll that opened it is counted."""
    deadline = time.monotonic() + INCIDENT_TIMEOUT_S
    while time.monotonic() < deadline:
        for poll in (pipeline.poll_events, pipeline.poll_loki):
            trial = StageMeter(meter.adapters)
            opened = trial.run(poll, ctx)
            if opened:
                meter.add(trial)
                return pipeline.load(ctx, opened[0].id)
        time.sleep(0.2)
    raise TimeoutError("no incident opened")


def remediate(ctx: pipeline.Context, meter: StageMeter, state: IncidentState) -> IncidentState:
    """The chain the tasks run, in-process: stages and record round trips metered, waits not."""
    for stage, reached in (
        (pipeline.diagnose, "diagnosed"),
        (pipeline.patch, "patched"),
        (pipeline.apply, "applied"),
    ):
        state = meter.hop(ctx, meter.run(stage, ctx, state), reached)
    deadline = time.monotonic() + INCIDENT_TIMEOUT_S
    while True:
        try:
            state = meter.run(pipeline.verify, ctx, state)
            break
        except pipeline.NotYet as wait:
            if time.monotonic() > deadline:
                raise TimeoutError("verification never decided") from None
            # the retry is a new message: the task loads the record again
            state = meter.run(pipeline.load, ctx, state.incident.id, name="hops")
            time.sleep(wait.countdown)
    state = meter.hop(ctx, state, "verified")
    state = meter.hop(ctx, meter.run(pipeline.open_pr, ctx, state), "verified")
    state = meter.hop(ctx, meter.run(pipeline.call_oncall, ctx, state), "verified")
    return meter.run(pipeline.finalize, ctx, state)


def overhead_of(name: str, workdir: Path) -> tuple[StageMeter, str | None]:
    with ExitStack() as stack:
        redis_url, redis_proc = start_redis(workdir)
        stack.callback(redis_proc.stop)
        world = World(scenario(name), workdir / "world", speed=SPEED)
        stack.callback(world.stop)
        world.start()
        model_url, model_name = start_model_stub(world)
        env = farm_env(world, redis_url, model_url, model_name, free_port(), workdir)
        ctx = pipeline.Context(settings=settings_from_env(env))
        clock = AdapterClock()
        clock.instrument(ctx)
        meter = StageMeter(clock)
        final = remediate(ctx, meter, first_incident(ctx, meter))
        return meter, final.outcome


def measure_overhead(names: list[str], base: Path) -> list[float]:
    print(f"1. orchestration overhead per incident (in-process, goal <= {GOAL_OVERHEAD_MS:.0f} ms)")
    out = []
    for name in names:
        meter, outcome = overhead_of(name, base / f"overhead-{name}")
        print(
            f"   {name:<30} {outcome or '-':<8} stages {meter.total * 1000:8.1f} ms"
            f"  adapters {meter.adapter * 1000:8.1f} ms  overhead {meter.overhead_ms:6.1f} ms"
        )
        stages = sorted(meter.by_stage.items(), key=lambda kv: -kv[1])
        print("      " + ", ".join(f"{stage} {sec * 1000:.1f}" for stage, sec in stages))
        out.append(meter.overhead_ms)
    return out


# -- the real farm -----------------------------------------------------------------------


class TaskEvents:
    """Celery task events from the broker, collected on a thread: sent and started times."""

    def __init__(self, broker_url: str) -> None:
        self.app = Celery(broker=broker_url)
        self.sent: dict[str, dict[str, Any]] = {}
        self.started: dict[str, float] = {}
        self._receiver = None
        self._thread = threading.Thread(target=self._run, name="task-events", daemon=True)
        self._ready = threading.Event()

    def _on_sent(self, event: dict[str, Any]) -> None:
        self.sent[event["uuid"]] = event

    def _on_started(self, event: dict[str, Any]) -> None:
        self.started[event["uuid"]] = event["timestamp"]

    def _run(self) -> None:
        with self.app.connection() as conn:
            self._receiver = self.app.events.Receiver(
                conn, handlers={"task-sent": self._on_sent, "task-started": self._on_started}
            )
            self._ready.set()
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def start(self) -> TaskEvents:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(5)

    def hops(self) -> dict[str, list[float]]:
        """Task name -> enqueue-to-start seconds, for tasks sent without a countdown."""
        out: dict[str, list[float]] = {}
        for uuid, sent in self.sent.items():
            if uuid in self.started and not sent.get("eta"):
                name = sent.get("name", "?").rsplit(".", 1)[-1]
                out.setdefault(name, []).append(self.started[uuid] - sent["timestamp"])
        return out


@dataclass
class Farm:
    world: World
    ctx: pipeline.Context
    procs: list
    events: TaskEvents
    workload: tuple[str, str]
    broken_at: float = float("inf")  # wall-clock time the breaking change was sent
    hops: dict[str, list[float]] = field(default_factory=dict)

    def incidents(self) -> list[IncidentState]:
        return pipeline.all_incidents(self.ctx)

    def since_fault(self) -> list[IncidentState]:
        """The workload's incidents opened since the breaking change.

        A healthy start may open (and close) incidents of its own, e.g. from readiness
        probes failing while pods start: they are not what is measured here.
        """
        key = "/".join(self.workload)
        return [
            s
            for s in self.incidents()
            if s.incident.workload.key == key and s.incident.opened_at.timestamp() >= self.broken_at
        ]

    def wait_settled(self, timeout: float = 60) -> None:
        """Until the polls have run and whatever they opened on the healthy start ended.

        The first poll reads the Warning events of the pods' start-up (readiness probes
        failing until the app listens) and may open an incident that ends `recovered`;
        a fault while it is still open would be handled under it, not detected anew.
        """
        keys = [self.ctx.store.key("cursor", "events"), self.ctx.store.key("cursor", "loki")]
        self._until(lambda: all(self.ctx.redis.exists(k) for k in keys), timeout, "first polls")
        time.sleep(POLL_INTERVAL_S)
        self._until(lambda: all(s.outcome for s in self.incidents()), timeout, "quiet farm")

    def wait_opened(self, timeout: float) -> float:
        self._until(self.since_fault, timeout, "incident", step=0.01)
        return time.monotonic()

    def wait_closed(self, timeout: float) -> None:
        self._until(
            lambda: (s := self.since_fault()) and all(x.outcome for x in s), timeout, "outcome"
        )

    def _until(self, done: Callable[[], Any], timeout: float, what: str, step: float = 0.2) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            for p in self.procs:
                if p.popen.poll() is not None:
                    raise RuntimeError(f"{p.name} exited; see {p.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} after {timeout:.0f}s")
            time.sleep(step)

    def worker_rss_mb(self) -> dict[str, float]:
        """VmRSS of each worker's main process and of its pool children, in MB."""
        out = {}
        for p in self.procs:
            if p.name.startswith("worker"):
                out[f"{p.name} main"] = rss_mb(p.popen.pid)
                for i, child in enumerate(children(p.popen.pid), start=1):
                    out[f"{p.name} child {i}"] = rss_mb(child)
        return out


@contextmanager
def healthy_farm(name: str, workdir: Path) -> Iterator[Farm]:
    """A scenario's world in its healthy state, the farm running against it."""
    sc = scenario(name)
    with ExitStack() as stack:
        redis_url, redis_proc = start_redis(workdir)
        stack.callback(redis_proc.stop)
        world = World(sc, workdir / "world", speed=SPEED)
        stack.callback(world.stop)
        world.start(apply_change=False)
        model_url, model_name = start_model_stub(world)
        env = farm_env(world, redis_url, model_url, model_name, free_port(), workdir)
        events = TaskEvents(redis_url).start()
        stack.callback(events.stop)
        procs = start_farm(env, workdir)
        for p in procs:
            stack.callback(p.stop)
        doc = next(d for mf in sc.change for d in mf.documents() if d["kind"] == "Deployment")
        farm = Farm(
            world,
            pipeline.Context(settings=settings_from_env(env)),
            procs,
            events,
            (doc["metadata"].get("namespace", "default"), doc["metadata"]["name"]),
        )
        yield farm
        farm.hops = events.hops()


def break_it(farm: Farm) -> float:
    """Apply the scenario's breaking change; returns when the API server holds it.

    The world commits the change to the GitOps repository first, then applies it: the
    fault exists from the apply on, so the clock starts when the call returns.
    """
    farm.broken_at = time.time()
    farm.world.call(farm.world.apply_change)
    return time.monotonic()


def measure_detection(names: list[str], base: Path) -> tuple[list[float], dict[str, list[float]]]:
    print(
        f"2. detection latency, fault -> incident queued (goal <= {GOAL_DETECTION_S:.1f} s;"
        f" poll interval {POLL_INTERVAL_S:.0f} s)"
    )
    latencies: list[float] = []
    hops: dict[str, list[float]] = {}
    for name in names:
        with healthy_farm(name, base / f"detect-{name}") as farm:
            farm.wait_settled()
            earlier = len(farm.incidents())
            # At a random phase of the poll cycle: settling ends in step with the polls.
            time.sleep(random.uniform(0, POLL_INTERVAL_S))  # noqa: S311 - not a secret
            fault = break_it(farm)
            latency = max(0.0, farm.wait_opened(timeout=POLL_INTERVAL_S * 10) - fault)
            farm.wait_closed(INCIDENT_TIMEOUT_S)  # the whole chain, for the hop figures
        latencies.append(latency)
        for task, values in farm.hops.items():
            hops.setdefault(task, []).extend(values)
        note = f"  ({earlier} incident(s) opened on the healthy start)" if earlier else ""
        print(f"   {name:<30} {latency:6.2f} s{note}")
    return latencies, hops


def push_storm(farm: Farm) -> None:
    """10,000 copies of one error line from a pod of the broken Deployment, over HTTP."""
    ns, name = farm.workload
    dep = farm.ctx.kube.get_deployment(ns, name)
    pod = farm.ctx.kube.pods_of(dep)[0]
    start = time.time_ns()
    values = [[str(start + i * 1000), STORM_LINE] for i in range(STORM_LINES)]
    labels = {
        "namespace": ns,
        "pod": pod["metadata"]["name"],
        "container": pod["spec"]["containers"][0]["name"],
        "job": f"{ns}/storm",
    }
    resp = requests.post(
        farm.world.endpoints.loki + "/loki/api/v1/push",
        json={"streams": [{"stream": labels, "values": values}]},
        timeout=30,
    )
    resp.raise_for_status()


def measure_storm(name: str, base: Path) -> tuple[int, dict[str, float], dict[str, float]]:
    print(
        f"3. incidents for a storm of {STORM_LINES:,} identical error lines (goal {GOAL_STORM_INCIDENTS})"
    )
    with healthy_farm(name, base / f"storm-{name}") as farm:
        farm.wait_settled()
        idle = farm.worker_rss_mb()
        break_it(farm)
        push_storm(farm)
        farm.wait_opened(timeout=POLL_INTERVAL_S * 10)
        farm.wait_closed(INCIDENT_TIMEOUT_S)
        time.sleep(POLL_INTERVAL_S * 3)  # polls after the end must not reopen it
        count = len(farm.since_fault())
        rss = farm.worker_rss_mb()
    print(f"   {name:<30} {count} incident(s)")
    return count, idle, rss


# -- /proc -------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return sorted(out)


# -- report ------------------------------------------------------------------------------


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-len(ordered) * 95 // 100) - 1)]


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--incidents", type=int, default=5, help="in-process incidents (1-7)")
    parser.add_argument("--detections", type=int, default=3, help="detection runs (1-7)")
    args = parser.parse_args()
    n_inc = max(1, min(args.incidents, len(SCENARIOS)))
    n_det = max(1, min(args.detections, len(SCENARIOS)))
    with tempfile.TemporaryDirectory(prefix="aifixer-bench-farm-") as tmp:
        base = Path(tmp)
        overheads = measure_overhead(list(SCENARIOS[:n_inc]), base)
        latencies, hops = measure_detection(list(SCENARIOS[:n_det]), base)
        storm, idle, rss = measure_storm(SCENARIOS[0], base)

    overhead = statistics.median(overheads)
    all_hops = [h for values in hops.values() for h in values]
    detection = statistics.median(latencies)
    print("\nCelery hop, task-sent -> task-started (real farm, tasks without a countdown):")
    if all_hops:
        print(
            f"   all tasks  n={len(all_hops):<4} median {statistics.median(all_hops) * 1000:7.1f} ms"
            f"  p95 {p95(all_hops) * 1000:7.1f} ms"
        )
        for task, values in sorted(hops.items()):
            print(
                f"   {task:<10} n={len(values):<4} median {statistics.median(values) * 1000:7.1f} ms"
            )
    else:
        print("   no task events received")
    print("\nworker RSS (MB)       idle   after the storm run")
    for proc, mb in rss.items():
        print(f"   {proc:<18} {idle.get(proc, 0.0):7.1f} {mb:10.1f}")
    heaviest = max(rss.values(), default=0.0)
    print(f"   {'total':<18} {sum(idle.values()):7.1f} {sum(rss.values()):10.1f}")

    goals = [
        (
            "orchestration overhead per incident (median)",
            f"{overhead:.1f} ms",
            f"<= {GOAL_OVERHEAD_MS:.0f} ms",
            overhead <= GOAL_OVERHEAD_MS,
        ),
        (
            "detection latency (median)",
            f"{detection:.2f} s",
            f"<= {GOAL_DETECTION_S:.1f} s",
            detection <= GOAL_DETECTION_S,
        ),
        (
            f"incidents for {STORM_LINES:,} identical lines",
            str(storm),
            f"= {GOAL_STORM_INCIDENTS}",
            storm == GOAL_STORM_INCIDENTS,
        ),
        (
            "worker RSS, heaviest process",
            f"{heaviest:.0f} MB",
            f"<= {GOAL_RSS_MB:.0f} MB",
            0 < heaviest <= GOAL_RSS_MB,
        ),
    ]
    print()
    for what, value, goal, ok in goals:
        print(f"{what:<46} {value:>10}   goal {goal:<10} {verdict(ok)}")
    return 0 if all(ok for *_, ok in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
