"""Throughput and memory of the Kubernetes API stand-in with a realistic object count.

The sandbox serves a whole simulated cluster from one event loop, and the product polls
it from many Celery workers, so the API must stay fast with ~1,000 pods stored. This
script starts the server in a child process (so its RSS is measured alone), stores
`--pods` pods, then measures from this process over loopback:

- simple GETs of single pods, from several concurrent keep-alive clients;
- lists of all pods across namespaces;
- watch throughput: events a watcher receives while other clients create objects;
- the server process's resident memory.

Goals: >= 500 simple requests/s and RSS <= 300 MB. Exits non-zero when a goal is missed.

    .venv/bin/python tests/bench/bench_kube_api.py [--pods 1000] [--seconds 5] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

GOAL_RPS = 500
GOAL_RSS_MB = 300
NAMESPACES = 10


def serve(pods: int) -> None:
    """Child process: fill a store, serve it, print the URL, run until stdin closes."""
    from aifixer_sandbox.kube.podlogs import PodLogs
    from aifixer_sandbox.kube.resources import core
    from aifixer_sandbox.kube.server import make_app
    from aifixer_sandbox.kube.store import Store
    from aifixer_sandbox.serve import serve_in_thread

    store = Store()
    for n in range(NAMESPACES):
        store.create(core("namespaces"), {"metadata": {"name": f"ns{n}"}})
    for i in range(pods):
        store.create(core("pods"), _pod(f"ns{i % NAMESPACES}", f"pod-{i}"))
    url, stop = serve_in_thread(make_app(store, PodLogs()))
    print(url, flush=True)
    sys.stdin.read()
    stop()


def _pod(namespace: str, name: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name.rsplit("-", 1)[0]}},
        "spec": {"nodeName": "node-1", "containers": [{
            "name": "app", "image": "registry.example/app:1.2.3", "ports": [{"containerPort": 8080}],
            "env": [{"name": f"VAR_{k}", "value": "x" * 20} for k in range(5)],
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]},
        "status": {"phase": "Running", "podIP": "10.244.0.10"},
    }  # fmt: skip


async def _hammer(
    url: str, paths: list[str], clients: int, seconds: float, limit: int
) -> tuple[int, float]:
    """Requests completed by `clients` keep-alive sessions in `seconds` (at most `limit`)."""
    done = 0
    deadline = time.monotonic() + seconds

    async def worker(k: int) -> None:
        nonlocal done
        async with aiohttp.ClientSession(url) as session:
            i = k
            while time.monotonic() < deadline and done < limit:
                async with session.get(paths[i % len(paths)]) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"GET {paths[i % len(paths)]}: {resp.status}")
                done += 1
                i += clients

    start = time.monotonic()
    await asyncio.gather(*(worker(k) for k in range(clients)))
    return done, time.monotonic() - start


async def _watch_throughput(url: str, events: int, writers: int) -> tuple[int, float]:
    """Events a watcher receives per second while `writers` clients create configmaps."""
    received = 0
    async with aiohttp.ClientSession(url) as session:
        async with session.get(
            "/api/v1/namespaces/ns0/configmaps?watch=1&timeoutSeconds=60"
        ) as stream:
            start = time.monotonic()

            async def writer(k: int) -> None:
                async with aiohttp.ClientSession(url) as w:
                    for i in range(k, events, writers):
                        body = {"metadata": {"name": f"cm-{i}"}, "data": {"i": str(i)}}
                        async with w.post("/api/v1/namespaces/ns0/configmaps", json=body) as resp:
                            await resp.read()

            writing = asyncio.gather(*(writer(k) for k in range(writers)))
            async for line in stream.content:
                if json.loads(line)["type"] == "ADDED":
                    received += 1
                    if received >= events:
                        break
            await writing
            return received, time.monotonic() - start


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def measure(url: str, pid: int, args: argparse.Namespace) -> bool:
    pods = [f"/api/v1/namespaces/ns{i % NAMESPACES}/pods/pod-{i}" for i in range(args.pods)]
    n, secs = await _hammer(url, pods, args.clients, args.seconds, limit=100_000)
    simple_rps = n / secs
    print(
        f"simple GET /pods/NAME   {simple_rps:8.0f} req/s  ({n} requests, {args.clients} clients)"
    )
    n, secs = await _hammer(url, ["/api/v1/pods"], args.clients, args.seconds, limit=2_000)
    print(f"list all {args.pods} pods     {n / secs:8.1f} req/s  ({n} requests)")
    n, secs = await _hammer(
        url, ["/api/v1/pods?limit=500"], args.clients, args.seconds, limit=2_000
    )
    print(f"list 500 pods (chunked) {n / secs:8.1f} req/s  ({n} requests)")
    n, secs = await _watch_throughput(url, events=2_000, writers=4)
    print(f"watch events            {n / secs:8.0f} ev/s   ({n} events, creates included)")
    rss = _rss_mb(pid)
    print(f"server RSS              {rss:8.1f} MB")
    ok = simple_rps >= GOAL_RPS and rss <= GOAL_RSS_MB
    print("goals met" if ok else f"GOALS MISSED (>= {GOAL_RPS} req/s, <= {GOAL_RSS_MB} MB)")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="duration of each request-rate phase"
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent keep-alive clients")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.pods)
        return 0
    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen([sys.executable, __file__, "--serve", "--pods", str(args.pods)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root,
                             env={"PYTHONPATH": str(root), "PATH": ""})  # fmt: skip
    try:
        url = child.stdout.readline().strip()
        if not url:
            raise SystemExit("the server did not start")
        return 0 if asyncio.run(measure(url, child.pid, args)) else 1
    finally:
        child.stdin.close()
        child.wait(10)


if __name__ == "__main__":
    sys.exit(main())
