"""The sandbox's Kubernetes alone, served on loopback for a test: the API server,
scheduler, kubelet and controllers on a fast clock, and nothing else of the world."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from aifixer_sandbox.clock import Clock
from aifixer_sandbox.kube.cluster import Cluster
from aifixer_sandbox.kube.server import make_app
from aifixer_sandbox.scenario import Image, Node
from aifixer_sandbox.serve import LoopThread, Site, start_site, stop_site


@contextmanager
def served_cluster(
    images: Callable[[str], Image | None],
    nodes: list[Node],
    *,
    speed: float = 40.0,
    logs: Callable | None = None,
    namespaces: Iterable[str] = (),
) -> Iterator[tuple[Cluster, str]]:
    """(the cluster, its API server's URL), stopped when the block ends.

    `images` says what each image reference runs (None: the registry has no such
    image); `logs`, where the kubelet sends what the containers print (Loki's store).
    """
    loop = LoopThread().start()
    cluster = Cluster(Clock(speed), images, *([logs] if logs is not None else []))

    async def up() -> Site:
        cluster.start()
        cluster.register_nodes(nodes)
        for ns in namespaces:
            cluster.ensure_namespace(ns)
        return await start_site(Site("kubernetes", make_app(cluster.store, cluster.logs)))

    site = loop.call(up)
    try:
        yield cluster, site.url
    finally:
        loop.call(stop_site, site)
        loop.call(cluster.stop)
        loop.stop()


def until(what: str, pred: Callable[[], object], timeout: float = 20) -> None:
    """Wait for `pred` to hold, polling; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def polled(check: Callable[[], object], timeout: float = 60, every: float = 0.2):
    """Poll `check` until it returns something truthy; that value, or the last one."""
    deadline = time.monotonic() + timeout
    value = check()
    while not value and time.monotonic() < deadline:
        time.sleep(every)
        value = check()
    return value
