"""Shared fixtures: a private Redis, sandbox worlds, and kubectl with a private cache.

Every server a test starts binds 127.0.0.1 on a free port and is stopped by the
fixture that started it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from aifixer_sandbox import scenario as scenario_mod
from aifixer_sandbox.harness import start_redis


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """AIFIXER_TEST_REDIS_URL if given, else a private redis-server on a free port.

    Under pytest-xdist the workers share the given server, each in a database of its
    own (gw0 in 0, gw1 in 1, ...), so one worker's clean-up never touches another's keys.
    """
    given = os.environ.get("AIFIXER_TEST_REDIS_URL")
    if given:
        yield _worker_database(given, os.environ.get("PYTEST_XDIST_WORKER", ""))
        return
    url, proc = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    proc.stop()


def _worker_database(url: str, worker: str) -> str:
    """The URL with the database of xdist worker `worker` (gwN -> N); as given outside xdist."""
    if not worker:
        return url
    index = int(worker.removeprefix("gw"))
    if index > 15:
        raise pytest.UsageError(f"at most 16 test workers share one Redis (worker {worker})")
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{index}"))


@pytest.fixture
def clean_redis(redis_url):
    """A client of the test Redis with no aifixer key left by an earlier test."""
    import redis

    client = redis.Redis.from_url(redis_url)
    stale = list(client.scan_iter(match="aifixer:*", count=1000))
    if stale:
        client.delete(*stale)
    yield client
    client.close()


@pytest.fixture
def make_world(tmp_path) -> Iterator[Callable]:
    """make_world(scenario=None, speed=30, load=True, apply_change=True) -> started World."""
    from aifixer_sandbox.world import World

    worlds = []

    def make(scenario=None, *, speed: float = 30.0, load: bool = True, apply_change: bool = True):
        if isinstance(scenario, (str, Path)):
            scenario = scenario_mod.load(scenario)
        w = World(scenario, tmp_path / f"world{len(worlds)}", speed=speed)
        worlds.append(w)
        w.start(load=load, apply_change=apply_change)
        return w

    yield make
    for w in worlds:
        w.stop()


@pytest.fixture
def kubectl(tmp_path) -> Callable[..., subprocess.CompletedProcess]:
    """kubectl(kubeconfig, *args) with a private HOME so the discovery cache never leaks."""
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.fail("kubectl is not installed (./dev test installs it)")
    home = tmp_path / "kubectl-home"
    home.mkdir(exist_ok=True)

    def run(kubeconfig: str | Path, *args: str, timeout: float = 60, check: bool = False):
        env = {
            **os.environ,
            "HOME": str(home),
            "KUBECACHEDIR": str(home / "cache"),
            "KUBECONFIG": str(kubeconfig),
        }
        proc = subprocess.run(
            [exe, *args], env=env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
            )
        return proc

    return run


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under `--dist loadgroup`, a test without an xdist group runs with the rest of its
    file (as `--dist loadfile` would place it): a file's module fixtures start once."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
