"""The whole sandbox, as `aifixer sandbox up` runs it, with 1,000 simulated pods.

Unlike bench_kube_api.py (the API server alone, pods only stored), this runs the full
world in a child process — API server, controllers, scheduler, kubelet simulating
every pod with its probes, Loki receiving their logs, forge and phone — and measures:

- start time: from launching `aifixer sandbox up` to its kubeconfig being usable
  (median of several starts);
- time for a 1,000-replica Deployment to be fully Ready (simulated kubelet at work);
- list requests/s (all 1,000 pods) and simple GET requests/s, keep-alive clients;
- watch: time to receive the 1,000 initial events of a pod watch;
- resident memory of the sandbox process with 1,000 running pods.

Goals: start <= 3 s, >= 500 simple requests/s, RSS <= 300 MB. Loopback only; every
phase is bounded in count and time. Exits non-zero when a goal is missed.

    .venv/bin/python tests/bench/bench_sandbox.py [--pods 1000] [--starts 5] [--seconds 4]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
import yaml

GOAL_START_S = 3.0
GOAL_RPS = 500
GOAL_RSS_MB = 300
AIFIXER = [sys.executable, "-m", "aifixer.cli"]


def scenario(pods: int) -> dict:
    nodes = max(1, pods // 100 + 1)  # 110 pods per node, as the real kubelet default
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "fleet", "namespace": "bench"},
        "spec": {
            "replicas": pods,
            "selector": {"matchLabels": {"app": "fleet"}},
            "template": {
                "metadata": {"labels": {"app": "fleet"}},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": "bench/app:1.0",
                            "ports": [{"containerPort": 8080}],
                            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
                            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                        }
                    ]
                },
            },
        },
    }
    return {
        "name": "bench-1000-pods",
        "images": {
            "bench/app:1.0": {
                "memory_mib": 8,
                "port": 8080,
                "start_seconds": 1,
                "logs": ["app started", "listening on :8080"],
            }
        },
        "nodes": [
            {"name": f"node-{i}", "cpu_millicores": 64000, "memory_mib": 65536}
            for i in range(nodes)
        ],
        "manifests": [{"path": "bench/fleet.yaml", "yaml": yaml.safe_dump(deployment)}],
        "expect": {"outcome": "fixed"},
    }


def start_sandbox(workdir: Path, scenario_file: Path | None, speed: float):
    state = workdir / f"state-{time.monotonic_ns()}"
    args = [*AIFIXER, "sandbox", "up", "--state-dir", str(state), "--speed", str(speed)]
    if scenario_file is not None:
        args += ["--scenario", str(scenario_file)]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    endpoints = state / "endpoints.json"
    deadline = t0 + 30
    while time.monotonic() < deadline:
        if endpoints.exists():
            try:
                ep = json.loads(endpoints.read_text())
                requests.get(ep["kubernetes"] + "/version", timeout=1).raise_for_status()
                return proc, ep, time.monotonic() - t0
            except (ValueError, requests.RequestException):
                pass
        if proc.poll() is not None:
            raise SystemExit(f"sandbox exited: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.02)
    proc.kill()
    raise SystemExit("sandbox did not start within 30 s")


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ready_pods(api: str) -> int:
    body = requests.get(f"{api}/api/v1/namespaces/bench/pods", timeout=30).json()
    return sum(
        1
        for p in body["items"]
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (p.get("status") or {}).get("conditions") or []
        )
    )


def rate(url: str, seconds: float, clients: int) -> float:
    """Requests/s over `seconds` from `clients` threads, each with its own keep-alive session."""
    counts = [0] * clients
    stop_at = time.monotonic() + seconds

    def worker(i: int) -> None:
        with requests.Session() as s:
            while time.monotonic() < stop_at:
                s.get(url, timeout=30).raise_for_status()
                counts[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    return sum(counts) / (time.monotonic() - t0)


def watch_initial(api: str, expected: int) -> float:
    t0 = time.monotonic()
    seen = 0
    with requests.get(
        f"{api}/api/v1/namespaces/bench/pods",
        params={"watch": "1", "timeoutSeconds": "30"},
        stream=True,
        timeout=60,
    ) as r:
        for line in r.iter_lines():
            if line and json.loads(line)["type"] == "ADDED":
                seen += 1
                if seen >= expected:
                    break
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--starts", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--speed", type=float, default=60.0)
    args = ap.parse_args()
    ok = True
    with tempfile.TemporaryDirectory(prefix="aifixer-bench-") as tmp:
        work = Path(tmp)
        starts = []
        for _ in range(args.starts):
            proc, _, took = start_sandbox(work, None, args.speed)
            starts.append(took)
            stop(proc)
        start_s = statistics.median(starts)
        print(
            f"sandbox start (median of {args.starts}): {start_s:.2f} s "
            f"(min {min(starts):.2f}, max {max(starts):.2f}; goal <= {GOAL_START_S} s)"
        )
        ok &= start_s <= GOAL_START_S

        sc_file = work / "bench.yaml"
        sc_file.write_text(yaml.safe_dump(scenario(args.pods)))
        proc, ep, _ = start_sandbox(work, sc_file, args.speed)
        try:
            api = ep["kubernetes"]
            t0 = time.monotonic()
            deadline = t0 + 180
            ready = 0
            while time.monotonic() < deadline:
                ready = ready_pods(api)
                if ready >= args.pods:
                    break
                time.sleep(0.5)
            print(
                f"{ready}/{args.pods} pods Ready after {time.monotonic() - t0:.1f} s wall "
                f"(simulated clock x{args.speed:g})"
            )
            get_rps = rate(
                f"{api}/api/v1/namespaces/bench/pods/"
                + requests.get(f"{api}/api/v1/namespaces/bench/pods?limit=1", timeout=10).json()[
                    "items"
                ][0]["metadata"]["name"],
                args.seconds,
                args.clients,
            )
            list_rps = rate(f"{api}/api/v1/namespaces/bench/pods", args.seconds, args.clients)
            watch_s = watch_initial(api, args.pods)
            rss = rss_mb(proc.pid)
            print(
                f"simple GET: {get_rps:.0f} requests/s ({args.clients} keep-alive clients; "
                f"goal >= {GOAL_RPS})"
            )
            print(f"list {args.pods} pods: {list_rps:.1f} requests/s")
            print(
                f"watch: {args.pods} initial events in {watch_s:.2f} s "
                f"({args.pods / watch_s:.0f} events/s)"
            )
            print(f"sandbox RSS with {ready} running pods: {rss:.0f} MB (goal <= {GOAL_RSS_MB} MB)")
            ok &= get_rps >= GOAL_RPS and rss <= GOAL_RSS_MB and ready >= args.pods
        finally:
            stop(proc)
    print("all goals met" if ok else "GOAL MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
